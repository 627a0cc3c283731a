"""Piecewise elementwise ops: rounding, remainders, signs, selections and identities on real tensors.

Most of these are piecewise constant or piecewise linear.  Away from their jumps the
derivative is plain (0 for ``round``, 1 for ``frac``, ``-trunc(a/b)`` for ``fmod``'s
divisor); at the jumps torch follows a convention, recorded as the op's kink so a
user's backward that differs there is `nondifferentiable` information, not a mismatch.

Decisions that no sympy comparison can express — the sign *bit* of ``copysign``'s
other argument (``-0.0`` counts as negative), which of ``fmax``'s arguments is NaN,
``frexp``'s exponent, which inputs ``nan_to_num`` replaced — are read from the user's
own run and enter the program as constants, the way pooling takes torch's indices.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import sympy
import torch

from .. import prims as P
from ..ew import MUL, WHERE, EwFn
from .elementwise import apply, sym, unary, x, y, z
from .registry import Args, Ctx, Refused, rule

__all__: list[str] = []  # the rules register on import

F64 = torch.float64
_ZERO = sympy.S.Zero
_ON_JUMPS = "torch returns 0 (piecewise constant), also at the jumps"


# ---------------------------------------------------------------- rounding
def _trunc(e: sympy.Expr) -> sympy.Expr:
    S = sym()
    return S.sign(e) * S.floor(sympy.Abs(e))


unary(("trunc", "fix"), _trunc(x), torch.trunc, partials=[_ZERO], kink=lambda t: t == torch.trunc(t),
      convention=_ON_JUMPS)
unary(("frac",), x - _trunc(x), torch.frac, partials=[sympy.S.One], kink=lambda t: t == torch.trunc(t),
      convention="torch returns 1 everywhere, also at the jumps")


@rule("round", "special_round", sig=lambda input, *, decimals=0, out=None: 0)
def _round(c: Ctx, a: Args) -> Any:
    return apply(c, _round_fn(int(a.decimals)), a.input)


@functools.lru_cache(maxsize=64)
def _round_fn(decimals: int) -> EwFn:
    # NB: floor(x*10**d + 1/2) rounds half up, torch half to even: they differ only on the jumps, where the
    # value comes from torch's kernel and the derivative is 0 on both sides.
    scale = sympy.Integer(10) ** decimals
    return EwFn(f"round({decimals})", sym().floor(x * scale + sympy.S.Half) / scale, 1,
                torch_impl=lambda t: torch.round(t, decimals=decimals), partials=[_ZERO],
                kink=lambda t: _on_half(t, decimals), convention=_ON_JUMPS)


def _on_half(t: torch.Tensor, decimals: int) -> torch.Tensor:
    s = t * 10.0**decimals if decimals >= 0 else t / 10.0**-decimals
    return s - torch.floor(s) == 0.5


# ---------------------------------------------------------------- remainders
def _near_jump(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Where a/b is within float32 rounding of an integer: the side of the jump the user's run took (its own
    division, in its dtype) may differ from the float64 quotient's."""
    q = a / b
    return (q - torch.round(q)).abs() <= 2.0**-20 * q.abs().clamp(min=1)


def _remainder_fn(name: str, rounding: str) -> EwFn:
    # derivatives.yaml: 1 in a and -trunc(a/b) (fmod) or -floor(a/b) (remainder) in b
    q = _trunc(x / y) if rounding == "trunc" else sym().floor(x / y)
    return EwFn(name, x - y * q, 2, torch_impl=getattr(torch, name), partials=[sympy.S.One, -q], kink=_near_jump,
                convention=f"torch.{name} has derivative 1 in a and -{rounding}(a/b) in b, also at the jumps")


_FMOD, _REMAINDER = _remainder_fn("fmod", "trunc"), _remainder_fn("remainder", "floor")
rule("fmod", sig=lambda input, other, *, out=None: 0)(lambda c, a: apply(c, _FMOD, a.input, a.other))
rule("remainder", sig=lambda input, other, *, out=None: 0)(lambda c, a: apply(c, _REMAINDER, a.input, a.other))


