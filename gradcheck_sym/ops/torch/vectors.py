"""Vector geometry: normalize, cosine_similarity, pairwise_distance, pdist — norms and elementwise math.

Each is written as torch computes it (ATen's formulas), on top of `reduce.vector_norm`:

* ``normalize(x) = x / clamp_min(‖x‖_p, eps)`` (the clamp passes the gradient where the norm
  is at least eps, as torch's clamp_min does);
* ``cosine_similarity = Σ (x1 / max(‖x1‖, eps)) · (x2 / max(‖x2‖, eps))`` — torch clamps the
  norms under no_grad, so where a norm is below eps its gradient still has the norm's
  term: the reference keeps the math (a constant eps there);
* ``pairwise_distance = ‖x1 - x2 + eps‖_p`` over the last dim;
* ``pdist`` = the norms of the row differences ``x_i - x_j``, i < j, in row-major order.

Decisions (which element is the max of an inf-norm, where a clamp is active) come from
the user's values.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .. import prims as P
from ..ew import DIV, MUL, SUB, P as X, ew_fn
from .elementwise import num, table_fn
from .reduce import dims_of, vector_norm
from .registry import Args, Ctx, rule

F64 = torch.float64


class _Of:
    """A context for `vector_norm` whose tensor's handle is `h` (a value computed inside a rule)."""

    def __init__(self, h: Any) -> None:
        self.h = h

    def v(self, _t: Any) -> Any:
        return self.h


def norm_of(h: Any, t: torch.Tensor, p: float, dims: tuple[int, ...], keepdim: bool) -> Any:
    """‖h‖_p over `dims`; `t` is its value in the user's run (for decisions: ties of the inf-norm)."""
    if p == 0:  # a count of the non-zero elements: piecewise constant, derivative 0
        return (t != 0).to(F64).sum(dim=dims, keepdim=keepdim) if dims else (t != 0).to(F64)
    return vector_norm(_Of(h), t, p, dims, keepdim)  # type: ignore[arg-type]


def clamp_min(h: Any, user: torch.Tensor, eps: float) -> Any:
    """max(h, eps) with torch's clamp gradient (1 where h >= eps), the branch from the user's values."""
    return P.ew(table_fn("clamp", 3).branched, h, float(eps), math.inf, user.to(F64), float(eps), math.inf)


@rule("normalize", sig=lambda input, p=2.0, dim=1, eps=1e-12, out=None: 0, refuse=("out",))
def _normalize(c: Ctx, a: Args) -> Any:
    t = a.input
    dims = dims_of(a.dim, t.dim())
    user = torch.linalg.vector_norm(t.detach(), a.p, dims, keepdim=True) if t.dim() else t.detach().abs()
    n = norm_of(c.v(t), t.detach(), float(a.p), dims, True)
    return P.ew(DIV, c.v(t), clamp_min(n, user, a.eps))


@rule("_weight_norm", sig=lambda v, g, dim=0: 0)
def _weight_norm(c: Ctx, a: Args) -> Any:
    # nn.utils.parametrizations.weight_norm: v * (g / ||v||), the norm over every dimension but `dim` (all of them
    # for dim=-1); torch's norm_except_dim has no eps
    v = a.v
    keep = None if a.dim == -1 or v.dim() == 0 else a.dim % v.dim()
    dims = tuple(i for i in range(v.dim()) if i != keep)
    n = norm_of(c.v(v), v.detach(), 2.0, dims, True) if dims else P.ew(table_fn("abs", 1), c.v(v))
    return P.ew(MUL, c.v(v), P.ew(DIV, c.v(a.g), n))


@rule("cosine_similarity", sig=lambda x1, x2, dim=1, eps=1e-8: 0)
def _cosine_similarity(c: Ctx, a: Args) -> Any:
    shape = tuple(torch.broadcast_shapes(a.x1.shape, a.x2.shape))
    dims = dims_of(a.dim, len(shape))
    total = None
    for t in (a.x1, a.x2):
        h = P.broadcast_to(c.v(t), shape)
        u = t.detach().expand(shape)
        user = torch.linalg.vector_norm(u, 2, dims, keepdim=True) if shape else u.abs()
        unit = P.ew(DIV, h, clamp_min(norm_of(h, u, 2.0, dims, True), user, a.eps))
        total = unit if total is None else P.ew(MUL, total, unit)
    return P.reshape(P.sum_(total, dims), tuple(c.out.shape))


@rule("pairwise_distance", sig=lambda x1, x2, p=2.0, eps=1e-6, keepdim=False: 0)
def _pairwise_distance(c: Ctx, a: Args) -> Any:
    shape = tuple(torch.broadcast_shapes(a.x1.shape, a.x2.shape))
    shifted = ew_fn(f"sub+{a.eps}", X[0] - X[1] + num(a.eps), 2)
    h = P.broadcast_to(P.ew(shifted, c.v(a.x1), c.v(a.x2)), shape)
    user = (a.x1.detach() - a.x2.detach() + a.eps).expand(shape)
    dims = (len(shape) - 1,) if shape else ()
    return P.reshape(norm_of(h, user, float(a.p), dims, bool(a.keepdim)), tuple(c.out.shape))


@rule("pdist", sig=lambda input, p=2: 0)
def _pdist(c: Ctx, a: Args) -> Any:
    n, m = a.input.shape
    i, j = torch.triu_indices(n, n, offset=1)
    cols = torch.arange(m)
    rows_i = (i.unsqueeze(1) * m + cols).reshape(-1, m)
    rows_j = (j.unsqueeze(1) * m + cols).reshape(-1, m)
    h = c.v(a.input)
    diff = P.ew(SUB, P.take(h, rows_i), P.take(h, rows_j))
    t = a.input.detach()
    user = t[i] - t[j]
    return P.reshape(norm_of(diff, user, float(a.p), (1,), False), tuple(c.out.shape))
