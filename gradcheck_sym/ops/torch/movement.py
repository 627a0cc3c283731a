"""Movement and indexing: views, slices, gathers, concatenation, padding — exact linear maps.

Reshapes, permutations and broadcasts have their own primitives.  Every other op
that only *moves* data — each output element a copy of one input element, or a
fill value — is found out by probing: torch runs the op once more on
integer-coded float64 inputs (element i of the inputs holds i + 1), which gives
the flat index map ``I``, and on zeros, which gives the fill ``F``; a third run on
seeded random inputs checks that ``op(X) == take(X, I) + F`` exactly, so an op that
does arithmetic is never mistaken for movement.  The reference is then
``take(X, I) + F``, whose transpose (a scatter-add) we write ourselves: torch's
forward kernel is used on our codes, its backward never.
"""

from __future__ import annotations

from typing import Any

import torch

from .. import prims as P
from ..core import leaves
from ..ew import ADD, MUL
from .registry import Args, Ctx, Refused, rule

F64 = torch.float64
_PRIMES = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37)


def _out_shape(c: Ctx) -> tuple[int, ...]:
    return tuple(c.out.shape)


def _same_dtype(c: Ctx, t: torch.Tensor) -> None:
    if isinstance(c.out, torch.Tensor) and c.out.dtype != t.dtype and not (c.out.is_floating_point()
                                                                             and t.is_floating_point()):
        raise Refused("a view as another dtype (reinterpreting bits) is not differentiable")


# ---------------------------------------------------------------- reshape, permute, broadcast
@rule("reshape", "view", "flatten", "unflatten", "ravel", "squeeze", "unsqueeze", "view_as", "reshape_as",
      "view_copy", "squeeze_copy", "unsqueeze_copy", "_reshape_alias", "atleast_1d", "atleast_2d", "atleast_3d",
      sig=lambda input, *args, **kwargs: 0)
def _reshape(c: Ctx, a: Args) -> Any:
    # Every argument only says what the output's shape is, and torch's result has it:
    # the elements keep their row-major order.
    if isinstance(c.out, (tuple, list)):  # atleast_nd(x, y, ...): one reshape each
        ins = [t for t in _walk((a.input, a.args)) if isinstance(t, torch.Tensor)]
        if len(ins) != len(c.out):
            raise Refused(f"{c.name} of these arguments is not modelled")
        return tuple(P.reshape(c.v(t), tuple(o.shape)) if t.is_floating_point() else None for t, o in zip(ins, c.out))
    _same_dtype(c, a.input)
    if c.out.dtype != a.input.dtype:
        raise Refused("view(dtype) reinterprets bits: not differentiable")
    return P.reshape(c.v(a.input), _out_shape(c))


def _perm_of(c: Ctx, t: torch.Tensor) -> tuple[int, ...]:
    """The dimension permutation the op applies, from a run on a meta tensor with distinct sizes."""
    nd = t.dim()
    if nd > len(_PRIMES):
        raise Refused("more than 12 dimensions")
    probe = torch.empty(_PRIMES[:nd], device="meta")
    out = c.call_with({id(t): probe})
    sizes = list(_PRIMES[:nd])
    perm = tuple(sizes.index(s) for s in out.shape)
    if sorted(perm) != list(range(nd)):
        raise Refused("not a permutation of dimensions")
    return perm


@rule("permute", "transpose", "swapaxes", "swapdims", "t", "T", "mT", "H", "mH", "adjoint", "movedim", "moveaxis",
      "permute_copy", "transpose_copy", "t_copy", sig=lambda input, *args, **kwargs: 0)
def _permute(c: Ctx, a: Args) -> Any:
    return P.permute(c.v(a.input), _perm_of(c, a.input))


@rule("expand", "expand_as", "broadcast_to", "expand_copy", sig=lambda input, *args, **kwargs: 0)
def _expand(c: Ctx, a: Args) -> Any:
    return P.broadcast_to(c.v(a.input), _out_shape(c))


@rule("contiguous", "clone", "alias", "alias_copy", "resolve_conj", "resolve_neg", "conj", "conj_physical",
      "positive", "detach_copy", "lift_fresh", sig=lambda input, *args, **kwargs: 0)
def _identity(c: Ctx, a: Args) -> Any:
    if isinstance(a.input, torch.Tensor) and a.input.is_complex():
        raise Refused("complex tensors are not modelled")
    return c.v(a.input)


@rule("detach", sig=lambda input: 0)
def _detach(c: Ctx, a: Args) -> Any:
    return c.cut("detach", c.v(a.input))


@rule("to", "float", "double", "half", "bfloat16", "type", "type_as", "cpu", "cuda",
      sig=lambda input, *args, **kwargs: 0)
def _to(c: Ctx, a: Args) -> Any:
    out = c.out
    if not out.is_floating_point():
        return None  # an integer copy: a constant
    if out.dtype == a.input.dtype:
        return c.v(a.input)
    return P.cast(c.v(a.input), str(out.dtype).replace("torch.", ""))


