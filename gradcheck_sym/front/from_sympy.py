"""Sympy in: a sympy expression -> expression text in our own syntax.

A sympy object is walked class by class against a whitelist (the same ops
the text parser accepts) and printed in the syntax `parse` reads, so that a
sympy expression gets the same graph, limits, carets and report as typed
text.  Nothing is ever handed to ``sympify``: an unknown class is an
`InputError` naming it.

Sympy normalises as it builds (``x - y`` is ``Add(x, Mul(-1, y))``,
``x/y`` is ``Mul(x, Pow(y, -1))``); the printer undoes the common forms so
that the report speaks of ``x - y`` and ``x/y`` again.
"""

from __future__ import annotations

import sys
from typing import Any

import sympy as sp

from ..errors import InputError, LimitError

__all__ = ["is_sympy", "sympy_to_text", "sympy_name"]

# sympy function class -> our function name (same argument order).
_FUNCTIONS: dict[Any, str] = {
    sp.sin: "sin", sp.cos: "cos", sp.tan: "tan", sp.cot: "cot",
    sp.asin: "asin", sp.acos: "acos", sp.atan: "atan", sp.atan2: "atan2",
    sp.sinh: "sinh", sp.cosh: "cosh", sp.tanh: "tanh",
    sp.asinh: "asinh", sp.acosh: "acosh", sp.atanh: "atanh",
    sp.exp: "exp", sp.log: "log", sp.erf: "erf", sp.erfc: "erfc",
    sp.loggamma: "lgamma", sp.harmonic: "harmonic",
    sp.floor: "floor", sp.ceiling: "ceil", sp.Abs: "abs", sp.sign: "sign",
    sp.Max: "max", sp.Min: "min",
}
_RELATIONS: dict[Any, str] = {
    sp.StrictGreaterThan: ">", sp.GreaterThan: ">=", sp.StrictLessThan: "<", sp.LessThan: "<=",
    sp.Equality: "==", sp.Unequality: "!=",
}
# Precedence of what a printed piece is, to decide parentheses.
_ATOM, _POW, _UNARY, _MUL, _ADD, _CMP = 6, 5, 4, 3, 2, 1


def is_sympy(obj: Any) -> bool:
    """Whether `obj` is a sympy object (checked without importing anything new)."""
    return isinstance(obj, sp.Basic)


def sympy_name(key: Any) -> Any:
    """A sympy Symbol used as a key (``at={x: 0.5}``) -> its name; anything else unchanged."""
    return key.name if isinstance(key, sp.Symbol) else key


def sympy_to_text(expr: Any) -> str:
    """Print a sympy expression in the syntax `parse` reads.

    Raises:
        InputError: a sympy class outside the whitelist (named, with what to do).

    Example:
        >>> x, y = sp.symbols("x y")
        >>> sympy_to_text(sp.sin(x) / y - sp.Abs(x))
        '-abs(x) + sin(x)/y'
    """
    if not isinstance(expr, sp.Basic):
        raise InputError(f"expected a sympy expression, not {type(expr).__name__}")
    if isinstance(expr, sp.core.relational.Relational) or (isinstance(expr, sp.logic.boolalg.Boolean)
                                                         and not isinstance(expr, sp.Expr)):
        raise InputError(
            f"{expr} is a condition, not a number",
            hint="give a numeric expression; use Piecewise((a, x > 0), (b, True)) for a branch",
        )
    try:
        # Our variables are real, so re(v) = v and im(v) = 0 for every expression we accept.
        parts = {r: r.args[0] for r in expr.atoms(sp.re)} | {i: sp.S.Zero for i in expr.atoms(sp.im)}
        return _Printer().text(expr.xreplace(parts) if parts else expr)
    except RecursionError:
        # sympy itself hashes and compares trees recursively.
        raise LimitError(
            "the sympy expression nests too deeply for sympy to walk", "max_depth", 0, sys.getrecursionlimit(),
            hint="give the expression as text (gs.check(str(expr))), which has no such limit",
        ) from None


