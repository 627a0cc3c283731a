"""Normalisation layers, decomposed into means and variances (sums) and elementwise math.

``(x - mean) * rsqrt(var + eps)`` with the biased variance, over the dims each layer
normalises, then the affine weight and bias.  The ``native_*`` forms return the
statistics too (mean and rstd, torch's saved tensors): they are outputs of the same
decomposition, so their gradients are checked as well.  In eval mode batch norm uses
the running statistics: constants (their values when the op ran).
``local_response_norm`` divides by a power of the windowed mean of squares across
channels (a ``take`` of channel windows, zero-padded, as torch's ``avg_pool``).
"""

from __future__ import annotations

import math
from typing import Any

import sympy
import torch

from .. import prims as P
from ..ew import ADD, DIV, MUL, SQUARE, SUB, P as X, ew_fn
from .conv import window_index
from .elementwise import num
from .reduce import variance
from .registry import Args, Ctx, rule

F64 = torch.float64
RSQRT = ew_fn("rsqrt", 1 / sympy.sqrt(X[0]), 1)
# (x - mean) * rstd, whose rounding is charged as torch's CPU kernels evaluate it: x * rstd + (-mean * rstd) (layer,
# batch and group norm fold the statistics into a scale and a shift).  Where x is near its mean the result is small
# and that form's rounding, u |x rstd|, is far above u |x - mean| (a layer norm near a fit's optimum: its value was
# refused as 400 times outside the subtraction's bound, and the backward not verified).
NORMED = ew_fn("normalise", (X[0] - X[1]) * X[2], 3, err_form=X[0] * X[2] - X[1] * X[2])


def data(c: Ctx, t: torch.Tensor) -> Any:
    """`c.v(t)`, a variable even where `t` is data (not traced, the weight and bias being what is): the statistics
    and the normalised values torch computes from it, in its dtype, are then bounded with their rounding.  Folded in
    float64 they were taken as exact, and a layer norm of data was refused (its value 400 times outside its bound
    where an entry is near its row's mean)."""
    return c.v(t) if c.is_traced(t) else P.fixed(c.v(t))


def standardise(c: Ctx, t: torch.Tensor, dims: tuple[int, ...], eps: float) -> tuple[Any, Any, Any]:
    """((x - mean) * rstd, mean, rstd) over `dims` (biased variance; the statistics keep their dims)."""
    x = data(c, t)
    var, mean = variance(c, t, dims, 0.0, True, h=x)
    rstd = P.ew(RSQRT, P.ew(ADD, var, float(eps)))
    return P.ew(NORMED, x, mean, rstd), mean, rstd


def affine(c: Ctx, h: Any, weight: Any, bias: Any, shape: tuple[int, ...]) -> Any:
    """h * weight + bias, each reshaped to `shape` (None: absent)."""
    if weight is not None:
        h = P.ew(MUL, h, P.reshape(c.v(weight), shape))
    if bias is not None:
        h = P.ew(ADD, h, P.reshape(c.v(bias), shape))
    return h


def as_torch_declares(c: Ctx, outs: tuple[Any, ...]) -> tuple[Any, ...]:
    """`outs`, with a cut on each output torch declares non-differentiable (the saved mean and rstd
    of native_layer_norm and native_batch_norm: torch's autograd never gives them a gradient)."""
    first = c.out[0].requires_grad
    return tuple(c.cut("non-differentiable output", h) if h is not None and first and not t.requires_grad else h
                 for h, t in zip(outs, c.out))


def _last_dims(t: torch.Tensor, normalized_shape: Any) -> tuple[int, ...]:
    k = len(normalized_shape) if isinstance(normalized_shape, (list, tuple, torch.Size)) else 1
    return tuple(range(t.dim() - k, t.dim()))


@rule("layer_norm", "native_layer_norm", sig=lambda input, normalized_shape, weight=None, bias=None, eps=1e-5,
      cudnn_enable=True: 0)
