"""grid_sample: the input read at the user's grid points, interpolated — exact in the input and in the grid.

For each spatial axis the grid coordinate g in [-1, 1] becomes a pixel coordinate u:
unnormalised (``(g + 1) * size / 2 - 0.5``, or ``(g + 1) * (size - 1) / 2`` with
align_corners), then, for the border and reflection padding modes, reflected and
clipped to the image.  That map is piecewise linear: on the piece the user's run is
on, ``u = slope * g + offset`` with ``slope`` = the unnormalising scale times the
reflection's sign times 0 where clipped (torch's convention: no gradient at or
beyond a border).  The *decisions* — which piece, which pixels are the corners
(``floor(u)``), the nearest pixel (``round(u)``) — are taken from the user's run,
computed with torch's own formulas in the user's dtype (the CPU kernels': the
vectorised one for 2-D, the scalar one for 3-D), so they are the pixels torch read.

Then the output is a sum over taps of ``input[tap] * weight(t)`` with ``t = u - floor(u)``
(an elementwise function of the grid): bilinear weights ``1 - t, t`` per axis, bicubic
the cubic convolution polynomials (`interpolate.CUBIC_TAP`), nearest a plain ``take``
(no gradient to the grid, as torch documents).  Taps outside the input read 0.

affine_grid (the spatial transformer's grid) is linear in theta: each point's homogeneous base coordinates
``(x, y[, z], 1)`` times theta's rows, a matmul with a constant base grid (torch's own, made in float64 from an
identity theta: the same coordinates, which depend only on the size and align_corners).
"""

from __future__ import annotations

from typing import Any

import torch

from .. import prims as P
from ..ew import ADD, MUL, P as X, ew_fn
from .interpolate import CUBIC_TAP
from .registry import Args, Ctx, Refused, rule

__all__ = ["grid_sample", "locate", "LINEAR_TAP", "affine_grid"]

F64 = torch.float64
_MODES = {"bilinear": 0, "nearest": 1, "bicubic": 2}
_PADDING = {"zeros": 0, "border": 1, "reflection": 2}
_d, _v = X[0], X[1]
# value * (weight of tap 0 or 1 of linear interpolation at offset d), the tap chosen by one-hot constants
LINEAR_TAP = ew_fn("linear tap", _v * (X[2] * (1 - _d) + X[3] * _d), 4)


