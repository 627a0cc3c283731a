"""The linear primitives that move and sum entries (see `prims`): ``reshape``, ``permute``, ``expand``, ``sum``,
``take`` (a gather by a flat index map), ``segsum`` (its transpose, a scatter-add) and ``cumsum``, each with its
transpose and how error bounds pass through it.  Window maps (im2col) go through `windows`' strided views."""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch

from . import windows
from .core import Prim, bind, register
from .prims_base import _abs, _np_index, gamma_sum, is_tensor, shape_of

__all__ = ["reshape", "permute", "expand", "sum_", "take", "segsum", "cumsum", "sum_to", "broadcast_to", "mT"]

def _reshape_impl(x: Any, shape: tuple[int, ...]) -> Any:
    return x.reshape(shape)


def _permute_impl(x: Any, perm: tuple[int, ...]) -> Any:
    return x.permute(*perm) if is_tensor(x) else np.transpose(x, perm)


def _expand_impl(x: Any, shape: tuple[int, ...]) -> Any:
    return torch.broadcast_to(x, shape) if is_tensor(x) else np.broadcast_to(x, shape)


def _sum_impl(x: Any, dims: tuple[int, ...], keepdim: bool, kernel: tuple[Any, ...] | None = None) -> Any:
    if not dims:
        return x
    if is_tensor(x):
        if kernel is not None and x.dtype in _KERNEL_DTYPES:
            got = kernel_sum(x, kernel)
            if got is not None:
                return got.reshape(tuple(1 if i in dims else n for i, n in enumerate(x.shape))) if keepdim else got
        return x.sum(dim=dims, keepdim=keepdim)
    out = np.sum(x, axis=dims, keepdims=keepdim)
    return np.asarray(out, dtype=object)


def _take_impl(x: Any, index: Any, fill: bool = False) -> Any:
    w = windows.fast(x, index)
    if w is not None and x.numel() == math.prod(w.shape):
        return windows.gather(x, w)
    if is_tensor(x):
        flat = x.reshape(-1)
        if not fill:
            return flat[index]
        safe = index.clamp(min=0)
        got = flat[safe] if flat.numel() else torch.zeros(index.shape, dtype=x.dtype)
        return torch.where(index >= 0, got, torch.zeros((), dtype=x.dtype))
    idx = _np_index(index)
    flat = np.asarray(x, dtype=object).reshape(-1)
    out = flat[np.maximum(idx, 0)] if flat.size else np.zeros(idx.shape, dtype=object)
    if fill:
        zero = 0 * out.flat[0] if out.size else 0
        out = np.where(idx >= 0, out, zero)
    return np.asarray(out, dtype=object)


def _segsum_impl(x: Any, index: Any, shape: tuple[int, ...], fill: bool = False) -> Any:
    size = math.prod(shape) if shape else 1
    w = windows.fast(x, index)
    if w is not None and size == math.prod(w.shape) and x.numel() == index.numel():
        return windows.scatter(x, w, tuple(shape))
    if is_tensor(x):
        flat_i = index.reshape(-1)
        flat_x = x.reshape(-1)
        if fill:
            keep = flat_i >= 0
            flat_i, flat_x = flat_i[keep], flat_x[keep]
        out = torch.zeros(size, dtype=x.dtype)
        out.index_add_(0, flat_i, flat_x)
        return out.reshape(shape)
    idx = _np_index(index).reshape(-1)
    vals = np.asarray(x, dtype=object).reshape(-1)
    if fill:
        keep = idx >= 0
        idx, vals = idx[keep], vals[keep]
    zero = 0 * vals[0] if vals.size else 0
    out = np.full(size, zero, dtype=object)
    np.add.at(out, idx, vals)
    return out.reshape(shape)


def _cumsum_impl(x: Any, dim: int, reverse: bool = False) -> Any:
    if is_tensor(x):
        return x.flip(dim).cumsum(dim).flip(dim) if reverse else x.cumsum(dim)
    if reverse:
        return np.flip(np.cumsum(np.flip(x, dim), axis=dim), dim)
    return np.cumsum(x, axis=dim)


def _movement(name: str, impl: Any, vjp: Any, err: Any = None) -> None:
    def err_rule(errs: list[Any], ins: Sequence[Any], outs: Sequence[Any], u: float, **params: Any) -> list[Any]:
        return [None if errs[0] is None else impl(errs[0], **params)]

    register(Prim(name, impl, impl, vjp, err or err_rule, linear=True))


def reshape(x: Any, shape: Sequence[int]) -> Any:
    shape = tuple(int(s) for s in shape)
    return x if shape_of(x) == shape else bind("reshape", x, shape=shape)


def permute(x: Any, perm: Sequence[int]) -> Any:
    perm = tuple(int(p) for p in perm)
    return x if perm == tuple(range(len(perm))) else bind("permute", x, perm=perm)


