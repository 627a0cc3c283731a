"""The high-precision backend of the expression path: the symbolic program in mpmath, with a context of its own.

`mpmath_backend(dps)` gives a `evaluate.Backend` whose numbers live in a private
`mpmath.MPContext`: nothing global changes (``mpmath.workdps`` would change the precision
of every thread), so checks can run concurrently.  Every function is total and real, as in
torch: NaN where the real value is undefined or complex, +-inf at poles and overflow; no
exception escapes.  Values far beyond any float dtype are made infinite (or 0) at once
(`MAX_MAG`), so that no step spends its time on exponents of billions of bits.
"""

from __future__ import annotations

from typing import Any, Callable

import mpmath
import sympy
from sympy.codegen.cfunctions import expm1, log1p, log2, log10

from .backend import Backend, special_number
from .sympy_functions import ceiling, floor, lgamma, mod, sign, zmul

__all__ = ["mpmath_backend", "MAX_MAG", "GLOBAL"]

_RELATIONS: dict[type, Callable[..., Any]] = {
    sympy.StrictGreaterThan: lambda a, b: a > b, sympy.GreaterThan: lambda a, b: a >= b,
    sympy.StrictLessThan: lambda a, b: a < b, sympy.LessThan: lambda a, b: a <= b,
    sympy.Equality: lambda a, b: a == b, sympy.Unequality: lambda a, b: a != b,
    sympy.ITE: lambda c, a, b: a if c else b, sympy.And: lambda *a: all(a), sympy.Or: lambda *a: any(a),
    sympy.Not: lambda a: not a, sympy.Xor: lambda *a: sum(bool(x) for x in a) % 2 == 1,
}
# Values beyond 2**MAX_MAG (or below 2**-MAX_MAG) are far outside every float dtype: they are
# made infinite (or 0) at once, so that no later step spends its time on exponents of
# billions of bits (sin(exp(1e100)) would need that many bits of pi).
MAX_MAG = 16_384


