"""Scans and differences: cumsum, cumprod, logcumsumexp, diff, gradient, trapezoid rules.

* cumsum is a primitive.  cumprod and logcumsumexp are prefix scans written as
  log2(n) rounds of a Hillis-Steele scan — each element combined with the one 2^k
  before it — with products (exact at zeros: no division by the input) and a stable
  ``logaddexp`` (no shift by a maximum that would underflow the small prefixes).
* diff and the trapezoid rules are differences of shifted copies (``take``).
* torch.gradient is linear along each dimension with coefficients set by the spacing
  alone: its matrix is the op applied (forward) to the identity, then a matmul.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import sympy
import torch

from .. import prims as P
from ..ew import MUL, SUB, WHERE, EwFn, P as X, ew_fn
from .groups import codes
from .reduce import concat
from .registry import Args, Ctx, Refused, rule

F64 = torch.float64
_MEAN2 = ew_fn("mean2", (X[0] + X[1]) / 2, 2)


@functools.lru_cache(maxsize=64)
def logsumexp_fn(n: int, rel: float = 0.0) -> EwFn:
    """log(exp(p0) + ... + exp(p{n-1})) with torch's overflow-safe kernel, and partials and a rounding form
    shifted by the largest argument (exp(p_i - max) / sum_j exp(p_j - max): no overflow anywhere).

    `rel`: a relative error torch's backward is known to have on the partials and their derivatives.
    """
    args = X[:n]
    top = sympy.Max(*args)
    total = sympy.Add(*[sympy.exp(a - top) for a in args])
    partials: list[Any] = [sympy.exp(a - top) / total for a in args]
    if rel:
        partials = [EwFn(f"d(logsumexp{n})/dp{i}", e, n, rel_err=rel, grad_rel_err=rel) for i, e in enumerate(partials)]
    return EwFn(f"logsumexp{n}", sympy.log(sympy.Add(*[sympy.exp(a) for a in args])), n,
                torch_impl=lambda *t: torch.logsumexp(torch.stack(torch.broadcast_tensors(*t)), 0),
                partials=partials, err_form=top + sympy.log(total))




def _dim(t: torch.Tensor, dim: Any) -> int:
    return int(dim) % max(t.dim(), 1)


def _shifted(shape: tuple[int, ...], dim: int, step: int) -> torch.Tensor:
    """For each position, the flat position `step` earlier along `dim` (-1 before the start)."""
    index = codes(shape)
    n = shape[dim]
    pos = torch.arange(n).reshape([n if d == dim else 1 for d in range(len(shape))])
    earlier = index - step * math.prod(shape[dim + 1:])
    return torch.where(pos >= step, earlier, torch.full((), -1, dtype=torch.long))


def _scan(h: Any, shape: tuple[int, ...], dim: int, combine: Any) -> Any:
    step = 1
    while step < shape[dim]:
        h = combine(h, _shifted(shape, dim, step))
        step *= 2
    return h


@rule("cumsum", sig=lambda input, dim, *, dtype=None, out=None: 0)
def _cumsum(c: Ctx, a: Args) -> Any:
    if a.input.dim() == 0:
        return c.v(a.input)
    return P.cumsum(c.v(a.input), _dim(a.input, a.dim))


@rule("cumprod", sig=lambda input, dim, *, dtype=None, out=None: 0)
def _cumprod(c: Ctx, a: Args) -> Any:
    t = a.input
    if t.dim() == 0 or t.numel() == 0:
        return c.v(t)
    shape = tuple(t.shape)

    def combine(h: Any, earlier: torch.Tensor) -> Any:
        before = P.add(P.take(h, earlier), (earlier < 0).to(F64))  # 1 before the start
        return P.mul(h, before)

    return _scan(c.v(t), shape, _dim(t, a.dim), combine)


@rule("logcumsumexp", sig=lambda input, dim, *, out=None: 0)
def _logcumsumexp(c: Ctx, a: Args) -> Any:
    t = a.input
    if t.dim() == 0 or t.numel() == 0:
        return c.v(t)
    shape = tuple(t.shape)
    # torch's backward works in the log domain (exp(logcumsumexp(log|g| - out) + x), positive and negative
    # parts apart): its exponents carry an absolute rounding of u (|x| + |out|), a relative error of the
    # gradient (and of its derivative) that the exact derivative does not have.  Declared on the scan's steps.
    scale = float(c.user_value(t).abs().max()) + float(c.out.detach().abs().max())
    rel = 4 * torch.finfo(c.out.dtype).eps / 2 * scale if math.isfinite(scale) and scale > 1 else 0.0
    step = logsumexp_fn(2, rel)

    def combine(h: Any, earlier: torch.Tensor) -> Any:
        return P.ew(WHERE, (earlier >= 0).to(F64), P.ew(step, h, P.take(h, earlier)), h)

    out = _scan(c.v(t), shape, _dim(t, a.dim), combine)
    # ... and every path of it, the one where out_k is x_k alone too (the first element of a scan, or an
    # element that dominates its prefix): there the derivative is 1 in the math, computed in the log domain
    return P.ew(_log_domain(rel), out) if rel else out


@functools.lru_cache(maxsize=64)
def _log_domain(rel: float) -> EwFn:
    """The identity, whose derivative 1 torch computes with a relative error `rel` (see logcumsumexp)."""
    one = EwFn("d(log-domain)/dp0", sympy.S.One, 1, rel_err=rel)
    return EwFn("log-domain", X[0], 1, partials=[one])


def differences(h: Any, dim: int) -> Any:
    """h[1:] - h[:-1] along `dim`."""
    shape = P.shape_of(h)
    index = codes(shape)
    n = shape[dim]
    return P.ew(SUB, P.take(h, index.narrow(dim, 1, n - 1)), P.take(h, index.narrow(dim, 0, n - 1)))


@rule("diff", sig=lambda input, n=1, dim=-1, prepend=None, append=None: 0)
def _diff(c: Ctx, a: Args) -> Any:
    dim = _dim(a.input, a.dim)
    parts = [c.v(t) for t in (a.prepend, a.input, a.append) if t is not None]
    h = concat(parts, dim) if len(parts) > 1 else parts[0]
    if int(a.n) == 0:  # torch returns the input, without prepend and append
        return c.v(a.input)
    for _ in range(int(a.n)):
        if P.shape_of(h)[dim] <= 1:  # nothing left to difference: an empty result
            return torch.zeros(tuple(c.out.shape), dtype=F64)
        h = differences(h, dim)
    return h


def _along(h: Any, matrix: torch.Tensor, dim: int, nd: int) -> Any:
    """matrix applied along `dim` of `h`: out[..., i, ...] = sum_j matrix[i, j] h[..., j, ...]."""
    perm = tuple(d for d in range(nd) if d != dim) + (dim,)
    moved = P.permute(h, perm)
    shape = P.shape_of(moved)
    flat = P.reshape(moved, (math.prod(shape[:-1]), shape[-1]))
    out = P.reshape(P.matmul(flat, matrix.t().contiguous()), shape)
    return P.permute(out, tuple(int(i) for i in torch.argsort(torch.tensor(perm))))


@rule("gradient", sig=lambda input, *, spacing=1, dim=None, edge_order=1: 0)
def _gradient(c: Ctx, a: Args) -> Any:
    t = a.input
    dims = list(range(t.dim())) if a.dim is None else [a.dim] if isinstance(a.dim, int) else list(a.dim)
    dims = [d % t.dim() for d in dims]
    spacing = a.spacing if a.spacing is not None else 1
    per_dim = list(spacing) if isinstance(spacing, (list, tuple)) else [spacing] * len(dims)
    if len(per_dim) == 1 and len(dims) > 1:
        per_dim = per_dim * len(dims)
    outs = []
    for d, s in zip(dims, per_dim):
        if isinstance(s, torch.Tensor) and c.is_traced(s):
            raise Refused("torch.gradient with traced coordinates in spacing is not modelled")
        n = t.shape[d]
        if isinstance(s, torch.Tensor) and s.dim() == 0:
            s = float(s)
        eye = torch.eye(n, dtype=F64)
        step = (s.to(F64),) if isinstance(s, torch.Tensor) else float(s)
        matrix = torch.gradient(eye, spacing=step, dim=0, edge_order=int(a.edge_order))[0]
        outs.append(_along(c.v(t), matrix, d, t.dim()))
    return tuple(outs)


def _trapezoids(c: Ctx, a: Args) -> tuple[Any, int]:
    """Each interval's area along the dim, and the dim."""
    y = a.y
    dim = _dim(y, a.dim)
    if y.shape[dim] < 2:
        return None, dim
    index = codes(y.shape)
    n = y.shape[dim]
    hy = c.v(y)
    avg = P.ew(_MEAN2, P.take(hy, index.narrow(dim, 1, n - 1)), P.take(hy, index.narrow(dim, 0, n - 1)))
    x = a.x
    if isinstance(x, torch.Tensor):
        if x.dim() == 1:
            width = P.reshape(differences(c.v(x), 0), [n - 1 if d == dim else 1 for d in range(y.dim())])
        else:
            width = differences(c.v(x), dim - y.dim() + x.dim())
        return P.ew(MUL, avg, width), dim
    dx = a.dx if a.dx is not None else (x if x is not None else 1)
    return P.ew(MUL, avg, float(dx)), dim


_TRAPZ_SIG = dict(sig=lambda y, x=None, *, dx=None, dim=-1: 0)


@rule("trapezoid", "trapz", **_TRAPZ_SIG)
def _trapezoid(c: Ctx, a: Args) -> Any:
    areas, dim = _trapezoids(c, a)
    if areas is None:
        return torch.zeros(tuple(c.out.shape), dtype=F64)
    return P.reshape(P.sum_(areas, (dim,)), tuple(c.out.shape))


@rule("cumulative_trapezoid", **_TRAPZ_SIG)
def _cumulative_trapezoid(c: Ctx, a: Args) -> Any:
    areas, dim = _trapezoids(c, a)
    if areas is None:
        return torch.zeros(tuple(c.out.shape), dtype=F64)
    return P.reshape(P.cumsum(areas, dim), tuple(c.out.shape))

