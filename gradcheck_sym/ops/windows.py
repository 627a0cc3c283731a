"""Window index maps (im2col) that keep their structure: gathers and scatter-adds by strided views.

A convolution's or a pooling's ``take`` gathers every window element through a flat index map, and its
transpose, a ``segsum``, scatters the columns back with ``index_add_``.  At a tutorial's size (batch 256,
32 channels of 26x26, 3x3 windows: 42 million entries) that index costs more than the arithmetic: a pass to
find its padding, a ``bincount`` for the rounding bound, a copy of the columns into memory order, an
indexed scatter.  The map's structure is known where it is made (`conv.window_index`), so it is remembered
here beside it (by identity), and the primitives use it:

* gather: pad, then ``unfold`` per spatial dimension (views: the same entries in the same layout);
* scatter-add: one strided slice-add per window offset (9 for 3x3), then the padding cropped;
* how many entries a slot receives at most: per dimension, from the window's offsets alone.

Same values (a scatter's sum may be added in another order: in float64 within its rounding bound, which charges
the slot's number of terms; in the float32 recomputation that samples rounding noise, an ulp here and there); never
torch's backward.  A gather's windows are views of the input, or of its padded copy, which the recorder's memory
count (own storage only) leaves out: the size of the input, where the flat gather held a copy k times larger.
Anything else (object arrays, small maps, a map not made here) takes the flat index as before.
"""

from __future__ import annotations

import itertools
import math
import weakref
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["Window", "remember", "known", "gather", "scatter", "most", "touches_padding"]

# Below this many entries the flat index is as fast (one kernel, against one per window offset).
FAST_FROM = 1 << 15


@dataclass(frozen=True)
class Window:
    """The structure of a window index map of shape (N, C, *out, *k) over an input of `shape` (N, C, *spatial)."""

    shape: tuple[int, ...]
    k: tuple[int, ...]
    stride: tuple[int, ...]
    pads: tuple[tuple[int, int], ...]  # (left, right) per spatial dimension, the right one grown for ceil_mode
    dilation: tuple[int, ...]
    out: tuple[int, ...]  # windows per spatial dimension (after the crop of ceil_mode)

    @property
    def nd(self) -> int:
        return len(self.k)

    def flat_pad(self) -> list[int]:
        out: list[int] = []
        for lo, hi in reversed(self.pads):
            out += [lo, hi]
        return out

    def windows(self, t: torch.Tensor) -> torch.Tensor:
        """The windows of `t` (of `shape`, already padded): views, shape (N, C, *out, *k)."""
        nd = self.nd
        for i in range(nd):
            t = t.unfold(2 + i, (self.k[i] - 1) * self.dilation[i] + 1, self.stride[i])
        for i in range(nd):
            if self.dilation[i] > 1:
                t = t.unfold(2 + nd + i, 1, self.dilation[i]).squeeze(-1)
        return t[(slice(None), slice(None)) + tuple(slice(0, o) for o in self.out)]


_KNOWN: dict[int, tuple[Any, Window]] = {}


def remember(index: torch.Tensor, window: Window) -> None:
    """Record that `index` is the map of `window` (for as long as `index` lives)."""
    key = id(index)
    _KNOWN[key] = (weakref.ref(index, lambda _: _KNOWN.pop(key, None)), window)


def known(index: Any) -> Window | None:
    """The structure of `index` if it is a window map made by `conv.window_index`, else None."""
    hit = _KNOWN.get(id(index))
    if hit is None or hit[0]() is not index:
        return None
    return hit[1]


def touches_padding(w: Window) -> bool:
    """Whether some window reaches into the padding (the map then holds -1 entries)."""
    if math.prod(w.shape) == 0 or math.prod(w.out) == 0:
        return False
    for (lo, _), size, o, s, k, d in zip(w.pads, w.shape[2:], w.out, w.stride, w.k, w.dilation):
        if lo > 0 or (o - 1) * s + (k - 1) * d >= lo + size:
            return True
    return False


def most(w: Window) -> int:
    """How many window entries land on one input slot at most (the product over dimensions: they are independent)."""
    total = 1
    for (lo, _), size, o, s, k, d in zip(w.pads, w.shape[2:], w.out, w.stride, w.k, w.dilation):
        span = max(lo + size, (o - 1) * s + (k - 1) * d + 1)
        counts = torch.zeros(span, dtype=torch.long)
        for j in range(k):
            counts[j * d: j * d + s * (o - 1) + 1: s] += 1
        total *= int(counts[lo: lo + size].max()) if size > 0 else 0
    return max(total, 1)


def fast(x: Any, index: Any) -> Window | None:
    """The window of `index` when the structured path applies to `x` (a large enough torch tensor)."""
    if not isinstance(x, torch.Tensor) or index.numel() < FAST_FROM:
        return None
    return known(index)


def gather(x: torch.Tensor, w: Window) -> torch.Tensor:
    """``x.flatten()[index]`` (0 in the padding) for the map of `w`: strided views of the padded input."""
    t = x.reshape(w.shape)
    pad = w.flat_pad()
    if any(pad):
        t = F.pad(t, pad)
    return w.windows(t)


def scatter(x: torch.Tensor, w: Window, shape: tuple[int, ...]) -> torch.Tensor:
    """The scatter-add of `x` (one entry per map entry) into zeros of `shape` through the map of `w`."""
    lead = w.shape[:2]
    cols = x.reshape(lead + w.out + w.k)
    padded = tuple(size + lo + hi for size, (lo, hi) in zip(w.shape[2:], w.pads))
    # room for windows that ceil_mode lets start inside and end past the padding (cropped below)
    room = tuple(max(p, (o - 1) * s + (k - 1) * d + 1) for p, o, s, k, d in
                 zip(padded, w.out, w.stride, w.k, w.dilation))
    if room == tuple(w.shape[2:]):  # nothing to crop: summed in place into the result itself
        result = torch.zeros(shape, dtype=x.dtype)
        out = result.view(lead + room)
    else:
        out = torch.zeros(lead + room, dtype=x.dtype)
    for offset in itertools.product(*[range(k) for k in w.k]):
        where = tuple(slice(j * d, j * d + s * (o - 1) + 1, s)
                      for j, d, s, o in zip(offset, w.dilation, w.stride, w.out))
        out[(slice(None), slice(None)) + where] += cols[(Ellipsis,) + offset]
    if room == tuple(w.shape[2:]):
        return result
    crop = tuple(slice(lo, lo + size) for (lo, _), size in zip(w.pads, w.shape[2:]))
    result = out[(slice(None), slice(None)) + crop].reshape(shape)
    # a value owns its storage (the recorder counts what values hold by their own storage: a view counts 0)
    return result.clone() if result._base is not None else result
