"""One node's expression and partial derivatives: op templates derived once, substituted cheaply.

Per op kind, the expression and its partials are derived over placeholders ``p[0..2]`` once
(`_TEMPLATES`), then each node substitutes its arguments — without sympy's evaluation where
only symbols go in (the slow part of a sweep over thousands of nodes), but keeping what IEEE
arithmetic keeps where sympy's folding would lose it (`_folded_away`).  Constants that sympy
would compute with for unbounded time (huge integers, tiny or infinite floats) are *opaque*:
`derive` gives them a step of their own and sympy only sees the symbol.
"""

from __future__ import annotations

import math

import sympy

from ..ops import OPS
from .sympy_functions import S

__all__ = ["const_expr", "OPAQUE_INT", "OPAQUE_FLOAT"]


def const_expr(value: int | float | str) -> sympy.Expr:
    """The sympy number for a constant node (floats exactly as the binary double)."""
    if isinstance(value, str):
        return getattr(sympy, value)  # "pi", "E"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(value)
    if isinstance(value, int):
        return sympy.Integer(value)
    return sympy.Float(value, 53) if value == value else sympy.nan


# Constants beyond these are opaque to sympy (see _opaque).
OPAQUE_INT = 1000
OPAQUE_FLOAT = 1e6

_REUSE_VALUE = {"exp", "tanh"}
_P = tuple(sympy.Symbol(f"p[{i}]", real=True) for i in range(3))
_OUT = sympy.Symbol("out", real=True)


class _Templates:
    """Per op: the expression and its partial derivatives over placeholders, derived once."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, int], tuple[sympy.Expr, tuple[sympy.Expr, ...]]] = {}

    def get(self, opname: str, nargs: int) -> tuple[sympy.Expr, tuple[sympy.Expr, ...]]:
        key = (opname, nargs)
        if key not in self._cache:
            op = OPS[opname]
            args = _P[:nargs]
            expr = op.sympy(S, *args)
            if op.partials is not None:
                partials = tuple(op.partials(S, *args))
            else:
                partials = tuple(sympy.diff(expr, p) for p in args)
            # Reuse the node's own value where the derivative repeats it exactly.  Only
            # structural replacement, and only where it cannot divide by zero later.
            if opname in _REUSE_VALUE:
                partials = tuple(d.xreplace({expr: _OUT}) for d in partials)
            self._cache[key] = (expr, partials)
        return self._cache[key]


_TEMPLATES = _Templates()


def _substitute(template: sympy.Expr, mapping: dict[sympy.Symbol, sympy.Expr]) -> sympy.Expr:
    """`template` with placeholders replaced.

    With only symbols substituted, the template's structure is already canonical, so it is
    rebuilt without sympy's evaluation (the slow part of a sweep over thousands of nodes);
    with numbers substituted, sympy evaluates, so that ``b*a**(b - 1)`` becomes ``2*a``.
    """
    if not all(v.is_Symbol for v in mapping.values()):
        return template.xreplace(mapping)
    return _rebuild(template, mapping)


def _rebuild(expr: sympy.Expr, mapping: dict[sympy.Symbol, sympy.Expr]) -> sympy.Expr:
    if expr in mapping:
        return mapping[expr]
    if not expr.args or not expr.has(*mapping):
        return expr
    args = [_rebuild(a, mapping) for a in expr.args]
    if isinstance(expr, (sympy.Piecewise, sympy.core.relational.Relational)) or isinstance(expr, sympy.logic.boolalg.Boolean):
        return expr.func(*args)
    return expr.func(*args, evaluate=False)


def _folded_away(expr: sympy.Expr, args: tuple[sympy.Expr, ...], template: sympy.Expr,
                 mapping: dict[sympy.Symbol, sympy.Expr]) -> bool:
    """Whether sympy's evaluation of a node's value lost what IEEE arithmetic keeps.

    ``0*y`` folds to 0, but torch's value is -0.0 for negative y (and 1/(0*y) is then -inf);
    ``log2(0)`` folds to ``zoo``, an infinity without a sign, where torch has -inf.  Such a
    value is built unevaluated instead, so the backends compute it as torch does.  But a
    constant pole that float64 misses because its argument is rounded (``cot(pi)``: finite
    in floats) stays ``zoo``: the output is not a real number there.  (Partial derivatives
    stay folded: they are the exact math.)
    """
    symbols = [isinstance(a, sympy.Symbol) for a in args]
    if all(symbols):
        return False
    if expr.has(sympy.zoo, sympy.nan):
        if any(symbols):
            return True
        from .evaluate import TORCH, _compile  # a constant: what float64 makes of it

        value = float(_compile(_rebuild(template, mapping), TORCH, {})({}))
        return math.isinf(value)
    return expr.is_Number and any(symbols)


def _opaque(value: int | float | str | None) -> bool:
    """Whether sympy should see this constant as a symbol rather than a number.

    Exact arithmetic on large integers can take unbounded time in sympy (``digamma(10**20)``
    sums a harmonic series, ``acos(n)`` factors ``1 - n**2``), and huge, tiny or infinite floats
    meet slow or failing paths (``softplus(1e30)``, ``max(x, 1e400)``).  Such a constant gets a
    program step of its own and sympy only ever sees its symbol; the numbers are computed by
    `evaluate`, in float64 or mpmath.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if isinstance(value, int):
        return abs(value) > OPAQUE_INT
    return not math.isfinite(value) or abs(value) > OPAQUE_FLOAT or 0 < abs(value) < 1 / OPAQUE_FLOAT


def _opaque_number(e: sympy.Expr) -> bool:
    """`_opaque` for a folded step's constant value (any constant that is not a small rational or float)."""
    if e.is_Integer:
        return abs(e) > OPAQUE_INT
    if e.is_Rational:
        return abs(e.p) > OPAQUE_INT or e.q > OPAQUE_INT
    if e.is_Float:
        return _opaque(float(e)) if e.is_finite else True
    return True  # zoo, nan, oo, and constant expressions such as digamma(10**20) or cos(3)