def _reflect(u: torch.Tensor, size: int, align: bool, vectorised: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(reflected coordinate, d reflected / d u = ±1) as torch's CPU kernels compute them."""
    if vectorised:  # GridSamplerKernel.cpp, ComputeLocationBase::reflect_coordinates(_get_grad)
        if align and size <= 1:
            return torch.zeros_like(u), torch.zeros_like(u)
        low, span2 = (0.0, 2.0 * (size - 1)) if align else (-0.5, 2.0 * size)
        shifted = u - low
        a = shifted.abs()
        extra = a - torch.trunc(a / span2) * span2
        flip = extra > span2 - extra
        sign = torch.where(flip ^ (shifted < 0), -1.0, 1.0)
        return torch.minimum(extra, span2 - extra) + low, sign
    # GridSampler.h: reflect_coordinates(_set_grad), for the scalar (3-D) kernel
    twice_low, twice_high = (0, 2 * (size - 1)) if align else (-1, 2 * size - 1)
    if twice_low == twice_high:
        return torch.zeros_like(u), torch.zeros_like(u)
    low, span = twice_low / 2, (twice_high - twice_low) / 2
    shifted = u - low
    a = shifted.abs()
    extra = torch.fmod(a, span)
    even = torch.remainder(torch.floor(a / span), 2) == 0
    mult = torch.where(shifted < 0, -1.0, 1.0)
    return torch.where(even, extra + low, span - extra + low), torch.where(even, mult, -mult)


def locate(g: torch.Tensor, size: int, padding: int, align: bool, vectorised: bool
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """(pixel coordinate, d coordinate / d g) of grid values `g`, in g's dtype, as torch computes them."""
    if vectorised:
        scale = (size - 1) / 2 if align else size / 2
        u = (g + 1) * scale if align else (g + 1) * scale - 0.5
    else:
        scale = (size - 1) / 2 if align else size / 2
        u = ((g + 1) / 2) * (size - 1) if align else ((g + 1) * size - 1) / 2
    slope = torch.full_like(u, scale)
    if padding == 0:
        return u, slope
    if padding == 2:
        u, sign = _reflect(u, size, align, vectorised)
        slope = slope * sign
    inside = (u > 0) & (u < size - 1)  # torch: no gradient at or beyond a border
    return u.clamp(0, size - 1), torch.where(inside, slope, torch.zeros((), dtype=slope.dtype))


def _clip_taps(pos: torch.Tensor, size: int, padding: int, align: bool, vectorised: bool) -> torch.Tensor:
    """Bicubic's tap coordinates through the padding mode (torch's compute_coordinates), as pixel indices."""
    if padding == 2:
        pos = _reflect(pos, size, align, vectorised)[0]
    if padding:
        pos = pos.clamp(0, size - 1)
    return pos.to(torch.long)


def grid_sample(c: Ctx, inp: torch.Tensor, grid: torch.Tensor, mode: int, padding: int, align: bool) -> Any:
    """Mode 0 bilinear, 1 nearest, 2 bicubic; padding 0 zeros, 1 border, 2 reflection (torch's codes)."""
    nd = inp.dim() - 2
    n, ch = inp.shape[:2]
    sizes = tuple(inp.shape[2:])
    out_sp = tuple(grid.shape[1:-1])
    vectorised = nd == 2 and inp.dtype in (torch.float32, torch.float64)
    exact = c.user_value(grid)  # float64
    user = exact.to(grid.dtype)  # the user's dtype: the decisions
    codes = torch.arange(grid.numel()).reshape(grid.shape)
    taps = {0: 2, 1: 1, 2: 4}[mode]
    lead = (n, 1) + out_sp  # the shape of per-point quantities, broadcast over channels
    index = (torch.arange(n * ch).reshape(n, ch)).reshape((n, ch) + (1,) * (2 * nd))
    valid = torch.ones((), dtype=torch.bool)
    offsets = []
    for i in range(nd):  # spatial dim i is grid component nd - 1 - i (x is the last dim)
        comp, size = nd - 1 - i, sizes[i]
        pad = 0 if mode == 2 else padding  # bicubic pads its taps, not its coordinate
        u, slope = locate(user[..., comp], size, pad, align, vectorised)
        base = torch.floor(u)
        if mode == 1:
            pos = torch.round(u).to(torch.long).unsqueeze(-1)  # round half to even, as nearbyint
        elif mode == 0:
            pos = base.to(torch.long).unsqueeze(-1) + torch.arange(2)
        else:
            pos = _clip_taps(base.unsqueeze(-1) + torch.arange(4) - 1, size, padding, align, vectorised)
        if mode != 1:
            # t = u - floor(u) on the user's piece: slope * g + (u - slope * g - floor(u)), g the traced grid
            u64 = locate(exact[..., comp], size, pad, align, vectorised)[0]
            slope64 = slope.to(F64)
            shift = u64 - slope64 * exact[..., comp] - base.to(F64)
            g_i = P.take(c.v(grid), codes[..., comp])
            offsets.append(P.reshape(P.ew(ADD, P.ew(MUL, g_i, slope64), shift), lead))
        pos = pos.reshape((n,) + out_sp + _tap_shape(i, nd, pos.shape[-1])).unsqueeze(1)
        valid = valid & (pos >= 0) & (pos < size)
        index = index * size + pos
    h = P.take(c.v(inp), torch.where(valid, index, torch.full((), -1, dtype=torch.long)))
    if mode == 1:
        return P.reshape(h, (n, ch) + out_sp)
    tap = LINEAR_TAP if mode == 0 else CUBIC_TAP
    onehot = [torch.eye(taps, dtype=F64)[k] for k in range(taps)]
    for i in reversed(range(nd)):  # the last tap axis first: x, then y (then z)
        t = P.reshape(offsets[i], lead + (1,) * (i + 1))
        h = P.sum_(P.ew(tap, t, h, *onehot), (2 + nd + i,))
    return h


def _tap_shape(i: int, nd: int, taps: int) -> tuple[int, ...]:
    shape = [1] * nd
    shape[i] = taps
    return tuple(shape)


def _check(c: Ctx, mode: Any, padding: Any) -> tuple[int, int]:
    if mode not in (0, 1, 2) or padding not in (0, 1, 2):
        raise Refused(f"{c.name}: interpolation mode {mode!r}, padding mode {padding!r} are not modelled")
    return int(mode), int(padding)


@rule("grid_sample", sig=lambda input, grid, mode="bilinear", padding_mode="zeros", align_corners=None: 0)
def _grid_sample(c: Ctx, a: Args) -> Any:
    mode, padding = _check(c, _MODES.get(a.mode), _PADDING.get(a.padding_mode))
    return grid_sample(c, a.input, a.grid, mode, padding, bool(a.align_corners))


@rule("grid_sampler", "grid_sampler_2d", "grid_sampler_3d", "_grid_sampler_2d_cpu_fallback",
      sig=lambda input, grid, interpolation_mode, padding_mode, align_corners: 0)
def _grid_sampler(c: Ctx, a: Args) -> Any:
    mode, padding = _check(c, a.interpolation_mode, a.padding_mode)
    return grid_sample(c, a.input, a.grid, mode, padding, bool(a.align_corners))




def affine_grid(c: Ctx, theta: torch.Tensor, size: Any, align: bool) -> Any:
    """The grid ``base @ theta^T``: (N, H, W, 2) for a 2-D theta (N, 2, 3), (N, D, H, W, 3) for (N, 3, 4)."""
    size = tuple(int(s) for s in size)
    nd = len(size) - 2
    if theta.dim() != 3 or tuple(theta.shape[1:]) != (nd, nd + 1) or nd not in (2, 3):
        raise Refused(f"{c.name}: theta of shape {tuple(theta.shape)} with size {size} is not modelled")
    eye = torch.eye(nd, nd + 1, dtype=F64).unsqueeze(0)
    base = torch.affine_grid_generator(eye, (1,) + size[1:], align)  # (1, *spatial, nd): x, y[, z]
    points = base.reshape(1, -1, nd)
    homogeneous = torch.cat([points, torch.ones(points.shape[:-1] + (1,), dtype=F64)], -1)  # (1, P, nd + 1)
    out = P.matmul(c.const(homogeneous), P.permute(c.v(theta), (0, 2, 1)))  # (N, P, nd)
    return P.reshape(out, (size[0],) + size[2:] + (nd,))


@rule("affine_grid", sig=lambda theta, size, align_corners=None: 0)
def _affine_grid(c: Ctx, a: Args) -> Any:
    return affine_grid(c, a.theta, a.size, bool(a.align_corners))


@rule("affine_grid_generator", sig=lambda theta, size, align_corners: 0)
def _affine_grid_generator(c: Ctx, a: Args) -> Any:
    return affine_grid(c, a.theta, a.size, bool(a.align_corners))
