"""The closed set of primitives, in four groups (tinygrad's and JAX's layout, our rules).

* elementwise: ``ew`` — one `EwFn` (a sympy expression) on broadcast arguments; its
  derivative is another ``ew``, from sympy.
* movement and sums (linear; each one's transpose is another): ``reshape``, ``permute``,
  ``expand``, ``sum``, ``take`` (gather by a flat index map) and ``segsum`` (scatter-add by
  one), ``cumsum``.  Any view, slice, index, pad, flip, window or im2col is a ``take``
  with an index map computed once; its transpose is a ``segsum`` — written by us, never
  torch's backward.
* bilinear: ``matmul`` (batched, broadcasting; both operands at least 2-D).
* cuts and bookkeeping: ``stop`` (detach, no_grad, .data, .item(): identity for the value,
  constant for autograd) and ``opaque`` (a value the tracer could not follow: no rule).

Each primitive gives: the value in torch (float64 in the reference), the value on numpy
object arrays (mpmath or sympy elements: the high-precision path and the tests' oracle),
its VJP written with these same primitives (so the sweep can be swept again for second
order), and how absolute error bounds pass through it plus its own rounding (``err``).
The linear-algebra primitives live in `gradcheck_sym.ops.linalg`.
"""

from __future__ import annotations

import contextlib
import math
import threading
from typing import Any, Iterator, Sequence

import numpy as np
import sympy
import torch

from . import windows
from .core import Prim, bind, is_tensor, register
from .ew import ADD, MUL, NEG, EwFn
from .quick import any_nan

__all__ = [
    "ew", "reshape", "permute", "expand", "sum_", "take", "segsum", "cumsum", "matmul", "stop", "cast", "opaque",
    "shape_of", "sum_to", "broadcast_to", "mT", "mul", "add", "neg", "gamma_sum", "ZMUL",
]

F64 = torch.float64
_P0, _P1 = sympy.Symbol("p0", real=True), sympy.Symbol("p1", real=True)


class finite_part(sympy.Function):  # noqa: N801 - a sympy function, named like sympy's
    """x where x is finite, else 0 (for ZMUL's derivative)."""

    nargs = 1

    def fdiff(self, argindex: int = 1) -> sympy.Expr:
        return sympy.S.One


