"""Linear algebra I: inverses, solves, determinants, Cholesky, LU, the matrix exponential and powers.

Each op lowers to the primitives of `gradcheck_sym.ops.linalg_prims` (solve, det, cholesky,
lu, expm) and the linear ones (masks, transposes, slices).  What torch decides from the
user's values enters as constants: LU's row permutation (its pivots), the sign of a
determinant (slogdet).  Triangular inputs are masked (torch reads one triangle, and its
gradient is projected onto it); a unit diagonal is a constant identity.  Cholesky and the
Hermitian eigen-solvers differentiate along symmetric directions (torch's documented
convention), with the triangle torch actually read as a constant correction when the
user's matrix is not exactly symmetric.
"""

from __future__ import annotations

import math
from typing import Any

import sympy
import torch

from .. import prims as P
from ..ew import ADD, MUL, P as X, ew_fn
from ..linalg_base import FLIP, cols_of, eye, masked, put_block, rows_of, sym, tri_mask
from ..linalg_prims import cholesky, det, expm, inv, lu, solve
from .registry import Args, Ctx, Refused, rule

F64 = torch.float64
_LOG = ew_fn("log", sympy.log(X[0]), 1)


# ---------------------------------------------------------------- shared helpers
def value_of(h: Any) -> torch.Tensor:
    """The float64 value of a handle (traced or constant)."""
    return h if isinstance(h, torch.Tensor) else h.value


def symmetric_input(c: Ctx, t: torch.Tensor, *, lower: bool, explicit: bool = False) -> Any:
    """The symmetric matrix a Hermitian solver factorises, as a handle.

    The handle of `t` (symmetrised when `explicit`, for primitives that do not do it themselves), plus,
    where the user's matrix is not exactly symmetric, the constant that turns its symmetric part into
    the symmetric matrix built from the triangle torch reads.
    """
    h = c.v(t)
    base = sym(h) if explicit else h
    user = c.user_value(t)
    if torch.equal(user, user.mT):
        return base
    tri = user.tril() if lower else user.triu()
    read = tri + tri.mT - torch.diag_embed(user.diagonal(0, -2, -1))
    return P.ew(ADD, base, read - (user + user.mT) / 2)


def triangle(h: Any, n: int, m: int, *, upper: bool, unit: bool = False) -> Any:
    """The triangle of an n x m matrix that a triangular solver reads (unit diagonal: a constant identity)."""
    mask = tri_mask(n, m, lower=not upper, strict=unit)
    out = masked(h, mask)
    if unit:
        out = P.ew(ADD, out, torch.eye(n, m, dtype=F64))
    return out


def is_vector_rhs(a: torch.Tensor, b: torch.Tensor) -> bool:
    """torch.linalg.solve's rule: B is a (batch of) vector(s) when 1-D or shaped like A without its last dim."""
    return b.dim() == 1 or (b.dim() == a.dim() - 1 and tuple(b.shape) == tuple(a.shape[:-1]))


def solve_general(a: Any, b: Any, *, left: bool = True, vector: bool = False, tri: str | None = None) -> Any:
    """torch.linalg.solve semantics on handles: A X = B (left) or X A = B; `tri`: A's triangle."""
    if vector:
        b = P.reshape(b, P.shape_of(b) + (1,))
    if left:
        out = solve(a, b, tri=tri)
    elif vector:
        out = solve(P.mT(a), b, tri=FLIP[tri])
    else:
        out = P.mT(solve(P.mT(a), P.mT(b), tri=FLIP[tri]))
    if vector:
        out = P.reshape(out, P.shape_of(out)[:-1])
    return out


# ---------------------------------------------------------------- inverse and solve
@rule("inverse", "linalg_inv", "linalg_inv_ex", sig=lambda input, *, check_errors=False, out=None: 0)
def _inverse(c: Ctx, a: Args) -> Any:
    h = inv(c.v(a.input))
    return (h, None) if isinstance(c.out, tuple) else h


@rule("linalg_solve", "linalg_solve_ex", sig=lambda A, B, *, left=True, check_errors=False, out=None: 0)
def _solve(c: Ctx, a: Args) -> Any:
    h = solve_general(c.v(a.A), c.v(a.B), left=bool(a.left), vector=is_vector_rhs(a.A, a.B))
    h = P.reshape(h, tuple((c.out[0] if isinstance(c.out, tuple) else c.out).shape))
    return (h, None) if isinstance(c.out, tuple) else h


@rule("linalg_solve_triangular", sig=lambda input, B, *, upper, left=True, unitriangular=False, out=None: 0)
def _solve_triangular(c: Ctx, a: Args) -> Any:
    n, m = a.input.shape[-2:]
    tri = triangle(c.v(a.input), n, m, upper=bool(a.upper), unit=bool(a.unitriangular))
    return solve_general(tri, c.v(a.B), left=bool(a.left), tri="upper" if a.upper else "lower")


