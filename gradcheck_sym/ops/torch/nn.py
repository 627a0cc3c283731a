"""Neural-network layers, decomposed: convolution and pooling windows, normalisation, dropout, embedding.

* Convolutions are im2col — a ``take`` with the window index map (padding as -1,
  stride and dilation by unfolding an integer code tensor) — then a batched
  ``matmul`` per group.  Their adjoints are the transposes we write (a scatter-add
  of the columns, matmuls), never torch's convolution backward.
* Max pooling takes the indices torch's own run chose (recomputed with
  ``return_indices=True`` on the user's input when the call did not ask for them):
  the values are a ``take``, ties resolved as torch resolved them.  Average pooling
  is a window ``take`` and sum, with torch's divisor read from the same op on ones.
* Normalisation layers are means and variances (sums) and elementwise math.
* Dropout replays the mask the user's run drew (from the generator state the tracer
  saved just before the op) and checks it reproduces torch's output exactly.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import sympy
import torch
import torch.nn.functional as F

from .. import prims as P
from ..ew import ADD, DIV, MUL, SUB, ew_fn, P as X
from .linalg import plus
from .reduce import variance
from .registry import Args, Ctx, Refused, rule

F64 = torch.float64
x = X[0]


def _tuple(v: Any, n: int) -> tuple[int, ...]:
    if isinstance(v, (list, tuple)):
        return tuple(int(e) for e in v) if len(v) == n else tuple(int(v[0]) for _ in range(n))
    return (int(v),) * n


def window_index(shape: Sequence[int], k: Sequence[int], stride: Sequence[int], pads: Sequence[tuple[int, int]],
                 dilation: Sequence[int], out_sizes: Sequence[int] | None = None) -> torch.Tensor:
    """Flat positions of each window element: shape (N, C, *out, *k); -1 in the padding.

    `shape` is (N, C, *spatial).  With `out_sizes` (ceil_mode), the right padding grows so that
    exactly that many windows fit.
    """
    nd = len(k)
    codes = torch.arange(math.prod(shape), dtype=torch.long).reshape(tuple(shape))
    pads = list(pads)
    if out_sizes is not None:
        for i in range(nd):
            span = (k[i] - 1) * dilation[i] + 1
            need = (out_sizes[i] - 1) * stride[i] + span
            have = shape[2 + i] + pads[i][0] + pads[i][1]
            if need > have:
                pads[i] = (pads[i][0], pads[i][1] + need - have)
    flat_pad = []
    for lo, hi in reversed(pads):
        flat_pad += [lo, hi]
    t = F.pad(codes, flat_pad, value=-1) if any(flat_pad) else codes
    for i in range(nd):
        t = t.unfold(2 + i, (k[i] - 1) * dilation[i] + 1, stride[i])
    for i in range(nd):
        if dilation[i] > 1:
            t = t.narrow(2 + nd + i, 0, t.shape[2 + nd + i]).unfold(2 + nd + i, 1, dilation[i]).squeeze(-1)
    if out_sizes is not None:
        t = t[(slice(None), slice(None)) + tuple(slice(0, o) for o in out_sizes)]
    return t.contiguous()


def _batched(t: torch.Tensor, nd: int) -> bool:
    return t.dim() == nd + 2


def _conv_pads(padding: Any, k: Sequence[int], dilation: Sequence[int], nd: int) -> list[tuple[int, int]]:
    if padding == "valid":
        return [(0, 0)] * nd
    if padding == "same":
        out = []
        for i in range(nd):
            total = dilation[i] * (k[i] - 1)
            out.append((total // 2, total - total // 2))
        return out
    p = _tuple(padding, nd)
    return [(e, e) for e in p]


def conv(c: Ctx, xt: torch.Tensor, w: torch.Tensor, bias: Any, stride: Any, padding: Any, dilation: Any,
         groups: int, nd: int) -> Any:
    batched = _batched(xt, nd)
    xs = tuple(xt.shape) if batched else (1,) + tuple(xt.shape)
    h = c.v(xt) if batched else P.reshape(c.v(xt), xs)
    n, cin = xs[0], xs[1]
    k = tuple(w.shape[2:])
    st, dil = _tuple(stride, nd), _tuple(dilation, nd)
    index = window_index(xs, k, st, _conv_pads(padding, k, dil, nd), dil)  # (N, C, *out, *k)
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
        out = plus(out, P.reshape(c.v(bias), (o,) + (1,) * nd))
    return out if batched else P.reshape(out, (o,) + out_sp)


def _conv_rule(nd: int) -> Any:
    def lower(c: Ctx, a: Args) -> Any:
        return conv(c, a.input, a.weight, a.bias, a.stride, a.padding, a.dilation, a.groups, nd)

    return lower


for _nd in (1, 2, 3):
    rule(f"conv{_nd}d", sig=lambda input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1: 0)(
        _conv_rule(_nd))


def conv_transpose(c: Ctx, xt: torch.Tensor, w: torch.Tensor, bias: Any, stride: Any, padding: Any,
                   output_padding: Any, groups: int, dilation: Any, nd: int, out_shape: tuple[int, ...]) -> Any:
    """The transpose of conv in its input: columns (x @ W) scattered into the output windows."""
    batched = _batched(xt, nd)
    xs = tuple(xt.shape) if batched else (1,) + tuple(xt.shape)
    h = c.v(xt) if batched else P.reshape(c.v(xt), xs)
    n, cin = xs[0], xs[1]
    g = int(groups)
    k = tuple(w.shape[2:])
    og = w.shape[1]
    cout = og * g
    st, dil, pad = _tuple(stride, nd), _tuple(dilation, nd), _tuple(padding, nd)
    osz = tuple(out_shape[-nd:])
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
        out = plus(out, P.reshape(c.v(bias), (cout,) + (1,) * nd))
    return out if batched else P.reshape(out, tuple(out_shape))


def _conv_t_rule(nd: int) -> Any:
    def lower(c: Ctx, a: Args) -> Any:
        return conv_transpose(c, a.input, a.weight, a.bias, a.stride, a.padding, a.output_padding, a.groups,
                              a.dilation, nd, tuple(c.out.shape))

    return lower


for _nd in (1, 2, 3):
    rule(f"conv_transpose{_nd}d",
         sig=lambda input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1: 0)(
        _conv_t_rule(_nd))


# ---------------------------------------------------------------- pooling
def _pool_values(c: Ctx, xt: torch.Tensor, indices: torch.Tensor, nd: int) -> Any:
    """Values picked by torch's pooling indices (flat over the spatial dims of each (N, C))."""
    batched = _batched(xt, nd)
    xs = tuple(xt.shape) if batched else (1,) + tuple(xt.shape)
    idx = indices if batched else indices.unsqueeze(0)
    spatial = math.prod(xs[2:])
    base = (torch.arange(xs[0] * xs[1]) * spatial).reshape((xs[0], xs[1]) + (1,) * nd)
    out = P.take(c.v(xt), base + idx)
    return out if batched else P.reshape(out, tuple(indices.shape))


