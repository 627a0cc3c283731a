"""Stage 3: the symbolic reference — exact derivatives as a straight-line program.

Derivation is a reverse sweep over the graph (autodidax-style, but in sympy):
each node's local partial derivatives come from `sympy.diff` on that node's
own expression in terms of its arguments, and adjoints are accumulated as one
program step per node.  The program therefore grows linearly with the graph,
never swells like `sympy.diff` of a deeply nested whole expression, and gives
d(output)/d(node) for every node in one sweep.

Grammar of a `Program`::

    program := (symbol = expr)*          # each symbol bound once, in order
    expr    := sympy expression over the inputs and earlier symbols

Two details keep the numbers right where a naive chain rule would not:

* ``zmul(adjoint, partial)`` is a product that is exactly 0 when the adjoint
  is 0, so a branch that ``where`` did not select contributes 0 even where its
  own derivative is infinite (the math), where torch computes 0 * inf = NaN.
* ops whose sympy derivative does not evaluate (``floor``, ``sign``, ``%``)
  use the subclasses in `sympy_functions`, whose derivatives are the 0 / -floor(a/b)
  that hold away from the jumps; the jumps themselves are kinks (see `ops`).

For small graphs the whole expression is also differentiated with
`sympy.diff`, as an independent second opinion (`opinion`).

The pieces live beside this module: `sympy_functions` (the functions added to sympy, `S`),
`templates` (one node's expression and partials) and `sweep` (the reverse sweeps).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, Sequence

import sympy

from ..budget import NO_DEADLINE, Deadline
from ..ir.graph import Graph
from ..ops import OPS
from .opinion import whole_expression_gradient
from .sweep import _hessian, magnitude, sweep
from .sympy_functions import S, zmul  # zmul: defined there, importable from here as before (__all__)
from .templates import _OUT, _P, _TEMPLATES, _folded_away, _opaque, _opaque_number, _rebuild, _substitute, const_expr

__all__ = ["Program", "Derivation", "derive", "S", "zmul", "sweep"]


@dataclass(frozen=True)
class Program:
    """A straight-line program: ``steps[i] = (symbol, expr)``, each over inputs and earlier symbols."""

    inputs: tuple[sympy.Symbol, ...]
    steps: tuple[tuple[sympy.Symbol, sympy.Expr], ...]

    def size(self) -> int:
        """Number of sympy operations in the program (its tree nodes, shared steps counted once)."""
        return sum(sympy.count_ops(expr, visual=False) + 1 for _, expr in self.steps)

    def __str__(self) -> str:
        return "\n".join(f"{s} = {e}" for s, e in self.steps)


@dataclass(frozen=True)
class Derivation:
    """The symbolic reference for one graph.

    Attributes:
        program: every step needed for the expressions below.
        values: node id -> expression of its value (a symbol of `program`, or a number).
        adjoints: node id -> d(output)/d(node) with full-math semantics (cuts are identities).
        cut_adjoints: the same with the cuts treated as constants, or None if the graph has no cut.
        hessian: ``hessian[i][j]`` = d²(output)/d(var i)d(var j), or None (order 1).
        whole: variable name -> gradient from `sympy.diff` of the whole expression, or None.
        method: how the derivatives were obtained, in words (for the report).
        extra_rows: for each further output of `derive(outputs=...)`, its (adjoints, cut_adjoints).
        magnitudes: derives, on first call, (the forward steps plus the magnitude sweeps, and per
            output: node id -> the sum over paths of |adjoint x partial| terms); see `magnitude`.
        cut_hessian: the Hessian with the cuts treated as constants (order 2 with cuts), else None.
        constants: the program's steps that hold constants sympy must not compute with (see
            `_opaque`); `whole` refers to their symbols.
    """

    program: Program
    values: dict[int, sympy.Expr]
    adjoints: dict[int, sympy.Expr]
    cut_adjoints: dict[int, sympy.Expr] | None
    hessian: tuple[tuple[sympy.Expr, ...], ...] | None
    whole: dict[str, sympy.Expr] | None
    method: str
    extra_rows: tuple[tuple[dict[int, sympy.Expr], dict[int, sympy.Expr] | None], ...] = ()
    magnitudes: Callable[[], tuple[Program, tuple[dict[int, sympy.Expr], ...]]] | None = None
    cut_hessian: tuple[tuple[sympy.Expr, ...], ...] | None = None
    constants: tuple[tuple[sympy.Symbol, sympy.Expr], ...] = ()


OPS_COMPARE = {name for name, op in OPS.items() if op.kind == "compare"}


def _var_symbol(name: str) -> sympy.Symbol:
    return sympy.Symbol(name, real=True)


def derive(
    graph: Graph, *, order: int = 1, whole_max_nodes: int = 60, outputs: Sequence[int] | None = None,
    deadline: Deadline | None = None,
) -> Derivation:
    """Derive the symbolic reference for `graph`.

    Args:
        graph: the parsed graph.
        order: 1 for gradients and adjoints, 2 to add the Hessian.
        whole_max_nodes: differentiate the whole expression with `sympy.diff` as a
            second opinion only up to this many graph nodes (it swells beyond).
        outputs: node ids to differentiate, one sweep each (Jacobian rows); the first is the
            primary output (`adjoints`, `hessian`, `whole` refer to it). Default: `graph.output`.
        deadline: the check's time budget, looked at every node and step.

    Returns:
        A `Derivation`.

    Raises:
        TimeLimitError: the deadline passed.
    """
    deadline = deadline or NO_DEADLINE
    inputs = tuple(_var_symbol(v) for v in graph.variables)
    values: dict[int, sympy.Expr] = {}
    steps: list[tuple[sympy.Symbol, sympy.Expr]] = []
    # Per forward step: its node and the expressions of its arguments, for the partials.
    step_info: dict[sympy.Symbol, tuple[int, tuple[sympy.Expr, ...]]] = {}
    relations: dict[int, sympy.Expr] = {}
    const_syms: set[sympy.Symbol] = set()  # constants sympy only sees as symbols (see _opaque)
    for node in graph.nodes:
        k = node.id
        deadline.check("deriving the values")
        if node.op == "var":
            values[k] = _var_symbol(node.name or "")
            continue
        if node.op == "const":
            values[k] = const_expr(node.value)  # type: ignore[arg-type]
            if _opaque(node.value):
                sym = sympy.Symbol(f"v[{k}]", real=True)
                steps.append((sym, values[k]))
                values[k] = sym
                const_syms.add(sym)
            continue
        args = tuple(relations.get(a, values.get(a)) for a in node.args)
        op = OPS[node.op]
        if op.kind == "compare":
            relations[k] = op.sympy(S, *args)
            values[k] = relations[k]
            continue
        if node.op == "where":
            expr = sympy.Piecewise((args[1], args[0]), (args[2], True))
        else:
            template, _ = _TEMPLATES.get(node.op, len(args))
            mapping = dict(zip(_P, args))
            expr = _substitute(template, mapping)
            if _folded_away(expr, args, template, mapping):  # keep what torch computes: the sign of 0*y, -inf for log2(0)
                expr = _rebuild(template, mapping)
        # Every op node gets a step, even x*0 or detach(x): its adjoint is reported.
        sym = sympy.Symbol(f"v[{k}]", real=True)
        steps.append((sym, expr))
        values[k] = sym
        step_info[sym] = (k, args)

    cache: dict[tuple[bool, sympy.Symbol], list[tuple[sympy.Symbol, sympy.Expr]]] = {}

    def node_partials(cut: bool) -> Callable[[sympy.Symbol, sympy.Expr], list[tuple[sympy.Symbol, sympy.Expr]]]:
        def partials(sym: sympy.Symbol, expr: sympy.Expr) -> list[tuple[sympy.Symbol, sympy.Expr]]:
            if sym not in step_info:  # a constant's step
                return []
            k, args = step_info[sym]
            node = graph.nodes[k]
            if cut and node.op in ("detach", "no_grad"):
                return []
            found = cache.get((False, sym))  # the same partials serve every sweep
            if found is not None:
                return found
            if node.op == "where":
                cond = args[0]
                raw = [(args[1], sympy.Piecewise((1, cond), (0, True))), (args[2], sympy.Piecewise((0, cond), (1, True)))]
            else:
                _, templates = _TEMPLATES.get(node.op, len(args))
                mapping = dict(zip(_P, args))
                mapping[_OUT] = sym
                raw = [(a, _substitute(d, mapping)) for a, d in zip(args, templates)]
            found = [(a, d) for a, d in raw if isinstance(a, sympy.Symbol) and d != 0 and a not in const_syms]
            cache[(False, sym)] = found
            return found

        return partials

    def adjoints_for(output: int, cut: bool, prefix: str) -> tuple[list[tuple[sympy.Symbol, sympy.Expr]], dict[int, sympy.Expr]]:
        new_steps, adj_map = sweep(steps, values[output], node_partials(cut), prefix, deadline)
        adj = {k: adj_map.get(v, sympy.S.Zero) if isinstance(v, sympy.Symbol) else sympy.S.Zero
               for k, v in values.items() if graph.depends_on_vars[k] and graph.nodes[k].op not in OPS_COMPARE}
        return new_steps, adj

    all_steps = list(steps)
    rows: list[tuple[dict[int, sympy.Expr], dict[int, sympy.Expr] | None]] = []
    for i, output in enumerate(outputs if outputs is not None else (graph.output,)):
        tag = "" if i == 0 else f"{i}:"
        adj_steps, adj = adjoints_for(output, False, f"a{tag}")
        all_steps += adj_steps
        cut_adj = None
        if graph.has_cuts:
            cut_steps, cut_adj = adjoints_for(output, True, f"c{tag}")
            all_steps += cut_steps
        rows.append((adj, cut_adj))
    (adjoints, cut_adjoints), extra_rows = rows[0], tuple(rows[1:])

    @functools.cache
    def magnitudes() -> tuple[Program, tuple[dict[int, sympy.Expr], ...]]:
        """Magnitude sweeps (|terms| in every partial), derived when the detailed test needs them."""
        mag_cache: dict[sympy.Symbol, list[tuple[sympy.Symbol, sympy.Expr]]] = {}

        def mag_partials(sym: sympy.Symbol, expr: sympy.Expr) -> list[tuple[sympy.Symbol, sympy.Expr]]:
            if sym not in step_info:
                return []
            if sym not in mag_cache:
                k, args = step_info[sym]
                kernel = OPS[graph.nodes[k].op].kernel if graph.nodes[k].op in OPS else None
                if kernel is not None:  # the partials as torch's backward computes them (see ops.Op.kernel)
                    forms = kernel(S, sym, *args)
                    mag_cache[sym] = [(a, magnitude(d)) for a, d in zip(args, forms)
                                      if isinstance(a, sympy.Symbol) and a not in const_syms]
                else:
                    mag_cache[sym] = [(a, magnitude(d)) for a, d in node_partials(False)(sym, expr)]
            return mag_cache[sym]

        mag_steps: list[tuple[sympy.Symbol, sympy.Expr]] = []
        mag_rows: list[dict[int, sympy.Expr]] = []
        for i, output in enumerate(outputs if outputs is not None else (graph.output,)):
            new_steps, mag_map = sweep(steps, values[output], mag_partials, f"m{'' if i == 0 else f'{i}:'}", deadline)
            mag_steps += new_steps
            mag_rows.append({k: mag_map.get(v, sympy.S.Zero) if isinstance(v, sympy.Symbol) else sympy.S.Zero
                             for k, v in values.items() if k in adjoints})
        return Program(inputs, tuple(steps + mag_steps)), tuple(mag_rows)

    adj_steps = [st for st in all_steps[len(steps):] if str(st[0]).startswith("a[")]
    hessian = cut_hessian = None
    if order >= 2:
        hessian, hess_steps = _hessian(graph, inputs, steps + adj_steps, adjoints, step_info, node_partials(False),
                                       deadline, const_syms=const_syms)
        all_steps += hess_steps
        if cut_adjoints is not None:  # what autograd computes when it treats the cuts as constants
            cut_steps = [st for st in all_steps[len(steps):] if str(st[0]).startswith("c[")]
            cut_hessian, more = _hessian(graph, inputs, steps + cut_steps, cut_adjoints, step_info,
                                         node_partials(True), deadline, prefix="k", const_syms=const_syms)
            all_steps += more
    method = f"reverse sweep over the graph ({len(step_info)} nodes, {len(all_steps)} program steps)"
    if extra_rows:
        method = method.replace("reverse sweep", f"{len(rows)} reverse sweeps (one per output element)")
    # Steps that sympy folded into an opaque number (10**20 from 10 and 20, zoo from 1/0) are
    # opaque constants for the second opinion too.
    opaque = const_syms | {sym for sym, expr in steps if not expr.free_symbols and _opaque_number(expr)}
    whole = None
    if not graph.variables:
        method += "; no second opinion (no variables)"
    elif len(graph.nodes) <= whole_max_nodes:
        whole, why = whole_expression_gradient(graph, inputs, values, steps, opaque, deadline)
        method += "; second opinion: sympy.diff of the whole expression" if whole else f"; no second opinion ({why})"
    else:
        method += f"; no second opinion (sympy.diff of the whole expression is used up to {whole_max_nodes} nodes)"
    constants = tuple(st for st in steps if st[0] in opaque)
    return Derivation(Program(inputs, tuple(all_steps)), values, adjoints, cut_adjoints, hessian, whole, method,
                      extra_rows, magnitudes, cut_hessian, constants)