def expand(x: Any, shape: Sequence[int]) -> Any:
    shape = tuple(int(s) for s in shape)
    return x if shape_of(x) == shape else bind("expand", x, shape=shape)


def sum_(x: Any, dims: Sequence[int], keepdim: bool = False, kernel: tuple[Any, ...] | None = None) -> Any:
    """The sum over `dims`; `kernel`: a convolution's geometry, where this sum is its bias's gradient (see
    `kernel_sum`)."""
    nd = len(shape_of(x))
    dims = tuple(sorted(d % nd for d in dims)) if nd else ()
    if kernel is not None and dims != tuple(i for i in range(nd) if i != 1):
        kernel = None
    extra = {} if kernel is None else {"kernel": kernel}
    return x if not dims else bind("sum", x, dims=dims, keepdim=keepdim, **extra)


def take(x: Any, index: torch.Tensor) -> Any:
    """Gather: ``out[j] = x.flatten()[index[j]]`` (0 where ``index[j] == -1``)."""
    return bind("take", x, index=index, fill=_has_fill(index))


def segsum(x: Any, index: torch.Tensor, shape: Sequence[int]) -> Any:
    """Scatter-add: ``out.flatten()[index[j]] += x[j]`` into zeros of `shape` (entries with -1 dropped)."""
    return bind("segsum", x, index=index, shape=tuple(int(s) for s in shape), fill=_has_fill(index))


def _has_fill(index: torch.Tensor) -> bool:
    w = windows.known(index)
    return windows.touches_padding(w) if w is not None else bool((index < 0).any())


def cumsum(x: Any, dim: int, reverse: bool = False) -> Any:
    return bind("cumsum", x, dim=dim % max(len(shape_of(x)), 1), reverse=reverse)


def sum_to(x: Any, shape: Sequence[int], kernel: tuple[Any, ...] | None = None) -> Any:
    """Sum the broadcast dimensions of `x` away, leaving `shape` (the transpose of broadcasting); `kernel`: see
    `sum_`."""
    shape = tuple(shape)
    xs = shape_of(x)
    if xs == shape:
        return x
    lead = len(xs) - len(shape)
    dims = tuple(range(lead)) + tuple(lead + i for i, s in enumerate(shape) if s == 1 and xs[lead + i] != 1)
    if not dims:
        return reshape(x, shape)
    # one equation where the sum's own shape is the target's (a 0-d parameter's gradient, a bias's); `reshape`
    # adds none where keepdim's shape is
    if tuple(n for i, n in enumerate(xs) if i not in dims) == shape:
        return sum_(x, dims, keepdim=False, kernel=kernel)
    return reshape(sum_(x, dims, keepdim=True, kernel=kernel), shape)


def broadcast_to(x: Any, shape: Sequence[int]) -> Any:
    shape = tuple(shape)
    xs = shape_of(x)
    if xs == shape:
        return x
    padded = (1,) * (len(shape) - len(xs)) + xs
    return expand(reshape(x, padded), shape)


def mT(x: Any) -> Any:  # noqa: N802 - torch's name
    nd = len(shape_of(x))
    return permute(x, tuple(range(nd - 2)) + (nd - 1, nd - 2))


_movement("reshape", _reshape_impl, lambda cts, ins, outs, shape: [reshape(cts[0], shape_of(ins[0]))])
_movement("permute", _permute_impl,
          lambda cts, ins, outs, perm: [permute(cts[0], tuple(int(i) for i in np.argsort(perm)))])
_movement("expand", _expand_impl, lambda cts, ins, outs, shape: [sum_to(cts[0], shape_of(ins[0]))])


def _sum_vjp(cts: list[Any], ins: Sequence[Any], outs: Sequence[Any], dims: tuple[int, ...], keepdim: bool,
             kernel: Any = None) -> list[Any]:
    xs = shape_of(ins[0])
    kept = tuple(1 if i in dims else s for i, s in enumerate(xs))
    return [expand(reshape(cts[0], kept), xs)]


def _sum_err(errs: list[Any], ins: Sequence[Any], outs: Sequence[Any], u: float, dims: tuple[int, ...],
             keepdim: bool, kernel: Any = None) -> list[Any]:
    # (gamma_sum(n) bounds any order of summing, a kernel's too)
    n = math.prod([shape_of(ins[0])[d] for d in dims]) if dims else 1
    # linear: one reduction of (the inputs' bounds + this sum's own rounding of each term)
    return [_sum_impl(_scaled_abs_plus(ins[0], u * gamma_sum(n), errs[0]), dims, keepdim)]


