"""Linear algebra II: eigh, svd, qr, pseudo-inverses, least squares, Householder products, matrix norms.

The decompositions are primitives (`gradcheck_sym.ops.linalg_spectral`).  Their gauge — the
sign of each eigen- or singular vector, QR's Householder signs — is torch's: our float64
factors are flipped to point like the user's own result (a constant ±1 per vector), so the
value matches in every dtype and a gauge-dependent loss is differentiated with the gauge
torch picked.  Decisions come from the user's run: the rank a pseudo-inverse keeps (torch's
cutoff on the user's singular values), ties of a 2-norm or an inf-norm (split evenly, as
torch's amax), the driver's rank of a least-squares problem.

Extra columns of ``full_matrices=True`` (U beyond min(m, n)) are constants: torch documents
that their gradient is ignored, since any basis of the complement would do.  Complex
results (``linalg.eig``, ``eigvals``) are refused: the checker works with real numbers.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .. import prims as P
from ..ew import ADD, DIV, MUL, SQUARE, SUB
from ..linalg_base import cols_of, put_block
from ..linalg_prims import inv
from ..linalg_spectral import eigh, pinv, qr, svd
from .elementwise import table_fn
from .linalg_ops import symmetric_input, triangle, value_of
from .reduce import _check_dtype, _root_fn, tie_weights, vector_norm
from .registry import Args, Ctx, Refused, rule

F64 = torch.float64


def _column_signs(h: Any, user: torch.Tensor) -> torch.Tensor | None:
    """±1 per column making our vectors point like the user's (None when all agree)."""
    if user.numel() == 0:
        return None
    dots = (value_of(h) * user.detach().to(F64)).sum(-2)
    signs = torch.where(dots < 0, -1.0, 1.0).to(F64)
    return None if bool((signs > 0).all()) else signs


# ---------------------------------------------------------------- eigh
def _eigh_of(c: Ctx, t: torch.Tensor, uplo: str) -> tuple[Any, Any]:
    if uplo.upper() not in ("L", "U"):
        raise Refused(f"UPLO={uplo!r} is not 'L' or 'U'")
    return eigh(symmetric_input(c, t, lower=uplo.upper() == "L"))


@rule("linalg_eigh", sig=lambda A, UPLO="L", *, out=None: 0)
def _linalg_eigh(c: Ctx, a: Args) -> Any:
    w, v = _eigh_of(c, a.A, a.UPLO)
    signs = _column_signs(v, c.out[1])
    return w, (v if signs is None else P.ew(MUL, v, signs.unsqueeze(-2)))


@rule("linalg_eigvalsh", sig=lambda A, UPLO="L", *, out=None: 0)
def _linalg_eigvalsh(c: Ctx, a: Args) -> Any:
    return _eigh_of(c, a.A, a.UPLO)[0]


@rule("linalg_eig", "linalg_eigvals", "eig", sig=lambda *args, **kwargs: 0)
def _eig(c: Ctx, a: Args) -> Any:
    raise Refused(f"{c.name}: a general matrix has complex eigenvalues and vectors; complex numbers are not "
                  "modelled (use linalg.eigh for a symmetric matrix)")


# ---------------------------------------------------------------- svd
def svd_of(c: Ctx, t: torch.Tensor, user_u: torch.Tensor | None) -> tuple[Any, Any, Any]:
    """Reduced SVD of `t`, in the gauge of the user's U (its first min(m, n) columns) when given."""
    u, s, vh = svd(c.v(t))
    if user_u is not None:
        k = P.shape_of(s)[-1]
        signs = _column_signs(u, user_u[..., :k])
        if signs is not None:
            u, vh = P.ew(MUL, u, signs.unsqueeze(-2)), P.ew(MUL, vh, signs.unsqueeze(-1))
    return u, s, vh


def _completed(h: Any, user: torch.Tensor) -> Any:
    """A reduced factor (m x k) completed to the user's full square one: the extra columns as constants."""
    m, k = P.shape_of(h)[-2:]
    if user.shape[-1] == k:
        return h
    extra = user.detach().to(F64).clone()
    extra[..., :, :k] = 0.0
    return P.ew(ADD, put_block(h, (m, user.shape[-1]), 0, 0), extra)


