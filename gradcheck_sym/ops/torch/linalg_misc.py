"""Linear algebra III: products and maps built from elementwise math, sums and index maps.

kron (a broadcast product, reshaped), trace (a diagonal's sum), cross products (cyclic
shifts), vecdot, Vandermonde matrices (integer powers, one sympy function each), pairwise
distances ``cdist``.  Nothing here needs a new primitive.

``cdist`` with p = 2 follows torch's choice of formula: when torch computes through matrix
products (``compute_mode='use_mm_for_euclid_dist'``, or more than 25 rows with the default
mode) the value is ``sqrt(max(|x|² + |y|² - 2 x·y, 0))`` — exact in real arithmetic, so the
same derivative where the distance is not 0, and its error rule shows the cancellation torch's
kernel suffers; otherwise the norm of the differences, with torch's subgradients at 0.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch

from .. import prims as P
from ..ew import ADD, MUL, SUB, EwFn, P as X, ew_fn
from .elementwise import table_fn
from .movement import probe
from .reduce import _root_fn, vector_norm
from .registry import Args, Ctx, Refused, rule

F64 = torch.float64


class _Handle:
    """A context whose `v` is one handle: to reuse `reduce.vector_norm` on a computed value."""

    def __init__(self, h: Any) -> None:
        self.h = h

    def v(self, _t: Any) -> Any:
        return self.h


@rule("kron", sig=lambda input, other, *, out=None: 0)
def _kron(c: Ctx, a: Args) -> Any:
    nd = max(a.input.dim(), a.other.dim())
    sa = (1,) * (nd - a.input.dim()) + tuple(a.input.shape)
    sb = (1,) * (nd - a.other.dim()) + tuple(a.other.shape)
    ha = P.reshape(c.v(a.input), tuple(x for s in sa for x in (s, 1)))
    hb = P.reshape(c.v(a.other), tuple(x for s in sb for x in (1, s)))
    return P.reshape(P.ew(MUL, ha, hb), tuple(c.out.shape))


@rule("trace", sig=lambda input: 0)
def _trace(c: Ctx, a: Args) -> Any:
    m, n = a.input.shape
    k = min(m, n)
    return P.sum_(P.take(c.v(a.input), torch.arange(k) * (n + 1)), (0,)) if k else c.const(c.out)


# Pure data movement: probed like the other views (the permutation matrix of lu_unpack is a fill).
rule("linalg_diagonal", sig=lambda A, *, offset=0, dim1=-2, dim2=-1: 0)(lambda c, a: probe(c))
rule("lu_unpack", sig=lambda LU_data, LU_pivots, unpack_data=True, unpack_pivots=True, *, out=None: 0)(
    lambda c, a: probe(c))


@rule("linalg_vecdot", sig=lambda x, y, *, dim=-1, out=None: 0)
def _vecdot(c: Ctx, a: Args) -> Any:
    prod = P.ew(MUL, c.v(a.x), c.v(a.y))
    shape = tuple(torch.broadcast_shapes(a.x.shape, a.y.shape))
    return P.reshape(P.sum_(P.broadcast_to(prod, shape), (int(a.dim),)), tuple(c.out.shape))


def _cross(c: Ctx, x: torch.Tensor, y: torch.Tensor, dim: int) -> Any:
    shape = tuple(torch.broadcast_shapes(x.shape, y.shape))
    hx, hy = P.broadcast_to(c.v(x), shape), P.broadcast_to(c.v(y), shape)
    codes = torch.arange(math.prod(shape)).reshape(shape)
    i1, i2 = codes.roll(-1, dim), codes.roll(-2, dim)  # element i takes i + 1, i + 2 (cyclically)
    # (x × y)_i = x_{i+1} y_{i+2} - x_{i+2} y_{i+1}
    return P.ew(SUB, P.ew(MUL, P.take(hx, i1), P.take(hy, i2)), P.ew(MUL, P.take(hx, i2), P.take(hy, i1)))


@rule("linalg_cross", sig=lambda input, other, *, dim=-1, out=None: 0)
def _linalg_cross(c: Ctx, a: Args) -> Any:
    return _cross(c, a.input, a.other, int(a.dim))


@rule("cross", sig=lambda input, other, dim=None, *, out=None: 0)
def _torch_cross(c: Ctx, a: Args) -> Any:
    dim = a.dim
    if dim is None:  # torch's deprecated default: the first dimension of size 3
        shape = tuple(torch.broadcast_shapes(a.input.shape, a.other.shape))
        dim = next((d for d, s in enumerate(shape) if s == 3), -1)
    return _cross(c, a.input, a.other, int(dim))


@functools.lru_cache(maxsize=32)
def _power(j: int) -> EwFn:
    return ew_fn(f"x^{j}", X[0] ** j, 1)


@rule("linalg_vander", sig=lambda x, *, N=None: 0)
def _vander(c: Ctx, a: Args) -> Any:
    shape = tuple(c.out.shape)
    n = shape[-1]
    h = P.reshape(c.v(a.x), shape[:-1])
    codes = torch.arange(math.prod(shape[:-1])).reshape(shape[:-1]) * n
    out: Any = None
    for j in range(n):
        col = P.segsum(P.ew(_power(j), h), codes + j, shape)
        out = col if out is None else P.ew(ADD, out, col)
    return out


_SQRT0 = _root_fn(2.0)
_RELU = table_fn("relu", 1)


def _mm_mode(compute_mode: Any, r1: int, r2: int) -> bool:
    if compute_mode in (None, "use_mm_for_euclid_dist_if_necessary"):
        return r1 > 25 or r2 > 25
    if compute_mode == "use_mm_for_euclid_dist":
        return True
    if compute_mode == "donot_use_mm_for_euclid_dist":
        return False
    raise Refused(f"cdist compute_mode={compute_mode!r} is not modelled")


@rule("cdist", sig=lambda x1, x2, p=2.0, compute_mode=None: 0)
def _cdist(c: Ctx, a: Args) -> Any:
    x1, x2 = a.x1, a.x2
    r1, r2, m = x1.shape[-2], x2.shape[-2], x1.shape[-1]
    batch = tuple(torch.broadcast_shapes(x1.shape[:-2], x2.shape[:-2]))
    h1 = P.broadcast_to(c.v(x1), batch + (r1, m))
    h2 = P.broadcast_to(c.v(x2), batch + (r2, m))
    if x1.numel() and x2.numel() and float(a.p) == 2.0 and _mm_mode(a.compute_mode, r1, r2):
        n1 = P.sum_(P.ew(MUL, h1, h1), (-1,), keepdim=True)  # (..., r1, 1)
        n2 = P.mT(P.sum_(P.ew(MUL, h2, h2), (-1,), keepdim=True))  # (..., 1, r2)
        sq = P.ew(SUB, P.ew(ADD, n1, n2), P.ew(MUL, P.matmul(h1, P.mT(h2)), 2.0))
        return P.reshape(P.ew(_SQRT0, P.ew(_RELU, sq)), tuple(c.out.shape))
    diff = P.ew(SUB, P.reshape(h1, batch + (r1, 1, m)), P.reshape(h2, batch + (1, r2, m)))
    user = (c.user_value(x1).expand(batch + (r1, m)).unsqueeze(-2)
            - c.user_value(x2).expand(batch + (r2, m)).unsqueeze(-3))
    dist = vector_norm(_Handle(diff), user, float(a.p), (len(batch) + 2,), False)  # type: ignore[arg-type]
    return P.reshape(dist, tuple(c.out.shape))
