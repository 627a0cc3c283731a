"""Linear-algebra primitives I: solve, det, cholesky, LU without pivoting, the matrix exponential.

Each works on the last two dimensions (batch dimensions in front) and gives, like the
primitives of `gradcheck_sym.ops.prims`:

* its value in float64 torch (torch's *forward* kernels: ``torch.linalg.solve``, ``det``,
  ``cholesky``, ``matrix_exp``; LU without pivoting is our own Doolittle loop, since torch's
  CPU kernel always pivots) and on numpy object arrays, one matrix at a time (mpmath, and
  sympy where sympy can: solve, det, cholesky, LU);
* its VJP, the closed-form adjoint written with primitives only (solve, matmul, masks), so
  the sweep can be swept again for second order:

  ======================  ==============================================================
  ``X = solve(A, B)``     ``gB = A⁻ᵀ g``, ``gA = -gB Xᵀ``
  ``d = det(A)``          ``gA = g · cof(A)`` (``d A⁻ᵀ``; cofactors by minors when A is
                          near singular, where ``d A⁻ᵀ`` is not finite but ``cof`` is)
  ``L = cholesky(A)``     ``gA = sym(L⁻ᵀ Φ(Lᵀ gL) L⁻¹)``, Φ = lower triangle, diagonal halved
  ``L, U = lu(A)``        ``gA = L⁻ᵀ (tril(Lᵀ gL, -1) + triu(gU Uᵀ)) U⁻ᵀ``
  ``E = expm(A)``         ``gA = L(Aᵀ, g)``, the Fréchet derivative: the upper right block
                          of ``expm([[Aᵀ, g], [0, Aᵀ]])``
  ======================  ==============================================================

* an error rule: first-order perturbation bounds, componentwise where they are cheap (Skeel's
  ``|A⁻¹| |ΔA| |X|`` for solve), plus each kernel's own rounding as a backward error of
  ``8 n u`` times the factors' magnitudes (LAPACK's bounds are ``γ_3n |L||U|``; the factor 8
  covers modest pivot growth).  Generous rather than tight: a condition number enters
  wherever the mathematics has one, so an ill-conditioned matrix widens the tolerance
  instead of raising a false alarm.

``cholesky`` is the factor of the *symmetric part* ``(A + Aᵀ)/2``: torch's documented
convention for Hermitian inputs (its gradient is symmetric, a derivative along symmetric
directions), and the eigendecomposition in `gradcheck_sym.ops.linalg_spectral` follows it too.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import mpmath
import numpy as np
import sympy
import torch

from .core import Prim, bind, register
from .ew import ADD, MUL, NEG
from .linalg_base import (FLIP, eye, from_mp, gamma_n, inv_abs, is_symbolic, masked, mp_matrix, obj_per_matrix,
                          place_core, sym, sym_matrix, sym_to_np, take_core, tri_mask)
from .prims import ew, mT, matmul, reshape, shape_of, sum_to

__all__ = ["solve", "inv", "det", "cholesky", "lu", "expm"]

F64 = torch.float64


# ---------------------------------------------------------------- solve
def _tri_of(a: Any, tri: str | None) -> Any:
    if tri is None:
        return a
    if isinstance(a, torch.Tensor):
        return a.tril() if tri == "lower" else a.triu()
    return np.tril(a) if tri == "lower" else np.triu(a)


def _solve_impl(a: torch.Tensor, b: torch.Tensor, tri: str | None = None) -> torch.Tensor:
    if tri is None:
        return torch.linalg.solve(a, b)
    shape = torch.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    return torch.linalg.solve_triangular(a.expand(shape + a.shape[-2:]), b.expand(shape + b.shape[-2:]),
                                         upper=tri == "upper")


def _solve_one(a: np.ndarray, b: np.ndarray, tri: str | None = None) -> np.ndarray:
    a = _tri_of(a, tri)
    if is_symbolic(a, b):
        return sym_to_np(sym_matrix(a).LUsolve(sym_matrix(b)))
    n, k = b.shape
    if not (n and k):
        return np.empty((n, k), dtype=object)
    # mpmath's lu_solve takes one right-hand side (a column) at a time.
    am = mp_matrix(a)
    cols = [from_mp(mpmath.lu_solve(am, mp_matrix(b[:, j : j + 1])), n, 1) for j in range(k)]
    return np.concatenate(cols, axis=1)


def _solve_obj(a: Any, b: Any, tri: str | None = None) -> Any:
    return obj_per_matrix(_solve_impl, _solve_one, (a, b), (2, 2), tri=tri)


def _solve_vjp(cts: list[Any], ins: Sequence[Any], outs: Sequence[Any], tri: str | None = None) -> list[Any]:
    a, b = ins
    gb = solve(mT(a), cts[0], tri=FLIP[tri])
    ga = ew(NEG, matmul(gb, mT(outs[0])))
    if tri is not None:  # only the triangle is read
        n = shape_of(a)[-1]
        ga = masked(ga, tri_mask(n, n, lower=tri == "lower"))
    return [sum_to(ga, shape_of(a)), sum_to(gb, shape_of(b))]


def _solve_err(errs: list[Any], ins: Sequence[Any], outs: Sequence[Any], u: float,
               tri: str | None = None) -> list[Any]:
    a, b = ins
    x = outs[0]
    a = _tri_of(a, tri)
    ainv = inv_abs(a)
    # Skeel: (A + ΔA) X = B + ΔB with |ΔA| <= γ|T| for a triangular solve, γ P|L||U| for LU with pivoting
    # (a triangular matrix's transpose fills in), plus the input's error; |ΔB| <= γ|B| plus its error
    g = gamma_n(a.shape[-1], u)
    if tri is None:
        perm, low, up = torch.linalg.lu(a)
        resid = g * ((perm @ low.abs()) @ (up.abs() @ x.abs()) + b.abs())
    else:
        resid = g * (a.abs() @ x.abs() + b.abs())
    if errs[0] is not None:
        resid = resid + _tri_of(errs[0], tri) @ x.abs()
    if errs[1] is not None:
        resid = resid + errs[1]
    return [ainv @ resid]


register(Prim("solve", _solve_impl, _solve_obj, _solve_vjp, _solve_err))


def solve(a: Any, b: Any, *, tri: str | None = None) -> Any:
    """A⁻¹ B for square A (..., n, n) and B (..., n, k), batch dimensions broadcast.

    `tri` ("lower" or "upper"): A is triangular; only that triangle is read (a triangular solve).
    """
    return bind("solve", a, b, tri=tri)


def inv(a: Any) -> Any:
    """A⁻¹ = solve(A, I) (torch's own inverse is a solve against the identity)."""
    shape = shape_of(a)
    return solve(a, eye(shape[-1], shape[:-2]))


# ---------------------------------------------------------------- det
def _det_impl(a: torch.Tensor) -> torch.Tensor:
    return torch.linalg.det(a)


def _det_one(a: np.ndarray) -> Any:
    if not a.shape[0]:
        return np.asarray(1.0, dtype=object)
    if is_symbolic(a):
        return np.asarray(sym_matrix(a).det(method="berkowitz"), dtype=object)
    return np.asarray(mpmath.det(mp_matrix(a)), dtype=object)


def _det_obj(a: Any) -> Any:
    return obj_per_matrix(_det_impl, _det_one, (a,), (2,))


def minors_index(n: int) -> torch.Tensor:
    """(n, n, n-1, n-1) flat positions: the minor of element (i, j) of an n x n matrix."""
    rows = torch.arange(n)
    keep = [rows[rows != i] for i in range(n)]
    index = torch.empty((n, n, n - 1, n - 1), dtype=torch.long)
    for i in range(n):
        for j in range(n):
            index[i, j] = keep[i].reshape(-1, 1) * n + keep[j].reshape(1, -1)
    return index


def cofactors(a: Any) -> Any:
    """The cofactor matrix (the gradient of det), by the determinants of the minors."""
    n = shape_of(a)[-1]
    if n == 1:
        return torch.ones(shape_of(a), dtype=F64)
    signs = torch.tensor([[(-1.0) ** (i + j) for j in range(n)] for i in range(n)], dtype=F64)
    return ew(MUL, det(take_core(a, minors_index(n))), signs)


def _near_singular(a: Any) -> bool:
    value = a if isinstance(a, torch.Tensor) else a.value
    if value.numel() == 0:
        return False
    s = torch.linalg.svdvals(value)
    return bool((s[..., -1] <= 1e-8 * s[..., 0]).any())


def _det_vjp(cts: list[Any], ins: Sequence[Any], outs: Sequence[Any]) -> list[Any]:
    a, = ins
    shape = shape_of(a)
    n = shape[-1]
    if n == 0:
        return [None]
    g = reshape(cts[0], shape[:-2] + (1, 1))
    if _near_singular(a):  # d A⁻ᵀ is not finite at a singular A; the cofactors are
        return [ew(MUL, g, cofactors(a))]
    d = reshape(outs[0], shape[:-2] + (1, 1))
    return [ew(MUL, ew(MUL, g, d), mT(inv(a)))]


def _det_err(errs: list[Any], ins: Sequence[Any], outs: Sequence[Any], u: float) -> list[Any]:
    a, = ins
    n = a.shape[-1]
    if n == 0:
        return [torch.zeros(a.shape[:-2], dtype=F64)]
    # |δ det| <= sum_ij |cof_ij| |ΔA_ij|, with |cof| = |det A⁻ᵀ|, or Hadamard's bound on the minors
    cof = outs[0].abs().reshape(a.shape[:-2] + (1, 1)) * inv_abs(a).mT
    rows = a.pow(2).sum(-1).sqrt()
    hadamard = (rows.prod(-1).reshape(a.shape[:-2] + (1, 1)) / rows.clamp(min=1e-300).unsqueeze(-1))
    cof = torch.where(torch.isfinite(cof), cof, hadamard.expand(a.shape))
    delta = gamma_n(n, u) * a.abs()
    if errs[0] is not None:
        delta = delta + errs[0]
    return [(cof * delta).sum(dim=(-2, -1))]


register(Prim("det", _det_impl, _det_obj, _det_vjp, _det_err))


def det(a: Any) -> Any:
    return bind("det", a)


# ---------------------------------------------------------------- cholesky (of the symmetric part)
def _chol_impl(a: torch.Tensor) -> torch.Tensor:
    return torch.linalg.cholesky((a + a.mT) / 2)


def _chol_one(a: np.ndarray) -> np.ndarray:
    s = (a + a.T) / 2
    n = a.shape[0]
    if is_symbolic(a):
        return sym_to_np(sym_matrix(s).cholesky(hermitian=False))
    return from_mp(mpmath.cholesky(mp_matrix(s)), n, n) if n else np.empty((0, 0), dtype=object)


def _chol_obj(a: Any) -> Any:
    return obj_per_matrix(_chol_impl, _chol_one, (a,), (2,))


def _chol_vjp(cts: list[Any], ins: Sequence[Any], outs: Sequence[Any]) -> list[Any]:
    l = outs[0]
    n = shape_of(l)[-1]
    phi = masked(matmul(mT(l), cts[0]), tri_mask(n, n, lower=True, diagonal=0.5))
    x = solve(mT(l), phi, tri="upper")  # L⁻ᵀ Φ
    g = mT(solve(mT(l), mT(x), tri="upper"))  # L⁻ᵀ Φ L⁻¹
    return [sym(g)]


def _chol_err(errs: list[Any], ins: Sequence[Any], outs: Sequence[Any], u: float) -> list[Any]:
    l = outs[0]
    n = l.shape[-1]
    # dL = L Φ(L⁻¹ dS L⁻ᵀ): |δL| <= |L| |L⁻¹| |δS| |L⁻ᵀ|, δS = input error + backward error γ|L||Lᵀ|
    delta = gamma_n(n, u) * (l.abs() @ l.abs().mT)
    if errs[0] is not None:
        delta = delta + (errs[0] + errs[0].mT) / 2
    linv = inv_abs(l)
    return [l.abs() @ (linv @ delta @ linv.mT)]


register(Prim("cholesky", _chol_impl, _chol_obj, _chol_vjp, _chol_err))


def cholesky(a: Any) -> Any:
    """The lower Cholesky factor of (A + Aᵀ)/2."""
    return bind("cholesky", a)


# ---------------------------------------------------------------- LU without pivoting (square)
def _doolittle(a: Any, div: Callable[[Any, Any], Any], one: Any, zero: Any) -> tuple[Any, Any]:
    """L (unit lower) and U with A = L U, no pivoting, on numpy object matrices."""
    n = a.shape[0]
    u_ = a.copy()
    l_ = np.full((n, n), zero, dtype=object)
    for i in range(n):
        l_[i, i] = one
    for k in range(n):
        for i in range(k + 1, n):
            l_[i, k] = div(u_[i, k], u_[k, k])
            for j in range(k, n):
                u_[i, j] = u_[i, j] - l_[i, k] * u_[k, j]
            u_[i, k] = zero
    return l_, u_


def _lu_impl(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    n = a.shape[-1]
    u_ = a.clone()
    l_ = torch.eye(n, dtype=F64, device=a.device).expand(a.shape).clone()
    for k in range(n - 1):
        l_[..., k + 1:, k] = u_[..., k + 1:, k] / u_[..., k:k + 1, k]
        u_[..., k + 1:, :] = u_[..., k + 1:, :] - l_[..., k + 1:, k:k + 1] * u_[..., k:k + 1, :]
        u_[..., k + 1:, k] = 0.0
    return l_, u_


def _lu_one(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if is_symbolic(a):
        return _doolittle(a, lambda x, y: x / y, sympy.S.One, sympy.S.Zero)
    m = np.vectorize(lambda e: e if isinstance(e, mpmath.mpf) else mpmath.mpf(e), otypes=[object])(a) if a.size else a
    return _doolittle(m, lambda x, y: x / y, mpmath.mpf(1), mpmath.mpf(0))


def _lu_obj(a: Any) -> Any:
    return obj_per_matrix(_lu_impl, _lu_one, (a,), (2,))


def _lu_vjp(cts: list[Any], ins: Sequence[Any], outs: Sequence[Any]) -> list[Any]:
    l, u_ = outs
    gl, gu = cts
    n = shape_of(l)[-1]
    terms = []
    if gl is not None:
        terms.append(masked(matmul(mT(l), gl), tri_mask(n, n, lower=True, strict=True)))
    if gu is not None:
        terms.append(masked(matmul(gu, mT(u_)), tri_mask(n, n, lower=False)))
    m = terms[0] if len(terms) == 1 else ew(ADD, terms[0], terms[1])
    x = solve(mT(l), m, tri="upper")  # L⁻ᵀ M
    return [mT(solve(u_, mT(x), tri="upper"))]  # L⁻ᵀ M U⁻ᵀ


def _lu_err(errs: list[Any], ins: Sequence[Any], outs: Sequence[Any], u: float) -> list[Any]:
    l, u_ = outs
    n = l.shape[-1]
    delta = gamma_n(n, u) * (l.abs() @ u_.abs())
    if errs[0] is not None:
        delta = delta + errs[0]
    x = inv_abs(l) @ delta @ inv_abs(u_)
    return [l.abs() @ x, x @ u_.abs()]


register(Prim("lu", _lu_impl, _lu_obj, _lu_vjp, _lu_err, multiple=True))


def lu(a: Any) -> tuple[Any, Any]:
    """(L, U) with A = L U, L unit lower triangular, no pivoting (pivot first: a constant permutation)."""
    return bind("lu", a)


# ---------------------------------------------------------------- the matrix exponential
def _expm_impl(a: torch.Tensor) -> torch.Tensor:
    return torch.linalg.matrix_exp(a)


def _expm_one(a: np.ndarray) -> np.ndarray:
    if is_symbolic(a):
        raise NotImplementedError("the matrix exponential has no sympy rule here (use mpmath elements)")
    n = a.shape[0]
    return from_mp(mpmath.expm(mp_matrix(a)), n, n) if n else np.empty((0, 0), dtype=object)


def _expm_obj(a: Any) -> Any:
    return obj_per_matrix(_expm_impl, _expm_one, (a,), (2,))


def _block_index(n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Positions of the top-left, top-right and bottom-right n x n blocks in a 2n x 2n matrix."""
    i = torch.arange(n).reshape(n, 1)
    j = torch.arange(n).reshape(1, n)
    return i * 2 * n + j, i * 2 * n + (j + n), (i + n) * 2 * n + (j + n)


def _expm_vjp(cts: list[Any], ins: Sequence[Any], outs: Sequence[Any]) -> list[Any]:
    a, = ins
    n = shape_of(a)[-1]
    tl, tr, br = _block_index(n)
    at = mT(a)
    block = ew(ADD, ew(ADD, place_core(at, tl, (2 * n, 2 * n)), place_core(cts[0], tr, (2 * n, 2 * n))),
               place_core(at, br, (2 * n, 2 * n)))
    return [take_core(expm(block), tr)]


def _expm_err(errs: list[Any], ins: Sequence[Any], outs: Sequence[Any], u: float) -> list[Any]:
    a, = ins
    n = a.shape[-1]
    # exp(A) = sum A^k / k!: |L(A, E)| <= L(|A|, |E|) elementwise; own rounding as a backward error γ|A|
    e = gamma_n(n, u) * a.abs()
    if errs[0] is not None:
        e = e + errs[0]
    tl, tr, br = _block_index(n)
    block = torch.zeros(a.shape[:-2] + (2 * n, 2 * n), dtype=F64)
    flat = block.reshape(a.shape[:-2] + (4 * n * n,))
    flat[..., tl.reshape(-1)] = a.abs().reshape(a.shape[:-2] + (n * n,))
    flat[..., br.reshape(-1)] = a.abs().reshape(a.shape[:-2] + (n * n,))
    flat[..., tr.reshape(-1)] = e.expand(a.shape).reshape(a.shape[:-2] + (n * n,))
    big = torch.linalg.matrix_exp(flat.reshape(block.shape)).reshape(a.shape[:-2] + (4 * n * n,))
    return [big[..., tr.reshape(-1)].reshape(a.shape) + gamma_n(n, u) * outs[0].abs()]


register(Prim("expm", _expm_impl, _expm_obj, _expm_vjp, _expm_err))


def expm(a: Any) -> Any:
    return bind("expm", a)
