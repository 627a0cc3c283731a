"""Reductions over groups chosen by an index: scatter_reduce, index_reduce, _segment_reduce.

Each output element reduces a *group*: its own "self" value when it takes part (the
input's element there with ``include_self``, or an element no index touches; the
``initial`` of a segment reduction) and the source elements the index sends there.
The groups are data — one flat output position per source element, computed once
from the user's index tensors — and the reduction is written with primitives:

* sum and mean: a scatter-add (``segsum``) of the members, divided by the group's size;
* prod: the members laid out in a dense (groups x largest group) matrix padded with
  ones, multiplied by `reduce.product`'s tree of elementwise products — exact at
  zeros, and to second order;
* amax and amin: the members equal to their group's extreme in the user's run share
  the gradient evenly (torch's convention); ties are declared kinks, since torch
  splits them differently in places (``include_self=False`` counts an untouched self
  that equals the result).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .. import prims as P
from ..ew import DIV
from .reduce import mark_kinks, product
from .registry import Args, Ctx, Refused, rule

F64 = torch.float64
_TIES = "tied extremes of a group share the gradient evenly in torch (a kink)"


def codes(shape: Any) -> torch.Tensor:
    """Each element's flat position, in a tensor of `shape`."""
    return torch.arange(math.prod(shape)).reshape(tuple(shape))


def group_reduce(kind: str, base: Any, base_user: torch.Tensor | None, self_in: torch.Tensor, vals: Any,
                 vals_user: torch.Tensor, tgt: torch.Tensor, shape: tuple[int, ...], empty: float = 0.0) -> Any:
    """Reduce each output element's group.

    Args:
        kind: "sum", "prod", "amax" or "amin".
        base: the self values (a handle of `shape`), or None.
        base_user: their values in the user's run (float64), for decisions.
        self_in: bool, `shape`: whether an element's self value belongs to its group.
        vals: the source values (a handle, flat).
        vals_user: their values in the user's run (float64, flat).
        tgt: for each source value, the flat output position it goes to.
        shape: the output's shape.
        empty: the value of a group without members.
    """
    n_out = math.prod(shape)
    self_flat = self_in.reshape(-1)
    counts = torch.bincount(tgt, minlength=n_out)[:n_out] if tgt.numel() else torch.zeros(n_out, dtype=torch.long)
    size = counts + self_flat.to(torch.long)
    if kind == "sum":
        out = P.segsum(vals, tgt, shape) if tgt.numel() else torch.zeros(shape, dtype=F64)
        if base is not None and bool(self_flat.any()):
            out = P.add(out, P.mul(base, self_in.to(F64)))
    elif kind == "prod":
        out = _product(base, self_flat, vals, tgt, counts, shape)
    elif kind in ("amax", "amin"):
        out = _extreme(kind, base, base_user, self_flat, vals, vals_user, tgt, shape)
    else:
        raise Refused(f"reduce={kind!r} is not modelled")
    lonely = (size == 0).reshape(shape)
    # a group without members is `empty` (the product's padding has made it 1, the others 0)
    shift = empty - (1.0 if kind == "prod" else 0.0)
    if bool(lonely.any()) and shift != 0:
        out = P.add(out, torch.where(lonely, shift, 0.0).to(F64))
    return out


