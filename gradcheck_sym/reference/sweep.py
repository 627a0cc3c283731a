"""Reverse sweeps over a straight-line sympy program: adjoints, Hessians, magnitudes.

`sweep` accumulates adjoints one program step at a time, building sums and products without
sympy's canonicalisation (the program is evaluated numerically, so it buys nothing) and with
``zmul``'s strong zero only where a branch may not have been selected.  `_hessian` sweeps the
gradient program once more per variable; `magnitude` turns a partial into the sum of its
terms' absolute values, for the magnitude sweeps that scale the rounding allowance.
"""

from __future__ import annotations

from typing import Callable, Iterable

import sympy

from ..budget import Deadline
from ..ir.graph import Graph
from .sympy_functions import zmul

__all__ = ["sweep", "magnitude"]

# Functions whose value (in a partial derivative) can be exactly 0 by selection.
_SELECTORS = (sympy.Piecewise, sympy.Heaviside, sympy.sign, sympy.DiracDelta, sympy.Max, sympy.Min)


def _product(a: sympy.Expr, b: sympy.Expr, strong: bool) -> sympy.Expr:
    """adjoint * partial (zmul's strong zero when `strong`), trivial cases done here and the rest
    built without sympy's evaluation machinery."""
    if a == 1:
        return b
    if b == 1:
        return a
    if a.is_Number and b.is_Number:
        return zmul(a, b) if strong else a * b
    return zmul(a, b, evaluate=False) if strong else sympy.Mul(a, b, evaluate=False)


def magnitude(expr: sympy.Expr) -> sympy.Expr:
    """The expression with every sum of terms replaced by the sum of their absolute values.

    |magnitude(d)| bounds what rounding inside a kernel computing ``d`` is relative to: for
    gelu'(x) = Phi(x) + x*phi(x) near its root the value is tiny but the terms are not; for
    atanh'(x) = 1/(1 - x**2) near x = 1 the power of a cancelling sum carries its relative error.
    """
    if isinstance(expr, sympy.Add):
        return sympy.Add(*[magnitude(a) for a in expr.args], evaluate=False)
    if isinstance(expr, sympy.Mul):
        return sympy.Mul(*[magnitude(a) for a in expr.args], evaluate=False)
    if isinstance(expr, sympy.Piecewise):
        return sympy.Piecewise(*[(magnitude(e), c) for e, c in expr.args])
    if isinstance(expr, zmul):
        return zmul(magnitude(expr.args[0]), magnitude(expr.args[1]), evaluate=False)
    if isinstance(expr, sympy.Pow) and expr.base.has(sympy.Add):
        # A power's relative error is |p| times its base's, and a sum that cancels (1 - x**2 near
        # x = 1, the derivative of atanh) has relative error u * magnitude / |sum|.
        base, p = expr.args
        return sympy.Mul(sympy.Abs(expr, evaluate=False), sympy.Abs(p, evaluate=False), magnitude(base),
                         sympy.Pow(sympy.Abs(base, evaluate=False), -1, evaluate=False), evaluate=False)
    if expr.is_Symbol or expr.is_Number or isinstance(expr, sympy.NumberSymbol):
        return expr if expr.is_Number and expr.is_extended_nonnegative else sympy.Abs(expr, evaluate=False)
    return sympy.Abs(expr, evaluate=False)