@rule("linalg_svd", sig=lambda A, full_matrices=True, *, driver=None, out=None: 0)
def _linalg_svd(c: Ctx, a: Args) -> Any:
    user_u, _, user_vh = c.out
    u, s, vh = svd_of(c, a.A, user_u)
    if a.full_matrices:
        u, vh = _completed(u, user_u), P.mT(_completed(P.mT(vh), user_vh.mT))
    return u, s, vh


@rule("svd", sig=lambda input, some=True, compute_uv=True, *, out=None: 0)
def _svd(c: Ctx, a: Args) -> Any:
    user_u, _, user_v = c.out
    if not a.compute_uv:  # U and V are zero matrices: constants
        return c.const(user_u), svd(c.v(a.input))[1], c.const(user_v)
    u, s, vh = svd_of(c, a.input, user_u)
    v = P.mT(vh)
    if not a.some:
        u, v = _completed(u, user_u), _completed(v, user_v)
    return u, s, v


@rule("linalg_svdvals", sig=lambda A, *, driver=None, out=None: 0)
def _svdvals(c: Ctx, a: Args) -> Any:
    return svd(c.v(a.A))[1]


# ---------------------------------------------------------------- pseudo-inverse
def kept_rank(values: torch.Tensor, atol: Any, rtol: Any, m: int, n: int) -> torch.Tensor:
    """How many of `values` (the user's singular values, or |eigenvalues|) torch's cutoff keeps, per matrix."""
    eps = torch.finfo(values.dtype).eps
    vals = values.detach().to(F64)
    atol_t = torch.as_tensor(0.0 if atol is None else atol, dtype=F64)
    if rtol is None:
        default = torch.as_tensor(eps * max(m, n), dtype=F64)
        rtol_t = torch.where(atol_t > 0, torch.zeros((), dtype=F64), default) if atol is not None else default
    else:
        rtol_t = torch.as_tensor(rtol, dtype=F64)
    top = vals.amax(-1, keepdim=True) if vals.shape[-1] else torch.zeros(vals.shape[:-1] + (1,), dtype=F64)
    cutoff = torch.maximum(atol_t.unsqueeze(-1), rtol_t.unsqueeze(-1) * top)
    return (vals > cutoff).sum(-1)


def _pinv(c: Ctx, t: torch.Tensor, atol: Any, rtol: Any, hermitian: bool) -> Any:
    m, n = t.shape[-2:]
    user = c.user_value(t).to(t.dtype)
    if hermitian:
        rank = kept_rank(torch.linalg.eigvalsh(user).abs(), atol, rtol, m, n)
        return pinv(symmetric_input(c, t, lower=True, explicit=True), rank)
    return pinv(c.v(t), kept_rank(torch.linalg.svdvals(user), atol, rtol, m, n))


@rule("linalg_pinv", sig=lambda input, rcond=None, hermitian=False, *, atol=None, rtol=None, out=None: 0)
def _linalg_pinv(c: Ctx, a: Args) -> Any:
    return _pinv(c, a.input, a.atol, a.rtol if a.rcond is None else a.rcond, bool(a.hermitian))


@rule("pinverse", sig=lambda input, rcond=1e-15: 0)
def _pinverse(c: Ctx, a: Args) -> Any:
    return _pinv(c, a.input, None, a.rcond, False)


@rule("linalg_lstsq", sig=lambda A, B, rcond=None, *, driver=None: 0)
def _lstsq(c: Ctx, a: Args) -> Any:
    m, n = a.A.shape[-2:]
    driver = a.driver or "gelsy"
    if driver == "gels":  # assumes full rank
        rank = torch.full(tuple(a.A.shape[:-2]), min(m, n), dtype=torch.long)
    else:
        user = c.user_value(a.A).to(a.A.dtype)
        rank = kept_rank(torch.linalg.svdvals(user), None, a.rcond, m, n)
    h = c.v(a.A)
    x = P.matmul(pinv(h, rank), c.v(a.B))
    solution, residuals, _, values = c.out
    res: Any = c.const(residuals)
    if residuals.numel():  # the squared norm of each column's residual
        r = P.ew(SUB, P.matmul(h, x), c.v(a.B))
        res = P.reshape(P.sum_(P.ew(SQUARE, r), (-2,)), tuple(residuals.shape))
    return P.reshape(x, tuple(solution.shape)), res, None, c.const(values)