def _product(base: Any, self_flat: torch.Tensor, vals: Any, tgt: torch.Tensor, counts: torch.Tensor,
             shape: tuple[int, ...]) -> Any:
    n_out, n = math.prod(shape), tgt.numel()
    width = max(int((counts + self_flat.to(torch.long)).max()) if n_out else 1, 1)
    order = torch.argsort(tgt, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty(n, dtype=torch.long)
    rank[order] = torch.arange(n) - starts[tgt[order]]
    column = rank + self_flat[tgt].to(torch.long)  # the self value, when a member, is column 0
    from_vals = torch.full((n_out, width), -1, dtype=torch.long)
    from_vals[tgt, column] = torch.arange(n)
    dense = P.take(vals, from_vals) if n else torch.zeros((n_out, width), dtype=F64)
    from_base = torch.full((n_out, width), -1, dtype=torch.long)
    if base is not None:
        from_base[:, 0] = torch.where(self_flat, torch.arange(n_out), torch.full((), -1, dtype=torch.long))
        if bool((from_base >= 0).any()):
            dense = P.add(dense, P.take(P.reshape(base, (n_out,)), from_base))
    pad = ((from_vals < 0) & (from_base < 0)).to(F64)  # padding multiplies by 1
    dense = P.add(dense, pad)
    return P.reshape(product(dense, 1), shape)


def _extreme(kind: str, base: Any, base_user: Any, self_flat: torch.Tensor, vals: Any, vals_user: torch.Tensor,
             tgt: torch.Tensor, shape: tuple[int, ...]) -> Any:
    n_out = math.prod(shape)
    worst = -math.inf if kind == "amax" else math.inf
    ext = torch.full((n_out,), worst, dtype=F64)
    if tgt.numel():
        ext = ext.scatter_reduce(0, tgt, vals_user, kind, include_self=True)
    base_flat = base_user.reshape(-1) if base_user is not None else None
    if base is not None:
        pick = torch.maximum if kind == "amax" else torch.minimum
        ext = torch.where(self_flat, pick(ext, base_flat), ext)
    win_v = (vals_user == ext[tgt]).to(F64)
    win_b = (self_flat & (base_flat == ext)).to(F64) if base is not None else torch.zeros(n_out, dtype=F64)
    ties = torch.zeros(n_out, dtype=F64).index_add(0, tgt, win_v) + win_b
    share = 1 / ties.clamp(min=1)
    tied = ties > 1
    out = torch.zeros(shape, dtype=F64)
    if tgt.numel():
        v = mark_kinks(vals, (win_v > 0) & tied[tgt], _TIES)
        out = P.segsum(P.mul(v, win_v * share[tgt]), tgt, shape)
    if base is not None and bool((win_b > 0).any()):
        b = mark_kinks(base, ((win_b > 0) & tied).reshape(shape), _TIES)
        out = P.add(out, P.mul(b, (win_b * share).reshape(shape)))
    return out


def _mean(total: Any, size: torch.Tensor, shape: tuple[int, ...]) -> Any:
    return P.ew(DIV, total, size.clamp(min=1).to(F64).reshape(shape))


def _self_reduce(c: Ctx, a: Args, tgt: torch.Tensor, source: torch.Tensor, src_index: torch.Tensor | None) -> Any:
    """scatter_reduce / index_reduce: the input's own values join their group (include_self) or stay
    where no index points."""
    t = a.input
    shape = tuple(t.shape)
    tgt = tgt.reshape(-1)
    flat_src = c.v(source)
    src_user = c.user_value(source).to(F64)
    if src_index is None:
        vals, vals_user = P.reshape(flat_src, (source.numel(),)), src_user.reshape(-1)
    else:
        vals, vals_user = P.take(flat_src, src_index.reshape(-1)), src_user.reshape(-1)[src_index.reshape(-1)]
    n_out = t.numel()
    touched = torch.zeros(n_out, dtype=torch.bool)
    touched[tgt] = True
    self_in = (touched.logical_not() | bool(a.include_self)).reshape(shape)
    kind = "sum" if a.reduce == "mean" else a.reduce
    kind = {"multiply": "prod", "add": "sum"}.get(kind, kind)
    base_user = c.user_value(t).to(F64)
    out = group_reduce(kind, c.v(t), base_user, self_in, vals, vals_user, tgt, shape)
    if a.reduce == "mean":
        size = torch.bincount(tgt, minlength=n_out)[:n_out] + self_in.reshape(-1).to(torch.long)
        out = _mean(out, size, shape)
    return out


@rule("scatter_reduce", sig=lambda input, dim, index, src, reduce, *, include_self=True, out=None: 0)
def _scatter_reduce(c: Ctx, a: Args) -> Any:
    shape = tuple(a.input.shape)
    if a.index.numel() == 0:
        return c.v(a.input)
    dim = int(a.dim) % max(a.input.dim(), 1)
    tgt = torch.gather(codes(shape), dim, a.index) if a.input.dim() else torch.zeros_like(a.index)
    src_index = codes(a.src.shape)[tuple(slice(0, s) for s in a.index.shape)] if a.src.dim() else None
    return _self_reduce(c, a, tgt, a.src, src_index)


@rule("index_reduce", sig=lambda input, dim, index, source, reduce, *, include_self=True, out=None: 0)
def _index_reduce(c: Ctx, a: Args) -> Any:
    shape = tuple(a.input.shape)
    if a.input.dim() == 0:
        tgt = torch.zeros(a.source.numel(), dtype=torch.long)
    else:
        tgt = codes(shape).index_select(int(a.dim) % a.input.dim(), a.index.reshape(-1))
    return _self_reduce(c, a, tgt, a.source, None)


_EMPTY = {"sum": 0.0, "prod": 1.0, "max": -math.inf, "min": math.inf, "mean": math.nan}


@rule("segment_reduce", "_segment_reduce", sig=lambda data, reduce, *, lengths=None, indices=None, offsets=None,
      axis=0, unsafe=False, initial=None: 0, refuse=("indices",))
def _segment_reduce(c: Ctx, a: Args) -> Any:
    data = a.data
    axis = int(a.axis) % max(data.dim(), 1)
    if a.offsets is not None:
        offsets = a.offsets.to(torch.long)
    elif a.lengths is not None:
        lengths = a.lengths.to(torch.long)
        offsets = torch.cat([torch.zeros(lengths.shape[:-1] + (1,), dtype=torch.long), lengths.cumsum(-1)], -1)
    else:
        raise Refused("segment_reduce without lengths or offsets is not modelled")
    lead, size = tuple(data.shape[:axis]), data.shape[axis]
    rest = tuple(data.shape[axis + 1:])
    n_seg = offsets.shape[-1] - 1
    out_shape = lead + (n_seg,) + rest
    pos = torch.arange(size).expand(lead + (size,)).contiguous()
    seg = torch.searchsorted(offsets[..., 1:].contiguous(), pos, right=True)
    inside = seg < n_seg
    seg = seg.clamp(max=max(n_seg - 1, 0)).reshape(lead + (size,) + (1,) * len(rest)).expand(tuple(data.shape))
    inside = inside.reshape(lead + (size,) + (1,) * len(rest)).expand(tuple(data.shape)).reshape(-1)
    tgt = torch.gather(codes(out_shape), axis, seg).reshape(-1)
    keep = torch.nonzero(inside).reshape(-1)
    vals = P.take(c.v(data), keep)
    vals_user = c.user_value(data).to(F64).reshape(-1)[keep]
    tgt = tgt[keep]
    kind = {"max": "amax", "min": "amin", "mean": "sum"}.get(a.reduce, a.reduce)
    has_initial = a.initial is not None
    base = torch.full(out_shape, float(a.initial), dtype=F64) if has_initial else None
    self_in = torch.full(out_shape, has_initial)
    out = group_reduce(kind, base, base, self_in, vals, vals_user, tgt, out_shape, _EMPTY[a.reduce])
    if a.reduce == "mean":
        return _mean(out, torch.bincount(tgt, minlength=math.prod(out_shape)), out_shape)
    return out