def _max_pool_rule(nd: int) -> Any:
    fn = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[nd]

    def lower(c: Ctx, a: Args) -> Any:
        if isinstance(c.out, tuple):
            values, indices = c.out
        else:
            values, indices = fn(a.input.detach(), a.kernel_size, a.stride, a.padding, a.dilation,
                                 ceil_mode=a.ceil_mode, return_indices=True)
        h = _pool_values(c, a.input, indices, nd)
        return (h, None) if isinstance(c.out, tuple) else h

    return lower


for _nd in (1, 2, 3):
    rule(f"max_pool{_nd}d", f"max_pool{_nd}d_with_indices", f"_max_pool{_nd}d",
         sig=lambda input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False: 0)(
        _max_pool_rule(_nd))


def _adaptive_max_rule(nd: int) -> Any:
    fn = {1: F.adaptive_max_pool1d, 2: F.adaptive_max_pool2d, 3: F.adaptive_max_pool3d}[nd]

    def lower(c: Ctx, a: Args) -> Any:
        if isinstance(c.out, tuple):
            values, indices = c.out
        else:
            values, indices = fn(a.input.detach(), a.output_size, return_indices=True)
        h = _pool_values(c, a.input, indices, nd)
        return (h, None) if isinstance(c.out, tuple) else h

    return lower


for _nd in (1, 2, 3):
    rule(f"adaptive_max_pool{_nd}d", f"adaptive_max_pool{_nd}d_with_indices", f"_adaptive_max_pool{_nd}d",
         sig=lambda input, output_size, return_indices=False: 0)(_adaptive_max_rule(_nd))


def _avg_pool_rule(nd: int) -> Any:
    fn = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[nd]

    def lower(c: Ctx, a: Args) -> Any:
        xt = a.input
        batched = _batched(xt, nd)
        xs = tuple(xt.shape) if batched else (1,) + tuple(xt.shape)
        k = _tuple(a.kernel_size, nd)
        st = _tuple(a.stride if a.stride not in (None, [], ()) else a.kernel_size, nd)
        pad = _tuple(a.padding, nd)
        out_sp = tuple(c.out.shape[-nd:])
        index = window_index(xs, k, st, [(p, p) for p in pad], (1,) * nd, out_sizes=out_sp)
        h = c.v(xt) if batched else P.reshape(c.v(xt), xs)
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
        out = P.ew(MUL, sums, weight)
        return out if batched else P.reshape(out, tuple(c.out.shape))

    return lower