def _layer_norm(c: Ctx, a: Args) -> Any:
    dims = _last_dims(a.input, a.normalized_shape)
    h, mean, rstd = standardise(c, a.input, dims, a.eps)
    out = affine(c, h, a.weight, a.bias, tuple(a.input.shape[d] for d in dims))
    if c.name == "native_layer_norm":  # (out, mean, rstd); the statistics keep the normalised dims as 1
        stats = P.reshape(mean, tuple(c.out[1].shape)), P.reshape(rstd, tuple(c.out[2].shape))
        return as_torch_declares(c, (out,) + stats)
    return out


@rule("rms_norm", sig=lambda input, normalized_shape, weight=None, eps=None: 0)
def _rms_norm(c: Ctx, a: Args) -> Any:
    dims = _last_dims(a.input, a.normalized_shape)
    # torch's default eps is the machine epsilon of the input's dtype
    eps = a.eps if a.eps is not None else torch.finfo(a.input.dtype).eps
    h = c.v(a.input)
    n = math.prod(a.input.shape[d] for d in dims)
    ms = P.ew(DIV, P.sum_(P.ew(SQUARE, h), dims, keepdim=True), float(n))
    out = P.ew(MUL, h, P.ew(RSQRT, P.ew(ADD, ms, float(eps))))
    return affine(c, out, a.weight, None, tuple(a.input.shape[d] for d in dims))


def batch_norm(c: Ctx, t: torch.Tensor, weight: Any, bias: Any, running_mean: Any, running_var: Any,
               training: bool, eps: float) -> tuple[Any, Any, Any]:
    """(out, mean, rstd) per channel (dim 1); mean and rstd are None in eval mode (running statistics)."""
    shape = (1, t.shape[1]) + (1,) * (t.dim() - 2)
    if training or running_mean is None:
        dims = (0,) + tuple(range(2, t.dim()))
        h, mean, rstd = standardise(c, t, dims, eps)
    else:  # the running statistics are constants (their values when the op ran)
        mean = P.reshape(c.v(running_mean), shape)
        var = P.reshape(c.v(running_var), shape)
        h = P.ew(NORMED, data(c, t), mean, P.ew(RSQRT, P.ew(ADD, var, float(eps))))
        mean = rstd = None
    out = affine(c, h, weight, bias, shape)
    flat = (t.shape[1],)
    return out, (None if mean is None else P.reshape(mean, flat)), (None if rstd is None else P.reshape(rstd, flat))


@rule("batch_norm", sig=lambda input, running_mean, running_var, weight=None, bias=None, training=False,
      momentum=0.1, eps=1e-5, cudnn_enabled=True: 0)
def _batch_norm(c: Ctx, a: Args) -> Any:
    return batch_norm(c, a.input, a.weight, a.bias, a.running_mean, a.running_var, a.training, a.eps)[0]


@rule("native_batch_norm", sig=lambda input, weight, bias, running_mean, running_var, training, momentum, eps: 0)
def _native_batch_norm(c: Ctx, a: Args) -> Any:
    # (out, save_mean, save_invstd); in eval mode the two statistics are empty tensors
    return as_torch_declares(c, batch_norm(c, a.input, a.weight, a.bias, a.running_mean, a.running_var, a.training,
                                           a.eps))


@rule("_native_batch_norm_legit", sig=lambda input, weight, bias, *args: 0)
def _batch_norm_legit(c: Ctx, a: Args) -> Any:
    # two overloads: (..., running_mean, running_var, training, momentum, eps) and, without running
    # statistics, (..., training, momentum, eps)
    rest = a.args
    if len(rest) == 5:
        running_mean, running_var, training, _, eps = rest
    else:
        running_mean = running_var = None
        training, _, eps = rest
    return as_torch_declares(c, batch_norm(c, a.input, a.weight, a.bias, running_mean, running_var, training, eps))


@rule("_batch_norm_with_update", sig=lambda input, weight, bias, running_mean, running_var, momentum, eps: 0)
def _batch_norm_update(c: Ctx, a: Args) -> Any:
    # (out, save_mean, save_invstd, reserve): always training mode
    out = batch_norm(c, a.input, a.weight, a.bias, a.running_mean, a.running_var, True, a.eps)
    return as_torch_declares(c, out + (None,))


