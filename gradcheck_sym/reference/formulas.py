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
from .numeric import NumericProgram
from .symbolic import Derivation

__all__ = ["formulas", "MAX_OPS", "MAX_PROGRAM_OPS"]

MAX_OPS = 120  # operations in one written-out formula
MAX_PROGRAM_OPS = 400  # operations in the whole program: beyond it, nothing is written out


def formulas(graph: Graph, d: Derivation, names: dict[int, str]) -> list[tuple[str, int, Any]]:
    """[(of, node id, sympy expr)]: d(output)/d(node), variables first, for the nodes named in `names`.

    Nothing is computed beyond `MAX_PROGRAM_OPS`; a formula above `MAX_OPS` is left out.
    """
    if isinstance(d.program, NumericProgram) or d.program.size() > MAX_PROGRAM_OPS:
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


# A traced function's formulas: its program evaluated on sympy symbols (one per input element) -- the
# primitives' object-array rules, no derivative rule -- then `sympy.diff`.  Only for tiny calls.
MAX_TRACED_INPUTS = 8  # input elements
MAX_TRACED_OUTPUTS = 4  # output elements
TRACED_SECONDS = 2.0


def traced_formulas(program: Any, names: list[str], shapes: list[tuple[int, ...]]
                    ) -> list[tuple[str, int, Any]]:
    """[(of, input element index, sympy expr)] for a small traced call: d out[i]/d name[j], written in the
    input elements (``w[0,1]`` is the symbol ``w_0_1``); [] when the call is larger than the bounds above,
    an op has no object-array rule, a formula exceeds `MAX_OPS`, or sympy takes over `TRACED_SECONDS`."""
    import numpy as np

    from ..budget import BudgetExceeded, run_bounded
    from ..ir.program import Var
    from .interpret import ObjectEager, evaluate

    sizes = [int(np.prod(s)) if s else 1 for s in shapes]
    if sum(sizes) > MAX_TRACED_INPUTS:
        return []
    labels, arrays = [], []
    for name, shape in zip(names, shapes):
        index = [tuple(int(i) for i in np.unravel_index(j, shape)) for j in range(int(np.prod(shape)))] \
            if shape else [()]
        flat = [sympy.Symbol("_".join([name, *map(str, ix)]), real=True) for ix in index]
        labels.append([f"{name}[{','.join(map(str, ix))}]" if shape else name for ix in index])
        arrays.append(np.array(flat, dtype=object).reshape(shape))

    def work() -> list[tuple[str, int, Any]]:
        env = evaluate(program, arrays, interp=ObjectEager())
        outs = []
        for v in program.outputs:
            if isinstance(v, Var):
                outs += list(np.asarray(env[v.id], dtype=object).reshape(-1))
        if len(outs) > MAX_TRACED_OUTPUTS or not all(isinstance(o, sympy.Basic) for o in outs):
            return []
        found = []
        for i, out in enumerate(outs):
            head = "out" if len(outs) == 1 else f"out[{i}]"
            for arr, labs in zip(arrays, labels):
                for k, (sym, lab) in enumerate(zip(arr.reshape(-1), labs)):
                    g = sympy.diff(out, sym)
                    if sympy.count_ops(g) > MAX_OPS:
                        return []
                    found.append((f"{head}/{lab}" if len(outs) > 1 else lab, k, g))
        return found

    try:
        return run_bounded(work, TRACED_SECONDS, name="gradcheck-sym-formulas")
    except BudgetExceeded:
        return []
    except Exception:  # noqa: BLE001 - a primitive without an object rule for symbols: no formula
        return []
