"""Numbers from the symbolic program: vectorised in torch, or per point in mpmath.

`compile_program` turns each step's sympy expression into nested Python
closures once (no `lambdify`, no generated source: sympy's own printers crash
on constants such as ``cos(3)`` and on ``Heaviside``/``Max``, see
shared/reference/sympy-torch-pitfalls.md).  The closures then run on a whole
batch of points in torch float64, or on one point at a time in mpmath at high
precision for the points whose verdict needs it.

Real semantics throughout: where the real function is undefined the result is
NaN, as in torch (mpmath would return a complex number).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import mpmath
import sympy
import torch
from sympy.codegen.cfunctions import expm1, log1p, log2, log10

from .symbolic import Program, ceiling, floor, lgamma, mod, sign, zmul

__all__ = ["Backend", "TORCH", "MPMATH", "compile_program", "CompiledProgram", "UnevaluableError", "register_function"]

Env = dict[sympy.Symbol, Any]
Fn = Callable[[Env], Any]


class UnevaluableError(Exception):
    """The program contains a sympy object with no numeric rule (a bug, or an unevaluated derivative)."""


@dataclass(frozen=True)
class Backend:
    """How each sympy head is computed: `funcs` maps a sympy class to a function of the evaluated args."""

    name: str
    const: Callable[[sympy.Expr], Any]
    add: Callable[[list[Any]], Any]
    mul: Callable[[list[Any]], Any]
    pow: Callable[[Any, sympy.Expr, Any], Any]
    where: Callable[[Any, Any, Any], Any]
    funcs: dict[type, Callable[..., Any]]


def _sympy_number(e: sympy.Expr) -> float:
    if e is sympy.zoo or e is sympy.oo:
        return math.inf
    if e is -sympy.oo:
        return -math.inf
    if e is sympy.nan:
        return math.nan
    try:
        return float(e)
    except (OverflowError, TypeError):
        return math.inf if e > 0 else -math.inf


# ---------------------------------------------------------------- torch
def _t_const(e: sympy.Expr) -> torch.Tensor:
    return torch.tensor(_sympy_number(e), dtype=torch.float64)


def _t_pow(base: torch.Tensor, exponent: sympy.Expr, exp_value: Any) -> torch.Tensor:
    if exponent == -1:
        return torch.reciprocal(base)
    if exponent == sympy.Rational(1, 2):
        return torch.sqrt(base)
    if exponent == sympy.Rational(-1, 2):
        return torch.rsqrt(base)
    if exponent == 2:
        return base * base
    if exponent.is_Integer and abs(int(exponent)) < 2**53:
        return torch.pow(base, int(exponent))
    return torch.pow(base, exp_value)


def _t_heaviside(x: torch.Tensor, h0: torch.Tensor | None = None) -> torch.Tensor:
    h0 = torch.tensor(0.5, dtype=x.dtype) if h0 is None else torch.as_tensor(h0, dtype=x.dtype)
    return torch.heaviside(x, h0)


def _t_zmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.where(a == 0, torch.zeros((), dtype=torch.float64), a * b)


def _t_polygamma(n: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    order = int(n)
    return torch.digamma(x) if order == 0 else torch.polygamma(order, x)


def _t_reduce(fn: Callable[[Any, Any], Any]) -> Callable[..., Any]:
    def f(*args: Any) -> Any:
        out = args[0]
        for a in args[1:]:
            out = fn(out, a)
        return out

    return f


_TORCH_FUNCS: dict[type, Callable[..., Any]] = {
    sympy.sin: torch.sin, sympy.cos: torch.cos, sympy.tan: torch.tan,
    sympy.cot: lambda x: 1 / torch.tan(x), sympy.sec: lambda x: 1 / torch.cos(x), sympy.csc: lambda x: 1 / torch.sin(x),
    sympy.asin: torch.asin, sympy.acos: torch.acos, sympy.atan: torch.atan, sympy.atan2: torch.atan2,
    sympy.sinh: torch.sinh, sympy.cosh: torch.cosh, sympy.tanh: torch.tanh,
    sympy.asinh: torch.asinh, sympy.acosh: torch.acosh, sympy.atanh: torch.atanh,
    sympy.exp: torch.exp, sympy.log: torch.log, expm1: torch.expm1, log1p: torch.log1p, log2: torch.log2, log10: torch.log10,
    sympy.Abs: torch.abs, sympy.sign: torch.sign, sign: torch.sign,
    sympy.floor: torch.floor, floor: torch.floor, sympy.ceiling: torch.ceil, ceiling: torch.ceil,
    sympy.erf: torch.erf, sympy.erfc: torch.erfc, sympy.loggamma: torch.lgamma, lgamma: torch.lgamma,
    sympy.polygamma: _t_polygamma, sympy.Heaviside: _t_heaviside, mod: torch.remainder,
    sympy.Min: _t_reduce(torch.minimum), sympy.Max: _t_reduce(torch.maximum),
    sympy.DiracDelta: lambda x, *rest: torch.zeros_like(x),
    zmul: _t_zmul,
    sympy.StrictGreaterThan: torch.gt, sympy.GreaterThan: torch.ge, sympy.StrictLessThan: torch.lt,
    sympy.LessThan: torch.le, sympy.Equality: torch.eq, sympy.Unequality: torch.ne,
    sympy.And: _t_reduce(torch.logical_and), sympy.Or: _t_reduce(torch.logical_or), sympy.Not: torch.logical_not,
}

TORCH = Backend(
    "torch",
    const=_t_const,
    add=lambda xs: _t_reduce(torch.add)(*xs),
    mul=lambda xs: _t_reduce(torch.mul)(*xs),
    pow=_t_pow,
    where=lambda c, a, b: torch.where(c, a, b),
    funcs=_TORCH_FUNCS,
)


# ---------------------------------------------------------------- mpmath
_NAN = mpmath.mpf("nan")


def _real(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Real-valued version of an mpmath function: NaN where the value is complex or undefined."""

    def f(*args: Any) -> Any:
        if any(isinstance(a, mpmath.mpf) and mpmath.isnan(a) for a in args):
            return _NAN
        try:
            out = fn(*args)
        except (ValueError, ZeroDivisionError, OverflowError):
            return _NAN
        if isinstance(out, mpmath.mpc):
            return out.real if out.imag == 0 else _NAN
        return out

    return f


