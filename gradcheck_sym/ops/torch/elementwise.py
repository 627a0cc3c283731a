"""Elementwise torch ops: each one `EwFn` (a sympy expression), applied to whole tensors.

This module holds the shared helpers and the plain math: the functions of the op
table (shared with the expression parser), arithmetic, ``pow``, ``clamp``,
``where``, ``lerp`` and friends.  Activations, special functions and the
piecewise-constant ops (rounding, ``fmod``, ``copysign``, ...) live in the sibling
modules `activations`, `special` and `piecewise`.

Derivatives are sympy's, derived once per function.  Three kinds of data refine them:

* torch's **conventions** where the derivative is undefined (``relu'(0) = 0``, ``clamp``
  passes the gradient at its bounds): the partials say so, and a user's backward that
  differs there is told apart as `nondifferentiable`;
* **stable reference partials** where sympy's form overflows or cancels in float64
  (``sigmoid'`` as ``e/(1+e)^2`` with ``e = exp(-|x|)``, ``acosh'`` as
  ``1/(sqrt(x-1) sqrt(x+1))``): the reference must be at least as accurate as torch;
* **kernel forms** (``grad_forms``): the formula torch's backward evaluates, from
  ``tools/autograd/derivatives.yaml`` (``s*(1 - s)`` for sigmoid, ``rsqrt(x*x - 1)`` for
  acosh), which can round far worse than the math — for the rounding allowance only.

Parameters (a slope, a threshold, a Python scalar operand) are baked into the
expression, so each value is its own function, derived once.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable

import sympy
import torch

from .. import prims as P
from ..ew import MUL, WHERE, EwFn, P as X, ew_fn
from ..table import OPS
from .registry import Args, Ctx, Refused, rule

__all__ = ["num", "sym", "apply", "unary", "fn_rule", "table_fn", "x", "y", "z"]

x, y, z = X[0], X[1], X[2]
_UNARY_SIG = lambda input, inplace=False, *, out=None: 0  # noqa: E731 - the signature of every unary op


def num(v: Any) -> sympy.Expr:
    """A Python number as an exact sympy number (a float as its binary value)."""
    if isinstance(v, bool):
        return sympy.Integer(int(v))
    if isinstance(v, int):
        return sympy.Integer(v)
    v = float(v)
    if math.isnan(v):
        return sympy.nan
    if math.isinf(v):
        return sympy.oo if v > 0 else -sympy.oo
    return sympy.Float(v, 53) if v != int(v) or abs(v) > 2**53 else sympy.Integer(int(v))


def sym() -> Any:
    """The sympy namespace with our floor/sign/lgamma/log1p classes (derivatives torch's way)."""
    # NB: it lives with the expression path's derivation; imported at first use.
    from ...reference.symbolic import S

    return S


def apply(c: Ctx, fn: EwFn, *args: Any) -> Any:
    """`fn` on the user's arguments; a piecewise `fn` takes its branches from the user's own values."""
    handles = [_float(c.v(a)) for a in args]
    if not fn.has_branches:
        return P.ew(fn, *handles)
    return P.ew(fn.branched, *handles, *[_float(c.user_value(a)) for a in args])


def _float(v: Any) -> Any:
    """Integer and boolean tensors enter elementwise math as float64 constants (torch promotes them)."""
    if isinstance(v, torch.Tensor) and not v.is_floating_point():
        return v.to(torch.float64)
    return v


def unary(names: tuple[str, ...], expr: sympy.Expr, torch_impl: Callable[..., Any], **kw: Any) -> EwFn:
    """Register a unary op ``names`` computing `expr` (its value from `torch_impl`)."""
    fn = EwFn(names[0], expr, 1, torch_impl=torch_impl, **kw)
    rule(*names, sig=_UNARY_SIG)(lambda c, a: apply(c, fn, a.input))
    return fn


def fn_rule(names: tuple[str, ...], sig: Callable[..., Any], make: Callable[..., EwFn], params: tuple[str, ...]
            ) -> None:
    """An elementwise op with scalar parameters: one `EwFn` per parameter value (``make(*values)``)."""

    def lower(c: Ctx, a: Args) -> Any:
        for p in params:
            if isinstance(a[p], torch.Tensor):
                raise Refused(f"argument {p} of {names[0]} as a tensor is not modelled")
        return apply(c, _cached(make, tuple(a[p] for p in params)), a.input)

    rule(*names, sig=sig)(lower)


@functools.lru_cache(maxsize=1024)
def _cached(make: Callable[..., EwFn], values: tuple[Any, ...]) -> EwFn:
    return make(*values)


# ---------------------------------------------------------------- the op table's functions
@functools.cache
def _expm1_via_result() -> type:
    """expm1 as torch differentiates it, through its result (derivatives.yaml: ``result + 1``), at every
    order: for the forms of its derivatives, which cancel for very negative x."""
    from sympy.codegen.cfunctions import expm1

    class expm1_result(expm1):  # noqa: N801 - computed as expm1
        def fdiff(self, argindex: int = 1) -> sympy.Expr:
            return self + 1

    return expm1_result


@functools.cache
def _overrides() -> dict[str, dict[str, Any]]:
    """Per op of the table: torch's conventions, stable partials, the formula torch's backward evaluates."""
    S = sym()
    H = sympy.Heaviside
    s = 1 / (1 + sympy.exp(-x))
    e = sympy.exp(-sympy.Abs(x))
    one_minus_sq = (1 - x) * (1 + x)  # exact factors: 1 - x*x cancels as |x| -> 1
    origin = sympy.And(sympy.Eq(x, 0), sympy.Eq(y, 0))
    return {
        # (relu, clamp: their backward selects, a NaN adjoint gives 0 where they are flat: `EwFn.masks`)
        "relu": {"partials": [H(x, 0)], "masks": True},
        "abs": {"partials": [S.sign(x)]},
        # derivatives.yaml: clamp_backward (x: bounds included), clamp_backward_min_max (strict: a bound
        # gets the gradient only where x passes it *and* min < max; max also wherever max < min).
        "clamp": {"partials": [
            sympy.Piecewise((1, sympy.And(x >= y, x <= z)), (0, True)),
            sympy.Piecewise((1, sympy.And(x < y, y < z)), (0, True)),
            sympy.Piecewise((1, sympy.Or(x > z, z < y)), (0, True))], "masks": True},
        # s*(1 - s) cancels for large x (torch's sigmoid_backward); e/(1 + e)^2 never overflows
        "sigmoid": {"partials": [e / (1 + e) ** 2], "grad_forms": [s * (1 - s)]},
        "tanh": {"grad_forms": [1 - sympy.tanh(x) ** 2]},  # tanh_backward: 1 - y*y
        "expm1": {"grad_forms": [_expm1_via_result()(x) + 1]},  # result + 1: cancels for very negative x
        "exp2": {"grad_forms": [2**x * sympy.log(2)]},
        "acosh": {"partials": [1 / (sympy.sqrt(x - 1) * sympy.sqrt(x + 1))],
                  "grad_forms": [1 / sympy.sqrt(x * x - 1)]},  # rsqrt(x*x - 1): ~1/(x-1) ulp near 1
        "asin": {"partials": [1 / sympy.sqrt(one_minus_sq)], "grad_forms": [1 / sympy.sqrt(1 - x * x)]},
        "acos": {"partials": [-1 / sympy.sqrt(one_minus_sq)], "grad_forms": [-1 / sympy.sqrt(1 - x * x)]},
        "atanh": {"partials": [1 / one_minus_sq], "grad_forms": [1 / (1 - x * x)]},
        # atan2_backward: 0 at (0, 0) (torch's convention; the table's kink)
        "atan2": {"partials": [sympy.Piecewise((0, origin), (y / (x * x + y * y), True)),
                               sympy.Piecewise((0, origin), (-x / (x * x + y * y), True))]},
        # exp(a)/(exp(a) + exp(b)) overflows; torch (and we) use 1/(1 + exp(b - a))
        "logaddexp": {"partials": [1 / (1 + sympy.exp(y - x)), 1 / (1 + sympy.exp(x - y))]},
    }


@functools.cache
def table_fn(opname: str, nargs: int) -> EwFn:
    """The `EwFn` of an op of the table (its torch kernel for the value, its kink and convention)."""
    op = OPS[opname]
    args = X[:nargs]
    expr = op.sympy(sym(), *args)
    extra = dict(_overrides().get(opname, {}))  # a copy: the table is shared
    if "partials" not in extra and op.partials is not None:
        extra["partials"] = list(op.partials(sym(), *args))
    kink = (lambda *a: op.kink(torch, *a)) if op.kink is not None else None
    return EwFn(opname, expr, nargs, torch_impl=lambda *a: op.torch(torch, *a), kink=kink,
                convention=op.convention, **extra)


def _table(names: tuple[str, ...], opname: str) -> None:
    rule(*names, sig=_UNARY_SIG)(lambda c, a: apply(c, table_fn(opname, 1), a.input))


for _names, _op in [
    (("sin",), "sin"), (("cos",), "cos"), (("tan",), "tan"), (("asin", "arcsin"), "asin"),
    (("acos", "arccos"), "acos"), (("atan", "arctan"), "atan"), (("sinh",), "sinh"), (("cosh",), "cosh"),
    (("tanh",), "tanh"), (("asinh", "arcsinh"), "asinh"), (("acosh", "arccosh"), "acosh"),
    (("atanh", "arctanh"), "atanh"), (("exp",), "exp"), (("expm1", "special_expm1"), "expm1"), (("log",), "log"),
    (("log1p", "special_log1p"), "log1p"), (("log2",), "log2"), (("log10",), "log10"), (("sqrt",), "sqrt"),
    (("abs", "absolute"), "abs"), (("sign", "sgn"), "sign"), (("floor",), "floor"), (("ceil",), "ceil"),
    (("erf", "special_erf"), "erf"), (("erfc", "special_erfc"), "erfc"), (("sigmoid", "special_expit"), "sigmoid"),
    (("relu",), "relu"), (("neg", "negative"), "neg"),
]:
    _table(_names, _op)

unary(("rsqrt",), 1 / sympy.sqrt(x), torch.rsqrt, grad_forms=[-sympy.S.Half / sympy.sqrt(x) ** 3])
unary(("reciprocal",), 1 / x, torch.reciprocal, grad_forms=[-(1 / x) ** 2])
unary(("square",), x**2, torch.square)
unary(("exp2", "special_exp2"), 2**x, torch.exp2, grad_forms=[2**x * sympy.log(2)])
unary(("deg2rad",), x * sympy.pi / 180, torch.deg2rad)
unary(("rad2deg",), x * 180 / sympy.pi, torch.rad2deg)


# ---------------------------------------------------------------- arithmetic
def _binary(names: tuple[str, ...], opname: str) -> None:
    rule(*names, sig=lambda input, other, *, out=None: 0)(
        lambda c, a: apply(c, table_fn(opname, 2), a.input, a.other))


def _scaled(c: Ctx, t: Any, alpha: Any) -> Any:
    """alpha * t (t a tensor or a number)."""
    if alpha == 1:
        return t
    return P.ew(MUL, c.v(t), alpha) if isinstance(t, torch.Tensor) else t * alpha


@rule("add", sig=lambda input, other, *, alpha=1, out=None: 0)
def _add(c: Ctx, a: Args) -> Any:
    return apply(c, table_fn("add", 2), a.input, _scaled(c, a.other, a.alpha))


@rule("sub", "subtract", sig=lambda input, other, *, alpha=1, out=None: 0)
def _sub(c: Ctx, a: Args) -> Any:
    return apply(c, table_fn("sub", 2), a.input, _scaled(c, a.other, a.alpha))


@rule("rsub", sig=lambda input, other, *, alpha=1, out=None: 0)
def _rsub(c: Ctx, a: Args) -> Any:
    """rsub(input, other, alpha) = other - alpha * input."""
    return apply(c, table_fn("sub", 2), a.other, _scaled(c, a.input, a.alpha))


_binary(("mul", "multiply"), "mul")
_binary(("true_divide",), "div")
_binary(("atan2", "arctan2"), "atan2")
_binary(("hypot",), "hypot")
_binary(("maximum",), "max")
_binary(("minimum",), "min")
_binary(("logaddexp",), "logaddexp")

_LN2 = sympy.log(2)
# logaddexp2_backward: 1/(1 + 2**(b - a)), stable where the naive 2**a/(2**a + 2**b) overflows.
_LOGADDEXP2 = EwFn("logaddexp2", sympy.log(2**x + 2**y) / _LN2, 2, torch_impl=torch.logaddexp2,
                   partials=[1 / (1 + 2 ** (y - x)), 1 / (1 + 2 ** (x - y))])
rule("logaddexp2", sig=lambda input, other, *, out=None: 0)(lambda c, a: apply(c, _LOGADDEXP2, a.input, a.other))


@rule("div", "divide", sig=lambda input, other, *, rounding_mode=None, out=None: 0)
def _div(c: Ctx, a: Args) -> Any:
    if a.rounding_mode is None:
        return apply(c, table_fn("div", 2), a.input, a.other)
    return apply(c, _rounded_div(a.rounding_mode), a.input, a.other)


@functools.cache
def _rounded_div(kind: str) -> EwFn:
    S = sym()
    q = x / y
    expr = S.floor(q) if kind == "floor" else S.sign(q) * S.floor(sympy.Abs(q))
    return EwFn(f"div({kind})", expr, 2, torch_impl=functools.partial(torch.div, rounding_mode=kind),
                partials=[sympy.S.Zero, sympy.S.Zero], kink=lambda t, u: _on_integer(t, u, kind),
                convention="torch returns 0 (piecewise constant), also at the jumps")


def _on_integer(t: Any, u: Any, kind: str) -> Any:
    q = torch.div(t, u, rounding_mode=kind)
    return q * u == t


# ---------------------------------------------------------------- pow
@rule("pow", sig=lambda input, exponent, *, out=None: 0)
def _pow(c: Ctx, a: Args) -> Any:
    base, e = a.input, a.exponent
    if isinstance(e, torch.Tensor) and isinstance(base, torch.Tensor):
        if not e.is_floating_point() and not c.is_traced(e) and e.numel() == 1 and e.dim() == 0:
            return apply(c, _pow_exponent(int(e)), base)
        return apply(c, _POW, base, e)
    if isinstance(e, torch.Tensor):  # a Python number to a tensor power (__rpow__)
        return apply(c, _pow_base(base), e)
    return apply(c, _pow_exponent(e), base)


@functools.lru_cache(maxsize=256)
def _pow_exponent(e: Any) -> EwFn:
    """x ** e for a Python number e; pow_backward: 0 everywhere when e == 0, else e * x**(e - 1)."""
    n = num(e)
    d = n * x ** (n - 1) if n != 0 else sympy.S.Zero
    return EwFn(f"pow(., {e})", x**n, 1, torch_impl=lambda t: torch.pow(t, e), partials=[d])


@functools.lru_cache(maxsize=256)
def _pow_base(b: Any) -> EwFn:
    """b ** x for a Python number b (pow_backward_exponent): result * log(b); for b == 0 torch masks
    the partial to 0 where x >= 0 (0**x is 0 or 1 there), and it is -inf below; NaN for b < 0."""
    v = num(b)
    if v == 0:
        d = sympy.Piecewise((0, x >= 0), (-sympy.oo, True))
        expr = sympy.Piecewise((1, sympy.Eq(x, 0)), (0, x > 0), (sympy.oo, True))
    elif v < 0:
        d, expr = sympy.nan, sympy.Pow(v, x, evaluate=False)
    else:
        d, expr = v**x * sympy.log(v), v**x
    return EwFn(f"pow({b}, .)", expr, 1, torch_impl=lambda t: torch.pow(b, t), partials=[d],
                convention="torch: the exponent's partial is 0 where the base is 0 and the exponent >= 0")


# pow_backward_self: 0 where the exponent is 0 (also at x == 0), else b * a**(b - 1) (not sympy's
# b * a**b / a: 0/0 at a == 0); pow_backward_exponent: masked to 0 where a == 0 and b >= 0.
_POW = EwFn("pow", x**y, 2, torch_impl=torch.pow,
            partials=[sympy.Piecewise((0, sympy.Eq(y, 0)), (y * x ** (y - 1), True)),
                      sympy.Piecewise((0, sympy.And(sympy.Eq(x, 0), y >= 0)), (x**y * sympy.log(x), True))],
            kink=lambda a, b: (a == 0) & (b >= 0),
            convention="torch masks the exponent's partial to 0 where the base is 0 and the exponent >= 0")


@rule("float_power", sig=lambda input, exponent, *, out=None: 0)
def _float_power(c: Ctx, a: Args) -> Any:
    return _pow(c, a)  # computed in float64, whatever the inputs' dtype (the output's dtype says so)


# ---------------------------------------------------------------- clamp, where, lerp, addcmul, addcdiv
@rule("clamp", "clip", sig=lambda input, min=None, max=None, *, out=None: 0)
def _clamp(c: Ctx, a: Args) -> Any:
    if a.min is None and a.max is None:
        raise Refused("clamp without min and max raises in torch")
    lo = -math.inf if a.min is None else a.min
    hi = math.inf if a.max is None else a.max
    return apply(c, table_fn("clamp", 3), a.input, lo, hi)


@rule("clamp_min", sig=lambda input, min, *, out=None: 0)
def _clamp_min(c: Ctx, a: Args) -> Any:
    return apply(c, table_fn("clamp", 3), a.input, a.min, math.inf)


@rule("clamp_max", sig=lambda input, max, *, out=None: 0)
def _clamp_max(c: Ctx, a: Args) -> Any:
    return apply(c, table_fn("clamp", 3), a.input, -math.inf, a.max)


@rule("where", sig=lambda condition, input=None, other=None, *, out=None: 0)
def _where(c: Ctx, a: Args) -> Any:
    cond, first, second = a.condition, a.input, a.other
    if getattr(c, "func", None) is torch.Tensor.where:  # x.where(condition, y): self is the value taken
        cond, first = first, cond
    if first is None or second is None:
        raise Refused("where(condition) with one argument is not differentiable")
    mask = cond.to(torch.float64) if isinstance(cond, torch.Tensor) else float(bool(cond))
    return P.ew(WHERE, mask, _float(c.v(first)), _float(c.v(second)))


_LERP = EwFn("lerp", x + z * (y - x), 3, torch_impl=torch.lerp)
rule("lerp", sig=lambda input, end, weight, *, out=None: 0)(
    lambda c, a: apply(c, _LERP, a.input, a.end, a.weight))


@functools.lru_cache(maxsize=256)
def _addc(kind: str, value: Any) -> EwFn:
    """x + value * y * z or x + value * y / z (built once per value: an optimizer calls it every step)."""
    return ew_fn(kind, x + num(value) * (y * z if kind == "addcmul" else y / z), 3)


@rule("addcmul", sig=lambda input, tensor1, tensor2, *, value=1, out=None: 0)
def _addcmul(c: Ctx, a: Args) -> Any:
    return apply(c, _addc("addcmul", a.value), a.input, a.tensor1, a.tensor2)


@rule("addcdiv", sig=lambda input, tensor1, tensor2, *, value=1, out=None: 0)
def _addcdiv(c: Ctx, a: Args) -> Any:
    return apply(c, _addc("addcdiv", a.value), a.input, a.tensor1, a.tensor2)