@rule("triangular_solve", sig=lambda input, A, upper=True, transpose=False, unitriangular=False, *, out=None: 0)
def _triangular_solve(c: Ctx, a: Args) -> Any:
    n, m = a.A.shape[-2:]
    h = c.v(a.A)
    tri = triangle(h, n, m, upper=bool(a.upper), unit=bool(a.unitriangular))
    kind = "upper" if a.upper else "lower"
    if a.transpose:
        tri, kind = P.mT(tri), FLIP[kind]
    return solve(tri, c.v(a.input), tri=kind), P.broadcast_to(h, tuple(c.out[1].shape))


# ---------------------------------------------------------------- determinants
@rule("det", "linalg_det", sig=lambda input, *, out=None: 0)
def _det(c: Ctx, a: Args) -> Any:
    return det(c.v(a.input))


@rule("logdet", sig=lambda input: 0)
def _logdet(c: Ctx, a: Args) -> Any:
    return P.ew(_LOG, det(c.v(a.input)))  # NaN for a negative determinant, as torch


@rule("slogdet", "linalg_slogdet", sig=lambda input, *, out=None: 0)
def _slogdet(c: Ctx, a: Args) -> Any:
    sign = c.const(c.out[0])  # the sign the user's run found: a constant
    return sign, P.ew(_LOG, P.ew(MUL, det(c.v(a.input)), sign))


# ---------------------------------------------------------------- Cholesky
@rule("cholesky", "linalg_cholesky", "linalg_cholesky_ex",
      sig=lambda input, upper=False, *, check_errors=False, out=None: 0)
def _cholesky(c: Ctx, a: Args) -> Any:
    low = cholesky(symmetric_input(c, a.input, lower=not a.upper))
    h = P.mT(low) if a.upper else low
    return (h, None) if isinstance(c.out, tuple) else h


def _factor(c: Ctx, t: torch.Tensor, upper: bool) -> Any:
    """The lower Cholesky factor L the user's triangle stands for (upper: Uᵀ)."""
    n = t.shape[-1]
    tri = triangle(c.v(t), n, n, upper=upper)
    return P.mT(tri) if upper else tri


@rule("cholesky_inverse", sig=lambda input, upper=False, *, out=None: 0)
def _cholesky_inverse(c: Ctx, a: Args) -> Any:
    # (L Lᵀ)⁻¹ as one inverse of the product, the association torch's backward uses: its rounding at
    # the entries that are 0 in exact arithmetic is then the one our error rules bound
    low = _factor(c, a.input, bool(a.upper))
    return inv(P.matmul(low, P.mT(low)))


@rule("cholesky_solve", sig=lambda input, input2, upper=False, *, out=None: 0)
def _cholesky_solve(c: Ctx, a: Args) -> Any:
    low = _factor(c, a.input2, bool(a.upper))
    inner = solve(low, c.v(a.input), tri="lower")
    return P.reshape(solve(P.mT(low), inner, tri="upper"), tuple(c.out.shape))


# ---------------------------------------------------------------- LU with the user's pivots
def lu_factors(h: Any, perm: torch.Tensor) -> tuple[Any, Any]:
    """(L, U) of Pᵀ A for A (..., m, n) and the constant permutation P: L m x k, U k x n, k = min(m, n)."""
    m, n = P.shape_of(h)[-2:]
    ap = P.matmul(P.mT(perm), h)
    if m == n:
        return lu(ap)
    if m > n:  # [L1; L2] U with L1 U the top square block and L2 = bottom U⁻¹
        low1, up = lu(rows_of(ap, 0, n))
        low2 = P.mT(solve(P.mT(up), P.mT(rows_of(ap, n, m)), tri="lower"))
        return P.ew(ADD, put_block(low1, (m, n), 0, 0), put_block(low2, (m, n), n, 0)), up
    low, up1 = lu(cols_of(ap, 0, m))  # L [U1 | U2] with U2 = L⁻¹ (the right block)
    up2 = solve(low, cols_of(ap, m, n), tri="lower")
    return low, P.ew(ADD, put_block(up1, (m, n), 0, 0), put_block(up2, (m, n), 0, m))


def _pivots_matrix(lu_data: torch.Tensor, pivots: torch.Tensor) -> torch.Tensor:
    return torch.lu_unpack(lu_data.detach(), pivots, unpack_data=False)[0].to(F64)


def _packed(low: Any, up: Any, m: int, n: int) -> Any:
    """LAPACK's packed LU: L's strict lower part and U's upper part in one m x n matrix."""
    k = min(m, n)
    lower = put_block(masked(low, tri_mask(m, k, lower=True, strict=True)), (m, n), 0, 0)
    upper = put_block(masked(up, tri_mask(k, n, lower=False)), (m, n), 0, 0)
    return P.ew(ADD, lower, upper)


def _need_pivot(pivot: Any) -> None:
    if not pivot:
        raise Refused("pivot=False of the LU is not modelled (torch's CPU kernel always pivots)")


