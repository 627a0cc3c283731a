"""The sympy functions the reference adds, and `S`, the namespace the op table's builders receive.

Ops whose sympy derivative does not evaluate (``floor``, ``sign``, ``%``) get subclasses whose
derivatives are the 0 / -floor(a/b) that hold away from the jumps (torch's values; the jumps
themselves are kinks, see `ops`); ``lgamma`` is torch's, real for negative x; and ``zmul`` is
the adjoint-times-partial product that is exactly 0 when the adjoint is 0 (see `symbolic`).
The numeric backends (`evaluate`, `mp_backend`) compile these same classes.
"""

from __future__ import annotations

import types

import sympy
from sympy.codegen.cfunctions import expm1, log1p, log2, log10

__all__ = ["S", "floor", "ceiling", "sign", "lgamma", "mod", "zmul"]


class floor(sympy.floor):  # noqa: N801 - prints as sympy's floor
    """floor with derivative 0 (torch's value; true away from the integers)."""

    def fdiff(self, argindex: int = 1) -> sympy.Expr:
        return sympy.S.Zero


class ceiling(sympy.ceiling):  # noqa: N801
    """ceiling with derivative 0 (torch's value; true away from the integers)."""

    def fdiff(self, argindex: int = 1) -> sympy.Expr:
        return sympy.S.Zero


class sign(sympy.sign):  # noqa: N801
    """sign with derivative 0 instead of 2*DiracDelta (torch's value; true away from 0)."""

    def fdiff(self, argindex: int = 1) -> sympy.Expr:
        return sympy.S.Zero


class lgamma(sympy.Function):  # noqa: N801
    """log|gamma(x)|: torch's lgamma, real for negative x (sympy's loggamma is complex there)."""

    nargs = 1

    def fdiff(self, argindex: int = 1) -> sympy.Expr:
        return sympy.polygamma(0, self.args[0])


class mod(sympy.Function):  # noqa: N801
    """a % b with the sign of b; derivatives 1 and -floor(a/b) away from the jumps."""

    nargs = 2

    @classmethod
    def eval(cls, a: sympy.Expr, b: sympy.Expr) -> sympy.Expr | None:
        if a.is_Number and b.is_Number and b != 0:
            return sympy.Mod(a, b)
        return None

    def fdiff(self, argindex: int = 1) -> sympy.Expr:
        a, b = self.args
        return sympy.S.One if argindex == 1 else -floor(a / b)


class zmul(sympy.Function):  # noqa: N801
    """adjoint * partial, but exactly 0 where the adjoint is 0 (see the module docstring)."""

    nargs = 2

    @classmethod
    def eval(cls, a: sympy.Expr, b: sympy.Expr) -> sympy.Expr | None:
        if a == 0 or b == 0:
            return sympy.S.Zero
        if a == 1:
            return b
        if b == 1:
            return a
        if b == -1:
            return -a
        if a.is_Number and b.is_Number:
            return a * b
        return None

    def fdiff(self, argindex: int = 1) -> sympy.Expr:
        a, b = self.args
        return b if argindex == 1 else a


# The namespace the op table's sympy builders receive as `s`.
S = types.SimpleNamespace(
    **{name: getattr(sympy, name) for name in dir(sympy) if not name.startswith("_")},
)
S.floor, S.ceiling, S.sign, S.lgamma, S.mod = floor, ceiling, sign, lgamma, mod
S.expm1, S.log1p, S.log2, S.log10 = expm1, log1p, log2, log10