class _Printer:
    """Prints sympy nodes bottom-up; each distinct subexpression is printed once."""

    def __init__(self) -> None:
        self.done: dict[Any, tuple[str, int]] = {}

    def piece(self, expr: Any) -> tuple[str, int]:
        """The text and precedence of `expr`, printing it (and what it needs) when new."""
        if expr not in self.done:
            self._walk(expr)
        return self.done[expr]

    def text(self, expr: Any) -> str:
        return self.piece(expr)[0]

    def wrap(self, expr: Any, need: int) -> str:
        text, prec = self.piece(expr)
        return f"({text})" if prec < need else text

    def _walk(self, root: Any) -> None:
        # Post-order with an explicit stack: deep sympy trees must not hit the recursion limit.
        stack: list[tuple[Any, bool]] = [(root, False)]
        while stack:
            node, expanded = stack.pop()
            if node in self.done:
                continue
            if not expanded:
                _check_supported(node)
            children = [c for c in _children(node) if c not in self.done]
            if not expanded and children:
                stack.append((node, True))
                stack.extend((c, False) for c in children)
                continue
            self.done[node] = self._print(node)

    def _print(self, node: Any) -> tuple[str, int]:
        """One node's text and precedence; its children are printed already."""
        if isinstance(node, sp.Symbol):
            if not node.name.isidentifier():
                raise InputError(f"the symbol name {node.name!r} is not a Python identifier",
                                 hint="name symbols like x, x_1, theta")
            return node.name, _ATOM
        if isinstance(node, sp.Rational):
            if node.q == 1:
                return str(int(node.p)), (_ATOM if node >= 0 else _UNARY)
            return f"{int(node.p)}/{int(node.q)}", (_MUL if node >= 0 else _UNARY)
        if isinstance(node, sp.Float):
            value = float(node)
            if value != value or value in (float("inf"), float("-inf")):
                raise InputError(f"the constant {node} is not a finite real number", hint="give a finite real expression")
            return repr(value), (_ATOM if value >= 0 else _UNARY)
        if node is sp.pi:
            return "pi", _ATOM
        if node is sp.E:
            return "e", _ATOM
        if isinstance(node, sp.NumberSymbol):  # EulerGamma, GoldenRatio, Catalan: their float64 value
            return repr(float(node)), _ATOM
        if node.is_Number or node.has(sp.I) or node in (sp.zoo, sp.oo, -sp.oo, sp.nan):
            raise InputError(f"{node} is not a finite real number", hint="give a finite real expression")
        if isinstance(node, sp.Add):
            return self._add(node)
        if isinstance(node, sp.Mul):
            return self._mul(node)
        if isinstance(node, sp.Pow):
            return self._pow(node.base, node.exp)
        if isinstance(node, sp.Mod):
            return f"{self.wrap(node.args[0], _POW)} % {self.wrap(node.args[1], _POW)}", _MUL
        if type(node) in _RELATIONS:
            return f"{self.wrap(node.lhs, _ADD)} {_RELATIONS[type(node)]} {self.wrap(node.rhs, _ADD)}", _CMP
        if isinstance(node, sp.Piecewise):
            return self._piecewise(node)
        if isinstance(node, sp.Heaviside):
            x = self.text(node.args[0])
            h0 = self.text(node.args[1]) if len(node.args) > 1 else "1/2"
            # sympy's Heaviside(0) is 1/2 unless given (torch.heaviside takes it as `values`).
            return f"where({x} > 0, 1, where({x} < 0, 0, {h0}))", _ATOM
        if isinstance(node, sp.polygamma) and node.args[0] == 0:
            return f"digamma({self.text(node.args[1])})", _ATOM
        if node.func in _FUNCTIONS:
            return f"{_FUNCTIONS[node.func]}(" + ", ".join(self.text(a) for a in node.args) + ")", _ATOM
        raise AssertionError(f"_check_supported let {type(node).__name__} through")  # pragma: no cover

    def _add(self, node: Any) -> tuple[str, int]:
        # Positive terms first, as a reader writes them; a term -t prints as "- t".
        terms = sorted(node.args, key=lambda t: (t.could_extract_minus_sign(), t.is_Number))
        text = ""
        for i, term in enumerate(terms):
            if term.could_extract_minus_sign():
                body = self.wrap(-term, _MUL)
                text = f"-{body}" if i == 0 else f"{text} - {body}"
            else:
                body = self.wrap(term, _ADD)
                text = body if i == 0 else f"{text} + {body}"
        return text, _ADD

    def _mul(self, node: Any) -> tuple[str, int]:
        numer: list[str] = []
        denom: list[str] = []
        negative = False
        for factor in node.args:
            if isinstance(factor, sp.Number) and factor < 0:
                negative, factor = not negative, -factor
            if isinstance(factor, sp.Rational):
                if factor.p != 1:
                    numer.append(str(int(factor.p)))
                if factor.q != 1:
                    denom.append(str(int(factor.q)))
            elif isinstance(factor, sp.Pow) and factor.exp.is_Number and factor.exp < 0:
                denom.append(self.wrap(factor.base, _POW) if factor.exp == -1
                             else _paren(self._pow(factor.base, -factor.exp), _POW))
            else:
                numer.append(self.wrap(factor, _MUL))
        text = "*".join(numer) if numer else "1"
        if denom:
            text += "/" + (denom[0] if len(denom) == 1 else "(" + "*".join(denom) + ")")
        return (f"-{text}", _UNARY) if negative else (text, _MUL)

    def _pow(self, base: Any, exp: Any) -> tuple[str, int]:
        if exp == sp.Rational(1, 2):
            return f"sqrt({self.text(base)})", _ATOM
        if exp.is_Number and exp < 0:
            inverse = self.wrap(base, _POW) if exp == -1 else _paren(self._pow(base, -exp), _POW)
            return f"1/{inverse}", _MUL
        if base is sp.E:
            return f"exp({self.text(exp)})", _ATOM
        # ** binds tighter than unary minus on its left, and is right-associative.
        return f"{self.wrap(base, _ATOM)}**{self.wrap(exp, _POW)}", _POW

    def _piecewise(self, node: Any) -> tuple[str, int]:
        pieces = list(node.args)
        if pieces[-1][1] is not sp.true:
            raise InputError(
                "a Piecewise without a final (expr, True) branch is undefined somewhere",
                hint="add an otherwise branch: Piecewise((a, x > 0), (b, True))",
            )
        text = self.text(pieces[-1][0])
        for value, cond in reversed(pieces[:-1]):
            if type(cond) not in _RELATIONS:
                raise InputError(
                    f"the Piecewise condition {cond} is not a single comparison",
                    hint="nest the branches: Piecewise((a, x > 0), (b, y > 0), (c, True))",
                )
            text = f"where({self.text(cond)}, {self.text(value)}, {text})"
        return text, _ATOM