def sweep(
    steps: list[tuple[sympy.Symbol, sympy.Expr]],
    output: sympy.Expr,
    partials_of: Callable[[sympy.Symbol, sympy.Expr], Iterable[tuple[sympy.Symbol, sympy.Expr]]],
    prefix: str,
    deadline: Deadline | None = None,
) -> tuple[list[tuple[sympy.Symbol, sympy.Expr]], dict[sympy.Symbol, sympy.Expr]]:
    """One reverse sweep: adjoint steps for `output` over `steps`.

    Args:
        steps: the forward program.
        output: the expression differentiated (a step symbol, an input or a number).
        partials_of: ``(symbol, expr) -> [(dependency, d expr / d dependency), ...]``.
        prefix: names the new adjoint symbols (``a`` gives ``a[k]``).
        deadline: checked at every step (`TimeLimitError` when spent).

    Returns:
        (new steps, adjoint of every symbol reached, inputs included).
    """
    contributions: dict[sympy.Symbol, list[sympy.Expr]] = {}
    adjoint: dict[sympy.Symbol, sympy.Expr] = {}
    new_steps: list[tuple[sympy.Symbol, sympy.Expr]] = []
    # Symbols whose adjoint can be exactly 0 because a branch was not selected (where, relu,
    # max, ...): only their products need zmul's strong zero; plain products are cheaper.
    selectable: set[sympy.Symbol] = set()
    if isinstance(output, sympy.Symbol):
        contributions[output] = [sympy.S.One]
    for index in range(len(steps) - 1, -1, -1):
        if deadline is not None:
            deadline.check("deriving the gradients")
        sym, expr = steps[index]
        terms = contributions.pop(sym, None)
        if not terms:
            continue
        # Sums and products are built unevaluated: sympy's canonicalisation is the slow part of
        # a sweep, and the program is evaluated numerically, so it buys nothing here.  Numbers are
        # added up exactly (x+x+...+x: the adjoint of x is 45,000, not a sum of 45,000 ones).
        total = terms[0] if len(terms) == 1 else _sum(terms)
        if total.is_Number or total.is_Symbol:
            adj = total
        else:
            adj = sympy.Symbol(f"{prefix}[{index}]", real=True)
            new_steps.append((adj, total))
        adjoint[sym] = adj
        if adj == 0:
            continue
        strong = sym in selectable
        for dep, partial in partials_of(sym, expr):
            term = _product(adj, partial, strong)
            contributions.setdefault(dep, []).append(term)
            if strong or partial.has(*_SELECTORS):
                selectable.add(dep)
    for sym, terms in contributions.items():  # inputs: never assigned by a step
        adjoint[sym] = terms[0] if len(terms) == 1 else _sum(terms)
    return new_steps, adjoint


def _sum(terms: list[sympy.Expr]) -> sympy.Expr:
    """The terms added up, unevaluated but for their numbers, which are added exactly."""
    numbers = [t for t in terms if t.is_Number]
    if len(numbers) < 2:
        return sympy.Add(*terms, evaluate=False)
    rest = [t for t in terms if not t.is_Number]
    total = sympy.Add(*numbers)
    if not rest:
        return total
    return sympy.Add(*rest, total, evaluate=False) if total != 0 else (
        rest[0] if len(rest) == 1 else sympy.Add(*rest, evaluate=False))


def _generic_partials(sym: sympy.Symbol, expr: sympy.Expr, known: set[sympy.Symbol]) -> list[tuple[sympy.Symbol, sympy.Expr]]:
    out = []
    for dep in sorted(expr.free_symbols & known, key=str):
        d = sympy.diff(expr, dep)
        if d != 0:
            out.append((dep, d))
    return out


def _hessian(
    graph: Graph,
    inputs: tuple[sympy.Symbol, ...],
    program: list[tuple[sympy.Symbol, sympy.Expr]],
    adjoints: dict[int, sympy.Expr],
    step_info: dict[sympy.Symbol, tuple[int, tuple[sympy.Expr, ...]]],
    forward_partials: Callable[[sympy.Symbol, sympy.Expr], list[tuple[sympy.Symbol, sympy.Expr]]],
    deadline: Deadline,
    prefix: str = "h",
    const_syms: set[sympy.Symbol] = frozenset(),  # type: ignore[assignment]
) -> tuple[tuple[tuple[sympy.Expr, ...], ...], list[tuple[sympy.Symbol, sympy.Expr]]]:
    """Second derivatives: one more reverse sweep over the gradient program per variable.

    `prefix` names the new symbols (``h0[...]``, ``gh[0]``), so that two Hessians can share a program.
    """
    known = ({s for s, _ in program} | set(inputs)) - const_syms

    def partials(sym: sympy.Symbol, expr: sympy.Expr) -> list[tuple[sympy.Symbol, sympy.Expr]]:
        if sym in step_info:
            return forward_partials(sym, expr)
        return _generic_partials(sym, expr, known)

    rows = []
    new_steps: list[tuple[sympy.Symbol, sympy.Expr]] = []
    for i, name in enumerate(graph.variables):
        g = adjoints.get(graph.var_ids[name], sympy.S.Zero)
        if not isinstance(g, sympy.Symbol):
            g_steps: list[tuple[sympy.Symbol, sympy.Expr]] = []
            if g.free_symbols & known:  # an input's adjoint is an inline sum: give it a step
                sym = sympy.Symbol(f"g{prefix}[{i}]" if prefix != "h" else f"g[{i}]", real=True)
                g_steps = [(sym, g)]
                g = sym
            else:
                rows.append(tuple(sympy.S.Zero for _ in inputs))
                continue
        else:
            g_steps = []
        steps_i, adj = sweep(program + g_steps, g, partials, f"{prefix}{i}", deadline)
        new_steps += g_steps + steps_i
        rows.append(tuple(adj.get(x, sympy.S.Zero) for x in inputs))
    return tuple(rows), new_steps