for _nd in (1, 2, 3):
    rule(f"avg_pool{_nd}d", sig=lambda input, kernel_size, stride=None, padding=0, ceil_mode=False,
         count_include_pad=True, divisor_override=None: 0)(_avg_pool_rule(_nd))


def _adaptive_windows(size: int, out: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(starts, lengths) of torch's adaptive windows along one dim."""
    i = torch.arange(out)
    start = torch.div(i * size, out, rounding_mode="floor")
    end = torch.div((i + 1) * size + out - 1, out, rounding_mode="floor")
    return start, end - start


def _adaptive_avg_rule(nd: int) -> Any:
    def lower(c: Ctx, a: Args) -> Any:
        xt = a.input
        batched = _batched(xt, nd)
        xs = tuple(xt.shape) if batched else (1,) + tuple(xt.shape)
        out_sp = tuple(c.out.shape[-nd:])
        # separable windows: the index map of each dim, padded to its longest window with -1
        idx = torch.arange(math.prod(xs)).reshape(xs)
        weight = torch.ones((), dtype=F64)
        for d in range(nd):
            start, length = _adaptive_windows(xs[2 + d], out_sp[d])
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
        h = c.v(xt) if batched else P.reshape(c.v(xt), xs)
        sums = P.sum_(P.take(h, idx), tuple(range(2 + nd, 2 + 2 * nd)))
        out = P.ew(MUL, sums, weight)
        return out if batched else P.reshape(out, tuple(c.out.shape))

    return lower


for _nd in (1, 2, 3):
    rule(f"adaptive_avg_pool{_nd}d", f"_adaptive_avg_pool{_nd}d", sig=lambda input, output_size: 0)(
        _adaptive_avg_rule(_nd))


# ---------------------------------------------------------------- normalisation
_RSQRT = ew_fn("rsqrt", 1 / sympy.sqrt(X[0]), 1)


def normalise(c: Ctx, t: torch.Tensor, dims: tuple[int, ...], eps: float) -> Any:
    """(x - mean) / sqrt(var + eps) over `dims` (biased variance)."""
    var, mean = variance(c, t, dims, 0.0, True)
    return P.ew(MUL, P.ew(SUB, c.v(t), mean), P.ew(_RSQRT, P.ew(ADD, var, float(eps))))


def affine(c: Ctx, h: Any, weight: Any, bias: Any, shape: tuple[int, ...]) -> Any:
    if weight is not None:
        h = P.ew(MUL, h, P.reshape(c.v(weight), shape))
    if bias is not None:
        h = P.ew(ADD, h, P.reshape(c.v(bias), shape))
    return h


@rule("layer_norm", sig=lambda input, normalized_shape, weight=None, bias=None, eps=1e-5: 0)
def _layer_norm(c: Ctx, a: Args) -> Any:
    k = len(a.normalized_shape) if isinstance(a.normalized_shape, (list, tuple, torch.Size)) else 1
    dims = tuple(range(a.input.dim() - k, a.input.dim()))
    h = normalise(c, a.input, dims, a.eps)
    return affine(c, h, a.weight, a.bias, tuple(a.input.shape[-k:]))


@rule("rms_norm", sig=lambda input, normalized_shape, weight=None, eps=None: 0)
def _rms_norm(c: Ctx, a: Args) -> Any:
    k = len(a.normalized_shape) if isinstance(a.normalized_shape, (list, tuple, torch.Size)) else 1
    dims = tuple(range(a.input.dim() - k, a.input.dim()))
    eps = a.eps if a.eps is not None else torch.finfo(a.input.dtype).eps
    h = c.v(a.input)
    n = math.prod(a.input.shape[d] for d in dims)
    ms = P.ew(DIV, P.sum_(P.ew(ew_fn("square", X[0] ** 2, 1), h), dims, keepdim=True), float(n))
    out = P.ew(MUL, h, P.ew(_RSQRT, P.ew(ADD, ms, float(eps))))
    return affine(c, out, a.weight, None, tuple(a.input.shape[-k:]))


@rule("batch_norm", sig=lambda input, running_mean, running_var, weight=None, bias=None, training=False,
      momentum=0.1, eps=1e-5, cudnn_enabled=True: 0)
def _batch_norm(c: Ctx, a: Args) -> Any:
    t = a.input
    shape = (1, t.shape[1]) + (1,) * (t.dim() - 2)
    if a.training or a.running_mean is None:
        dims = (0,) + tuple(range(2, t.dim()))
        h = normalise(c, t, dims, a.eps)
    else:  # eval: the running statistics are constants (their values when the op ran)
        mean = P.reshape(c.v(a.running_mean), shape)
        var = P.reshape(c.v(a.running_var), shape)
        h = P.ew(MUL, P.ew(SUB, c.v(t), mean), P.ew(_RSQRT, P.ew(ADD, var, float(a.eps))))
    return affine(c, h, a.weight, a.bias, shape)


@rule("group_norm", sig=lambda input, num_groups, weight=None, bias=None, eps=1e-5: 0)
def _group_norm(c: Ctx, a: Args) -> Any:
    t = a.input
    n, ch = t.shape[0], t.shape[1]
    g = int(a.num_groups)
    h = P.reshape(c.v(t), (n, g, t.numel() // (n * g)))
    var, mean = _stats(h, (2,))
    norm = P.ew(MUL, P.ew(SUB, h, mean), P.ew(_RSQRT, P.ew(ADD, var, float(a.eps))))
    norm = P.reshape(norm, tuple(t.shape))
    return affine(c, norm, a.weight, a.bias, (1, ch) + (1,) * (t.dim() - 2))


def _stats(h: Any, dims: tuple[int, ...]) -> tuple[Any, Any]:
    n = math.prod(P.shape_of(h)[d] for d in dims)
    mean = P.ew(DIV, P.sum_(h, dims, keepdim=True), float(n))
    d = P.ew(SUB, h, mean)
    var = P.ew(DIV, P.sum_(P.ew(ew_fn("square", X[0] ** 2, 1), d), dims, keepdim=True), float(n))
    return var, mean


@rule("instance_norm", sig=lambda input, running_mean=None, running_var=None, weight=None, bias=None,
      use_input_stats=True, momentum=0.1, eps=1e-5, cudnn_enabled=True: 0)
def _instance_norm(c: Ctx, a: Args) -> Any:
    t = a.input
    if not a.use_input_stats:
        raise Refused("instance_norm with running statistics is not modelled")
    dims = tuple(range(2, t.dim()))
    h = normalise(c, t, dims, a.eps)
    return affine(c, h, a.weight, a.bias, (1, t.shape[1]) + (1,) * (t.dim() - 2))


# ---------------------------------------------------------------- dropout
def _replayed_mask(c: Ctx, t: torch.Tensor, p: float, shape: tuple[int, ...]) -> torch.Tensor:
    """The Bernoulli mask torch drew for this call, replayed from the generator state before it."""
    state = c.rng_state
    if state is None or t.device.type != "cpu":
        raise Refused("dropout's mask could not be recovered (not a CPU generator)")
    gen = torch.Generator()
    gen.set_state(state)
    return torch.empty(shape, dtype=t.dtype).bernoulli_(1 - p, generator=gen)


def _dropout_rule(feature: bool) -> Any:
    def lower(c: Ctx, a: Args) -> Any:
        t, p = a.input, float(a.p)
        if not a.training or p == 0:
            return c.v(t)
        if p == 1:
            return P.ew(MUL, c.v(t), 0.0)
        shape = tuple(t.shape)
        if feature:
            batched = t.dim() >= 3 if c.name != "dropout1d" else t.dim() == 3
            shape = tuple(t.shape[:2] if batched else t.shape[:1]) + (1,) * (t.dim() - (2 if batched else 1))
        mask = _replayed_mask(c, t, p, shape)
        noise = mask.div_(1 - p)
        if not torch.equal(t.detach() * noise, c.out.detach()):
            raise Refused("dropout's mask could not be recovered from the generator state")
        return P.ew(MUL, c.v(t), noise.to(F64))

    return lower


rule("dropout", sig=lambda input, p=0.5, training=True, inplace=False: 0)(_dropout_rule(False))
rule("dropout1d", "dropout2d", "dropout3d", "feature_dropout",
     sig=lambda input, p=0.5, training=True, inplace=False: 0)(_dropout_rule(True))


# ---------------------------------------------------------------- embedding
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
    live = P.take(c.v(w), torch.where(is_pad, torch.full((), -1, dtype=torch.long), index))
    const = torch.where(is_pad, w.detach().to(F64).reshape(-1)[index], torch.zeros((), dtype=F64))
    return P.ew(ADD, live, const)
