"""Convolutions and their relatives.  Evenly padded convolutions and every transposed convolution are the
primitives of `ops.conv_prims`; the rest (uneven padding, ``fold``) as im2col: a window ``take``, then a batched
``matmul`` per group.

The window index map (`window_index`) is computed once from the shapes: each
output position's window of flat input positions, padding as -1 (a zero), stride
and dilation by unfolding an integer code tensor.  Then

* ``conv{1,2,3}d`` (uneven padding, or an empty operand) = take the windows, matmul with the weight per group;
* ``conv_transpose{1,2,3}d`` (an empty operand) = its transpose in the input: matmul, then scatter-add
  (``segsum``) of the columns into the output windows, and a crop of the padding;
* ``fold`` (col2im) = scatter-add of the columns into the windows (``unfold``, im2col,
  is pure data movement: the generic probe of `movement` handles it).

Their adjoints are the primitives' transposes (scatter-add, matmuls), never torch's
convolution backward.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from .. import conv_prims as CP
from .. import prims as P
from .. import windows
from ..ew import ADD, EwFn
from .registry import Args, Ctx, rule

__all__ = ["window_index", "ntuple", "batched", "as_batched"]


def ntuple(v: Any, n: int) -> tuple[int, ...]:
    """An int or a sequence (of length 1 or n) as n ints, as torch's ``_pair``/``_triple`` read them."""
    if isinstance(v, (list, tuple, torch.Size)):
        return tuple(int(e) for e in v) if len(v) == n else tuple(int(v[0]) for _ in range(n))
    return (int(v),) * n


def window_index(shape: Sequence[int], k: Sequence[int], stride: Sequence[int], pads: Sequence[tuple[int, int]],
                 dilation: Sequence[int], out_sizes: Sequence[int] | None = None) -> torch.Tensor:
    """Flat positions of each window element: shape (N, C, *out, *k); -1 in the padding.

    `shape` is (N, C, *spatial).  With `out_sizes` (ceil_mode), the right padding grows so that
    exactly that many windows fit.
    """
    nd = len(k)
    shape = tuple(int(s) for s in shape)
    pads = [(int(lo), int(hi)) for lo, hi in pads]
    if out_sizes is not None:
        for i in range(nd):
            span = (k[i] - 1) * dilation[i] + 1
            need = (out_sizes[i] - 1) * stride[i] + span
            have = shape[2 + i] + pads[i][0] + pads[i][1]
            if need > have:
                pads[i] = (pads[i][0], pads[i][1] + need - have)
    out = tuple(int(out_sizes[i]) if out_sizes is not None else
                (shape[2 + i] + pads[i][0] + pads[i][1] - (k[i] - 1) * dilation[i] - 1) // stride[i] + 1
                for i in range(nd))
    # the map keeps its structure, for the gathers and scatter-adds through it (`ops.windows`)
    w = windows.Window(shape, tuple(int(e) for e in k), tuple(int(e) for e in stride), tuple(pads),
                       tuple(int(e) for e in dilation), out)
    codes = torch.arange(math.prod(shape), dtype=torch.long).reshape(shape)
    pad = w.flat_pad()
    t = w.windows(F.pad(codes, pad, value=-1) if any(pad) else codes).contiguous()
    windows.remember(t, w)
    return t


def batched(t: torch.Tensor, nd: int) -> bool:
    """Whether `t` has its batch dimension: (N, C, *spatial) rather than (C, *spatial)."""
    return t.dim() == nd + 2


def as_batched(c: Ctx, t: torch.Tensor, nd: int) -> tuple[Any, tuple[int, ...]]:
    """(handle, shape) of `t` with a batch dimension of 1 added where it has none."""
    if batched(t, nd):
        return c.v(t), tuple(t.shape)
    shape = (1,) + tuple(t.shape)
    return P.reshape(c.v(t), shape), shape