def _scaled_abs_plus(x: Any, c: float, e: Any) -> Any:
    """c |x| + e (e may be None) in one new tensor: a sum's or a scatter-add's own rounding of each term plus the
    terms' bounds (at a conv's size, 42 million entries: each temporary is a pass and an allocation)."""
    if not is_tensor(x) or (e is not None and (not is_tensor(e) or e.shape != x.shape or e.dtype != x.dtype)):
        own = c * _abs(x)
        return own if e is None else own + e
    out = x.abs().mul_(c)
    return out if e is None else out.add_(e)


register(Prim("sum", _sum_impl, _sum_impl, _sum_vjp, _sum_err, linear=True))


# torch's CPU convolutions (oneDNN) sum a float32 bias's gradient their own way: on a CNN's training step, 90x to 290x
# further from the exact sum of the same cotangent than torch.sum (u sum|terms| on a pairwise sum), about
# u sqrt(n) sum|terms| (n, the batch times the positions).  Where a bias's gradient cancels to near 0 (a Grad-CAM
# model's), a float32 sample of its rounding by torch.sum was 8x to 121x below autograd's: false mismatches.  The
# sample sums as the kernel does, by calling it: its bias gradient depends on the cotangent and geometry alone.
_KERNEL_DTYPES = frozenset({torch.float32, torch.float16, torch.bfloat16})


def kernel_sum(g: torch.Tensor, kernel: tuple[Any, ...]) -> torch.Tensor | None:
    """The bias gradient torch's convolution backward computes from the cotangent `g` (N, C, *spatial), for `kernel`
    = (input shape, weight shape, stride, padding, dilation, transposed, output padding, groups); None where that
    kernel cannot be called so."""
    xshape, wshape, stride, padding, dilation, transposed, out_pad, groups = kernel
    try:
        x = torch.empty((), dtype=g.dtype, device=g.device).expand(xshape)  # (the bias's gradient never reads them)
        w = torch.empty((), dtype=g.dtype, device=g.device).expand(wshape)
        got = torch.ops.aten.convolution_backward(g.contiguous(), x, w, [g.shape[1]], list(stride), list(padding),
                                                  list(dilation), bool(transposed), list(out_pad), int(groups),
                                                  [False, False, True])[2]
    except Exception:  # noqa: BLE001 - a sample of noise: torch.sum's stands in
        return None
    return got if isinstance(got, torch.Tensor) and tuple(got.shape) == (g.shape[1],) else None


def _take_vjp(cts: list[Any], ins: Sequence[Any], outs: Sequence[Any], index: Any, fill: bool) -> list[Any]:
    return [bind("segsum", cts[0], index=index, shape=shape_of(ins[0]), fill=fill)]


def _take_err(errs: list[Any], ins: Sequence[Any], outs: Sequence[Any], u: float, index: Any, fill: bool) -> list[Any]:
    return [None if errs[0] is None else _take_impl(errs[0], index, fill)]


register(Prim("take", _take_impl, _take_impl, _take_vjp, _take_err, linear=True))


def _segsum_vjp(cts: list[Any], ins: Sequence[Any], outs: Sequence[Any], index: Any, shape: tuple[int, ...],
                fill: bool) -> list[Any]:
    return [bind("take", cts[0], index=index, fill=fill)]


def _segsum_err(errs: list[Any], ins: Sequence[Any], outs: Sequence[Any], u: float, index: Any,
                shape: tuple[int, ...], fill: bool) -> list[Any]:
    return [_segsum_impl(_scaled_abs_plus(ins[0], u * gamma_sum(_most(index)), errs[0]), index, shape, fill)]


_MOST: dict[int, tuple[Any, int]] = {}


def _most(index: Any) -> int:
    """How many entries a scatter-add sums at most into one slot (cached per index map)."""
    hit = _MOST.get(id(index))
    if hit is not None and hit[0] is index:
        return hit[1]
    w = windows.known(index)
    if w is not None:
        return windows.most(w)
    flat = index.reshape(-1)
    counts = torch.bincount(flat[flat >= 0]) if flat.numel() else torch.zeros(1, dtype=torch.long)
    most = int(counts.max()) if counts.numel() else 1
    if len(_MOST) > 4096:
        _MOST.clear()
    _MOST[id(index)] = (index, most)
    return most


register(Prim("segsum", _segsum_impl, _segsum_impl, _segsum_vjp, _segsum_err, linear=True))


def _cumsum_err(errs: list[Any], ins: Sequence[Any], outs: Sequence[Any], u: float, dim: int,
                reverse: bool) -> list[Any]:
    n = shape_of(ins[0])[dim] if shape_of(ins[0]) else 1
    return [_cumsum_impl(_scaled_abs_plus(ins[0], u * gamma_sum(n), errs[0]), dim, reverse)]


register(Prim("cumsum", _cumsum_impl, _cumsum_impl,
              lambda cts, ins, outs, dim, reverse: [cumsum(cts[0], dim, not reverse)], _cumsum_err, linear=True))
