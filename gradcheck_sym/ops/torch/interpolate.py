"""Resampling on a regular grid: interpolate / upsample in every mode.

* nearest, nearest-exact: pure data movement — the generic probe of `movement`;
* area: adaptive average pooling (`pooling.adaptive_avg`);
* linear, bilinear, trilinear, and the antialiased bilinear / bicubic / lanczos: a
  *separable* linear map, one small matrix ``A_d`` (out × in) per spatial dim, applied dim
  after dim as a ``take`` of each output's taps times constant weights, summed.  ``A_d``
  is read off torch's own forward kernel, the way `movement.probe` reads an index map:
  the kernel runs in float64 on a batch of one-hot inputs along dim d, with the output
  size and the scale factor the op used for that dim (see `axis_weights`);
* bicubic: the same separable map, but its weights are the cubic convolution polynomials
  (A = -0.75) of each output's source offset t, computed as torch documents it
  (`cubic_taps`), inside the elementwise function — so the rounding allowance sees their
  cancellation (torch's forward and backward each evaluate them, and disagree by ~1e-14).

The weights depend only on the sizes, the scale and align_corners — never on the user's
values — so the reference is exactly linear in the input, and its transpose (a
scatter-add of the taps) is ours, never torch's upsample backward.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import sympy
import torch

from .. import prims as P
from ..ew import MUL, P as X, ew_fn
from .movement import probe
from .pooling import adaptive_avg
from .registry import Args, Ctx, Refused, rule

F64 = torch.float64
_ATEN = torch.ops.aten
# (mode, antialias) -> the forward kernel: (input, output_size, align_corners, *per-dim scales)
_KERNELS = {
    ("linear", False): _ATEN.upsample_linear1d.default,
    ("bilinear", False): _ATEN.upsample_bilinear2d.default,
    ("bicubic", False): None,  # the cubic polynomials: `cubic_along`
    ("trilinear", False): _ATEN.upsample_trilinear3d.default,
    ("bilinear", True): _ATEN._upsample_bilinear2d_aa.default,
    ("bicubic", True): _ATEN._upsample_bicubic2d_aa.default,
}
if hasattr(_ATEN, "_upsample_lanczos2d_aa"):
    _KERNELS[("lanczos", True)] = _ATEN._upsample_lanczos2d_aa.default
# the aten ops by name -> their (mode, antialias)
_BY_NAME = {"upsample_linear1d": ("linear", False), "upsample_bilinear2d": ("bilinear", False),
            "upsample_bicubic2d": ("bicubic", False), "upsample_trilinear3d": ("trilinear", False),
            "_upsample_bilinear2d_aa": ("bilinear", True), "_upsample_bicubic2d_aa": ("bicubic", True),
            "_upsample_lanczos2d_aa": ("lanczos", True)}


def axis_weights(kernel: Any, nd: int, d: int, size: int, out: int, align_corners: bool,
                 scale: float | None, dtype: torch.dtype = F64) -> torch.Tensor:
    """The (out, size) matrix the kernel applies along spatial dim d, from one-hot probes (float64).

    The probe runs in the user's `dtype`, so the weights are those the user's kernel computed (its
    windows depend on rounding: antialiased float32 windows differ from float64 ones).  Channel k
    of the probe is one at position k along d and constant along the other dims, which keep
    2 → 2 (an identity for every mode: the weights come out exactly; NB: not 1 → 1, where torch
    2.13's antialiased bilinear kernel repeats its first output row).
    """
    shape = [2] * nd
    shape[d] = size
    view = [1] * nd
    view[d] = size
    eye = torch.eye(size, dtype=dtype).reshape([1, size] + view).expand([1, size] + shape).contiguous()
    out_size = [2] * nd
    out_size[d] = out
    scales = [None] * nd
    scales[d] = scale
    probed = kernel(eye, out_size, bool(align_corners), *scales)  # (1, size, ..., out at d, ...)
    first = tuple(slice(None) if i == d else 0 for i in range(nd))
    return probed[(0, slice(None)) + first].T.to(F64).contiguous()


def along(h: Any, shape: Sequence[int], dim: int, weights: torch.Tensor) -> Any:
    """`weights` (out, size) applied along `dim` of `h`: each output a ``take`` of its taps times constants."""
    out, size = weights.shape
    nonzero = weights != 0
    taps = max(int(nonzero.sum(1).max()) if weights.numel() else 1, 1)
    order = torch.argsort((~nonzero).to(torch.int8), dim=1, stable=True)[:, :taps]  # each row's taps first
    cols = torch.where(torch.gather(nonzero, 1, order), order, torch.full((), -1, dtype=torch.long))
    w = torch.where(cols >= 0, torch.gather(weights, 1, order), torch.zeros((), dtype=F64))
    codes = torch.arange(math.prod(shape)).reshape(tuple(shape)).movedim(dim, -1)  # (..., size)
    index = torch.where(cols >= 0, codes[..., cols.clamp(min=0)], torch.full((), -1, dtype=torch.long))
    index = index.movedim(-2, dim)  # (..., out at dim, ..., taps)
    wshape = [1] * len(shape) + [taps]
    wshape[dim] = out
    return P.sum_(P.ew(MUL, P.take(h, index), w.reshape(wshape)), (len(shape),))


def _cubic(x: sympy.Expr, which: int) -> sympy.Expr:
    """torch's cubic convolution coefficient `which` (0..3) at offset x, A = -0.75, in its evaluation order."""
    a = sympy.Rational(-3, 4)
    if which in (1, 2):
        u = x if which == 1 else 1 - x
        return ((a + 2) * u - (a + 3)) * u * u + 1
    u = x + 1 if which == 0 else 2 - x
    return ((a * u - 5 * a) * u + 8 * a) * u - 4 * a


_t, _v = X[0], X[1]
# value * (weight of tap k at offset t), the tap chosen by one-hot constants e0..e3: one function for all taps
CUBIC_TAP = ew_fn("cubic tap", _v * sum(X[2 + k] * _cubic(_t, k) for k in range(4)), 6)


def cubic_taps(size: int, out: int, align_corners: bool, scale: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(taps (out, 4), t (out,)) of torch's bicubic upsampling along one dim: source index, its offset t,
    four taps clamped to the edges (UpSample.h: area_pixel_compute_scale / _source_index, guarded)."""
    dst = torch.arange(out, dtype=F64)
    if align_corners:
        ratio = (size - 1) / (out - 1) if out > 1 else 0.0
        real = ratio * dst
    else:
        ratio = 1.0 / scale if scale is not None and scale > 0 else size / out
        real = ratio * (dst + 0.5) - 0.5
    index = torch.floor(real).clamp(max=size - 1)
    t = (real - index).clamp(0, 1)
    taps = (index.to(torch.long).unsqueeze(1) - 1 + torch.arange(4)).clamp(0, size - 1)
    return taps, t


def cubic_along(h: Any, shape: Sequence[int], dim: int, size: int, out: int, align_corners: bool,
                scale: float | None) -> Any:
    taps, t = cubic_taps(size, out, align_corners, scale)
    codes = torch.arange(math.prod(shape)).reshape(tuple(shape)).movedim(dim, -1)
    index = codes[..., taps].movedim(-2, dim)  # (..., out at dim, ..., 4)
    tshape = [1] * len(shape) + [1]
    tshape[dim] = out
    onehot = [torch.eye(4, dtype=F64)[k] for k in range(4)]
    return P.sum_(P.ew(CUBIC_TAP, t.reshape(tshape), P.take(h, index), *onehot), (len(shape),))


def separable(c: Ctx, t: torch.Tensor, kernel: Any, align_corners: bool, scales: Sequence[float | None]) -> Any:
    """The kernel's resampling of `t` (N, C, *spatial) to torch's output size, one spatial dim at a time
    (kernel None: bicubic, from the cubic polynomials)."""
    nd = t.dim() - 2
    shape = list(t.shape)
    out_sp = tuple(c.out.shape[2:])
    h = c.v(t)
    for d in range(nd):
        if kernel is None:
            h = cubic_along(h, shape, 2 + d, shape[2 + d], out_sp[d], align_corners, scales[d])
        else:
            weights = axis_weights(kernel, nd, d, shape[2 + d], out_sp[d], align_corners, scales[d], t.dtype)
            h = along(h, shape, 2 + d, weights)
        shape[2 + d] = out_sp[d]
    return h


def _scales_of(a: Args, nd: int) -> list[float | None]:
    """The per-dim scale factors F.interpolate hands its kernel (None: the kernel uses in/out)."""
    if a.size is not None or a.scale_factor is None:
        return [None] * nd
    if a.mode == "area" or a.recompute_scale_factor:  # the output size is recomputed, the scale dropped
        return [None] * nd
    sf = a.scale_factor
    return [float(s) for s in sf] if isinstance(sf, (list, tuple)) else [float(sf)] * nd


@rule("interpolate", sig=lambda input, size=None, scale_factor=None, mode="nearest", align_corners=None,
      recompute_scale_factor=None, antialias=False: 0)
def _interpolate(c: Ctx, a: Args) -> Any:
    t = a.input
    nd = t.dim() - 2
    if a.mode in ("nearest", "nearest-exact"):
        return probe(c)
    if a.mode == "area":
        return adaptive_avg(c, t, tuple(c.out.shape[2:]), nd)
    key = (a.mode, bool(a.antialias))
    if key not in _KERNELS:
        raise Refused(f"interpolate(mode={a.mode!r}, antialias={a.antialias}) is not modelled")
    return separable(c, t, _KERNELS[key], bool(a.align_corners), _scales_of(a, nd))


rule("upsample_nearest1d", "upsample_nearest2d", "upsample_nearest3d", "_upsample_nearest_exact1d",
     "_upsample_nearest_exact2d", "_upsample_nearest_exact3d", sig=lambda *args, **kwargs: 0)(lambda c, a: probe(c))


@rule(*_BY_NAME, sig=lambda input, output_size=None, align_corners=False, *positional, scale_factors=None, scales=None,
      scales_d=None, scales_h=None, scales_w=None: 0)
def _upsample(c: Ctx, a: Args) -> Any:
    """The aten kernels called directly: ``(input, output_size, align_corners, scale_h, scale_w)``, or the
    ``.vec`` form ``(input, output_size, align_corners, scale_factors)``."""
    t = a.input
    nd = t.dim() - 2
    given = list(a.positional)
    if len(given) == 1 and (given[0] is None or isinstance(given[0], (list, tuple))):
        a["scale_factors"], given = given[0], []
    if a.scale_factors is not None:
        per_dim = [float(s) for s in a.scale_factors]
    elif given:
        per_dim = [None if s is None else float(s) for s in given]
    else:
        named = [a.scales] if nd == 1 else [a.scales_d, a.scales_h, a.scales_w][3 - nd:]
        per_dim = [None if s is None else float(s) for s in named]
    per_dim = (per_dim + [None] * nd)[:nd]
    if _BY_NAME[c.name] not in _KERNELS:
        raise Refused(f"{c.name} is not modelled in this torch version")
    return separable(c, t, _KERNELS[_BY_NAME[c.name]], bool(a.align_corners), per_dim)
