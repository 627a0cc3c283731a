"""Linear-algebra primitives II: eigh, svd, qr, pinv — decompositions with a gauge.

Values from torch's forward kernels in float64; on object arrays from mpmath (``eigsy``,
``svd_r``, ``qr``) with torch's gauge: each singular or eigen-vector's sign (and Householder
QR's signs) taken from torch's float64 result, so both paths compute the same function.
sympy elements are refused (NotImplementedError): no closed form.

VJPs (real case, written with primitives only; ``E_ij = λ_j - λ_i``, ``F = 1/E`` off the
diagonal; ``skew(K) = K - Kᵀ``):

=====================  ====================================================================
``w, V = eigh(A)``     ``gA = V (diag(gw) + F∘skew(Vᵀ gV)/2) Vᵀ`` (A's symmetric part, as
                       torch: the result is symmetric)
``U, s, Vh = svd(A)``  ``gA = U [F∘skew(Uᵀ gU) S + diag(gs) + S F∘skew(Vh gVhᵀ)] Vh
                       + (I - UUᵀ) gU S⁻¹ Vh + U S⁻¹ gVh (I - VhᵀVh)``, ``E_ij = s_j² - s_i²``
                       (Townsend 2016)
``Q, R = qr(A)``       ``gA = (gQ + Q copyltu(M)) R⁻ᵀ``, ``M = R gRᵀ - gQᵀ Q`` (m >= n)
``X = pinv(A, r)``     ``gA = -Xᵀ G Xᵀ + (I - A X) Gᵀ X Xᵀ + Xᵀ X Gᵀ (I - X A)``, the rank r
                       kept (Golub & Pereyra: the derivative along matrices of rank r)
=====================  ====================================================================

Error rules: first-order perturbation theory, normwise: eigenvalues and singular values move
by at most ``η = |ΔA|`` (Weyl), vectors by ``η / gap``, Q and R by ``κ(A) η / |A|``; the
kernels' own rounding is a backward error ``γ |A|_F``.
"""

from __future__ import annotations

from typing import Any, Sequence

import mpmath
import numpy as np
import torch

from .core import Prim, bind, register
from .ew import ADD, DIV, MUL, SQUARE, SUB
from .linalg_base import (eye, fro_norm, from_mp, gamma_n, is_symbolic, masked, mp_matrix, obj_per_matrix, sum_abs,
                          tri_mask)
from .linalg_prims import solve
from .prims import ew, mT, matmul, reshape, shape_of

__all__ = ["eigh", "svd", "qr", "pinv"]

F64 = torch.float64


def _floats(a: np.ndarray) -> torch.Tensor:
    return torch.tensor([[float(e) for e in row] for row in a.tolist()], dtype=F64).reshape(a.shape)


def _signs(mine: np.ndarray, ref: torch.Tensor) -> np.ndarray:
    """+-1 per column: the sign that makes each column of `mine` point like torch's."""
    dots = (_floats(mine) * ref).sum(0) if mine.size else torch.zeros(mine.shape[1], dtype=F64)
    return np.array([-1 if float(d) < 0 else 1 for d in dots], dtype=object)


def _no_sympy(name: str, *arrays: Any) -> None:
    if is_symbolic(*arrays):
        raise NotImplementedError(f"{name} has no closed form for sympy elements: use mpmath elements")


def _gaps(values: torch.Tensor) -> torch.Tensor:
    """For each value, the distance to the nearest other one (inf when alone)."""
    n = values.shape[-1]
    d = (values.unsqueeze(-1) - values.unsqueeze(-2)).abs()
    d = d + torch.diag(torch.full((n,), float("inf"), dtype=F64))
    return d.amin(-1) if n > 1 else torch.full(values.shape, float("inf"), dtype=F64)


def _diag(v: Any, n: int) -> Any:
    """diag(v) for v (..., n): v broadcast along rows, times the identity."""
    return ew(MUL, reshape(v, shape_of(v)[:-1] + (1, n)), eye(n))