def mpmath_backend(dps: int | None, ctx: Any = None) -> Backend:
    """An mpmath backend at `dps` digits with its own context (thread-safe: nothing global changes).

    Every function is total and real: NaN where the real value is undefined or complex,
    +-inf at poles and overflow (IEEE semantics, as torch); no exception escapes.
    With `ctx=mpmath.mp` (and `dps` None) the backend works in mpmath's global context, at
    whatever precision its caller set while holding `backend.MP_LOCK` (the tensor engine's
    high-precision sweep, whose matrix rules call mpmath's global functions).
    """
    if ctx is None:
        ctx = mpmath.MPContext()
    if dps is not None:
        ctx.dps = dps
    mpf, inf, nan = ctx.mpf, ctx.inf, ctx.nan
    zero, one = ctx.mpf(0), ctx.mpf(1)

    def tame(v: Any) -> Any:
        if type(v) is mpf:
            sign, man, exp, bc = v._mpf_
            if man and exp + bc > MAX_MAG:
                return -inf if sign else inf
            if man and exp + bc < -MAX_MAG:
                return zero
        return v

    def real(fn: Callable[..., Any]) -> Callable[..., Any]:
        def f(*args: Any) -> Any:
            if any(type(a) is mpf and ctx.isnan(a) for a in args):
                return nan
            try:
                out = fn(*args)
            except (ValueError, ZeroDivisionError, OverflowError, TypeError):
                return nan
            if isinstance(out, ctx.mpc):
                return out.real if out.imag == 0 else nan
            return tame(out)

        return f

    def div(a: Any, b: Any) -> Any:
        if b == 0:
            if ctx.isnan(a) or a == 0:
                return nan
            return inf if a > 0 else -inf
        return tame(a / b)

    def power(base: Any, exponent: sympy.Expr, e: Any) -> Any:
        if ctx.isnan(base) or ctx.isnan(e):
            return nan
        if base == 0 and e < 0:
            return inf  # a pole, as torch's pow(0, negative) gives
        if base < 0 and not (exponent.is_Integer or ctx.isint(e)):
            return nan
        return real(ctx.power)(base, e)

    def heaviside(x: Any, h0: Any = ctx.mpf(0.5)) -> Any:
        return nan if ctx.isnan(x) else one if x > 0 else zero if x < 0 else h0

    def log(x: Any) -> Any:
        return -inf if x == 0 else real(ctx.log)(x)

    def log_gamma(x: Any) -> Any:
        if ctx.isinf(x):
            return inf
        if x <= 0 and ctx.isint(x):
            return inf
        return real(lambda v: ctx.log(abs(ctx.gamma(v))))(x)

    def polygamma(n: Any, x: Any) -> Any:
        if ctx.isnan(x) or (x <= 0 and ctx.isint(x)) or x == -inf:
            return nan
        if x == inf:
            return inf if int(n) == 0 else zero
        return real(ctx.psi)(int(n), x)

    def erf(x: Any) -> Any:  # beyond 1e8 the value is 1 to far more than 2**-MAX_MAG
        return nan if ctx.isnan(x) else ctx.sign(x) * one if abs(x) > 1e8 else real(ctx.erf)(x)

    def erfc(x: Any) -> Any:
        return nan if ctx.isnan(x) else zero if x > 1e8 else 2 * one if x < -1e8 else real(ctx.erfc)(x)

    def remainder(a: Any, b: Any) -> Any:
        return real(lambda p, q: p - q * ctx.floor(p / q))(a, b)

    def log1p_(x: Any) -> Any:
        # log(1 + x) would lose every digit of x below 10**-dps: mpmath's log1p keeps them
        return -inf if x == -1 else real(ctx.log1p)(x)

    def minmax(pick: Callable[..., Any]) -> Callable[..., Any]:
        return lambda *a: nan if any(ctx.isnan(x) for x in a) else pick(a)

    def where(c: Any, a: Any, b: Any) -> Any:
        return a if c else b

    funcs: dict[type, Callable[..., Any]] = {
        sympy.sin: real(ctx.sin), sympy.cos: real(ctx.cos), sympy.tan: real(ctx.tan),
        sympy.cot: real(ctx.cot), sympy.sec: real(ctx.sec), sympy.csc: real(ctx.csc),
        sympy.asin: real(ctx.asin), sympy.acos: real(ctx.acos), sympy.atan: real(ctx.atan),
        sympy.atan2: real(ctx.atan2), sympy.sinh: real(ctx.sinh), sympy.cosh: real(ctx.cosh),
        sympy.tanh: real(ctx.tanh), sympy.asinh: real(ctx.asinh), sympy.acosh: real(ctx.acosh),
        sympy.atanh: real(ctx.atanh), sympy.exp: real(ctx.exp), sympy.log: log, expm1: real(ctx.expm1),
        log1p: log1p_, log2: lambda x: div(log(x), ctx.log(2)), log10: lambda x: div(log(x), ctx.log(10)),
        sympy.Abs: abs, sympy.sign: lambda x: nan if ctx.isnan(x) else mpf(ctx.sign(x)),
        sign: lambda x: nan if ctx.isnan(x) else mpf(ctx.sign(x)),
        sympy.floor: real(ctx.floor), floor: real(ctx.floor), sympy.ceiling: real(ctx.ceil), ceiling: real(ctx.ceil),
        sympy.erf: erf, sympy.erfc: erfc, sympy.loggamma: log_gamma, lgamma: log_gamma,
        sympy.polygamma: polygamma, sympy.Heaviside: heaviside, mod: remainder,
        sympy.Min: minmax(min), sympy.Max: minmax(max),
        sympy.DiracDelta: lambda x, *rest: zero,
        zmul: lambda a, b: zero if a == 0 else tame(a * b),
        sympy.re: lambda x: x, sympy.im: lambda x: nan if ctx.isnan(x) else zero,
        sympy.conjugate: lambda x: x,
        sympy.arg: lambda x: nan if ctx.isnan(x) else +ctx.pi if x < 0 else zero,
        **_RELATIONS,
    }

    def const(e: sympy.Expr) -> Any:
        number = special_number(e)
        if number is not None:
            return mpf(number)
        if e.is_Rational:
            return div(mpf(e.p), mpf(e.q))
        if e.is_Float:
            return tame(mpf(e._mpf_))
        named = {sympy.pi: ctx.pi, sympy.E: ctx.e, sympy.EulerGamma: ctx.euler, sympy.Catalan: ctx.catalan,
                 sympy.GoldenRatio: ctx.phi}
        if e in named:
            return +named[e]
        return nan

    # A sum that cancels to within the working precision is 0: psi(1) + EulerGamma is ~1e-51 at
    # 50 digits, exactly 0 in the math (and 2*erf(y)/harmonic(y) at y = 0 is then 0/0, undefined).
    # Float64-derived values never cancel that far: their differences are at least 2**-52 relative.
    def cancelled(total: Any, terms: list[Any]) -> Any:
        if total == 0 or not ctx.isfinite(total):
            return total
        big = max((abs(t) for t in terms if type(t) is mpf and ctx.isfinite(t)), default=zero)
        return zero if abs(total) < ctx.ldexp(big, -(ctx.prec - 8)) else total

    def add(xs: list[Any]) -> Any:
        return tame(cancelled(ctx.fsum(xs), xs))

    def sub(a: Any, b: Any) -> Any:
        return tame(cancelled(a - b, [a, b]))

    def mul(xs: list[Any]) -> Any:
        out = xs[0]
        for x in xs[1:]:
            out = out * x
        return tame(out)

    return Backend("mpmath", const=const, add=add, mul=mul, pow=power, where=where, funcs=funcs, div=div,
                   context=ctx, sub=sub)


# The backend in mpmath's global context (see `mpmath_backend`).
GLOBAL = mpmath_backend(None, mpmath.mp)