_SUPPORTED = (sp.Symbol, sp.Number, sp.NumberSymbol, sp.Add, sp.Mul, sp.Pow, sp.Mod, sp.Piecewise, sp.Heaviside)


def _check_supported(node: Any) -> None:
    """Refuse a node outside the whitelist before its arguments are looked at."""
    if isinstance(node, _SUPPORTED) or type(node) in _RELATIONS or node.func in _FUNCTIONS:
        return
    if isinstance(node, sp.polygamma) and node.args[0] == 0:
        return
    if node is sp.I:
        raise InputError(f"{node} is not a finite real number", hint="give a finite real expression")
    if isinstance(node, (sp.And, sp.Or, sp.Not)):
        raise InputError(
            f"the condition {node} is not a single comparison",
            hint="nest the branches: Piecewise((a, x > 0), (b, y > 0), (c, True))",
        )
    name = getattr(node.func, "__name__", type(node).__name__)
    raise InputError(
        f"the sympy {'function' if isinstance(node, sp.Function) else 'object'} {name} is not supported",
        hint="supported: + - * / ** %, " + ", ".join(sorted(set(_FUNCTIONS.values())))
        + ", Piecewise, Heaviside, re, im, polygamma(0, x)",
    )


def _paren(piece: tuple[str, int], need: int) -> str:
    text, prec = piece
    return f"({text})" if prec < need else text


def _children(node: Any) -> list[Any]:
    if isinstance(node, sp.Piecewise):
        return [x for pair in node.args for x in pair if x is not sp.true]
    if isinstance(node, (sp.Symbol, sp.Number, sp.NumberSymbol)):
        return []
    if isinstance(node, sp.Add):
        # The printer prints -t for negative terms.
        return [(-t if t.could_extract_minus_sign() else t) for t in node.args]
    if isinstance(node, sp.Mul):
        out = []
        for f in node.args:
            if isinstance(f, sp.Pow) and f.exp.is_Number and f.exp < 0:
                out.append(f.base)
            elif not isinstance(f, sp.Number):
                out.append(f)
        return out
    if isinstance(node, sp.Pow):
        return [node.base] if node.exp.is_Number else [node.base, node.exp]
    return [a for a in node.args if isinstance(a, sp.Basic)]
