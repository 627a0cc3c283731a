"""Convolution as three primitives: the convolution, and its transposes in the input and in the weight.

For one group, with the input padded by `padding` on both sides of each spatial dimension::

    conv(x, w)       y[n, o, i] = sum over c, k of  x_pad[n, c, i*stride + k*dilation] * w[o, c, k]
    conv_tin(g, w)   the transpose of conv in x: the shape of x (conv_transpose's value)
    conv_tw(x, g)    the transpose of conv in w: the shape of w

The three are bilinear and closed under transposition: each one's vjp is written with the other two, so a recorded
sweep (second order) stays among them.  All three are computed by torch's *forward* convolution, in float64 for the
reference, through the textbook identities: the input's transpose is the gradient dilated by the stride, padded,
and convolved with the flipped weight; the weight's is the input and the gradient with batch and channels
exchanged, and stride and dilation exchanged.  Never torch's convolution backward: the one kernel relied on is the
forward convolution, which the tracer compares with the user's own result at the convolutions it records.

Why not im2col (`ops.torch.conv`'s lowering, kept for asymmetric padding): a ``take`` of every window holds, with
its int64 index map, some 18 copies of the input at 3x3 windows, for as long as the program lives.  At a tutorial's
batch of 4,096 (32 channels of 26x26) that is 10 GB per convolution; these primitives keep only their operands.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .core import Prim, bind, register, relief
from .prims_base import _abs, _differentiable, _obj, is_tensor, shape_of

__all__ = ["conv", "conv_tin", "conv_tw"]

_TORCH_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


# ---------------------------------------------------------------- the three operations on either kind of array
# Each is written once over a few helpers that take torch tensors (float64 in the reference) or numpy object arrays
# (mpmath or sympy elements: the high-precision path).

def _pad(t: Any, pads: Sequence[tuple[int, int]]) -> Any:
    """Zeros added on each spatial side (lo, hi); a negative amount crops (after the other side grew: a crop
    larger than the tensor leaves the zeros added on the other side)."""
    if is_tensor(t):
        flat: list[int] = []
        for lo, hi in reversed(pads):
            flat += [max(lo, 0), max(hi, 0)]
        t = F.pad(t, flat) if any(flat) else t
    else:
        t = _grow_obj(t, pads)
    crop = (slice(None), slice(None)) + tuple(slice(max(-lo, 0), t.shape[2 + i] - max(-hi, 0))
                                              for i, (lo, hi) in enumerate(pads))
    return t[crop]


def _grow_obj(t: Any, pads: Sequence[tuple[int, int]]) -> Any:
    grow = [(0, 0), (0, 0)] + [(max(lo, 0), max(hi, 0)) for lo, hi in pads]
    if any(g != (0, 0) for g in grow):
        out = np.full(tuple(s + a + b for s, (a, b) in zip(t.shape, grow)), 0, dtype=object)
        out[tuple(slice(a, a + s) for s, (a, _) in zip(t.shape, grow))] = t
        t = out
    return t


def _dilate(t: Any, stride: Sequence[int]) -> Any:
    """`stride - 1` zeros between neighbours along each spatial dimension."""
    if all(s == 1 for s in stride):
        return t
    shape = tuple(t.shape[:2]) + tuple((n - 1) * s + 1 for n, s in zip(t.shape[2:], stride))
    out = t.new_zeros(shape) if is_tensor(t) else np.full(shape, 0, dtype=object)
    out[(slice(None), slice(None)) + tuple(slice(None, None, s) for s in stride)] = t
    return out


def _swap01(t: Any) -> Any:
    return t.transpose(0, 1) if is_tensor(t) else np.swapaxes(t, 0, 1)


def _flip(t: Any) -> Any:
    axes = list(range(2, t.ndim))
    return t.flip(axes) if is_tensor(t) else np.flip(t, axes)


# A float64 convolution is torch's im2col one: its columns, (C/groups) * prod(k) * prod(out) entries per sample, are
# one buffer for the whole batch (2.7 GB for a tutorial's 64-channel 3x3 convolution of a batch of 2,048, where its
# result is 0.6 GB): batches whose columns would pass this many bytes are convolved a slice at a time.
CHUNK_BYTES = 256 << 20


def _plain_conv(x: Any, w: Any, stride: Sequence[int], dilation: Sequence[int], groups: int) -> Any:
    """The convolution of an already padded `x`."""
    nd = len(stride)
    if is_tensor(x) and is_tensor(w):
        conv = _TORCH_CONV[nd]
        n, k = x.shape[0], tuple(w.shape[2:])
        out = [(x.shape[2 + i] - (k[i] - 1) * dilation[i] - 1) // stride[i] + 1 for i in range(nd)]
        per = (x.shape[1] // groups) * math.prod(k) * math.prod(max(e, 0) for e in out) * x.element_size()
        step = max(1, CHUNK_BYTES // max(per, 1))
        if x.dtype != torch.float64 or w.dtype != torch.float64 or n <= step:  # (float32's kernels need no columns)
            return conv(x, w, None, tuple(stride), 0, tuple(dilation), groups)
        first = conv(x[:step], w, None, tuple(stride), 0, tuple(dilation), groups)
        y = first.new_empty((n,) + tuple(first.shape[1:]))
        y[:step] = first
        del first
        for i in range(step, n, step):
            relief()
            y[i:i + step] = conv(x[i:i + step], w, None, tuple(stride), 0, tuple(dilation), groups)
        return y
    x, w = _obj(x), _obj(w)
    n, c = x.shape[:2]
    o, cg = w.shape[:2]
    k = w.shape[2:]
    out = tuple((x.shape[2 + i] - (k[i] - 1) * dilation[i] - 1) // stride[i] + 1 for i in range(nd))
    og = o // groups
    res = np.full((n, o) + out, 0, dtype=object)
    for offset in np.ndindex(*k):
        part = x[(slice(None), slice(None)) + tuple(
            slice(j * d, j * d + (m - 1) * s + 1, s) for j, d, m, s in zip(offset, dilation, out, stride))]
        for q in range(groups):
            wq = w[(slice(q * og, (q + 1) * og), slice(None)) + tuple(offset)]  # (og, cg)
            term = np.tensordot(wq, part[:, q * cg:(q + 1) * cg], axes=([1], [1]))  # (og, n, *out)
            res[:, q * og:(q + 1) * og] += np.moveaxis(term, 0, 1)
    return res


def _conv(x: Any, w: Any, stride: tuple[int, ...], padding: tuple[int, ...], dilation: tuple[int, ...],
          groups: int, out: tuple[int, ...] | None = None) -> Any:
    y = _plain_conv(_pad(x, [(p, p) for p in padding]), w, stride, dilation, groups)
    if out is not None:  # the first `out` positions (a transposed convolution's input: see `_tin_vjp`)
        y = y[(slice(None), slice(None)) + tuple(slice(0, e) for e in out)]
    return y


def _tin(g: Any, w: Any, stride: tuple[int, ...], padding: tuple[int, ...], dilation: tuple[int, ...], groups: int,
         size: tuple[int, ...]) -> Any:
    """conv's transpose in its input (of shape (N,) + size): the gradient dilated by the stride, padded so that
    each input position sees the windows that read it, convolved with the flipped weight, groups kept."""
    nd = len(stride)
    o, cg = w.shape[:2]
    k = tuple(w.shape[2:])
    out = tuple(g.shape[2:])
    gd = _dilate(g, stride)
    # left: (k-1)d - p; right: what makes the result exactly the input's size (it may crop)
    pads = [((k[i] - 1) * dilation[i] - padding[i], size[1 + i] - 1 + padding[i] - (out[i] - 1) * stride[i])
            for i in range(nd)]
    og = o // groups
    wt = w.reshape((groups, og, cg) + k)
    wt = wt.transpose(1, 2) if is_tensor(wt) else np.swapaxes(wt, 1, 2)
    wt = _flip(wt.reshape((groups * cg, og) + k))
    return _plain_conv(_pad(gd, pads), wt, (1,) * nd, dilation, groups)


def _tw(x: Any, g: Any, stride: tuple[int, ...], padding: tuple[int, ...], dilation: tuple[int, ...], groups: int,
        k: tuple[int, ...]) -> Any:
    """conv's transpose in its weight: the padded input with batch and channels exchanged (a group's channels
    side by side), convolved with the gradient as the weight, stride and dilation exchanged; the first k
    offsets."""
    nd = len(stride)
    xp = _pad(x, [(p, p) for p in padding])
    n, c = xp.shape[:2]
    cg = c // groups
    sp = tuple(xp.shape[2:])
    perm = (2, 1, 0) + tuple(range(3, 3 + nd))
    xs = xp.reshape((n, groups, cg) + sp)
    xs = xs.permute(perm) if is_tensor(xs) else np.transpose(xs, perm)
    xs = xs.reshape((cg, groups * n) + sp)
    r = _plain_conv(xs, _swap01(g), dilation, stride, groups)  # (cg, O, >= k)
    r = r[(slice(None), slice(None)) + tuple(slice(0, e) for e in k)]
    out = _swap01(r)
    return out.contiguous() if is_tensor(out) else out


# ---------------------------------------------------------------- the primitives
# How many products one output entry sums: the rounding each primitive's bound charges.
def _conv_terms(ins: Sequence[Any], groups: int, **_: Any) -> int:
    w = shape_of(ins[1])
    return w[1] * math.prod(w[2:])


def _tin_terms(ins: Sequence[Any], groups: int, **_: Any) -> int:
    w = shape_of(ins[1])
    return (w[0] // groups) * math.prod(w[2:])


def _tw_terms(ins: Sequence[Any], **_: Any) -> int:
    g = shape_of(ins[1])
    return g[0] * math.prod(g[2:])


def _bilinear_err(impl: Any, terms: Any) -> Any:
    """How bounds pass through a bilinear primitive: |a| (K u |b| + E_b) + E_a |b|, K the terms in one output."""
    def err(errs: list[Any], ins: Sequence[Any], outs: Sequence[Any], u: float, **params: Any) -> list[Any]:
        a, b = ins
        right = (u * float(max(terms(ins, **params), 1))) * _abs(b)
        if errs[1] is not None:
            right = right + errs[1]
        out = impl(_abs(a), right, **params)
        if errs[0] is not None:
            out = out + impl(errs[0], _abs(b), **params)
        return [out]
    return err


def _conv_vjp(cts: list[Any], ins: Sequence[Any], outs: Sequence[Any], needed: Sequence[bool] = (True, True),
              out: Any = None, **p: Any) -> list[Any]:
    # (`out` crops the result: the cotangent has the cropped shape, which both transposes read from it)
    x, w = ins
    gx = conv_tin(cts[0], w, size=tuple(shape_of(x)[1:]), **p) if needed[0] and _differentiable(x) else None
    gw = conv_tw(x, cts[0], k=tuple(shape_of(w)[2:]), **p) if needed[1] and _differentiable(w) else None
    return [gx, gw]


def _tin_vjp(cts: list[Any], ins: Sequence[Any], outs: Sequence[Any], needed: Sequence[bool] = (True, True),
             size: tuple[int, ...] = (), **p: Any) -> list[Any]:
    g, w = ins
    # the size that output_padding gives a transposed convolution can hold one more window than g has positions
    gg = conv(cts[0], w, out=shape_of(g)[2:], **p) if needed[0] and _differentiable(g) else None
    gw = conv_tw(cts[0], g, k=tuple(shape_of(w)[2:]), **p) if needed[1] and _differentiable(w) else None
    return [gg, gw]


def _tw_vjp(cts: list[Any], ins: Sequence[Any], outs: Sequence[Any], needed: Sequence[bool] = (True, True),
            k: tuple[int, ...] = (), **p: Any) -> list[Any]:
    x, g = ins
    gx = conv_tin(g, cts[0], size=tuple(shape_of(x)[1:]), **p) if needed[0] and _differentiable(x) else None
    gg = conv(x, cts[0], out=shape_of(g)[2:], **p) if needed[1] and _differentiable(g) else None
    return [gx, gg]


def _both(n: int, **p: Any) -> tuple[int, ...]:
    return (0, 1)  # (bilinear: each operand's cotangent is the other's product; its own result is never read)


register(Prim("conv", _conv, _conv, _conv_vjp, _bilinear_err(_conv, _conv_terms), needs=True, reads=_both))
register(Prim("conv_tin", _tin, _tin, _tin_vjp, _bilinear_err(_tin, _tin_terms), needs=True, reads=_both))
register(Prim("conv_tw", _tw, _tw, _tw_vjp, _bilinear_err(_tw, _tw_terms), needs=True, reads=_both))


def conv(x: Any, w: Any, *, stride: tuple[int, ...], padding: tuple[int, ...], dilation: tuple[int, ...],
         groups: int, out: tuple[int, ...] | None = None) -> Any:
    """The convolution of batched `x` (N, C, *spatial) with `w` (O, C/groups, *k), zero padding on both sides;
    with `out`, only the first `out` output positions per spatial dimension."""
    extra = {} if out is None else {"out": tuple(int(e) for e in out)}
    return bind("conv", x, w, stride=tuple(stride), padding=tuple(padding), dilation=tuple(dilation),
                groups=int(groups), **extra)


def conv_tin(g: Any, w: Any, *, size: tuple[int, ...], stride: tuple[int, ...], padding: tuple[int, ...],
             dilation: tuple[int, ...], groups: int) -> Any:
    """The transpose of `conv` in its input, applied to `g` (N, O, *out): shape (N,) + size."""
    return bind("conv_tin", g, w, stride=tuple(stride), padding=tuple(padding), dilation=tuple(dilation),
                groups=int(groups), size=tuple(size))


def conv_tw(x: Any, g: Any, *, k: tuple[int, ...], stride: tuple[int, ...], padding: tuple[int, ...],
            dilation: tuple[int, ...], groups: int) -> Any:
    """The transpose of `conv` in its weight, for input `x` and output cotangent `g`: shape (O, C/groups, *k)."""
    return bind("conv_tw", x, g, stride=tuple(stride), padding=tuple(padding), dilation=tuple(dilation),
                groups=int(groups), k=tuple(k))