@rule("broadcast_tensors", sig=lambda *tensors: 0)
def _broadcast_tensors(c: Ctx, a: Args) -> Any:
    return tuple(P.broadcast_to(c.v(t), tuple(o.shape)) if t.is_floating_point() else None
                 for t, o in zip(a.tensors, c.out))


@rule("zeros_like", "ones_like", "full_like", "empty_like", "rand_like", "randn_like", "randint_like",
      "new", "new_zeros", "new_ones", "new_full", "new_empty", "new_tensor", "empty_strided", "new_empty_strided",
      sig=lambda *args, **kwargs: 0)
def _constant_like(c: Ctx, a: Args) -> Any:
    """Shaped like a traced tensor, but not computed from its values: a constant."""
    outs = c.out if isinstance(c.out, (tuple, list)) else (c.out,)
    res = tuple(c.const(t) if t.is_floating_point() else None for t in outs)
    return res if isinstance(c.out, (tuple, list)) else res[0]


@rule("tensor", "as_tensor", "asarray", sig=lambda data, *args, **kwargs: 0)
def _tensor(c: Ctx, a: Args) -> Any:
    """torch.tensor of Python numbers that came out of .item()/.tolist(): rebuilt from them."""
    out = c.out
    if not out.is_floating_point():
        return None
    if c.leaks and type(a.data).__module__ == "numpy":  # numpy data after traced values left for numpy
        return c.returned_from_numpy(out, c.name)
    flat = _flat_numbers(a.data)
    if flat is None or len(flat) != out.numel():
        raise Refused("torch.tensor of these values is not modelled")
    parts = []
    values = torch.tensor([float(v) for v in flat], dtype=F64)
    for i, v in enumerate(flat):
        h = c.v(v)
        if not isinstance(h, torch.Tensor) and not isinstance(h, (int, float)):
            one = torch.zeros(len(flat), dtype=F64)
            one[i] = 1.0
            parts.append(P.ew(MUL, P.broadcast_to(P.reshape(h, (1,)), (len(flat),)), one))
    result: Any = torch.where(torch.tensor([not isinstance(c.v(v), (int, float)) for v in flat]),
                              torch.zeros((), dtype=F64), values)
    for p in parts:
        result = P.ew(ADD, result, p)
    return P.reshape(result, tuple(out.shape))


def _flat_numbers(data: Any) -> list[Any] | None:
    if isinstance(data, (int, float)):
        return [data]
    if isinstance(data, (list, tuple)):
        out: list[Any] = []
        for e in data:
            sub = _flat_numbers(e)
            if sub is None:
                return None
            out += sub
        return out
    return None


# ---------------------------------------------------------------- probing
def probe(c: Ctx) -> Any:
    """Lower the current op as pure data movement (see the module docstring), or refuse."""
    data = [t for t in _walk((c.args, c.kwargs)) if isinstance(t, torch.Tensor) and t.is_floating_point()]
    if not data:
        raise Refused("no floating-point input")
    if any(t.is_complex() for t in data):
        raise Refused("complex tensors are not modelled")
    sizes = [t.numel() for t in data]
    if sum(sizes) >= 2**52:
        raise Refused("too large to probe")
    # A loop's op probes the same maps at every iteration (a char-RNN's cat of each letter with the hidden state:
    # three runs of torch's kernel and a check, a tenth of its checked run): kept per op, shapes and other arguments
    cache = getattr(c, "probes", None)
    try:
        key = (getattr(c, "func", None), _key((c.args, c.kwargs))) if cache is not None else None
    except _Uncached:
        key = None
    hit = cache.get(key) if key is not None else None
    tupled, maps = hit if hit is not None else (False, None)
    if maps is None:
        tupled, maps = _maps(c, data, sizes)
        if key is not None:
            if len(cache) >= 512:
                cache.clear()
            cache[key] = (tupled, maps)
    handles = [c.v(t) for t in data]
    user = c.out if isinstance(c.out, torch.Tensor) else c.args[0] if c.args and isinstance(
        c.args[0], torch.Tensor) else None  # x[i] = v returns nothing: the result is x
    rounds = user is not None and any(_finer(t.dtype, user.dtype) for t in data)  # x32[i] = v64 rounds v
    results = []
    for m in maps:
        if m is None:
            results.append(None)
            continue
        parts, fill, filled = m
        result = None
        for k, index in parts:
            part = P.take(handles[k], index)
            result = part if result is None else P.ew(ADD, result, part)
        if result is None:
            result = fill
        elif filled:
            result = P.ew(ADD, result, fill)
        if rounds:
            result = P.cast(result, str(user.dtype).replace("torch.", ""))
        results.append(result)
    return tuple(results) if tupled else results[0]


class _Uncached(Exception):
    """An argument whose value, not only its shape, a probe's maps depend on (an index tensor, a mask)."""


