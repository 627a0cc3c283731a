"""Indexed writes that add: scatter_add, index_add, index_put/put with ``accumulate=True``.

A write that only copies (``x[i] = v``, index_put, put) is data movement (`movement.probe` finds its index map);
one that *adds* duplicates together is ``input + segsum(values, positions)``: the
flat output position each value goes to is computed once from the user's index
tensors (a gather, an index_select or advanced indexing of the output's element
codes), and the scatter-add's transpose — a gather — is ours.
"""

from __future__ import annotations

from typing import Any

import torch

from .. import prims as P
from .groups import codes
from .movement import probe
from .registry import Args, Ctx, Refused, rule

F64 = torch.float64


def add_at(c: Ctx, t: torch.Tensor, values: Any, positions: torch.Tensor, alpha: Any = 1) -> Any:
    """``t`` with `values` (a handle shaped like `positions`) added at the flat `positions` (-1: nowhere)."""
    shape = tuple(t.shape)
    if positions.numel() == 0 or not bool((positions >= 0).any()):
        return c.v(t)
    added = P.segsum(values, positions, shape)
    if alpha != 1:
        added = P.mul(added, c.v(alpha) if isinstance(alpha, torch.Tensor) else float(alpha))
    return P.add(c.v(t), added)


@rule("scatter_add", sig=lambda input, dim, index, src, *, out=None: 0)
def _scatter_add(c: Ctx, a: Args) -> Any:
    t = a.input
    if a.index.numel() == 0:
        return c.v(t)
    dim = int(a.dim) % max(t.dim(), 1)
    positions = torch.gather(codes(t.shape), dim, a.index) if t.dim() else torch.zeros_like(a.index)
    used = codes(a.src.shape)[tuple(slice(0, s) for s in a.index.shape)] if a.src.dim() else None
    values = P.take(c.v(a.src), used) if used is not None else P.reshape(c.v(a.src), tuple(positions.shape))
    return add_at(c, t, values, positions)


@rule("scatter", sig=lambda input, dim, index, src=None, value=None, *, reduce=None, out=None: 0)
def _scatter(c: Ctx, a: Args) -> Any:
    if a.reduce is None:
        return probe(c)
    if a.reduce == "add" and isinstance(a.src, torch.Tensor):
        return _scatter_add(c, a)
    raise Refused(f"argument reduce={a.reduce!r} of scatter is not modelled (torch does not differentiate it)")


@rule("index_add", sig=lambda input, dim, index, source, *, alpha=1, out=None: 0)
def _index_add(c: Ctx, a: Args) -> Any:
    t = a.input
    if t.dim() == 0:
        positions = torch.zeros(a.source.numel(), dtype=torch.long).reshape(a.source.shape)
    else:
        positions = codes(t.shape).index_select(int(a.dim) % t.dim(), a.index.reshape(-1))
    values = P.reshape(c.v(a.source), tuple(positions.shape))
    return add_at(c, t, values, positions, a.alpha)


def _advanced(t: torch.Tensor, indices: Any) -> torch.Tensor:
    """The flat positions ``t[indices]`` selects, with index_put's None meaning a whole dimension."""
    key = tuple(slice(None) if i is None else i for i in indices)
    return codes(t.shape)[key]


@rule("index_put", sig=lambda input, indices, values, accumulate=False: 0)
def _index_put(c: Ctx, a: Args) -> Any:
    if not a.accumulate:
        return probe(c)
    positions = _advanced(a.input, a.indices)
    return add_at(c, a.input, P.broadcast_to(c.v(a["values"]), tuple(positions.shape)), positions)


@rule("put", sig=lambda input, index, source, accumulate=False: 0)
def _put(c: Ctx, a: Args) -> Any:
    if not a.accumulate:
        return probe(c)
    n = a.input.numel()
    positions = torch.remainder(a.index, max(n, 1))  # torch.put accepts negative positions
    return add_at(c, a.input, P.reshape(c.v(a.source), tuple(positions.shape)), positions)


@rule("_unsafe_masked_index_put_accumulate", sig=lambda input, mask, indices, values: 0)
def _masked_index_put(c: Ctx, a: Args) -> Any:
    t = a.input
    # Positions the mask drops may hold anything: clamped to be usable, then dropped.
    safe = [None if i is None else i.clamp(-t.shape[d], t.shape[d] - 1) for d, i in enumerate(a.indices)]
    positions = _advanced(t, safe)
    mask = torch.broadcast_to(a.mask, positions.shape)
    positions = torch.where(mask, positions, torch.full((), -1, dtype=torch.long))
    return add_at(c, t, P.broadcast_to(c.v(a["values"]), tuple(positions.shape)), positions)
