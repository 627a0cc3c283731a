"""Embeddings: rows of the weight picked by integer indices (a ``take``), and bags of them reduced.

``embedding`` is a gather of rows; torch sends no gradient to the ``padding_idx`` row
(documented), so there the looked-up value is a constant.  ``embedding_bag`` gathers
the rows of every bag entry (times ``per_sample_weights``), drops the padding entries
and reduces each bag: a scatter-add (``segsum``) for sum, divided by the bag's size for
mean; for max, each (bag, feature) takes the row torch's own run chose (its
``max_indices``), so ties are resolved as torch resolved them.  Empty bags are 0.
"""

from __future__ import annotations

from typing import Any

import torch

from .. import prims as P
from ..ew import ADD, DIV, MUL
from .registry import Args, Ctx, Refused, rule

F64 = torch.float64
_NONE = torch.full((), -1, dtype=torch.long)


@rule("embedding", sig=lambda input, weight, padding_idx=None, max_norm=None, norm_type=2.0,
      scale_grad_by_freq=False, sparse=False: 0, refuse=("max_norm", "scale_grad_by_freq"))
def _embedding(c: Ctx, a: Args) -> Any:
    idx, w = a.input, a.weight
    dim = w.shape[1]
    index = idx.unsqueeze(-1) * dim + torch.arange(dim)
    if a.padding_idx is None:
        return P.take(c.v(w), index)
    pad = int(a.padding_idx) % w.shape[0]
    # torch does not send gradients to the padding row: there it is a constant (documented).
    is_pad = (idx == pad).unsqueeze(-1).expand(index.shape)
    live = P.take(c.v(w), torch.where(is_pad, _NONE, index))
    const = torch.where(is_pad, w.detach().to(F64).reshape(-1)[index], torch.zeros((), dtype=F64))
    return P.ew(ADD, live, const)


def _bags(idx: torch.Tensor, offsets: Any, include_last: bool) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(flat indices, the bag of each, number of bags) for 1-D indices with offsets or 2-D fixed-size bags."""
    if idx.dim() == 2:
        n, k = idx.shape
        return idx.reshape(-1), torch.arange(n).repeat_interleave(k), n
    starts = offsets.to(torch.long)
    nbags = len(starts) - 1 if include_last else len(starts)
    bag = torch.searchsorted(starts, torch.arange(len(idx)), right=True) - 1
    # with include_last_offset, entries at or past the last offset belong to no bag
    bag = torch.where(bag < nbags, bag, _NONE)
    return idx, bag, nbags


@rule("embedding_bag", sig=lambda input, weight, offsets=None, max_norm=None, norm_type=2, scale_grad_by_freq=False,
      mode="mean", sparse=False, per_sample_weights=None, include_last_offset=False, padding_idx=None: 0,
      refuse=("max_norm", "scale_grad_by_freq"))
def _embedding_bag(c: Ctx, a: Args) -> Any:
    w = a.weight
    if w.dtype == torch.long and a.input.is_floating_point():
        raise Refused("embedding_bag(weight, input) in the old argument order is not modelled")
    rows, dim = w.shape
    idx, bag, nbags = _bags(a.input, a.offsets, bool(a.include_last_offset))
    live = bag >= 0
    if a.padding_idx is not None:
        live &= idx != int(a.padding_idx) % rows
    cols = torch.arange(dim)
    if a.mode == "max":
        # the row torch's run chose for each (bag, feature); none for empty bags
        pad = -1 if a.padding_idx is None else int(a.padding_idx) % rows
        # NB: aten._embedding_bag on contiguous indices: torch.embedding_bag's max_indices output can name another
        # row than the one its values came from, and the aten op misreads non-contiguous indices (torch 2.13, CPU)
        out = torch.ops.aten._embedding_bag(w.detach(), a.input.reshape(-1).contiguous(),
                                            _offsets(a.input, a.offsets).contiguous(), False, 2, False, None,
                                            bool(a.include_last_offset) and a.input.dim() == 1, pad)
        size, chosen = out[2], out[3]
        index = torch.where((size > 0).unsqueeze(1), chosen * dim + cols, _NONE)
        return P.take(c.v(w), index)
    picked = P.take(c.v(w), torch.where(live.unsqueeze(1), idx.unsqueeze(1) * dim + cols, _NONE))  # (T, D)
    if a.per_sample_weights is not None:
        picked = P.ew(MUL, picked, P.reshape(c.v(a.per_sample_weights), (len(idx), 1)))
    target = torch.where(live.unsqueeze(1), bag.unsqueeze(1) * dim + cols, _NONE)
    sums = P.segsum(picked, target, (nbags, dim))
    if a.mode == "sum":
        return sums
    if a.mode != "mean":
        raise Refused(f"embedding_bag(mode={a.mode!r}) is not modelled")
    counts = torch.zeros(nbags, dtype=F64).index_add_(0, bag[live], torch.ones(int(live.sum()), dtype=F64))
    return P.ew(DIV, sums, counts.clamp(min=1).unsqueeze(1))


def _offsets(idx: torch.Tensor, offsets: Any) -> torch.Tensor:
    """The offsets torch's embedding_bag takes: those given, or one bag per row of 2-D indices."""
    if idx.dim() == 2:
        return torch.arange(0, idx.numel(), idx.shape[1], dtype=torch.long)
    return offsets