def _m_pow(base: Any, exponent: sympy.Expr, exp_value: Any) -> Any:
    if mpmath.isnan(base) or mpmath.isnan(exp_value):
        return _NAN
    if base == 0 and exp_value < 0:
        return mpmath.inf  # a pole, as torch's pow(0, negative) gives
    if base < 0 and not (exponent.is_Integer or mpmath.isint(exp_value)):
        return _NAN
    return _real(mpmath.power)(base, exp_value)


def _m_heaviside(x: Any, h0: Any = mpmath.mpf(0.5)) -> Any:
    return mpmath.mpf(1) if x > 0 else mpmath.mpf(0) if x < 0 else h0


def _m_sign(x: Any) -> Any:
    return mpmath.mpf(mpmath.sign(x))


def _m_lgamma(x: Any) -> Any:
    if x <= 0 and mpmath.isint(x):
        return mpmath.inf
    return mpmath.log(abs(mpmath.gamma(x)))


def _m_polygamma(n: Any, x: Any) -> Any:
    if x <= 0 and mpmath.isint(x):
        return _NAN
    return mpmath.psi(int(n), x)


def _m_mod(a: Any, b: Any) -> Any:
    return a - b * mpmath.floor(a / b)


def _m_log(x: Any) -> Any:
    if x == 0:
        return -mpmath.inf
    return _real(mpmath.log)(x)


def _m_log1p(x: Any) -> Any:
    # log(1 + x) would lose every digit of x below 10**-dps: mpmath's log1p keeps them.
    if x == -1:
        return -mpmath.inf
    return _real(mpmath.log1p)(x)


