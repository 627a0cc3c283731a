"""The exact derivatives written out as formulas in the variables, for the report (and a teacher).

The reference is a straight-line program (`symbolic.derive`): each adjoint is an expression over
the program's step symbols.  Written out -- the steps substituted back -- it is the formula a
student would write; for a large graph that formula swells, so it is given only while small
(`MAX_OPS` operations).  Where the whole-expression second opinion (`opinion.py`) ran, its
`sympy.diff` result is the variable's formula; the other nodes get their adjoint written out.
"""

from __future__ import annotations

from typing import Any

import sympy

from ..ir.graph import Graph
from .symbolic import Derivation

__all__ = ["formulas", "MAX_OPS", "MAX_PROGRAM_OPS"]

MAX_OPS = 120  # operations in one written-out formula
MAX_PROGRAM_OPS = 400  # operations in the whole program: beyond it, nothing is written out


def formulas(graph: Graph, d: Derivation, names: dict[int, str]) -> list[tuple[str, int, Any]]:
    """[(of, node id, sympy expr)]: d(output)/d(node), variables first, for the nodes named in `names`.

    Nothing is computed beyond `MAX_PROGRAM_OPS`; a formula above `MAX_OPS` is left out.
    """
    if d.program.size() > MAX_PROGRAM_OPS:
        return []
    # the constants sympy must not compute with stay unevaluated (see templates._opaque)
    full: dict[sympy.Symbol, Any] = {s: sympy.UnevaluatedExpr(e) for s, e in d.constants}
    for sym, expr in d.program.steps:
        if sym not in full:
            full[sym] = expr.xreplace(full)
    order = [graph.var_ids[v] for v in graph.variables if v in graph.var_ids]
    order += [k for k in names if k not in order and k != graph.output]
    out = []
    for k in order:
        name = names.get(k)
        if name is None:
            continue
        if k in order[: len(graph.variables)] and d.whole is not None and name in d.whole:
            expr = d.whole[name].xreplace(full)
        elif k in d.adjoints:
            a = d.adjoints[k]
            expr = a.xreplace(full) if isinstance(a, sympy.Basic) else sympy.Float(a)
        else:
            continue
        if sympy.count_ops(expr) <= MAX_OPS:
            out.append((name, k, expr))
    return out
