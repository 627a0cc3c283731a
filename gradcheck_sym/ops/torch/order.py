"""Order statistics: sort, topk, kthvalue, median, mode, cummax/cummin, msort, quantile.

Where torch returns the indices it chose (sort, topk, kthvalue, median and mode along
a dim, cummax), the values are a gather by those indices: torch's backward routes the
gradient exactly there.  Where it does not (msort, quantile), the elements at the
selected ranks are found by sorting the user's own values; tied elements share the
gradient evenly and are declared kinks — torch routes it through whichever element its
sort put first, which is a convention, not a derivative.  ``median()`` of a whole
tensor splits ties evenly, as torch documents.
"""

from __future__ import annotations

from typing import Any

import torch

from .. import prims as P
from ..ew import MUL, SUB, P as X, ew_fn
from .groups import codes
from .reduce import gather_along, mark_kinks, weighted_sum
from .registry import Args, Ctx, Refused, rule

F64 = torch.float64
_TIES = "torch routes the gradient of tied values through the one its sort put first (a kink)"
_LERP = ew_fn("lerp", X[0] + X[2] * (X[1] - X[0]), 3)
_DENSE_LIMIT = 2**24  # weights of a tied selection, laid out densely


def _dim(t: torch.Tensor, dim: Any) -> int:
    return int(dim) % max(t.dim(), 1)


@rule("sort", sig=lambda input, dim=-1, descending=False, stable=False, *, out=None: 0)
def _sort(c: Ctx, a: Args) -> Any:
    return (gather_along(c, a.input, _dim(a.input, a.dim), c.out[1], True), None)


@rule("topk", sig=lambda input, k, dim=-1, largest=True, sorted=True, *, out=None: 0)
def _topk(c: Ctx, a: Args) -> Any:
    return (gather_along(c, a.input, _dim(a.input, a.dim), c.out[1], True), None)


@rule("kthvalue", sig=lambda input, k, dim=-1, keepdim=False, *, out=None: 0)
def _kthvalue(c: Ctx, a: Args) -> Any:
    return (gather_along(c, a.input, _dim(a.input, a.dim), c.out[1], bool(a.keepdim)), None)


@rule("mode", sig=lambda input, dim=-1, keepdim=False, *, out=None: 0)
def _mode(c: Ctx, a: Args) -> Any:
    return (gather_along(c, a.input, _dim(a.input, a.dim), c.out[1], bool(a.keepdim)), None)


@rule("cummax", "cummin", sig=lambda input, dim, *, out=None: 0)
def _cummax(c: Ctx, a: Args) -> Any:
    return (gather_along(c, a.input, _dim(a.input, a.dim), c.out[1], True), None)


@rule("median", "nanmedian", sig=lambda input, dim=None, keepdim=False, *, out=None: 0)
def _median(c: Ctx, a: Args) -> Any:
    if a.dim is None:  # ties split evenly (torch's documented convention)
        t = c.user_value(a.input)
        mask = (t == c.out.detach().to(F64)).to(F64)
        w = mask / mask.sum().clamp(min=1)
        return P.reshape(weighted_sum(c, c.v(a.input), w, tuple(range(t.dim())), False), ())
    return (gather_along(c, a.input, _dim(a.input, a.dim), c.out[1], bool(a.keepdim)), None)


