"""Elementwise torch ops: each one `EwFn` (a sympy expression), applied to whole tensors.

The math comes from the op table (`gradcheck_sym.ops.table`, shared with the
expression parser) or from the sympy forms written here; derivatives are
sympy's, derived once per function.  Where torch's derivative at a kink, tie or
bound follows a documented convention (``relu'(0) = 0``, ``clamp`` passes the
gradient at its bounds), the partials say so — the reference follows torch
there, and a user's backward that differs is told apart as `nondifferentiable`.
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
from ..ew import MUL, EwFn, P as X, ew_fn
from ..table import OPS
from .registry import Args, Ctx, Refused, rule

x, y, z = X[0], X[1], X[2]


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


def _s() -> Any:
    # NB: the sympy namespace with our floor/sign/lgamma classes lives with the expression
    # path's derivation; imported at first use.
    from ...reference.symbolic import S

    return S


# torch's conventions where sympy's derivative is undefined or differs (reference table).
def _conventions() -> dict[str, list[sympy.Expr]]:
    H = sympy.Heaviside
    return {
        "relu": [H(x, 0)],
        "abs": [_s().sign(x)],
        "clamp": [sympy.Piecewise((1, sympy.And(x >= y, x <= z)), (0, True)),
                  sympy.Piecewise((1, x < y), (0, True)) * sympy.Piecewise((1, y <= z), (0, True)),
                  sympy.Piecewise((1, sympy.And(x > z, y <= z)), (0, True)) + sympy.Piecewise((1, y > z), (0, True))],
    }


def _kernel_forms() -> dict[str, dict[str, Any]]:
    """Where torch's backward evaluates another formula than sympy's derivative (derivatives.yaml), and it
    rounds differently: the formula, for the rounding allowance only (the reference stays sympy's)."""
    s = 1 / (1 + sympy.exp(-x))
    return {
        "expm1": {"grad_forms": [_s().expm1(x) + 1]},  # result + 1: cancels for very negative x
        "sigmoid": {"grad_forms": [s * (1 - s)]},  # cancels for large x
        "tanh": {"grad_forms": [1 - sympy.tanh(x) ** 2]},
    }


@functools.cache
def table_fn(opname: str, nargs: int) -> EwFn:
    """The `EwFn` of an op of the table (its torch kernel for the value, its kink and convention)."""
    op = OPS[opname]
    args = X[:nargs]
    expr = op.sympy(_s(), *args)
    partials = _conventions().get(opname)
    if partials is None and op.partials is not None:
        partials = list(op.partials(_s(), *args))
    kink = (lambda *a: op.kink(torch, *a)) if op.kink is not None else None
    return EwFn(opname, expr, nargs, torch_impl=lambda *a: op.torch(torch, *a), partials=partials, kink=kink,
                convention=op.convention, **_kernel_forms().get(opname, {}))


def _apply(c: Ctx, fn: EwFn, *args: Any) -> Any:
    """fn on the user's arguments; a piecewise fn takes its branches from the user's own values."""
    handles = [c.v(a) for a in args]
    if not fn.has_branches:
        return P.ew(fn, *handles)
    return P.ew(fn.branched, *handles, *[c.user_value(a) for a in args])


def _table(names: tuple[str, ...], opname: str, nargs: int, sig: Callable[..., Any]) -> None:
    def lower(c: Ctx, a: Args) -> Any:
        vals = list(a.values())[:nargs]
        return _apply(c, table_fn(opname, nargs), *vals)

    rule(*names, sig=sig)(lower)


for _names, _op in [
    (("sin",), "sin"), (("cos",), "cos"), (("tan",), "tan"), (("asin", "arcsin"), "asin"),
    (("acos", "arccos"), "acos"), (("atan", "arctan"), "atan"), (("sinh",), "sinh"), (("cosh",), "cosh"),
    (("tanh",), "tanh"), (("asinh", "arcsinh"), "asinh"), (("acosh", "arccosh"), "acosh"),
    (("atanh", "arctanh"), "atanh"), (("exp",), "exp"), (("expm1",), "expm1"), (("log",), "log"),
    (("log1p",), "log1p"), (("log2",), "log2"), (("log10",), "log10"), (("sqrt",), "sqrt"),
    (("abs", "absolute"), "abs"), (("sign", "sgn"), "sign"), (("floor",), "floor"), (("ceil",), "ceil"),
    (("erf",), "erf"), (("erfc",), "erfc"), (("sigmoid",), "sigmoid"), (("relu",), "relu"), (("lgamma",), "lgamma"),
    (("digamma",), "digamma"), (("neg", "negative"), "neg"),
]:
    _table(_names, _op, 1, lambda input, inplace=False, *, out=None: 0)


def _unary(names: tuple[str, ...], expr: sympy.Expr, torch_impl: Callable[..., Any], **kw: Any) -> None:
    fn = EwFn(names[0], expr, 1, torch_impl=torch_impl, **kw)
    rule(*names, sig=lambda input, inplace=False, *, out=None: 0)(lambda c, a: _apply(c, fn, a.input))


_unary(("rsqrt",), 1 / sympy.sqrt(x), torch.rsqrt)
_unary(("reciprocal",), 1 / x, torch.reciprocal)
_unary(("square",), x**2, torch.square)
_unary(("exp2",), 2**x, torch.exp2)
_unary(("deg2rad",), x * sympy.pi / 180, torch.deg2rad)
_unary(("rad2deg",), x * 180 / sympy.pi, torch.rad2deg)
_unary(("erfinv",), sympy.erfinv(x), torch.erfinv)


def _register_numerics() -> None:
    import mpmath

    from ...reference.evaluate import register_function

    register_function(sympy.erfinv, torch.erfinv, mpmath.erfinv)


_register_numerics()
_unary(("trunc", "fix"), sympy.sign(x) * sympy.floor(sympy.Abs(x)), torch.trunc,
       partials=[sympy.S.Zero], kink=lambda t: t == torch.trunc(t), convention="torch returns 0 everywhere")
_unary(("frac",), x - sympy.sign(x) * sympy.floor(sympy.Abs(x)), torch.frac, partials=[sympy.S.One],
       kink=lambda t: t == torch.trunc(t), convention="torch returns 1 everywhere, also at the jumps")
_unary(("silu",), x / (1 + sympy.exp(-x)), torch.nn.functional.silu)
_unary(("mish",), x * sympy.tanh(sympy.log(1 + sympy.exp(x))), torch.nn.functional.mish)
_unary(("softsign",), x / (1 + sympy.Abs(x)), torch.nn.functional.softsign)
_unary(("tanhshrink",), x - sympy.tanh(x), torch.nn.functional.tanhshrink)
_unary(("logsigmoid",), -sympy.log(1 + sympy.exp(-x)), torch.nn.functional.logsigmoid,
       partials=[1 / (1 + sympy.exp(x))])
_unary(("selu",), 1.0507009873554804934193349852946 * sympy.Piecewise(
    (x, x > 0), (1.6732632423543772848170429916717 * (sympy.exp(x) - 1), True)), torch.nn.functional.selu,
    kink=lambda t: t == 0, convention="torch takes the left derivative at 0")
_unary(("relu6",), sympy.Min(sympy.Max(x, 0), 6), torch.nn.functional.relu6,
       partials=[sympy.Piecewise((1, sympy.And(x > 0, x < 6)), (0, True))], kink=lambda t: (t == 0) | (t == 6),
       convention="torch returns 0 at both bounds")
# torch's hardsigmoid backward multiplies by a float32 1/6 in every dtype (relative error 3e-8).
_unary(("hardsigmoid",), sympy.Min(sympy.Max(x / 6 + sympy.S.Half, 0), 1), torch.nn.functional.hardsigmoid,
       partials=[sympy.Piecewise((sympy.Rational(1, 6), sympy.And(x > -3, x < 3)), (0, True))], grad_rel_err=6e-8,
       kink=lambda t: (t == -3) | (t == 3), convention="torch returns 0 at both bounds")
_unary(("hardswish",), x * sympy.Min(sympy.Max(x + 3, 0), 6) / 6, torch.nn.functional.hardswish,
       partials=[sympy.Piecewise((0, x < -3), (1, x >= 3), (x / 3 + sympy.S.Half, True))],
       kink=lambda t: (t == -3) | (t == 3), convention="torch returns 0 at -3 and 1 at 3")


def _fn_rule(names: tuple[str, ...], sig: Callable[..., Any], make: Callable[..., EwFn], params: tuple[str, ...]
             ) -> None:
    """An elementwise op with scalar parameters: one EwFn per parameter value."""

    def lower(c: Ctx, a: Args) -> Any:
        for p in params:
            if isinstance(a[p], torch.Tensor):
                raise Refused(f"argument {p} of {names[0]} as a tensor is not modelled")
        return _apply(c, _cached(make, tuple(a[p] for p in params)), a.input)

    rule(*names, sig=sig)(lower)


@functools.lru_cache(maxsize=1024)
def _cached(make: Callable[..., EwFn], values: tuple[Any, ...]) -> EwFn:
    return make(*values)


def _softplus(beta: float, threshold: float) -> EwFn:
    b = num(beta)
    # The math is log(1 + exp(beta x))/beta; torch switches to x above `threshold` (a kink there).
    return EwFn("softplus", sympy.log(1 + sympy.exp(b * x)) / b, 1,
                torch_impl=lambda t: torch.nn.functional.softplus(t, beta, threshold),
                partials=[sympy.Piecewise((1, b * x > num(threshold)), (1 / (1 + sympy.exp(-b * x)), True))])


_fn_rule(("softplus",), lambda input, beta=1.0, threshold=20.0: 0, _softplus, ("beta", "threshold"))


def _leaky(slope: float) -> EwFn:
    s = num(slope)
    return EwFn("leaky_relu", sympy.Piecewise((x, x > 0), (s * x, True)), 1,
                torch_impl=lambda t: torch.nn.functional.leaky_relu(t, slope),
                partials=[sympy.Piecewise((1, x > 0), (s, True))], kink=lambda t: t == 0,
                convention="torch takes the slope of the negative side at 0")


_fn_rule(("leaky_relu",), lambda input, negative_slope=0.01, inplace=False: 0, _leaky, ("negative_slope",))


def _elu(alpha: float) -> EwFn:
    al = num(alpha)
    return EwFn("elu", sympy.Piecewise((x, x > 0), (al * (sympy.exp(x) - 1), True)), 1,
                torch_impl=lambda t: torch.nn.functional.elu(t, alpha), kink=lambda t: t == 0,
                partials=[sympy.Piecewise((1, x > 0), (al * sympy.exp(x), True))],
                convention="torch takes the left derivative at 0")


_fn_rule(("elu",), lambda input, alpha=1.0, inplace=False: 0, _elu, ("alpha",))


def _celu(alpha: float) -> EwFn:
    al = num(alpha)
    return EwFn("celu", sympy.Piecewise((x, x > 0), (al * (sympy.exp(x / al) - 1), True)), 1,
                torch_impl=lambda t: torch.nn.functional.celu(t, alpha),
                partials=[sympy.Piecewise((1, x > 0), (sympy.exp(x / al), True))])


_fn_rule(("celu",), lambda input, alpha=1.0, inplace=False: 0, _celu, ("alpha",))


def _hardtanh(lo: float, hi: float) -> EwFn:
    a, b = num(lo), num(hi)
    return EwFn("hardtanh", sympy.Min(sympy.Max(x, a), b), 1,
                torch_impl=lambda t: torch.nn.functional.hardtanh(t, lo, hi),
                partials=[sympy.Piecewise((1, sympy.And(x > a, x < b)), (0, True))],
                kink=lambda t: (t == lo) | (t == hi), convention="torch returns 0 at both bounds (bounds excluded)")


_fn_rule(("hardtanh",), lambda input, min_val=-1.0, max_val=1.0, inplace=False: 0, _hardtanh, ("min_val", "max_val"))


def _shrink(kind: str) -> Callable[[float], EwFn]:
    def make(lambd: float) -> EwFn:
        lam = num(lambd)
        if kind == "hard":
            expr = sympy.Piecewise((x, sympy.Abs(x) > lam), (0, True))
            d = sympy.Piecewise((1, sympy.Abs(x) > lam), (0, True))
            impl = lambda t: torch.nn.functional.hardshrink(t, lambd)  # noqa: E731
        else:
            expr = sympy.Piecewise((x - lam, x > lam), (x + lam, x < -lam), (0, True))
            d = sympy.Piecewise((1, sympy.Abs(x) > lam), (0, True))
            impl = lambda t: torch.nn.functional.softshrink(t, lambd)  # noqa: E731
        return EwFn(f"{kind}shrink", expr, 1, torch_impl=impl, partials=[d], kink=lambda t: t.abs() == lambd,
                    convention="torch returns 0 at the threshold")

    return make


_fn_rule(("hardshrink",), lambda input, lambd=0.5: 0, _shrink("hard"), ("lambd",))
_fn_rule(("softshrink",), lambda input, lambd=0.5: 0, _shrink("soft"), ("lambd",))


def _threshold(threshold: float, value: float) -> EwFn:
    th = num(threshold)
    return EwFn("threshold", sympy.Piecewise((x, x > th), (num(value), True)), 1,
                torch_impl=lambda t: torch.nn.functional.threshold(t, threshold, value),
                partials=[sympy.Piecewise((1, x > th), (0, True))], kink=lambda t: t == threshold,
                convention="torch returns 0 at the threshold")


_fn_rule(("threshold",), lambda input, threshold, value, inplace=False: 0, _threshold, ("threshold", "value"))


def _gelu(approximate: str) -> EwFn:
    if approximate == "none":
        return EwFn("gelu", x / 2 * (1 + sympy.erf(x / sympy.sqrt(2))), 1,
                    torch_impl=lambda t: torch.nn.functional.gelu(t))
    if approximate == "tanh":
        inner = sympy.sqrt(2 / sympy.pi) * (x + sympy.Float("0.044715", 53) * x**3)
        return EwFn("gelu(tanh)", x / 2 * (1 + sympy.tanh(inner)), 1,
                    torch_impl=lambda t: torch.nn.functional.gelu(t, approximate="tanh"))
    raise Refused(f"gelu(approximate={approximate!r}) is not modelled")


_fn_rule(("gelu",), lambda input, approximate="none": 0, _gelu, ("approximate",))


# ---------------------------------------------------------------- binary
def _binary(names: tuple[str, ...], opname: str) -> None:
    rule(*names, sig=lambda input, other, *, out=None: 0)(
        lambda c, a: _apply(c, table_fn(opname, 2), a.input, a.other))


def _arith(names: tuple[str, ...], opname: str, reverse: bool = False) -> None:
    def lower(c: Ctx, a: Args) -> Any:
        other = a.other
        if a.alpha != 1:
            other = P.ew(MUL, c.v(other), a.alpha) if isinstance(other, torch.Tensor) else other * a.alpha
        first, second = (other, a.input) if reverse else (a.input, other)
        return _apply(c, table_fn(opname, 2), first, second)

    rule(*names, sig=lambda input, other, *, alpha=1, out=None: 0)(lower)


_arith(("add",), "add")
_arith(("sub", "subtract"), "sub")
_arith(("rsub",), "sub", reverse=True)
_binary(("mul", "multiply"), "mul")
_binary(("true_divide",), "div")
_binary(("atan2", "arctan2"), "atan2")
_binary(("hypot",), "hypot")
_binary(("maximum",), "max")
_binary(("minimum",), "min")
_binary(("logaddexp",), "logaddexp")


@rule("div", "divide", sig=lambda input, other, *, rounding_mode=None, out=None: 0)
def _div(c: Ctx, a: Args) -> Any:
    if a.rounding_mode is None:
        return _apply(c, table_fn("div", 2), a.input, a.other)
    kind = a.rounding_mode
    impl = functools.partial(torch.div, rounding_mode=kind)
    expr = sympy.floor(x / y) if kind == "floor" else sympy.sign(x / y) * sympy.floor(sympy.Abs(x / y))
    fn = EwFn(f"div({kind})", expr, 2, torch_impl=impl, partials=[sympy.S.Zero, sympy.S.Zero],
              convention="torch returns 0 (piecewise constant)")
    return _apply(c, fn, a.input, a.other)


@rule("pow", sig=lambda input, exponent, *, out=None: 0)
def _pow(c: Ctx, a: Args) -> Any:
    if isinstance(a.exponent, torch.Tensor) and isinstance(a.input, torch.Tensor):
        return _apply(c, _POW, a.input, a.exponent)
    if isinstance(a.exponent, torch.Tensor):  # a Python number to a tensor power
        return _apply(c, _pow_base(a.input), a.exponent)
    return _apply(c, _pow_exponent(a.exponent), a.input)


@functools.lru_cache(maxsize=256)
def _pow_exponent(e: Any) -> EwFn:
    n = num(e)
    d = n * x ** (n - 1) if n != 0 else sympy.S.Zero
    return EwFn(f"pow(., {e})", x**n, 1, torch_impl=lambda t: torch.pow(t, e), partials=[d])


@functools.lru_cache(maxsize=256)
def _pow_base(b: Any) -> EwFn:
    return EwFn(f"pow({b}, .)", num(b) ** x, 1, torch_impl=lambda t: torch.pow(b, t))


# b*a**(b-1), not sympy's b*a**b/a (0/0 at a = 0); torch's exponent partial is masked to 0 where a == 0.
_POW = EwFn("pow", x**y, 2, torch_impl=torch.pow,
            partials=[y * x ** (y - 1), sympy.Piecewise((0, sympy.Eq(x, 0)), (x**y * sympy.log(x), True))])


@rule("float_power", sig=lambda input, exponent, *, out=None: 0)
def _float_power(c: Ctx, a: Args) -> Any:
    return _pow(c, a)


@rule("clamp", "clip", sig=lambda input, min=None, max=None, *, out=None: 0)
def _clamp(c: Ctx, a: Args) -> Any:
    lo = -math.inf if a.min is None else a.min
    hi = math.inf if a.max is None else a.max
    return _apply(c, table_fn("clamp", 3), a.input, lo, hi)


@rule("clamp_min", sig=lambda input, min, *, out=None: 0)
def _clamp_min(c: Ctx, a: Args) -> Any:
    return _apply(c, table_fn("clamp", 3), a.input, a.min, math.inf)


@rule("clamp_max", sig=lambda input, max, *, out=None: 0)
def _clamp_max(c: Ctx, a: Args) -> Any:
    return _apply(c, table_fn("clamp", 3), a.input, -math.inf, a.max)


@rule("where", sig=lambda condition, input=None, other=None, *, out=None: 0)
def _where(c: Ctx, a: Args) -> Any:
    if a.input is None:
        raise Refused("where(condition) with one argument is not differentiable")
    from ..ew import WHERE

    mask = a.condition.to(torch.float64) if isinstance(a.condition, torch.Tensor) else float(bool(a.condition))
    return P.ew(WHERE, mask, c.v(a.input), c.v(a.other))


@rule("lerp", sig=lambda input, end, weight, *, out=None: 0)
def _lerp(c: Ctx, a: Args) -> Any:
    return _apply(c, ew_fn("lerp", x + z * (y - x), 3), a.input, a.end, a.weight)


@rule("addcmul", sig=lambda input, tensor1, tensor2, *, value=1, out=None: 0)
def _addcmul(c: Ctx, a: Args) -> Any:
    return _apply(c, ew_fn("addcmul", x + num(a.value) * y * z, 3), a.input, a.tensor1, a.tensor2)


@rule("addcdiv", sig=lambda input, tensor1, tensor2, *, value=1, out=None: 0)
def _addcdiv(c: Ctx, a: Args) -> Any:
    return _apply(c, ew_fn("addcdiv", x + num(a.value) * y / z, 3), a.input, a.tensor1, a.tensor2)