def group_norm(c: Ctx, t: torch.Tensor, groups: int, weight: Any, bias: Any, eps: float) -> tuple[Any, Any, Any]:
    """(out, mean, rstd): statistics over each group of channels (with every spatial position)."""
    n, ch = t.shape[0], t.shape[1]
    g = int(groups)
    h = P.reshape(data(c, t), (n, g, t.numel() // max(n * g, 1)))
    var, mean = _stats(h, (2,))
    rstd = P.ew(RSQRT, P.ew(ADD, var, float(eps)))
    norm = P.reshape(P.ew(NORMED, h, mean, rstd), tuple(t.shape))
    out = affine(c, norm, weight, bias, (1, ch) + (1,) * (t.dim() - 2))
    return out, P.reshape(mean, (n, g)), P.reshape(rstd, (n, g))


def _stats(h: Any, dims: tuple[int, ...]) -> tuple[Any, Any]:
    n = math.prod(P.shape_of(h)[d] for d in dims)
    mean = P.ew(DIV, P.sum_(h, dims, keepdim=True), float(n))
    var = P.ew(DIV, P.sum_(P.ew(SQUARE, P.ew(SUB, h, mean)), dims, keepdim=True), float(n))
    return var, mean


@rule("group_norm", sig=lambda input, num_groups, weight=None, bias=None, eps=1e-5, cudnn_enabled=True: 0)
def _group_norm(c: Ctx, a: Args) -> Any:
    return group_norm(c, a.input, a.num_groups, a.weight, a.bias, a.eps)[0]


@rule("native_group_norm", sig=lambda input, weight, bias, N, C, HxW, group, eps: 0)
def _native_group_norm(c: Ctx, a: Args) -> Any:
    return as_torch_declares(c, group_norm(c, a.input, a.group, a.weight, a.bias, a.eps))


@rule("instance_norm", sig=lambda input, running_mean=None, running_var=None, weight=None, bias=None,
      use_input_stats=True, momentum=0.1, eps=1e-5, cudnn_enabled=True: 0)
def _instance_norm(c: Ctx, a: Args) -> Any:
    t = a.input
    shape = (1, t.shape[1]) + (1,) * (t.dim() - 2)
    if a.use_input_stats:
        h = standardise(c, t, tuple(range(2, t.dim())), a.eps)[0]
    else:  # the running statistics, constants, as batch norm in eval mode
        mean, var = P.reshape(c.v(a.running_mean), shape), P.reshape(c.v(a.running_var), shape)
        h = P.ew(NORMED, data(c, t), mean, P.ew(RSQRT, P.ew(ADD, var, float(a.eps))))
    return affine(c, h, a.weight, a.bias, shape)


@rule("local_response_norm", sig=lambda input, size, alpha=1e-4, beta=0.75, k=1.0: 0)
def _local_response_norm(c: Ctx, a: Args) -> Any:
    """x / (k + alpha * mean of x² over a window of `size` channels, zero-padded)^beta."""
    t, size = a.input, int(a.size)
    if t.numel() == 0:
        return c.v(t)
    n, ch = t.shape[0], t.shape[1]
    rest = t.numel() // (n * ch)
    # channel windows of (N, 1, C, rest): size//2 channels before, (size-1)//2 after
    index = window_index((n, 1, ch, rest), (size, 1), (1, 1), [(size // 2, (size - 1) // 2), (0, 0)], (1, 1))
    squares = P.ew(SQUARE, P.reshape(c.v(t), (n, 1, ch, rest)))
    sums = P.reshape(P.sum_(P.take(squares, index), (4, 5)), tuple(t.shape))
    p, s = X[0], X[1]
    fn = ew_fn(f"lrn({size},{a.alpha},{a.beta},{a.k})",
               p / (num(a.k) + num(a.alpha) * s / size) ** num(a.beta), 2)
    return P.ew(fn, c.v(t), sums)