# ---------------------------------------------------------------- qr
def qr_of(c: Ctx, t: torch.Tensor, mode: str, user_r: torch.Tensor) -> tuple[Any, Any]:
    m, n = t.shape[-2:]
    if mode == "r":
        raise Refused("qr(mode='r') is not modelled: torch does not differentiate it (it needs Q)")
    if mode == "complete" and m > n:
        raise Refused("qr(mode='complete') with more rows than columns is not modelled: Q's extra columns are "
                      "not unique and torch does not differentiate them")
    h = c.v(t)
    if m >= n:
        q, r = qr(h)
    else:  # [X | Y] = Q [R1 | Qᵀ Y] with X square
        q, r1 = qr(cols_of(h, 0, m))
        r2 = P.matmul(P.mT(q), cols_of(h, m, n))
        r = P.ew(ADD, put_block(r1, (m, n), 0, 0), put_block(r2, (m, n), 0, m))
    k = min(m, n)
    ours = value_of(r).diagonal(0, -2, -1)
    theirs = user_r.detach().to(F64).diagonal(0, -2, -1)
    if k and bool((ours * theirs < 0).any()):
        signs = torch.where(ours * theirs < 0, -1.0, 1.0).to(F64)
        q, r = P.ew(MUL, q, signs.unsqueeze(-2)), P.ew(MUL, r, signs.unsqueeze(-1))
    return q, r


@rule("linalg_qr", sig=lambda A, mode="reduced", *, out=None: 0)
def _linalg_qr(c: Ctx, a: Args) -> Any:
    return qr_of(c, a.A, a.mode, c.out[1])


@rule("qr", sig=lambda input, some=True, *, out=None: 0)
def _qr(c: Ctx, a: Args) -> Any:
    return qr_of(c, a.input, "reduced" if a.some else "complete", c.out[1])


# ---------------------------------------------------------------- Householder products
def _reflectors(c: Ctx, t: torch.Tensor, tau: torch.Tensor) -> tuple[list[Any], list[Any]]:
    """The Householder vectors v_i (unit at i, A's column below) and the τ_i, as (m, 1) and (1, 1) handles."""
    m = t.shape[-2]
    k = tau.shape[-1]
    vs = triangle(cols_of(c.v(t), 0, k), m, k, upper=False, unit=True)
    th = P.reshape(c.v(tau), tuple(tau.shape) + (1,))  # (..., k, 1): take rows as (1, 1)
    batch = tuple(tau.shape[:-1])
    taus = [P.reshape(P.take(th, _rows_index(batch, k, i)), batch + (1, 1)) for i in range(k)]
    return [cols_of(vs, i, i + 1) for i in range(k)], taus


def _rows_index(batch: tuple[int, ...], k: int, i: int) -> torch.Tensor:
    return (torch.arange(math.prod(batch)) * k + i).reshape(batch)


def _reflect(y: Any, v: Any, tau: Any, left: bool) -> Any:
    """H y (left) or y H with H = I - τ v vᵀ."""
    if left:
        return P.ew(SUB, y, P.matmul(P.ew(MUL, v, tau), P.matmul(P.mT(v), y)))
    return P.ew(SUB, y, P.matmul(P.matmul(y, v), P.ew(MUL, P.mT(v), tau)))


@rule("linalg_householder_product", "orgqr", sig=lambda input, tau, *, out=None: 0)
def _householder_product(c: Ctx, a: Args) -> Any:
    # NB: the product of reflectors is easy to model (see ormqr below), but torch's backward peels the
    # reflectors off with their inverses: where a reflector leaves a column alone the exact gradient is 0
    # and torch returns rounding noise that no bound on our formula's rounding covers (a false alarm on
    # every OpInfo sample).  Refused until the judge has a normwise tolerance floor.
    raise Refused(f"{c.name} is not modelled: torch's backward leaves rounding noise where the gradient is "
                  "exactly 0, which the tolerance cannot bound yet")