# adjoint * partial, exactly 0 where the adjoint is 0: a branch that where() did not select
# contributes 0 even where its own derivative is infinite (the math; torch computes NaN).
# Its derivative in the adjoint is the partial — also where the adjoint is 0 (a product of
# zeros: sympy's derivative of the Piecewise would say 0 there and lose second derivatives),
# except where the partial is infinite: that stays the strong zero.
def _zmul_torch(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    # a * b is already 0 where a is, unless b is infinite or NaN there: one product and a sum in the common case,
    # where the compiled Piecewise is a comparison, a product and a select over the whole tensor
    out = a * b
    if any_nan(out):
        out = torch.where(a == 0, torch.zeros((), dtype=out.dtype), out)
    return out


ZMUL = EwFn("zmul", sympy.Piecewise((0, sympy.Eq(_P0, 0)), (_P0 * _P1, True)), 2,
            partials=[sympy.Piecewise((finite_part(_P1), sympy.Eq(_P0, 0)), (_P1, True)),
                      sympy.Piecewise((0, sympy.Eq(_P0, 0)), (_P0, True))],
            torch_impl=_zmul_torch)


# ---------------------------------------------------------------- helpers
def shape_of(x: Any) -> tuple[int, ...]:
    return tuple(x.shape) if hasattr(x, "shape") else ()


def _is_obj(x: Any) -> bool:
    return isinstance(x, np.ndarray)


def _obj(x: Any) -> Any:
    """A torch tensor as a numpy object array of mpmath/sympy-ready floats (exact conversion)."""
    if is_tensor(x):
        arr = x.detach().cpu()
        if arr.dtype == torch.bool:
            return arr.numpy().astype(object)
        if not arr.is_floating_point():
            return arr.numpy().astype(object)
        return arr.to(F64).numpy().astype(object)
    return x


def _np_index(index: Any) -> np.ndarray:
    return index.detach().cpu().numpy() if is_tensor(index) else np.asarray(index)


def gamma_sum(n: int) -> float:
    """Rounding of a sum of n terms, in units of u of the terms' absolute sum.

    Sequential summation can cost n - 1 roundings; torch's kernels sum in blocks and
    pairwise, and independent roundings grow like sqrt(n).  This is the allowance used.
    """
    if n <= 1:
        return 0.0
    return float(n - 1) if n <= 32 else 32.0 + 4.0 * math.sqrt(n)


def _abs(x: Any) -> Any:
    return x.abs() if is_tensor(x) else abs(x)


# ---------------------------------------------------------------- elementwise
def broadcast_shape(*shapes: Sequence[int]) -> tuple[int, ...]:
    """numpy's broadcasting of shapes (torch.broadcast_shapes goes through torch._refs: slow per op)."""
    shapes = [tuple(s) for s in shapes]
    first = shapes[0]
    if all(s == first for s in shapes):
        return first
    n = max(len(s) for s in shapes)
    out = [1] * n
    for s in shapes:
        for i, d in enumerate(s, n - len(s)):
            if d != 1:
                if out[i] not in (1, d):
                    raise ValueError(f"shapes {shapes} do not broadcast")
                out[i] = d
    return tuple(out)


def _bshape(args: Sequence[Any]) -> tuple[int, ...]:
    return broadcast_shape(*[shape_of(a) for a in args])


class _Working(threading.local):
    dtype: torch.dtype | None = None


_WORKING = _Working()


@contextlib.contextmanager
def working_dtype(dtype: torch.dtype | None) -> Iterator[None]:
    """Within: an elementwise result in `dtype` stays in it (a recomputation in the user's dtype, see
    `reference.interpret.Rounding`, rounds it there anyway: widening it to float64 first is two passes for nothing).
    Elsewhere every elementwise result is float64 (or bool)."""
    before, _WORKING.dtype = _WORKING.dtype, dtype
    try:
        yield
    finally:
        _WORKING.dtype = before


def _ew_impl(*args: Any, fn: EwFn) -> Any:
    targs = [a if is_tensor(a) else torch.tensor(float(a), dtype=F64) for a in args]
    out = fn.torch(*targs)
    if not is_tensor(out):
        out = torch.tensor(float(out), dtype=F64)
    shape = _bshape(targs)
    if tuple(out.shape) != shape:
        out = out.expand(shape)
    if out.dtype != F64 and out.dtype != torch.bool and out.dtype != _WORKING.dtype:
        out = out.to(F64)
    return out


def _ew_obj(*args: Any, fn: EwFn) -> Any:
    args = [_obj(a) for a in args]
    symbolic = any(isinstance(np.asarray(a).flat[0], sympy.Basic) for a in args if np.asarray(a).size)
    f = fn.sym if symbolic else fn.mp  # any sympy element (a leading Python scalar is not one)
    out = np.frompyfunc(f, fn.nargs, 1)(*args)
    return np.asarray(out, dtype=object).reshape(np.broadcast_shapes(*[np.shape(a) for a in args]))


def _ew_vjp(cts: list[Any], ins: Sequence[Any], outs: Sequence[Any], fn: EwFn,
            needed: Sequence[bool] | None = None) -> list[Any]:
    g = cts[0]
    res: list[Any] = []
    for i, a in enumerate(ins):
        d = fn.partial(i)
        # an exact 0 that torch's formula rounds (its form is not 0) stays, for its rounding bound
        if (needed is not None and not needed[i]) or not _differentiable(a) or (d.is_zero and d.err_form == 0):
            res.append(None)
            continue
        if d.expr == 1 and not d.rel_err:  # (a 1 torch computes inexactly is evaluated, for its error)
            term = g
        elif d.expr == -1:
            term = ew(NEG, g)
        elif d.arg is not None:  # d(a*b)/da = b: b itself, one kernel fewer
            term = ew(ZMUL, g, ins[d.arg])
        else:
            term = ew(ZMUL, g, ew(d, *ins))
        res.append(sum_to(term, shape_of(a)))
    return res


def _ew_err(errs: list[Any], ins: Sequence[Any], outs: Sequence[Any], u: float, fn: EwFn) -> list[Any]:
    targs = [a if is_tensor(a) else torch.tensor(float(a), dtype=F64) for a in ins]
    if fn in _ROUNDS_ONCE and is_tensor(outs[0]) and outs[0].dtype == F64:
        own = outs[0].abs()  # one rounding of the result, which is at hand (the same number the formula gives)
    else:
        own = fn.rounding(*targs)
    total = (u * (own if is_tensor(own) else torch.tensor(float(own), dtype=F64))).expand(_bshape(targs))
    if fn.rel_err:
        total = total + fn.rel_err * outs[0].abs()
        if fn.rel_scale is not None:
            total = total + fn.rel_err * fn.rel_scale_value(*targs)
    terms = []
    for i, e in enumerate(errs):
        if e is None or not _differentiable(ins[i]):
            continue
        if fn is ZMUL:  # its partials are 0 where an adjoint is exactly 0; that 0's rounding error still counts
            d = targs[1 - i].abs()
        else:
            part = fn.partial(i)
            if part.torch_impl is None and part.expr.is_Number:  # a constant partial (add, sub, scaling)
                c = abs(float(part.expr))
                if c != 0:
                    total = total + (e if c == 1 else c * e)
                continue
            if part.arg is not None:  # d(a*b)/da = b: b itself (no kernel to evaluate it)
                d = targs[part.arg].abs()
                d = d if d.dtype == F64 else d.to(F64)
            else:
                d = _ew_impl(*targs, fn=part).abs()
            if fn.unbranched is not None and i < fn.unbranched.nargs:
                # The user's run took one side of a kink and an input within its bound of it may put the
                # reference on the other (relu of -1e-7 in float32, of +3e-7 in float64): the value then moves
                # with the larger of the two sides' slopes, not with the user's side's alone (0 for relu).
                own_side = _ew_impl(*targs[: fn.unbranched.nargs], fn=fn.unbranched.partial(i)).abs()
                d = torch.maximum(d, own_side)
        terms.append((d, e))
    if not terms:
        return [total]
    if all(is_tensor(d) and is_tensor(e) for d, e in terms):
        out = torch.addcmul(total, *terms[0])  # (fused: no product tensor per term)
        for d, e in terms[1:]:
            out.addcmul_(d, e)
    else:
        out = total
        for d, e in terms:
            out = out + d * e
    if any_nan(out):
        # An input's error reaches the output only through a non-zero partial: exp(-inf) = 0 takes none of the
        # (infinite) error of a -inf score, as with masked_fill(-inf) before softmax; 0 * inf is NaN, so the
        # products are taken again as 0 where either factor is (one NaN test per equation, not one per term).
        out = total
        for d, e in terms:
            out = out + torch.where((e == 0) | (d == 0), torch.zeros((), dtype=F64), d * e)
    return [out]


# Products of two arguments: their rounding is one rounding of the result, |out| (in units of u; a sum's is
# charged |a| + |b| by `rounding_error`, kept).
_ROUNDS_ONCE = frozenset({ZMUL, MUL})


def _differentiable(a: Any) -> bool:
    if is_tensor(a):
        return a.is_floating_point()
    if _is_obj(a):
        return True
    return hasattr(a, "var")  # a recorded value


register(Prim("ew", _ew_impl, _ew_obj, _ew_vjp, _ew_err, needs=True))


def ew(fn: EwFn, *args: Any) -> Any:
    """fn applied elementwise to the broadcast arguments."""
    return bind("ew", *args, fn=fn)


def mul(a: Any, b: Any) -> Any:
    return ew(MUL, a, b)


def add(a: Any, b: Any) -> Any:
    return ew(ADD, a, b)


def neg(a: Any) -> Any:
    return ew(NEG, a)


# ---------------------------------------------------------------- movement
def _reshape_impl(x: Any, shape: tuple[int, ...]) -> Any:
    return x.reshape(shape)


def _permute_impl(x: Any, perm: tuple[int, ...]) -> Any:
    return x.permute(*perm) if is_tensor(x) else np.transpose(x, perm)


def _expand_impl(x: Any, shape: tuple[int, ...]) -> Any:
    return torch.broadcast_to(x, shape) if is_tensor(x) else np.broadcast_to(x, shape)


def _sum_impl(x: Any, dims: tuple[int, ...], keepdim: bool) -> Any:
    if not dims:
        return x
    if is_tensor(x):
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
    size = int(np.prod(shape)) if shape else 1
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


def sum_(x: Any, dims: Sequence[int], keepdim: bool = False) -> Any:
    nd = len(shape_of(x))
    dims = tuple(sorted(d % nd for d in dims)) if nd else ()
    return x if not dims else bind("sum", x, dims=dims, keepdim=keepdim)


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


def sum_to(x: Any, shape: Sequence[int]) -> Any:
    """Sum the broadcast dimensions of `x` away, leaving `shape` (the transpose of broadcasting)."""
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
        return sum_(x, dims, keepdim=False)
    return reshape(sum_(x, dims, keepdim=True), shape)


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


def _sum_vjp(cts: list[Any], ins: Sequence[Any], outs: Sequence[Any], dims: tuple[int, ...], keepdim: bool) -> list[Any]:
    xs = shape_of(ins[0])
    kept = tuple(1 if i in dims else s for i, s in enumerate(xs))
    return [expand(reshape(cts[0], kept), xs)]


def _sum_err(errs: list[Any], ins: Sequence[Any], outs: Sequence[Any], u: float, dims: tuple[int, ...],
             keepdim: bool) -> list[Any]:
    n = int(np.prod([shape_of(ins[0])[d] for d in dims])) if dims else 1
    # linear: one reduction of (the inputs' bounds + this sum's own rounding of each term)
    own = (u * gamma_sum(n)) * _abs(ins[0])
    return [_sum_impl(own if errs[0] is None else own + errs[0], dims, keepdim)]


register(Prim("sum", _sum_impl, _sum_impl, _sum_vjp, _sum_err, linear=True))


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
    own = (u * gamma_sum(_most(index))) * _abs(ins[0])
    return [_segsum_impl(own if errs[0] is None else own + errs[0], index, shape, fill)]


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
    own = (u * gamma_sum(n)) * _abs(ins[0])
    return [_cumsum_impl(own if errs[0] is None else own + errs[0], dim, reverse)]


register(Prim("cumsum", _cumsum_impl, _cumsum_impl,
              lambda cts, ins, outs, dim, reverse: [cumsum(cts[0], dim, not reverse)], _cumsum_err, linear=True))


# ---------------------------------------------------------------- matmul
def _matmul_impl(a: Any, b: Any) -> Any:
    if is_tensor(a) and is_tensor(b):
        return torch.matmul(a, b)
    return np.asarray(np.matmul(_obj(a), _obj(b)), dtype=object)


def _matmul_vjp(cts: list[Any], ins: Sequence[Any], outs: Sequence[Any],
                needed: Sequence[bool] = (True, True)) -> list[Any]:
    g = cts[0]
    a, b = ins
    ga = sum_to(matmul(g, mT(b)), shape_of(a)) if needed[0] and _differentiable(a) else None
    gb = sum_to(matmul(mT(a), g), shape_of(b)) if needed[1] and _differentiable(b) else None
    return [ga, gb]


def _matmul_err(errs: list[Any], ins: Sequence[Any], outs: Sequence[Any], u: float) -> list[Any]:
    a, b = ins
    k = shape_of(a)[-1]
    # |a| (k u |b| + E_b) + E_a |b|: a dot product of k terms costs up to k roundings (BLAS sums in
    # blocks, with FMA), and the operands' bounds pass through the bilinear map.
    right = (u * float(max(k, 1))) * b.abs()
    if errs[1] is not None:
        right = right + errs[1]
    out = torch.matmul(a.abs(), right)
    if errs[0] is not None:
        out = out + torch.matmul(errs[0], b.abs())
    return [out]


register(Prim("matmul", _matmul_impl, _matmul_impl, _matmul_vjp, _matmul_err, needs=True))


def matmul(a: Any, b: Any) -> Any:
    """Batched matrix product; both operands at least 2-D (batch dimensions broadcast)."""
    return bind("matmul", a, b)


# ---------------------------------------------------------------- cuts and opaque values
def _identity(x: Any, **params: Any) -> Any:
    return x


register(Prim("stop", _identity, _identity, lambda cts, ins, outs, **p: [cts[0]],
              lambda errs, ins, outs, u, **p: [errs[0]]))


register(Prim("cast", _identity, _identity, lambda cts, ins, outs, **p: [cts[0]],
              lambda errs, ins, outs, u, **p: [u * _abs(ins[0]) + (0 if errs[0] is None else errs[0])]))


def cast(x: Any, dtype: str) -> Any:
    """The value of `x`, which the user's computation rounds to `dtype` here (see the err rule)."""
    return bind("cast", x, dtype=dtype)


def stop(x: Any, kind: str, cut: int) -> Any:
    """A gradient cut: the value of `x`; in the cut semantics a constant (see `reference.sweep`)."""
    return bind("stop", x, kind=kind, cut=cut)


def _opaque_impl(*args: Any, value: Any, reason: str) -> Any:
    return value.to(F64) if value.is_floating_point() else value


def _opaque_obj(*args: Any, value: Any, reason: str) -> Any:
    return _obj(value)


register(Prim("opaque", _opaque_impl, _opaque_obj, None,
              lambda errs, ins, outs, u, value, reason: [u * _abs(outs[0])]))


def opaque(*args: Any, value: torch.Tensor, reason: str) -> Any:
    """A value the tracer saw but cannot model (an op outside the table): no derivative rule."""
    return bind("opaque", *args, value=value, reason=reason)


def _register_numerics() -> None:
    # NB: the sympy -> numbers compiler lives with the reference (see `ew._compiled`).
    import mpmath

    from ..reference.evaluate import register_function

    register_function(finite_part, lambda t: torch.where(torch.isfinite(t), t, torch.zeros((), dtype=t.dtype)),
                      lambda v: v if mpmath.isfinite(v) else mpmath.mpf(0))


_register_numerics()