def _key(x: Any) -> Any:
    """What a probe's maps depend on besides the op: the floating tensors' shapes and every other argument."""
    if isinstance(x, torch.Tensor):
        if not x.is_floating_point():
            raise _Uncached
        return ("T", tuple(x.shape))
    if type(x) in (list, tuple):
        return (type(x).__name__, *(_key(e) for e in x))
    if type(x) is dict:
        return ("dict", *((k, _key(v)) for k, v in x.items()))
    if isinstance(x, torch.Size):
        return ("Size", *x)
    if isinstance(x, slice):
        return ("slice", _key(x.start), _key(x.stop), _key(x.step))
    if x is None or x is Ellipsis or type(x) in (int, float, bool, str) or isinstance(x, (torch.dtype, torch.device)):
        return (type(x).__name__, x)
    raise _Uncached


def _maps(c: Ctx, data: list[torch.Tensor], sizes: list[int]) -> tuple[bool, list[Any]]:
    """The op run on codes, zeros and random values: per result, the flat positions each input's entries go to and
    the fill (None for a result that is not floating); whether the op returns several."""
    codes, start = {}, 1
    for t, n in zip(data, sizes):
        codes[id(t)] = (torch.arange(start, start + n, dtype=F64)).reshape(t.shape)
        start += n
    zeros = {id(t): torch.zeros(t.shape, dtype=F64) for t in data}
    gen = torch.Generator().manual_seed(1234)
    rand = {id(t): torch.rand(t.shape, dtype=F64, generator=gen) + 0.5 for t in data}

    def run(inputs: dict[int, torch.Tensor]) -> Any:
        # an in-place op (x[i] = v, masked_fill_) must not change our codes; call_with returns what it wrote
        return c.call_with({k: v.clone() for k, v in inputs.items()})

    coded, filled, checked = run(codes), run(zeros), run(rand)
    outs = coded if isinstance(coded, (tuple, list)) else (coded,)
    fills = filled if isinstance(filled, (tuple, list)) else (filled,)
    checks = checked if isinstance(checked, (tuple, list)) else (checked,)
    offsets = []
    total = 0
    for n in sizes:
        offsets.append(total)
        total += n
    flat_rand = torch.cat([rand[id(t)].reshape(-1) for t in data])
    maps: list[Any] = []
    for out, fill, check in zip(outs, fills, checks):
        if not isinstance(out, torch.Tensor) or not out.is_floating_point():
            maps.append(None)
            continue
        index = torch.round(out - fill).to(torch.long) - 1
        index = torch.where((index >= 0) & (index < total), index, torch.full((), -1, dtype=torch.long))
        expect = torch.where(index >= 0, flat_rand[index.clamp(min=0)], torch.zeros((), dtype=F64)) + fill
        if expect.shape != check.shape or not torch.equal(expect, check.to(F64)):
            raise Refused("it is not a pure data movement here")
        parts = []
        for k, (off, n) in enumerate(zip(offsets, sizes)):
            own = (index >= off) & (index < off + n)
            if bool(own.any()):
                parts.append((k, torch.where(own, index - off, torch.full((), -1, dtype=torch.long))))
        maps.append((parts, fill, bool((fill != 0).any())))
    return isinstance(coded, (tuple, list)), maps


def _finer(a: torch.dtype, b: torch.dtype) -> bool:
    """Whether floating dtype `a` holds more precision than `b` (a copy from a into b rounds)."""
    return a.is_floating_point and b.is_floating_point and torch.finfo(a).eps < torch.finfo(b).eps


_walk = leaves  # the arguments' leaves, in order


rule(
    "__getitem__", "cat", "concat", "concatenate", "stack", "hstack", "vstack", "dstack", "column_stack",
    "row_stack", "narrow", "narrow_copy", "select", "select_copy", "index_select", "gather", "take",
    "take_along_dim", "flip", "fliplr", "flipud", "roll", "rot90", "tril", "triu", "diag", "diagonal",
    "diagonal_copy", "diag_embed", "diagflat", "repeat", "tile", "repeat_interleave", "unfold", "unfold_copy",
    "pad", "constant_pad_nd", "reflection_pad1d", "split", "split_with_sizes", "split_with_sizes_copy", "chunk",
    "unsafe_chunk", "unsafe_split", "tensor_split", "hsplit", "vsplit", "dsplit", "unbind", "unbind_copy",
    "masked_select", "masked_fill", "index_fill", "index_copy", "masked_scatter",
    "select_scatter", "slice_scatter", "diagonal_scatter", "as_strided", "as_strided_copy", "as_strided_scatter",
    "block_diag", "combinations", "cartesian_prod", "meshgrid", "pixel_shuffle", "pixel_unshuffle",
    "channel_shuffle", "native_channel_shuffle", "slice", "slice.Tensor", "slice_copy", "_unsafe_view", "fill",
    "zero", "_unsafe_masked_index", "copy", "__setitem__", "fft_fftshift", "fft_ifftshift",
    sig=lambda *args, **kwargs: 0,
)(lambda c, a: probe(c))
