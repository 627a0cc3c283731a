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
  constant for autograd), ``opaque`` (a value the tracer could not follow: no rule), and the values whose history
  was let go: ``spent`` (no rule) and ``fixed`` (a constant).

Each primitive gives: the value in torch (float64 in the reference), the value on numpy
object arrays (mpmath or sympy elements: the high-precision path and the tests' oracle),
its VJP written with these same primitives (so the sweep can be swept again for second
order), and how absolute error bounds pass through it plus its own rounding (``err``).
The movement and sum primitives live in `prims_movement` (re-exported here), what all of them share in
`prims_base`, the linear-algebra primitives in `gradcheck_sym.ops.linalg`.
"""

from __future__ import annotations

import threading
from typing import Any, Sequence

import numpy as np
import sympy
import torch

from .core import Prim, bind, is_tensor, register
from .ew import ADD, MUL, NEG, EwFn
from .prims_base import F64, _abs, _bshape, _differentiable, _obj, broadcast_shape, gamma_sum, shape_of
from .prims_movement import broadcast_to, cumsum, expand, mT, permute, reshape, segsum, sum_, sum_to, take
from .quick import any_nan

__all__ = [
    "ew", "reshape", "permute", "expand", "sum_", "take", "segsum", "cumsum", "matmul", "stop", "cast", "opaque",
    "fixed", "shape_of", "sum_to", "broadcast_to", "mT", "mul", "add", "neg", "gamma_sum", "ZMUL", "broadcast_shape",
    "working_dtype", "F64",
]

_P0, _P1 = sympy.Symbol("p0", real=True), sympy.Symbol("p1", real=True)


class finite_part(sympy.Function):  # noqa: N801 - a sympy function, named like sympy's
    """x where x is finite, else 0 (for ZMUL's derivative)."""

    nargs = 1

    def fdiff(self, argindex: int = 1) -> sympy.Expr:
        return sympy.S.One


def _zmul_torch(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    # a * b is already 0 where a is, unless b is infinite or NaN there: one product and a sum in the common case,
    # where the compiled Piecewise is a comparison, a product and a select over the whole tensor
    out = a * b
    if any_nan(out):
        out = torch.where(a == 0, torch.zeros((), dtype=out.dtype), out)
    return out


# adjoint * partial, exactly 0 where the adjoint is 0: a branch that where() did not select
# contributes 0 even where its own derivative is infinite (the math; torch computes NaN).
# Its derivative in the adjoint is the partial — also where the adjoint is 0 (a product of
# zeros: sympy's derivative of the Piecewise would say 0 there and lose second derivatives),
# except where the partial is infinite: that stays the strong zero.
ZMUL = EwFn("zmul", sympy.Piecewise((0, sympy.Eq(_P0, 0)), (_P0 * _P1, True)), 2,
            partials=[sympy.Piecewise((finite_part(_P1), sympy.Eq(_P0, 0)), (_P1, True)),
                      sympy.Piecewise((0, sympy.Eq(_P0, 0)), (_P0, True))],
            torch_impl=_zmul_torch)


# ---------------------------------------------------------------- elementwise
class _Working(threading.local):
    dtype: torch.dtype | None = None


_WORKING = _Working()


class working_dtype:  # noqa: N801 - used as a context manager, like torch.no_grad
    """Within: an elementwise result in `dtype` stays in it (a recomputation in the user's dtype, see
    `reference.rounded.Rounding`, rounds it there anyway: widening it to float64 first is two passes for nothing).
    Elsewhere every elementwise result is float64 (or bool).  (A class, not a generator: entered for every
    equation of a recomputation.)"""

    __slots__ = ("dtype", "before")

    def __init__(self, dtype: torch.dtype | None) -> None:
        self.dtype = dtype

    def __enter__(self) -> None:
        self.before, _WORKING.dtype = _WORKING.dtype, self.dtype

    def __exit__(self, *exc: Any) -> None:
        _WORKING.dtype = self.before


def _ew_impl(*args: Any, fn: EwFn) -> Any:
    targs = [a if is_tensor(a) else torch.tensor(float(a), dtype=F64) for a in args]
    out = fn.torch(*targs)
    if not is_tensor(out):
        out = torch.tensor(float(out), dtype=F64)
    shape = _bshape(targs)
    if out.shape != shape:
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
        if d.is_one and not d.rel_err:  # (a 1 torch computes inexactly is evaluated, for its error)
            term = g
        elif d.is_minus_one:
            term = ew(NEG, g)
        elif d.arg is not None:  # d(a*b)/da = b: b itself, one kernel fewer
            term = ew(ZMUL, g, ins[d.arg])
        elif fn.masks:  # (a select: 0 where the partial is, whatever the adjoint; ZMUL's strong zero is its first)
            term = ew(ZMUL, ew(d, *ins), g)
        else:
            term = ew(ZMUL, g, ew(d, *ins))
        res.append(sum_to(term, shape_of(a), kernel=fn.bias_kernel if i == 1 else None))
    return res


def _ew_err(errs: list[Any], ins: Sequence[Any], outs: Sequence[Any], u: float, fn: EwFn) -> list[Any]:
    targs = [a if is_tensor(a) else torch.tensor(float(a), dtype=F64) for a in ins]
    if (fn in _ROUNDS_ONCE or fn.product) and is_tensor(outs[0]) and outs[0].dtype == F64:
        # one rounding of the result, which is at hand (the same number the formula gives); scaled in place
        total = outs[0].abs().mul_(u).expand(_bshape(targs))
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
            c = part.constant
            if c is not None:  # a constant partial (add, sub, scaling)
                if c != 0:
                    total = total + (e if c == 1 else c * e)
                continue
            if part.arg is not None:  # d(a*b)/da = b: b itself (no kernel to evaluate it)
                d = targs[part.arg].abs()
                d = d if d.is_floating_point() else d.to(F64)  # (float32 in a float32 bound: `sweep_bounds`)
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


def _ew_reads(n: int, fn: EwFn) -> set[int]:
    """The inputs `_ew_vjp` reads: none for a partial it takes as a constant, the other factor of a product, or
    all of them."""
    read: set[int] = set()
    for i in range(n):
        d = fn.partial(i)
        if (d.is_zero and d.err_form == 0) or (d.is_one and not d.rel_err) or d.is_minus_one:
            continue
        read.update([d.arg] if d.arg is not None else range(n))
    return read


register(Prim("ew", _ew_impl, _ew_obj, _ew_vjp, _ew_err, needs=True, reads=_ew_reads))


def ew(fn: EwFn, *args: Any) -> Any:
    """fn applied elementwise to the broadcast arguments."""
    return bind("ew", *args, fn=fn)


def mul(a: Any, b: Any) -> Any:
    return ew(MUL, a, b)


def add(a: Any, b: Any) -> Any:
    return ew(ADD, a, b)


def neg(a: Any) -> Any:
    return ew(NEG, a)


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


register(Prim("matmul", _matmul_impl, _matmul_impl, _matmul_vjp, _matmul_err, needs=True,
              reads=lambda n: (0, 1)))  # (each operand's cotangent is the other's product)


def matmul(a: Any, b: Any) -> Any:
    """Batched matrix product; both operands at least 2-D (batch dimensions broadcast)."""
    return bind("matmul", a, b)


# ---------------------------------------------------------------- cuts and opaque values
def _identity(x: Any, **params: Any) -> Any:
    return x


register(Prim("stop", _identity, _identity, lambda cts, ins, outs, **p: [cts[0]],
              lambda errs, ins, outs, u, **p: [errs[0]], reads=lambda n, **p: ()))


register(Prim("cast", _identity, _identity, lambda cts, ins, outs, **p: [cts[0]],
              lambda errs, ins, outs, u, **p: [u * _abs(ins[0]) + (0 if errs[0] is None else errs[0])],
              reads=lambda n, **p: ()))


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


def _spent_impl(value: Any, reason: str, bound: Any) -> Any:
    return value


def _spent_obj(value: Any, reason: str, bound: Any) -> Any:
    return _obj(value)


# A value whose computation was let go (`front.script_memory.ScriptMemory.spend`): no inputs, no derivative, its error
# bound the one it had (`bound`).  Unlike an opaque value, a gradient that reaches it would have gone on to inputs no
# longer known: the backward that reaches one is not verified at all (`judge.backward`).
register(Prim("spent", _spent_impl, _spent_obj, None, lambda errs, ins, outs, u, value, reason, bound: [bound]))


def _fixed_impl(value: Any, bound: Any) -> Any:
    return value


def _fixed_obj(value: Any, bound: Any) -> Any:
    return _obj(value)


# What a cut alone reads, once no compared gradient can reach its history (`front.script_memory.ScriptMemory.
# _fix_behind_cuts`, after a backward that freed its graph): a hand-written batch norm's running mean, updated under
# no_grad from the last one and each batch's mean; an EMA of weights an optimizer has since replaced.  A constant for
# every sweep — no inputs — with its value and the error bound it had (`bound`); the cut that reads it stays.
register(Prim("fixed", _fixed_impl, _fixed_obj, lambda cts, ins, outs, **p: [],
              lambda errs, ins, outs, u, value, bound: [bound], linear=True))


def fixed(value: Any, bound: Any = None) -> Any:
    """`value` as a variable of its own, with no inputs (a constant for every sweep) and error bound `bound` (None:
    exact).  Recorded even though nothing traced goes in: what a rule computes from it is then bounded as the user's
    dtype rounds it, where folding it in float64 would have taken it as exact."""
    return bind("fixed", value=value, bound=bound)


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