_MP_FUNCS: dict[type, Callable[..., Any]] = {
    sympy.sin: mpmath.sin, sympy.cos: mpmath.cos, sympy.tan: mpmath.tan,
    sympy.cot: _real(mpmath.cot), sympy.sec: mpmath.sec, sympy.csc: _real(mpmath.csc),
    sympy.asin: _real(mpmath.asin), sympy.acos: _real(mpmath.acos), sympy.atan: mpmath.atan,
    sympy.atan2: mpmath.atan2, sympy.sinh: mpmath.sinh, sympy.cosh: mpmath.cosh, sympy.tanh: mpmath.tanh,
    sympy.asinh: mpmath.asinh, sympy.acosh: _real(mpmath.acosh), sympy.atanh: _real(mpmath.atanh),
    sympy.exp: mpmath.exp, sympy.log: _m_log, expm1: mpmath.expm1, log1p: _m_log1p,
    log2: lambda x: _m_log(x) / mpmath.log(2), log10: lambda x: _m_log(x) / mpmath.log(10),
    sympy.Abs: abs, sympy.sign: _m_sign, sign: _m_sign,
    sympy.floor: mpmath.floor, floor: mpmath.floor, sympy.ceiling: mpmath.ceil, ceiling: mpmath.ceil,
    sympy.erf: mpmath.erf, sympy.erfc: mpmath.erfc, sympy.loggamma: _m_lgamma, lgamma: _m_lgamma,
    sympy.polygamma: _m_polygamma, sympy.Heaviside: _m_heaviside, mod: _m_mod,
    sympy.Min: lambda *a: _NAN if any(mpmath.isnan(x) for x in a) else min(a),
    sympy.Max: lambda *a: _NAN if any(mpmath.isnan(x) for x in a) else max(a),
    sympy.DiracDelta: lambda x, *rest: mpmath.mpf(0),
    zmul: lambda a, b: mpmath.mpf(0) if a == 0 else a * b,
    sympy.StrictGreaterThan: lambda a, b: a > b, sympy.GreaterThan: lambda a, b: a >= b,
    sympy.StrictLessThan: lambda a, b: a < b, sympy.LessThan: lambda a, b: a <= b,
    sympy.Equality: lambda a, b: a == b, sympy.Unequality: lambda a, b: a != b,
    sympy.And: lambda *a: all(a), sympy.Or: lambda *a: any(a), sympy.Not: lambda a: not a,
}


def _m_const(e: sympy.Expr) -> Any:
    if e is sympy.zoo or e is sympy.oo:
        return mpmath.inf
    if e is -sympy.oo:
        return -mpmath.inf
    if e is sympy.nan:
        return _NAN
    if e.is_Rational:
        return mpmath.mpf(e.p) / e.q
    if e.is_Float:
        return mpmath.mpf(e._mpf_)
    return mpmath.mpf(sympy.N(e, mpmath.mp.dps + 10))


def _m_sum(xs: list[Any]) -> Any:
    return mpmath.fsum(xs)


def _m_prod(xs: list[Any]) -> Any:
    out = xs[0]
    for x in xs[1:]:
        out = out * x
    return out


MPMATH = Backend(
    "mpmath",
    const=_m_const,
    add=_m_sum,
    mul=_m_prod,
    pow=_m_pow,
    where=lambda c, a, b: a if c else b,
    funcs=_MP_FUNCS,
)


# Numeric rules for more sympy functions, registered by the op rules that use them (erfinv, Bessel, ...).
EXTRA_FUNCS: dict[str, dict[type, Callable[..., Any]]] = {"torch": {}, "mpmath": {}}


def register_function(cls: type, torch_fn: Callable[..., Any], mp_fn: Callable[..., Any]) -> None:
    """How sympy class `cls` is computed in torch and in mpmath (for functions beyond the table above)."""
    EXTRA_FUNCS["torch"][cls] = torch_fn
    EXTRA_FUNCS["mpmath"][cls] = mp_fn


