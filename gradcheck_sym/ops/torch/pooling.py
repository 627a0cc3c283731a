"""Pooling: max (decided by torch's own indices), average (a window sum), unpooling, fractional max pooling.

* Max pooling of every kind takes the indices torch's own run chose — the op's
  second output, or the same op run again on the user's input with
  ``return_indices=True`` — so the values are a ``take`` and ties are resolved as
  torch resolved them.  Fractional max pooling draws its window offsets at random:
  they are replayed from the generator state the tracer saved before the op.
* Average pooling is a window ``take`` and sum, with torch's divisor read from the
  same op run on ones (it depends on ceil_mode, count_include_pad, divisor_override).
* Adaptive average pooling sums torch's adaptive windows (start ⌊i·n/o⌋, end ⌈(i+1)·n/o⌉).
* ``max_unpool`` only moves data (the generic probe of `movement`);
  ``max_pool2d_with_indices_backward``, a backward formula exposed as an op, is the
  linear map it is: a scatter-add of its first argument by the indices.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from .. import prims as P
from ..ew import MUL
from .conv import as_batched, batched, ntuple, window_index
from .movement import probe
from .registry import Args, Ctx, Refused, rule

__all__ = ["pool_values", "adaptive_windows", "adaptive_avg"]

F64 = torch.float64


def pool_values(c: Ctx, xt: torch.Tensor, indices: torch.Tensor, nd: int) -> Any:
    """Values picked by torch's pooling indices (flat over the spatial dims of each (N, C))."""
    h, xs = as_batched(c, xt, nd)
    idx = indices if batched(xt, nd) else indices.unsqueeze(0)
    return P.reshape(P.take(h, _flat(idx, xs, nd)), tuple(indices.shape))


def _flat(idx: torch.Tensor, xs: tuple[int, ...], nd: int) -> torch.Tensor:
    """Per-(N, C) spatial indices as flat positions in the whole (N, C, *spatial) tensor."""
    base = (torch.arange(xs[0] * xs[1]) * math.prod(xs[2:])).reshape((xs[0], xs[1]) + (1,) * nd)
    return base + idx


def _with_indices(c: Ctx, a: Args, nd: int, again: Any) -> Any:
    """The pooled values, from the op's own indices or those of `again()` (the op with return_indices)."""
    values, indices = c.out if isinstance(c.out, tuple) else again()
    h = pool_values(c, a.input, indices, nd)
    return (h, None) if isinstance(c.out, tuple) else h


def _max_pool_rule(nd: int) -> Any:
    fn = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[nd]

    def lower(c: Ctx, a: Args) -> Any:
        return _with_indices(c, a, nd, lambda: fn(a.input.detach(), a.kernel_size, a.stride, a.padding, a.dilation,
                                                  ceil_mode=a.ceil_mode, return_indices=True))

    return lower


for _nd in (1, 2, 3):
    rule(f"max_pool{_nd}d", f"max_pool{_nd}d_with_indices", f"_max_pool{_nd}d",
         sig=lambda input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False: 0)(
        _max_pool_rule(_nd))


def _adaptive_max_rule(nd: int) -> Any:
    fn = {1: F.adaptive_max_pool1d, 2: F.adaptive_max_pool2d, 3: F.adaptive_max_pool3d}[nd]

    def lower(c: Ctx, a: Args) -> Any:
        return _with_indices(c, a, nd, lambda: fn(a.input.detach(), a.output_size, return_indices=True))

    return lower


for _nd in (1, 2, 3):
    rule(f"adaptive_max_pool{_nd}d", f"adaptive_max_pool{_nd}d_with_indices", f"_adaptive_max_pool{_nd}d",
         sig=lambda input, output_size, return_indices=False: 0)(_adaptive_max_rule(_nd))


def _fractional_rule(nd: int) -> Any:
    fn = {2: F.fractional_max_pool2d, 3: F.fractional_max_pool3d}[nd]

    def lower(c: Ctx, a: Args) -> Any:
        samples = a._random_samples
        if samples is None:  # drawn inside the op: replay torch.rand(N, C, nd) from the saved state
            if c.rng_state is None or a.input.device.type != "cpu":
                raise Refused("fractional max pooling's random samples could not be recovered")
            gen = torch.Generator()
            gen.set_state(c.rng_state)
            n = 1 if a.input.dim() == nd + 1 else a.input.shape[0]
            samples = torch.rand(n, a.input.shape[-nd - 1], nd, dtype=a.input.dtype, generator=gen)
        values, indices = fn(a.input.detach(), a.kernel_size, a.output_size, a.output_ratio, return_indices=True,
                             _random_samples=samples.detach())
        got = c.out[0] if isinstance(c.out, tuple) else c.out
        if not torch.equal(values, got.detach()):
            raise Refused("fractional max pooling's random samples could not be recovered")
        h = pool_values(c, a.input, indices, nd)
        return (h, None) if isinstance(c.out, tuple) else h

    return lower


for _nd in (2, 3):
    rule(f"fractional_max_pool{_nd}d", f"fractional_max_pool{_nd}d_with_indices",
         sig=lambda input, kernel_size, output_size=None, output_ratio=None, return_indices=False,
         _random_samples=None: 0)(_fractional_rule(_nd))


