"""The second opinion: `sympy.diff` of the whole expression, written out, within a time budget.

The reverse sweep (`symbolic`) never writes the expression out; for small graphs this module
does, and lets sympy differentiate it as an independent check of the sweep.  Written out, the
expression lets sympy combine constants and simplify, which can take unbounded time
(``sin(x+1)*sin(x+2)*...*sin(x+40)``) or fail (``max(x, 1/0)``): the work runs in a bounded
worker (`budget.run_bounded`, `WHOLE_SECONDS`), and any failure is a skipped opinion, said
in the report, never an error of the check.
"""

from __future__ import annotations

import sympy

from ..budget import BudgetExceeded, Deadline, run_bounded
from ..ir.graph import Graph

__all__ = ["whole_expression_gradient", "WHOLE_SECONDS"]

# The second opinion may take this long before it is skipped.
WHOLE_SECONDS = 2.0


def whole_expression_gradient(
    graph: Graph,
    inputs: tuple[sympy.Symbol, ...],
    values: dict[int, sympy.Expr],
    steps: list[tuple[sympy.Symbol, sympy.Expr]],
    opaque: set[sympy.Symbol],
    deadline: Deadline,
) -> tuple[dict[str, sympy.Expr] | None, str]:
    """`sympy.diff` of the output written out as one expression, or None and why not.

    Args:
        graph: the graph; `values` and `steps` are its forward program (`symbolic.derive`).
        inputs: the variables' symbols.
        values: node id -> its symbol or number.
        steps: the forward steps.
        opaque: symbols left as they are (constants sympy must not compute with, see
            `templates._opaque`).
        deadline: the check's deadline; the work gets at most `WHOLE_SECONDS` of it.
    """

    def work() -> dict[str, sympy.Expr]:
        full: dict[sympy.Symbol, sympy.Expr] = {}
        for sym, expr in steps:
            if sym not in opaque:
                full[sym] = expr.xreplace(full)
        out = values[graph.output]
        out = full.get(out, out) if isinstance(out, sympy.Symbol) else out
        return {name: sympy.diff(out, x) for name, x in zip(graph.variables, inputs)}

    seconds = deadline.within(WHOLE_SECONDS)
    try:
        grads = run_bounded(work, seconds, name="gradcheck-sym-second-opinion")
    except BudgetExceeded:
        deadline.check("deriving the second opinion")
        return None, f"sympy.diff of the whole expression took more than {seconds:.2g} s"
    except (RecursionError, MemoryError):
        return None, "the whole expression is too deep for sympy"
    except Exception as exc:  # noqa: BLE001 - sympy failing on the written-out form: the opinion is skipped
        return None, f"sympy could not differentiate the whole expression: {type(exc).__name__}"
    if any(g.has(sympy.Derivative, sympy.Subs) for g in grads.values()):
        return None, "sympy.diff left an unevaluated derivative"
    if any(g.has(sympy.I, sympy.AccumBounds) for g in grads.values()):
        return None, "the whole expression involves non-real values"
    return grads, ""