@rule("linalg_lu_factor", "linalg_lu_factor_ex", sig=lambda A, *, pivot=True, check_errors=False, out=None: 0)
def _lu_factor(c: Ctx, a: Args) -> Any:
    _need_pivot(a.pivot)
    m, n = a.A.shape[-2:]
    low, up = lu_factors(c.v(a.A), _pivots_matrix(c.out[0], c.out[1]))
    return (_packed(low, up, m, n),) + (None,) * (len(c.out) - 1)


@rule("lu", sig=lambda A, pivot=True, get_infos=False, out=None: 0)
def _lu(c: Ctx, a: Args) -> Any:
    _need_pivot(a.pivot)
    m, n = a.A.shape[-2:]
    low, up = lu_factors(c.v(a.A), _pivots_matrix(c.out[0], c.out[1]))
    return (_packed(low, up, m, n),) + (None,) * (len(c.out) - 1)


@rule("linalg_lu", sig=lambda A, *, pivot=True, out=None: 0)
def _linalg_lu(c: Ctx, a: Args) -> Any:
    _need_pivot(a.pivot)
    perm = c.const(c.out[0])
    low, up = lu_factors(c.v(a.A), perm)
    return perm, low, up


def _unpacked(h: Any, n: int) -> tuple[Any, Any]:
    """(L, U) of a square packed LU."""
    return triangle(h, n, n, upper=False, unit=True), triangle(h, n, n, upper=True)


@rule("linalg_lu_solve", sig=lambda LU, pivots, B, *, left=True, adjoint=False, out=None: 0)
def _linalg_lu_solve(c: Ctx, a: Args) -> Any:
    n = a.LU.shape[-1]
    low, up = _unpacked(c.v(a.LU), n)
    perm = _pivots_matrix(a.LU, a.pivots)
    b = c.v(a.B)
    # A = P L U. Left: A X = B, or Aᵀ X = B (adjoint); right: X A = B is Aᵀ Xᵀ = Bᵀ.
    transposed = bool(a.adjoint) == bool(a.left)
    rhs = b if a.left else P.mT(b)
    if not transposed:  # X = U⁻¹ L⁻¹ Pᵀ B
        out = solve(up, solve(low, P.matmul(P.mT(perm), rhs), tri="lower"), tri="upper")
    else:  # X = P L⁻ᵀ U⁻ᵀ B
        out = P.matmul(perm, solve(P.mT(low), solve(P.mT(up), rhs, tri="lower"), tri="upper"))
    return out if a.left else P.mT(out)


@rule("lu_solve", sig=lambda input, LU_data, LU_pivots, *, out=None: 0)
def _lu_solve(c: Ctx, a: Args) -> Any:
    n = a.LU_data.shape[-1]
    low, up = _unpacked(c.v(a.LU_data), n)
    perm = _pivots_matrix(a.LU_data, a.LU_pivots)
    return solve(up, solve(low, P.matmul(P.mT(perm), c.v(a.input)), tri="lower"), tri="upper")


# ---------------------------------------------------------------- matrix functions
@rule("matrix_exp", "linalg_matrix_exp", sig=lambda input: 0)
def _matrix_exp(c: Ctx, a: Args) -> Any:
    return expm(c.v(a.input))


def matrix_power(h: Any, k: int) -> Any:
    """A^k for k >= 1 by repeated squaring."""
    result, base = None, h
    while True:
        if k & 1:
            result = base if result is None else P.matmul(result, base)
        k >>= 1
        if not k:
            return result
        base = P.matmul(base, base)


@rule("matrix_power", "linalg_matrix_power", sig=lambda input, n, *, out=None: 0)
def _matrix_power(c: Ctx, a: Args) -> Any:
    k = int(a.n)
    if k == 0:
        return eye(a.input.shape[-1], tuple(a.input.shape[:-2])).clone()
    h = c.v(a.input)
    return matrix_power(inv(h) if k < 0 else h, abs(k))


@rule("linalg_tensorinv", sig=lambda A, ind=2, *, out=None: 0)
def _tensorinv(c: Ctx, a: Args) -> Any:
    shape = tuple(a.A.shape)
    rows, cols = math.prod(shape[:a.ind]), math.prod(shape[a.ind:])
    return P.reshape(inv(P.reshape(c.v(a.A), (rows, cols))), tuple(c.out.shape))


@rule("linalg_tensorsolve", sig=lambda A, B, dims=None, *, out=None: 0)
def _tensorsolve(c: Ctx, a: Args) -> Any:
    h = c.v(a.A)
    nd = a.A.dim()
    if a.dims is not None:
        moved = [d % nd for d in a.dims]
        rest = [d for d in range(nd) if d not in moved]
        h = P.permute(h, rest + moved)
    nb = a.B.numel()
    shape = P.shape_of(h)
    return P.reshape(solve(P.reshape(h, (nb, math.prod(shape[a.B.dim():]))), P.reshape(c.v(a.B), (nb, 1))),
                     tuple(c.out.shape))