def _conv_pads(padding: Any, k: Sequence[int], dilation: Sequence[int], nd: int) -> list[tuple[int, int]]:
    if padding == "valid":
        return [(0, 0)] * nd
    if padding == "same":  # torch puts the odd element of the padding on the right
        out = []
        for i in range(nd):
            total = dilation[i] * (k[i] - 1)
            out.append((total // 2, total - total // 2))
        return out
    return [(e, e) for e in ntuple(padding, nd)]


def conv(c: Ctx, xt: torch.Tensor, w: torch.Tensor, bias: Any, stride: Any, padding: Any, dilation: Any,
         groups: int, nd: int) -> Any:
    h, xs = as_batched(c, xt, nd)
    n, cin = xs[0], xs[1]
    k = tuple(w.shape[2:])
    st, dil = ntuple(stride, nd), ntuple(dilation, nd)
    pads = _conv_pads(padding, k, dil, nd)
    if all(lo == hi for lo, hi in pads) and math.prod(xs) and w.numel():
        # the convolution primitive (`ops.conv_prims`): nothing of the windows kept
        out = CP.conv(h, c.v(w), stride=st, padding=tuple(lo for lo, _ in pads), dilation=dil, groups=int(groups))
        if bias is not None:
            out = _bias(c, out, bias, _forward(xs, w, st, pads, dil, groups))
        return out if batched(xt, nd) else P.reshape(out, P.shape_of(out)[1:])
    index = window_index(xs, k, st, pads, dil)  # (N, C, *out, *k)
    out_sp = tuple(index.shape[2:2 + nd])
    cols = P.take(h, index)
    perm = (0,) + tuple(range(2, 2 + nd)) + (1,) + tuple(range(2 + nd, 2 + 2 * nd))
    cols = P.permute(cols, perm)  # (N, *out, C, *k)
    L, K, g = math.prod(out_sp), math.prod(k), int(groups)
    cg, o = cin // g, w.shape[0]
    cols = P.permute(P.reshape(cols, (n, L, g, cg * K)), (0, 2, 1, 3))  # (N, g, L, Cg*K)
    wm = P.permute(P.reshape(c.v(w), (g, o // g, cg * K)), (0, 2, 1))  # (g, Cg*K, Og)
    out = P.matmul(cols, wm)  # (N, g, L, Og)
    out = P.reshape(P.permute(out, (0, 1, 3, 2)), (n, o) + out_sp)
    if bias is not None:
        out = _bias(c, out, bias, _forward(xs, w, st, pads, dil, groups))
    return out if batched(xt, nd) else P.reshape(out, (o,) + out_sp)


def _conv_rule(nd: int) -> Any:
    def lower(c: Ctx, a: Args) -> Any:
        return conv(c, a.input, a.weight, a.bias, a.stride, a.padding, a.dilation, a.groups, nd)

    return lower


for _nd in (1, 2, 3):
    rule(f"conv{_nd}d", sig=lambda input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1: 0)(
        _conv_rule(_nd))


def conv_transpose(c: Ctx, xt: torch.Tensor, w: torch.Tensor, bias: Any, stride: Any, padding: Any,
                   groups: int, dilation: Any, nd: int, out_shape: tuple[int, ...]) -> Any:
    """The transpose of conv in its input: columns (x @ W) scattered into the output windows.

    ``output_padding`` only makes the output larger: its size is read from torch's result.
    """
    h, xs = as_batched(c, xt, nd)
    n, cin = xs[0], xs[1]
    g = int(groups)
    k = tuple(w.shape[2:])
    og = w.shape[1]
    cout = og * g
    st, dil, pad = ntuple(stride, nd), ntuple(dilation, nd), ntuple(padding, nd)
    osz = tuple(out_shape[-nd:])
    if math.prod(xs) and w.numel():
        # the transpose of the convolution whose weight this is (`ops.conv_prims`): output_padding only adds
        # positions, which the primitive's size covers
        out = CP.conv_tin(h, c.v(w), size=(cout,) + osz, stride=st, padding=pad, dilation=dil, groups=g)
        if bias is not None:
            out = _bias(c, out, bias, _transposed(xs, w, st, pad, dil, g, osz))
        return out if batched(xt, nd) else P.reshape(out, tuple(out_shape))
    full = (n, cout) + tuple(osz[i] + 2 * pad[i] for i in range(nd))
    index = window_index(full, k, st, [(0, 0)] * nd, dil, out_sizes=xs[2:])  # (N, Cout, *in, *k)
    L, K = math.prod(xs[2:]), math.prod(k)
    xm = P.permute(P.reshape(h, (n, g, cin // g, L)), (0, 1, 3, 2))  # (N, g, L, Cin_g)
    wm = P.reshape(c.v(w), (g, cin // g, og * K))  # (g, Cin_g, Og*K)
    cols = P.matmul(xm, wm)  # (N, g, L, Og*K)
    cols = P.reshape(cols, (n, g, L, og, K))
    cols = P.permute(cols, (0, 1, 3, 2, 4))  # (N, g, Og, L, K)
    cols = P.reshape(cols, (n, cout) + tuple(xs[2:]) + k)
    out = P.segsum(cols, index, full)
    if any(pad):
        crop = torch.arange(math.prod(full)).reshape(full)
        for i in range(nd):
            crop = crop.narrow(2 + i, pad[i], osz[i])
        out = P.take(out, crop)
    if bias is not None:
        out = _bias(c, out, bias, _transposed(xs, w, st, pad, dil, g, osz))
    return out if batched(xt, nd) else P.reshape(out, tuple(out_shape))


def _forward(xs: Sequence[int], w: torch.Tensor, st: Sequence[int], pads: Sequence[tuple[int, int]],
             dil: Sequence[int], groups: int) -> tuple[Any, ...] | None:
    """A convolution's geometry for `_bias`; None for uneven padding (an even kernel's 'same': torch pads the input
    itself, no one call of its kernel)."""
    if any(lo != hi for lo, hi in pads):
        return None
    nd = len(st)
    return (tuple(xs), tuple(w.shape), tuple(st), tuple(lo for lo, _ in pads), tuple(dil), False, (0,) * nd,
            int(groups))


def _transposed(xs: Sequence[int], w: torch.Tensor, st: Sequence[int], pad: Sequence[int], dil: Sequence[int],
                groups: int, osz: Sequence[int]) -> tuple[Any, ...]:
    """A transposed convolution's geometry for `_bias` (its output padding: what the output size adds)."""
    k = tuple(w.shape[2:])
    extra = tuple(int(osz[i] - ((xs[2 + i] - 1) * st[i] - 2 * pad[i] + dil[i] * (k[i] - 1) + 1)) for i in range(len(k)))
    return (tuple(xs), tuple(w.shape), tuple(st), tuple(pad), tuple(dil), True, extra, int(groups))


def _bias(c: Ctx, out: Any, bias: torch.Tensor, kernel: tuple[Any, ...] | None) -> Any:
    """`out` (N, C, *spatial) plus a convolution's bias, per channel; its gradient summed, in a float32 sample of
    rounding, by the kernel of the convolution of geometry `kernel` (`ops.prims_movement.kernel_sum`)."""
    nd = len(P.shape_of(out)) - 2
    return P.ew(_bias_add(kernel), out, P.reshape(c.v(bias), (P.shape_of(out)[1],) + (1,) * nd))


@functools.lru_cache(maxsize=256)
def _bias_add(kernel: tuple[Any, ...] | None) -> EwFn:
    if kernel is None:
        return ADD
    # (its own function: the kernel is this addition's, not every addition's)
    return EwFn("add", ADD.expr, 2, bias_kernel=kernel)


def _conv_t_rule(nd: int) -> Any:
    def lower(c: Ctx, a: Args) -> Any:
        return conv_transpose(c, a.input, a.weight, a.bias, a.stride, a.padding, a.groups, a.dilation, nd,
                              tuple(c.out.shape))

    return lower


for _nd in (1, 2, 3):
    rule(f"conv_transpose{_nd}d",
         sig=lambda input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1: 0)(
        _conv_t_rule(_nd))


@rule("fold", "col2im", sig=lambda input, output_size, kernel_size, dilation=1, padding=0, stride=1: 0)
def _fold(c: Ctx, a: Args) -> Any:
    """col2im: column (c*K + j, l) is added to window element j of output window l of channel c."""
    h, xs = as_batched(c, a.input, 1)  # (N, C*K, L)
    k = ntuple(a.kernel_size, 2)
    size = ntuple(a.output_size, 2)
    n, K = xs[0], math.prod(k)
    ch = xs[1] // K
    pad = ntuple(a.padding, 2)
    index = window_index((n, ch) + size, k, ntuple(a.stride, 2), [(p, p) for p in pad], ntuple(a.dilation, 2))
    cols = P.permute(P.reshape(h, (n, ch, K, xs[2])), (0, 1, 3, 2))  # (N, C, L, K), as the index map
    out = P.segsum(P.reshape(cols, tuple(index.shape)), index, (n, ch) + size)
    return P.reshape(out, tuple(c.out.shape))