# ---------------------------------------------------------------- compiler
def _compile(expr: sympy.Expr, backend: Backend, consts: dict[sympy.Expr, Any]) -> Fn:
    if isinstance(expr, sympy.Symbol):
        return lambda env: env[expr]
    if expr.is_Number or isinstance(expr, sympy.NumberSymbol) or expr in (sympy.zoo, sympy.nan):
        if expr not in consts:
            consts[expr] = backend.const(expr)
        value = consts[expr]
        return lambda env: value
    if expr is sympy.true or expr is sympy.false:
        value = bool(expr)
        return lambda env: value
    if isinstance(expr, sympy.Add):
        # a + (-1)*b is computed as a - b: one kernel instead of two.
        plus = [a for a in expr.args if not _negated(a)]
        minus = [_negated(a) for a in expr.args if _negated(a)]
        if plus and minus:
            p_parts = [_compile(a, backend, consts) for a in plus]
            m_parts = [_compile(a, backend, consts) for a in minus]
            add = backend.add
            return lambda env: add([p(env) for p in p_parts]) - add([m(env) for m in m_parts])
        parts = [_compile(a, backend, consts) for a in expr.args]
        add = backend.add
        return lambda env: add([p(env) for p in parts])
    if isinstance(expr, sympy.Mul):
        # a * b**-1 is computed as a / b: one kernel instead of a reciprocal and a product.
        num = [a for a in expr.args if not (isinstance(a, sympy.Pow) and a.exp == -1)]
        den = [a.base for a in expr.args if isinstance(a, sympy.Pow) and a.exp == -1]
        mul = backend.mul
        if num and den:
            n_parts = [_compile(a, backend, consts) for a in num]
            d_parts = [_compile(a, backend, consts) for a in den]
            return lambda env: mul([p(env) for p in n_parts]) / mul([d(env) for d in d_parts])
        parts = [_compile(a, backend, consts) for a in expr.args]
        return lambda env: mul([p(env) for p in parts])
    if isinstance(expr, sympy.Pow):
        base = _compile(expr.base, backend, consts)
        exponent_expr = expr.exp
        exponent = _compile(exponent_expr, backend, consts)
        pw = backend.pow
        return lambda env: pw(base(env), exponent_expr, exponent(env))
    if isinstance(expr, sympy.Piecewise):
        pieces = [(_compile(e, backend, consts), _compile(c, backend, consts)) for e, c in expr.args]
        where = backend.where
        if len(pieces) == 1:
            return pieces[0][0]

        def piecewise(env: Env) -> Any:
            # The last piece's condition is True (as our builder writes it); fold from the end.
            out = pieces[-1][0](env)
            for value, cond in reversed(pieces[:-1]):
                out = where(cond(env), value(env), out)
            return out

        return piecewise
    fn = backend.funcs.get(type(expr)) or EXTRA_FUNCS[backend.name].get(type(expr))
    if fn is None:
        for cls, f in backend.funcs.items():  # subclasses, e.g. sympy's floor for ours
            if isinstance(expr, cls):
                fn = f
                break
    if fn is None:
        raise UnevaluableError(f"no numeric rule for {type(expr).__name__} in {expr}")
    args = [_compile(a, backend, consts) for a in expr.args]
    if len(args) == 1:
        a0 = args[0]
        return lambda env: fn(a0(env))
    return lambda env: fn(*[a(env) for a in args])


def _negated(expr: sympy.Expr) -> sympy.Expr | None:
    """b for a term written (-1)*b, else None."""
    if isinstance(expr, sympy.Mul) and expr.args and expr.args[0] == -1:
        rest = expr.args[1:]
        return rest[0] if len(rest) == 1 else sympy.Mul(*rest, evaluate=False)
    return None


@dataclass
class CompiledProgram:
    """A program compiled for one backend; `run` evaluates it on an environment of inputs."""

    backend: Backend
    steps: list[tuple[sympy.Symbol, Fn]]
    frees: list[list[sympy.Symbol]]

    def run(self, env: Env, keep: set[sympy.Symbol] | None = None) -> Env:
        """Evaluate every step into `env` (updated and returned).

        Args:
            env: values of the inputs.
            keep: symbols to keep; others are dropped after their last use to bound
                memory (None keeps everything).
        """
        for i, (sym, fn) in enumerate(self.steps):
            env[sym] = fn(env)
            if keep is not None:
                for dead in self.frees[i]:
                    if dead not in keep:
                        env.pop(dead, None)
        return env


def compile_program(program: Program, backend: Backend, extra: dict[str, sympy.Expr] | None = None) -> CompiledProgram:
    """Compile `program` (plus named `extra` expressions as final steps) for `backend`."""
    consts: dict[sympy.Expr, Any] = {}
    steps = [(sym, _compile(expr, backend, consts)) for sym, expr in program.steps]
    exprs = [expr for _, expr in program.steps]
    if extra:
        for name, expr in extra.items():
            sym = sympy.Symbol(f"extra[{name}]", real=True)
            steps.append((sym, _compile(expr, backend, consts)))
            exprs.append(expr)
    # Last use of each symbol, so temporaries can be dropped early.
    last: dict[sympy.Symbol, int] = {}
    for i, expr in enumerate(exprs):
        for s in expr.free_symbols:
            last[s] = i  # type: ignore[index]
    frees: list[list[sympy.Symbol]] = [[] for _ in steps]
    for s, i in last.items():
        frees[i].append(s)
    return CompiledProgram(backend, steps, frees)
