"""The torch backend of the symbolic program's compiler (`evaluate.compile_program`): each sympy head as a torch
float64 kernel over a whole batch of points, with real semantics (NaN where the real function is undefined, +-inf
at poles and overflow, as torch computes them)."""

from __future__ import annotations

import math
from typing import Any, Callable

import sympy
import torch
from sympy.codegen.cfunctions import expm1, log1p, log2, log10

from .backend import Backend, sympy_number
from .sympy_functions import ceiling, floor, lgamma, mod, sign, zmul

__all__ = ["TORCH"]


def _t_const(e: sympy.Expr) -> torch.Tensor:
    return torch.tensor(sympy_number(e), dtype=torch.float64)


def _t_pow(base: torch.Tensor, exponent: sympy.Expr, exp_value: Any) -> torch.Tensor:
    if exponent == -1:
        return torch.reciprocal(base)
    if exponent == sympy.Rational(1, 2):
        return torch.sqrt(base)
    if exponent == sympy.Rational(-1, 2):
        return torch.rsqrt(base)
    if exponent == 2:
        return base * base
    if exponent == 0:  # IEEE's pow(nan, 0) is 1; the math of an undefined base is undefined
        return torch.where(torch.isnan(base), base, torch.ones_like(base))
    if exponent.is_Integer and abs(int(exponent)) < 2**53:
        return torch.pow(base, int(exponent))
    out = torch.pow(base, exp_value)
    if exponent.is_Number:
        return out
    # IEEE's pow(1, nan) and pow(nan, 0) are 1: a NaN base or exponent is undefined here, as in mpmath
    return torch.where(torch.isnan(base) | torch.isnan(torch.as_tensor(exp_value)), torch.nan, out)


def _t_pow_for(exponent: sympy.Expr) -> Callable[[Any, Any], Any]:
    """`_t_pow` with its case chosen for this exponent once (sympy comparisons cost a microsecond each)."""
    if exponent == -1:
        return lambda base, _: torch.reciprocal(base)
    if exponent == sympy.Rational(1, 2):
        return lambda base, _: torch.sqrt(base)
    if exponent == sympy.Rational(-1, 2):
        return lambda base, _: torch.rsqrt(base)
    if exponent == 2:
        return lambda base, _: base * base
    if exponent.is_Integer and exponent != 0 and abs(int(exponent)) < 2**53:
        k = int(exponent)
        return lambda base, _: torch.pow(base, k)
    return lambda base, value: _t_pow(base, exponent, value)


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


def _t_logic(fn: Callable[[Any, Any], Any]) -> Callable[..., Any]:
    return _t_reduce(lambda a, b: fn(torch.as_tensor(a), torch.as_tensor(b)))


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
    # sympy writes a comparison of a piecewise value as a boolean function (ITE, And, ...).
    sympy.ITE: lambda c, a, b: torch.where(torch.as_tensor(c), torch.as_tensor(a), torch.as_tensor(b)),
    sympy.And: _t_logic(torch.logical_and), sympy.Or: _t_logic(torch.logical_or),
    sympy.Not: lambda a: torch.logical_not(torch.as_tensor(a)), sympy.Xor: _t_logic(torch.logical_xor),
    # Real semantics: the derivative of Abs(f) mentions re(f) and im(f).
    sympy.re: lambda x: x, sympy.im: lambda x: torch.where(torch.isnan(x), x, torch.zeros_like(x)),
    sympy.conjugate: lambda x: x,
    sympy.arg: lambda x: torch.where(x < 0, torch.full_like(x, math.pi), torch.where(torch.isnan(x), x, x * 0)),
}

TORCH = Backend(
    "torch",
    const=_t_const,
    add=lambda xs: _t_reduce(torch.add)(*xs),
    mul=lambda xs: _t_reduce(torch.mul)(*xs),
    pow=_t_pow,
    where=lambda c, a, b: torch.where(c, a, b),
    funcs=_TORCH_FUNCS,
    div=lambda a, b: a / b,
)