@rule("ormqr", sig=lambda input, input2, input3, left=True, transpose=False, *, out=None: 0)
def _ormqr(c: Ctx, a: Args) -> Any:
    vs, taus = _reflectors(c, a.input, a.input2)
    pairs = list(zip(vs, taus))
    # Q = H_1 ... H_k: Q C applies H_k first; Qᵀ C applies H_1 first; C Q applies H_1 first.
    if bool(a.left) != bool(a.transpose):
        pairs.reverse()
    y = c.v(a.input3)
    for v, tau in pairs:
        y = _reflect(y, v, tau, left=bool(a.left))
    return y


# ---------------------------------------------------------------- matrix norms and condition numbers
_INF = float("inf")


def matrix_norm(h: Any, user: torch.Tensor, ord: Any) -> Any:
    """The norm of each matrix (last two dims) of handle `h`; `user` is its value in the user's run (ties)."""
    if ord == "fro":  # with torch's subgradient 0 at the zero matrix
        return P.ew(_root_fn(2.0), P.sum_(P.ew(SQUARE, h), (-2, -1)))
    if ord == "nuc":
        return P.sum_(svd(h)[1], (-1,))
    if ord in (2, -2):
        w = tie_weights(torch.linalg.svdvals(user), (-1,), "max" if ord == 2 else "min")
        return P.sum_(P.ew(MUL, svd(h)[1], w), (-1,))
    if ord in (_INF, -_INF, 1, -1):
        dim = -1 if ord in (_INF, -_INF) else -2
        sums = P.sum_(P.ew(table_fn("abs", 1), h), (dim,))
        w = tie_weights(user.abs().sum(dim), (-1,), "max" if ord > 0 else "min")
        return P.sum_(P.ew(MUL, sums, w), (-1,))
    raise Refused(f"matrix norm ord={ord!r} is not modelled")


def _to_end(h: Any, t: torch.Tensor, dims: Any) -> tuple[Any, torch.Tensor]:
    nd = t.dim()
    d0, d1 = (int(d) % nd for d in dims)
    order = [d for d in range(nd) if d not in (d0, d1)] + [d0, d1]
    return P.permute(h, order), t.permute(order)


@rule("linalg_matrix_norm", sig=lambda A, ord="fro", dim=(-2, -1), keepdim=False, *, dtype=None, out=None: 0)
def _matrix_norm(c: Ctx, a: Args) -> Any:
    _check_dtype(a)
    h, user = _to_end(c.v(a.A), c.user_value(a.A).to(a.A.dtype), a.dim)
    return P.reshape(matrix_norm(h, user, a.ord), tuple(c.out.shape))


@rule("linalg_norm", sig=lambda A, ord=None, dim=None, keepdim=False, *, dtype=None, out=None: 0)
def _linalg_norm(c: Ctx, a: Args) -> Any:
    _check_dtype(a)
    t = a.A
    dim = (a.dim,) if isinstance(a.dim, int) else a.dim
    if (dim is not None and len(dim) == 2) or (dim is None and a.ord is not None and t.dim() == 2):
        h, user = _to_end(c.v(t), c.user_value(t).to(t.dtype), dim or (-2, -1))
        return P.reshape(matrix_norm(h, user, "fro" if a.ord is None else a.ord), tuple(c.out.shape))
    dims = tuple(range(t.dim())) if dim is None else tuple(int(d) % max(t.dim(), 1) for d in dim)
    p = 2 if a.ord is None else a.ord
    return P.reshape(vector_norm(c, t, p, dims, bool(a.keepdim)), tuple(c.out.shape))


@rule("linalg_cond", sig=lambda A, p=None, *, out=None: 0)
def _cond(c: Ctx, a: Args) -> Any:
    h = c.v(a.A)
    if a.p in (None, 2, -2):
        s = svd(h)[1]
        k = P.shape_of(s)[-1]
        batch = P.shape_of(s)[:-1]
        big = P.take(s, _rows_index(batch, k, 0))
        small = P.take(s, _rows_index(batch, k, k - 1))
        return P.ew(DIV, small, big) if a.p == -2 else P.ew(DIV, big, small)
    user = c.user_value(a.A).to(a.A.dtype)
    return P.ew(MUL, matrix_norm(h, user, a.p), matrix_norm(inv(h), torch.linalg.inv(user), a.p))