def _gap_matrix(values: Any, n: int) -> Any:
    """E + I with E_ij = values_j - values_i (the identity keeps the zero diagonal of skew/E at 0)."""
    batch = shape_of(values)[:-1]
    e = ew(SUB, reshape(values, batch + (1, n)), reshape(values, batch + (n, 1)))
    return ew(ADD, e, eye(n))


def _skew_over(k: Any, gap: Any) -> Any:
    return ew(DIV, ew(SUB, k, mT(k)), gap)


def _plus(a: Any, b: Any) -> Any:
    return b if a is None else ew(ADD, a, b)


# ---------------------------------------------------------------- eigh (of the symmetric part)
def _eigh_impl(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    w, v = torch.linalg.eigh((a + a.mT) / 2)
    return w, v


def _eigh_one(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    _no_sympy("eigh", a)
    n = a.shape[0]
    if n == 0:
        return np.empty(0, dtype=object), np.empty((0, 0), dtype=object)
    s = (a + a.T) / 2
    w, v = mpmath.eigsy(mp_matrix(s))
    order = sorted(range(n), key=lambda i: w[i])
    vs = from_mp(v, n, n)[:, order]
    vs = vs * _signs(vs, torch.linalg.eigh(_floats(s))[1])
    return np.array([w[i] for i in order], dtype=object), vs


def _eigh_vjp(cts: list[Any], ins: Sequence[Any], outs: Sequence[Any]) -> list[Any]:
    w, v = outs
    gw, gv = cts
    n = shape_of(w)[-1]
    inner = None if gw is None else _diag(gw, n)
    if gv is not None:
        inner = _plus(inner, ew(MUL, _skew_over(matmul(mT(v), gv), _gap_matrix(w, n)), 0.5))
    return [matmul(matmul(v, inner), mT(v))]


def _eigh_err(errs: list[Any], ins: Sequence[Any], outs: Sequence[Any], u: float) -> list[Any]:
    a, = ins
    w, v = outs
    g = gamma_n(a.shape[-1], u)
    e = None if errs[0] is None else (errs[0] + errs[0].mT) / 2
    eta = (sum_abs(e, a) + g * fro_norm(a))[..., 0]  # (..., 1)
    return [eta.expand(w.shape).clone(), (2 * eta / _gaps(w)).unsqueeze(-2).expand(v.shape) + g]


register(Prim("eigh", _eigh_impl, lambda a: obj_per_matrix(_eigh_impl, _eigh_one, (a,), (2,)), _eigh_vjp,
              _eigh_err, multiple=True))


def eigh(a: Any) -> tuple[Any, Any]:
    """(ascending eigenvalues, eigenvectors) of (A + Aᵀ)/2, torch's gauge."""
    return bind("eigh", a)


# ---------------------------------------------------------------- svd (reduced)
def _svd_impl(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    u_, s, vh = torch.linalg.svd(a, full_matrices=False)
    return u_, s, vh


def _svd_one(a: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    _no_sympy("svd", a)
    m, n = a.shape
    k = min(m, n)
    if k == 0:
        return np.empty((m, 0), dtype=object), np.empty(0, dtype=object), np.empty((0, n), dtype=object)
    u_, s, vh = mpmath.svd_r(mp_matrix(a), full_matrices=False, compute_uv=True)
    order = sorted(range(k), key=lambda i: -s[i])
    us = from_mp(u_, m, k)[:, order]
    vhs = from_mp(vh, k, n)[order, :]
    signs = _signs(us, torch.linalg.svd(_floats(a), full_matrices=False)[0])
    return us * signs, np.array([s[i] for i in order], dtype=object), vhs * signs.reshape(k, 1)


def _svd_vjp(cts: list[Any], ins: Sequence[Any], outs: Sequence[Any]) -> list[Any]:
    u_, s, vh = outs
    gu, gs, gvh = cts
    m, k = shape_of(u_)[-2:]
    n = shape_of(vh)[-1]
    batch = shape_of(s)[:-1]
    s_row, s_col = reshape(s, batch + (1, k)), reshape(s, batch + (k, 1))
    inner = None if gs is None else _diag(gs, k)
    if gu is not None or gvh is not None:
        gap = _gap_matrix(ew(SQUARE, s), k)
    if gu is not None:
        inner = _plus(inner, ew(MUL, _skew_over(matmul(mT(u_), gu), gap), s_row))
    if gvh is not None:
        inner = _plus(inner, ew(MUL, s_col, _skew_over(matmul(vh, mT(gvh)), gap)))
    out = None if inner is None else matmul(matmul(u_, inner), vh)
    if gu is not None and m > k:  # (I - UUᵀ) gU S⁻¹ Vh: what leaves U's column space
        t = ew(SUB, gu, matmul(u_, matmul(mT(u_), gu)))
        out = _plus(out, matmul(ew(DIV, t, s_row), vh))
    if gvh is not None and n > k:  # U S⁻¹ gVh (I - VhᵀVh)
        t = ew(SUB, gvh, matmul(matmul(gvh, mT(vh)), vh))
        out = _plus(out, matmul(ew(DIV, u_, s_row), t))
    return [out]


def _svd_err(errs: list[Any], ins: Sequence[Any], outs: Sequence[Any], u: float) -> list[Any]:
    a, = ins
    u_, s, vh = outs
    m, n = a.shape[-2:]
    g = gamma_n(max(m, n), u)
    eta = (sum_abs(errs[0], a) + g * fro_norm(a))[..., 0]  # (..., 1)
    gap = _gaps(s)
    if m != n:  # a vector can also turn towards the complement of the column (row) space
        gap = torch.minimum(gap, s)
    dvec = 2 * eta / gap
    return [dvec.unsqueeze(-2).expand(u_.shape) + g, eta.expand(s.shape).clone(),
            dvec.unsqueeze(-1).expand(vh.shape) + g]


register(Prim("svd", _svd_impl, lambda a: obj_per_matrix(_svd_impl, _svd_one, (a,), (2,)), _svd_vjp, _svd_err,
              multiple=True))


def svd(a: Any) -> tuple[Any, Any, Any]:
    """Reduced SVD (U, s descending, Vh), torch's gauge."""
    return bind("svd", a)


# ---------------------------------------------------------------- qr (reduced, m >= n)
def _qr_impl(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    q, r = torch.linalg.qr(a, mode="reduced")
    return q, r


def _qr_one(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    _no_sympy("qr", a)
    m, n = a.shape
    if n == 0 or m == 0:
        return np.empty((m, min(m, n)), dtype=object), np.empty((min(m, n), n), dtype=object)
    q, r = mpmath.qr(mp_matrix(a), mode="skinny")
    qs, rs = from_mp(q, m, n), from_mp(r, n, n)
    rt = torch.linalg.qr(_floats(a), mode="reduced")[1]
    signs = np.array([-1 if float(rs[i, i]) * float(rt[i, i]) < 0 else 1 for i in range(n)], dtype=object)
    return qs * signs, rs * signs.reshape(n, 1)


def _qr_vjp(cts: list[Any], ins: Sequence[Any], outs: Sequence[Any]) -> list[Any]:
    q, r = outs
    gq, gr = cts
    n = shape_of(r)[-1]
    m_ = None if gr is None else matmul(r, mT(gr))
    if gq is not None:
        m_ = _plus(m_, ew(MUL, matmul(mT(gq), q), -1.0))
    w = ew(ADD, masked(m_, tri_mask(n, n, lower=True)), mT(masked(m_, tri_mask(n, n, lower=True, strict=True))))
    b = matmul(q, w) if gq is None else ew(ADD, gq, matmul(q, w))
    return [mT(solve(r, mT(b), tri="upper"))]  # B R⁻ᵀ


def _qr_err(errs: list[Any], ins: Sequence[Any], outs: Sequence[Any], u: float) -> list[Any]:
    a, = ins
    q, r = outs
    m, n = a.shape[-2:]
    g = gamma_n(max(m, n), u)
    if n == 0 or m == 0:
        return [torch.zeros(q.shape, dtype=F64), torch.zeros(r.shape, dtype=F64)]
    eta = sum_abs(errs[0], a) + g * fro_norm(a)
    sv = torch.linalg.svdvals(r)
    rinv = (1 / sv[..., -1]).reshape(sv.shape[:-1] + (1, 1))
    kappa = sv[..., 0].reshape(sv.shape[:-1] + (1, 1)) * rinv
    return [(4 * rinv * eta).expand(q.shape) + g, (4 * kappa * eta).expand(r.shape) + g * r.abs()]


register(Prim("qr", _qr_impl, lambda a: obj_per_matrix(_qr_impl, _qr_one, (a,), (2,)), _qr_vjp, _qr_err,
              multiple=True))


def qr(a: Any) -> tuple[Any, Any]:
    """Reduced QR of A (..., m, n), m >= n, torch's (Householder) signs."""
    return bind("qr", a)


# ---------------------------------------------------------------- pinv at a given rank
def _pinv_impl(a: torch.Tensor, rank: torch.Tensor) -> torch.Tensor:
    u_, s, vh = torch.linalg.svd(a, full_matrices=False)
    keep = torch.arange(s.shape[-1], device=s.device) < rank.unsqueeze(-1)
    one, zero = torch.ones((), dtype=F64, device=s.device), torch.zeros((), dtype=F64, device=s.device)
    inv_s = torch.where(keep, 1 / torch.where(keep, s, one), zero)
    return (vh.mT * inv_s.unsqueeze(-2)) @ u_.mT


def _pinv_one(a: np.ndarray, rank: np.ndarray) -> np.ndarray:
    u_, s, vh = _svd_one(a)
    r = int(rank)
    inv_s = np.array([1 / s[i] if i < r else 0 for i in range(len(s))], dtype=object)
    return np.asarray(np.matmul(vh.T * inv_s.reshape(1, -1), u_.T), dtype=object)


def _pinv_vjp(cts: list[Any], ins: Sequence[Any], outs: Sequence[Any]) -> list[Any]:
    a, rank = ins
    x, g = outs[0], cts[0]
    m, n = shape_of(a)[-2:]
    ranks = rank if isinstance(rank, torch.Tensor) else rank.value
    out = ew(MUL, matmul(matmul(mT(x), g), mT(x)), -1.0)
    if not bool((ranks == m).all()):  # (I - A X) Gᵀ X Xᵀ vanishes when A X = I
        t = matmul(matmul(mT(g), x), mT(x))
        out = ew(ADD, out, ew(SUB, t, matmul(a, matmul(x, t))))
    if not bool((ranks == n).all()):  # Xᵀ X Gᵀ (I - X A) vanishes when X A = I
        t = matmul(matmul(mT(x), x), mT(g))
        out = ew(ADD, out, ew(SUB, t, matmul(matmul(t, x), a)))
    return [out, None]


def _pinv_err(errs: list[Any], ins: Sequence[Any], outs: Sequence[Any], u: float, ) -> list[Any]:
    a, rank = ins
    m, n = a.shape[-2:]
    g = gamma_n(max(m, n), u)
    if min(m, n) == 0:
        return [torch.zeros(outs[0].shape, dtype=F64)]
    s = torch.linalg.svdvals(a)
    kept = s.gather(-1, (rank.clamp(min=1) - 1).unsqueeze(-1))  # the smallest singular value kept
    inv2 = torch.where(rank.unsqueeze(-1) > 0, 1 / kept.pow(2), torch.zeros((), dtype=F64)).unsqueeze(-1)
    eta = sum_abs(errs[0], a) + g * fro_norm(a)
    return [(4 * inv2 * eta).expand(outs[0].shape) + g * outs[0].abs()]


register(Prim("pinv", _pinv_impl, lambda a, rank: obj_per_matrix(_pinv_impl, _pinv_one, (a, rank), (2, 0)),
              _pinv_vjp, _pinv_err))


def pinv(a: Any, rank: torch.Tensor) -> Any:
    """The pseudo-inverse keeping the `rank` (per matrix) largest singular values: a decision, a constant."""
    return bind("pinv", a, rank)