def _avg_pool_rule(nd: int) -> Any:
    fn = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[nd]

    def lower(c: Ctx, a: Args) -> Any:
        h, xs = as_batched(c, a.input, nd)
        k = ntuple(a.kernel_size, nd)
        st = ntuple(a.stride if a.stride not in (None, [], ()) else a.kernel_size, nd)
        pad = ntuple(a.padding, nd)
        out_sp = tuple(c.out.shape[-nd:])
        index = window_index(xs, k, st, [(p, p) for p in pad], (1,) * nd, out_sizes=out_sp)
        sums = P.sum_(P.take(h, index), tuple(range(2 + nd, 2 + 2 * nd)))
        # torch's divisor, from the same op on ones: avg(ones) = real elements / divisor
        kw = {"ceil_mode": a.ceil_mode, "count_include_pad": a.count_include_pad}
        if nd > 1:
            kw["divisor_override"] = a.divisor_override
        elif a.divisor_override is not None:
            raise Refused("avg_pool1d has no divisor_override")
        ones = fn(torch.ones(xs, dtype=F64), k, st, pad, **kw)
        real = (index >= 0).sum(dim=tuple(range(2 + nd, 2 + 2 * nd))).to(F64)
        weight = torch.where(real > 0, ones / real.clamp(min=1), torch.zeros((), dtype=F64))
        return P.reshape(P.ew(MUL, sums, weight), tuple(c.out.shape))

    return lower


for _nd in (1, 2, 3):
    rule(f"avg_pool{_nd}d", sig=lambda input, kernel_size, stride=None, padding=0, ceil_mode=False,
         count_include_pad=True, divisor_override=None: 0)(_avg_pool_rule(_nd))


def adaptive_windows(size: int, out: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(starts, lengths) of torch's adaptive windows along one dim."""
    i = torch.arange(out)
    start = torch.div(i * size, out, rounding_mode="floor")
    end = torch.div((i + 1) * size + out - 1, out, rounding_mode="floor")
    return start, end - start


def adaptive_avg(c: Ctx, t: torch.Tensor, out_sp: tuple[int, ...], nd: int) -> Any:
    """Adaptive average pooling of `t` ((N, C, *spatial) or unbatched) to `out_sp`: window sums times
    1/length per dim (the windows are separable; each dim's index map is padded with -1 to its longest)."""
    h, xs = as_batched(c, t, nd)
    idx = torch.arange(math.prod(xs)).reshape(xs)
    weight = torch.ones((), dtype=F64)
    for d in range(nd):
        start, length = adaptive_windows(xs[2 + d], out_sp[d])
        kmax = int(length.max())
        pos = start.unsqueeze(1) + torch.arange(kmax).unsqueeze(0)  # (out, kmax)
        valid = torch.arange(kmax).unsqueeze(0) < length.unsqueeze(1)
        pos = torch.where(valid, pos, torch.zeros((), dtype=torch.long))
        dim = 2 + d
        idx = idx.movedim(dim, -1)[..., pos]  # (..., out, kmax)
        idx = torch.where(valid, idx, torch.full((), -1, dtype=torch.long))
        idx = idx.movedim(-2, dim)
        wd = (1.0 / length.to(F64)).reshape([1] * (2 + d) + [out_sp[d]] + [1] * (nd - d - 1))
        weight = weight * wd
    # idx: (N, C, *out, k_1..k_nd)
    sums = P.sum_(P.take(h, idx), tuple(range(2 + nd, 2 + 2 * nd)))
    out = P.ew(MUL, sums, weight)
    return out if batched(t, nd) else P.reshape(out, tuple(P.shape_of(out))[1:])


def _adaptive_avg_rule(nd: int) -> Any:
    def lower(c: Ctx, a: Args) -> Any:
        return adaptive_avg(c, a.input, tuple(c.out.shape[-nd:]), nd)

    return lower


for _nd in (1, 2, 3):
    rule(f"adaptive_avg_pool{_nd}d", f"_adaptive_avg_pool{_nd}d", sig=lambda input, output_size: 0)(
        _adaptive_avg_rule(_nd))


rule("max_unpool1d", "max_unpool2d", "max_unpool3d", sig=lambda *args, **kwargs: 0)(lambda c, a: probe(c))


@rule("max_pool2d_with_indices_backward.default", "max_pool2d_with_indices_backward",
      sig=lambda grad_output, self, kernel_size, stride, padding, dilation, ceil_mode, indices: 0)
def _max_pool2d_backward(c: Ctx, a: Args) -> Any:
    """grad_input = zeros like `self`, plus grad_output added at the indices (linear in grad_output;
    `self` only gives the shape)."""
    xs = tuple(a.self.shape) if batched(a.self, 2) else (1,) + tuple(a.self.shape)
    g = a.grad_output if batched(a.self, 2) else a.grad_output.unsqueeze(0)
    idx = a.indices if batched(a.self, 2) else a.indices.unsqueeze(0)
    out = P.segsum(P.reshape(c.v(a.grad_output), tuple(g.shape)), _flat(idx, xs, 2), xs)
    return P.reshape(out, tuple(c.out.shape))