# ---------------------------------------------------------------- signs
# copysign(a, s) = |a| * s with s = +-1 the sign bit of the other argument (a constant: its derivative is
# 0); copysign_tensor_self_backward takes result / a, masked to 0 where a == 0 (its double backward
# rounds that exact 0 to a few ulp of 1/a).
_COPYSIGN = EwFn("copysign", sympy.Abs(x) * y, 2, torch_impl=torch.copysign,
                 partials=[sympy.Piecewise((0, sympy.Eq(x, 0)), (sym().sign(x) * y, True)), _ZERO],
                 grad_forms=[sympy.Piecewise((0, sympy.Eq(x, 0)), (sympy.Abs(x) * y / x, True)), _ZERO],
                 kink=lambda a, s: a == 0, convention="torch returns 0 at a = 0 (where |a| has a kink)")


@rule("copysign", sig=lambda input, other, *, out=None: 0)
def _copysign(c: Ctx, a: Args) -> Any:
    other = c.user_value(a.other)
    if isinstance(other, torch.Tensor):
        other = other.to(F64)
        sign: Any = torch.copysign(torch.ones_like(other), other)
    else:
        sign = math.copysign(1.0, other)
    return apply(c, _COPYSIGN, a.input, sign)


_ANGLE = EwFn("angle", sympy.Piecewise((sympy.pi, x < 0), (0, True)), 1, torch_impl=torch.angle,
              partials=[_ZERO], kink=lambda t: t == 0,
              convention="torch returns 0: the angle of a real number is piecewise constant (0 or pi)")


@rule("angle", sig=lambda input, *, out=None: 0)
def _angle(c: Ctx, a: Args) -> Any:
    _real_only(a.input, "angle")
    return apply(c, _ANGLE, a.input)


@rule("real", sig=lambda input: 0)
def _real(c: Ctx, a: Args) -> Any:
    _real_only(a.input, "real")
    return c.v(a.input)  # the real part of a real tensor is the tensor itself


def _real_only(t: Any, name: str) -> None:
    if isinstance(t, torch.Tensor) and t.is_complex():
        raise Refused(f"{name} of a complex tensor is not modelled (complex tensors are not)")


# ---------------------------------------------------------------- floating-point structure
_LDEXP = EwFn("ldexp", x * 2**y, 2, torch_impl=torch.ldexp, grad_forms=[2**y, x * 2**y * sympy.log(2)])
rule("ldexp", sig=lambda input, other, *, out=None: 0)(lambda c, a: apply(c, _LDEXP, a.input, a.other))


@rule("frexp", sig=lambda input, *, out=None: 0)
def _frexp(c: Ctx, a: Args) -> Any:
    """mantissa = input * 2**-exponent, the exponent (an integer tensor) from torch's run."""
    scale = torch.pow(2.0, -c.out[1].to(F64))
    return P.ew(MUL, c.v(a.input), scale), None


_NEXTAFTER = EwFn("nextafter", x, 2, torch_impl=torch.nextafter,
                  partials=[sympy.Piecewise((1, sympy.Ne(x, y)), (0, True)), _ZERO], kink=lambda a, b: a == b,
                  convention="nextafter moves one ulp, a step function; torch's convention is derivative 1 in "
                             "input (0 where input == other) and no gradient in other")
rule("nextafter", sig=lambda input, other, *, out=None: 0)(lambda c, a: apply(c, _NEXTAFTER, a.input, a.other))


@rule("nan_to_num", sig=lambda input, nan=0.0, posinf=None, neginf=None, *, out=None: 0)
def _nan_to_num(c: Ctx, a: Args) -> Any:
    """The input where it is finite (derivative 1), torch's replacement constant elsewhere (derivative 0)."""
    finite = torch.isfinite(c.user_value(a.input)).to(F64)
    return P.ew(WHERE, finite, c.v(a.input), c.const(c.out))


# ---------------------------------------------------------------- selections ignoring NaN
def _fselect(name: str) -> EwFn:
    # which argument wins is decided on the user's values (NaN included) and passed as a 0/1 mask
    return EwFn(name, sympy.Piecewise((y, x > sympy.S.Half), (z, True)), 3, kink=lambda m, a, b: a == b,
                convention=f"at a tie torch.{name} passes the whole gradient to the first argument (NaN is "
                           "ignored: the other argument is taken)")


_FMAX, _FMIN = _fselect("fmax"), _fselect("fmin")


@rule("fmax", "fmin", sig=lambda input, other, *, out=None: 0)
def _fmax(c: Ctx, a: Args) -> Any:
    first, second = c.user_value(a.input), c.user_value(a.other)
    wins = first >= second if c.name == "fmax" else first <= second
    take_first = (wins | torch.isnan(torch.as_tensor(second))).to(F64)
    return P.ew(_FMAX if c.name == "fmax" else _FMIN, take_first, c.v(a.input), c.v(a.other))