def ranked(h: Any, user: torch.Tensor, dim: int, ranks: torch.Tensor) -> Any:
    """The elements of rank `ranks` (ascending, NaN last) along `dim`, found from the user's values.

    Args:
        h: the tensor's handle.
        user: its values in the user's run (float64).
        dim: the dimension ranked.
        ranks: long, the other dims (in order) then Q ranks per row.

    Returns:
        A handle shaped like `ranks`.
    """
    user = user.reshape(1) if user.dim() == 0 else user
    h = P.reshape(h, (1,)) if not P.shape_of(h) else h
    moved = user.movedim(dim, -1)
    where = codes(user.shape).movedim(dim, -1)
    ordered, order = torch.sort(moved, dim=-1, stable=True)
    picked = ordered.gather(-1, ranks)
    same = moved.unsqueeze(-2) == picked.unsqueeze(-1)  # (..., Q, n): the elements equal to each pick
    ties = same.sum(-1)
    if not bool((ties > 1).any()):
        return P.take(h, where.gather(-1, order.gather(-1, ranks)))
    if same.numel() > _DENSE_LIMIT:
        raise Refused("tied values in a large order statistic are not modelled")
    # one-hot rows where the pick is unique (also NaN, equal to nothing), an even share among ties
    alone = torch.zeros_like(same).scatter(-1, order.gather(-1, ranks).unsqueeze(-1), True)
    weights = torch.where((ties > 1).unsqueeze(-1), same, alone).to(F64)
    weights = weights / weights.sum(-1, keepdim=True)
    member = (same & (ties > 1).unsqueeze(-1)).any(-2).movedim(-1, dim)
    rows = P.take(mark_kinks(h, member.reshape(user.shape), _TIES), where)
    out = P.matmul(weights, P.reshape(rows, P.shape_of(rows) + (1,)))
    return P.reshape(out, tuple(ranks.shape))


@rule("msort", sig=lambda input, *, out=None: 0)
def _msort(c: Ctx, a: Args) -> Any:
    t = a.input
    if t.dim() == 0:
        return c.v(t)
    n = t.shape[0]
    ranks = torch.arange(n).expand(tuple(t.shape[1:]) + (n,)).contiguous()
    out = ranked(c.v(t), c.user_value(t), 0, ranks)
    return P.permute(out, (t.dim() - 1,) + tuple(range(t.dim() - 1)))


@rule("quantile", "nanquantile", sig=lambda input, q, dim=None, keepdim=False, *, interpolation="linear",
      out=None: 0)
def _quantile(c: Ctx, a: Args) -> Any:
    t = a.input
    h, user = c.v(t), c.user_value(t)
    if a.dim is None or t.dim() == 0:
        h, user, dim = P.reshape(h, (t.numel(),)), user.reshape(-1), 0
    else:
        dim = _dim(t, a.dim)
    moved = user.movedim(dim, -1)
    n = moved.shape[-1]
    nan = torch.isnan(moved)
    q_user = torch.as_tensor(c.user_value(a.q), dtype=F64).reshape(-1)
    k = (~nan).sum(-1) if c.name == "nanquantile" else torch.full(moved.shape[:-1], n)
    # the ranks in the user's dtype: they decide which elements are picked, as in torch
    ranks = q_user.to(t.dtype) * (k.to(t.dtype).unsqueeze(-1) - 1)
    ranks = ranks.clamp(min=0).to(F64)
    kind = a.interpolation
    if kind == "lower":
        ranks = ranks.floor()
    elif kind == "higher":
        ranks = ranks.ceil()
    elif kind == "nearest":
        ranks = ranks.round()
    elif kind not in ("linear", "midpoint"):
        raise Refused(f"argument interpolation={kind!r} of {c.name} is not modelled")
    below = ranks.floor().to(torch.long).clamp(max=n - 1)
    value = ranked(h, user, dim, below)
    if kind in ("linear", "midpoint"):
        above = ranks.ceil().to(torch.long).clamp(max=n - 1)
        upper = ranked(h, user, dim, above)
        if kind == "midpoint":
            w: Any = 0.5
        elif isinstance(a.q, torch.Tensor) and c.is_traced(a.q):  # d/dq: (k - 1) (above - below)
            scale = (k - 1).to(F64).unsqueeze(-1)
            w = P.ew(SUB, P.ew(MUL, P.reshape(c.v(a.q), (q_user.numel(),)), scale), below.to(F64))
        else:
            w = q_user * (k - 1).to(F64).unsqueeze(-1) - below.to(F64)
        value = P.ew(_LERP, value, upper, w)
    undefined = torch.isnan(c.out.detach())  # a NaN in the row (quantile), or no number at all (nanquantile)
    if isinstance(a.q, torch.Tensor) and a.q.dim() > 0:  # the q dimension comes first
        value = P.permute(value, (len(P.shape_of(value)) - 1,) + tuple(range(len(P.shape_of(value)) - 1)))
    value = P.reshape(value, tuple(c.out.shape))
    if bool(undefined.any()):
        value = P.add(value, torch.where(undefined, float("nan"), 0.0).to(F64))
    return value
