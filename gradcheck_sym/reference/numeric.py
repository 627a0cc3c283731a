"""Large graphs: the reverse sweep run on numbers, each op kind's rule derived once.

`symbolic.derive` writes one sympy expression per node and per adjoint, and the check compiles
those programs three times (float64, the magnitude sweep, 50-digit mpmath): linear in the graph,
but tens of microseconds of sympy per node, seconds at 10,000 nodes.  Above `NUMERIC_MIN_NODES`
nodes (first derivatives), `derive_numeric` gives a `Derivation` whose program is a
`NumericProgram` instead: each op kind's expression, partial derivatives and magnitude forms come
from the same templates as derive's (`templates._TEMPLATES`, sympy, once per op kind), compiled
once per backend, and a sweep runs them node by node on numbers -- torch float64 over a batch of
points, or mpmath at the points the detailed test picks.  The derivation's adjoints and values
are symbols that name the sweep's results (``a[k]``, ``c[k]``, ``v[k]``), so the judge reads them
as it reads derive's.

The semantics are those of derive's program: each node as derive's substitution makes it
(`numeric_rules`: constants substituted by sympy, comparisons it decides, constants-only nodes
folded); an adjoint that is a number by structure (a constant's partials, sums of numbers) is
kept as a sympy number, and one that is 0 by structure is not propagated (the adjoint of
``sqrt(x)`` in ``sqrt(x) - sqrt(x)`` is 0, and 0 times sqrt's infinite partial at 0 is not
computed); zmul's strong zero for the adjoints a selection (``where``, ``relu``, ``max``) can
make exactly 0; no partials into constants or comparisons; cuts as constants in the cut sweep.
"""

from __future__ import annotations

import functools
import operator
from dataclasses import dataclass, field
from typing import Any, Callable

import sympy

from ..budget import NO_DEADLINE, Deadline
from ..ir.graph import Graph
from .evaluate import TORCH, Backend, CompiledProgram, _compile, real_symbol
from .numeric_rules import COMPARE, Form, Rule, compile_rule, folded_values, forms
from .symbolic import Derivation, Program
from .sympy_functions import zmul
from .templates import const_expr

__all__ = ["NUMERIC_MIN_NODES", "NumericProgram", "derive_numeric", "suits"]

# From this many graph nodes on, first derivatives are derived numerically (see the docstring).
# Below it the per-node sympy program is cheap, and it also gives the formulas of the report.
NUMERIC_MIN_NODES = 1500

_CUTS = ("detach", "no_grad")

Env = dict[sympy.Symbol, Any]


def suits(graph: Graph, order: int) -> bool:
    """Whether `graph` is checked with the numeric sweep: first derivatives of a large graph whose
    comparisons are only where's conditions (as `parse` builds them)."""
    if order != 1 or len(graph.nodes) < NUMERIC_MIN_NODES:
        return False
    for node in graph.nodes:
        for i, a in enumerate(node.args):
            if (graph.nodes[a].op in COMPARE) != (node.op == "where" and i == 0):
                return False
    return True


@dataclass(frozen=True, eq=False)
class NumericProgram(Program):
    """A derivation's program run as a numeric sweep (see the module docstring).

    `kind` is "adjoint" (values, adjoints and cut adjoints of every output row) or "magnitude"
    (values and the magnitude sweeps).  `names` says what the sweep writes into the environment: for
    ("v", 0) the nodes' values, for ("a", row), ("c", row) and ("m", row) the adjoints, the cut adjoints
    and the magnitudes of output `row`, each node's under its own key.
    """

    graph: Graph | None = None
    outputs: tuple[int, ...] = ()
    kind: str = "adjoint"
    names: dict[tuple[str, int], dict[int, Any]] = field(default_factory=dict)  # (what, row) -> node -> key
    memo: dict[str, Any] = field(default_factory=dict, repr=False)  # what every backend's sweeper shares

    def prepared(self) -> list[Form | None]:
        """Per node, its `numeric_rules.Form`: the same for every backend, made once (`memo` is shared by a
        derivation's two programs)."""
        assert self.graph is not None
        if "folded" not in self.memo:
            self.memo["folded"] = folded_values(self.graph)
        if self.kind not in self.memo:
            self.memo[self.kind] = forms(self.graph, self.kind, self.memo["folded"])
        return self.memo[self.kind]

    def size(self) -> int:
        """The work of one sweep, in the units of `Program.size` (about four operations per node)."""
        return 4 * len(self.graph.nodes) if self.graph is not None else 0

    def __str__(self) -> str:
        return f"numeric {self.kind} sweep over {len(self.graph.nodes) if self.graph else 0} nodes"

    def compile(self, backend: Backend, extra: dict[str, sympy.Expr], deadline: Deadline | None) -> CompiledProgram:
        """`extra` compiled for `backend`, after a prelude that runs the sweep into the environment.

        Most extras are one symbol of the sweep (the judge's quantities are adjoints): looked up, not compiled.
        """
        steps: list[tuple[sympy.Symbol, Callable[[Env], Any]]] = []
        last: dict[Any, int] = {}
        consts: dict[sympy.Expr, Any] = {}
        for name, e in extra.items():
            if deadline is not None:
                deadline.check("compiling the reference")
            reads = (e,) if isinstance(e, sympy.Symbol) else e.free_symbols
            for sym in reads:
                last[sym] = len(steps)  # (dropped after its last use, as compile_program's temporaries)
            steps.append((real_symbol(f"extra[{name}]"),
                          operator.itemgetter(e) if isinstance(e, sympy.Symbol) else _compile(e, backend, consts)))
        frees: list[list[Any]] = [[] for _ in steps]
        for sym, i in last.items():
            frees[i].append(sym)
        wanted = set(last)
        sweeper = _Sweeper(self, backend)

        def prelude(env: Env, everything: bool, dl: Deadline | None) -> None:
            sweeper.run(env, None if everything else wanted, dl or NO_DEADLINE)

        return CompiledProgram(backend, steps, frees, prelude=prelude, work=self.size())


class _Sweeper:
    """A `NumericProgram` ready to run on one backend: the rules, the constants and the numbers
    each partial is by structure (``static``), prepared once."""

    def __init__(self, program: NumericProgram, backend: Backend) -> None:
        assert program.graph is not None
        self.p, self.g, self.backend = program, program.graph, backend
        g, consts, rules = self.g, {}, {}
        folds = program.prepared()
        # the constants' values: float64's are the same for both programs of a derivation
        known = program.memo.setdefault("torch constants", {}) if backend is TORCH else {}
        self.consts: dict[int, Any] = known
        self.rules: list[Rule | None] = []
        self.static: list[tuple[sympy.Expr | None, ...]] = []
        for node, form in zip(g.nodes, folds):
            rule, static = None, ()
            if form is not None and form.key == ("const",):
                if node.id not in known:  # derive's folded value, or an opaque constant's own
                    known[node.id] = (_compile(form.folded, backend, consts)({}) if form.folded is not None else
                                      backend.const(const_expr(node.value)))  # type: ignore[arg-type]
            elif form is not None:
                rule, static = compile_rule(form, backend, consts, rules), form.static
            self.rules.append(rule)
            self.static.append(static)
        self.zmul = backend.funcs.get(zmul)
        self.variables = {n.id: real_symbol(n.name or "") for n in g.nodes if n.op == "var"}

    def run(self, env: Env, wanted: set[sympy.Symbol] | None, deadline: Deadline) -> None:
        g, backend = self.g, self.backend
        vals: list[Any] = [None] * len(g.nodes)
        for node in g.nodes:
            deadline.check("evaluating the reference")
            k = node.id
            if node.op == "var":
                vals[k] = env[self.variables[k]]
            elif k in self.consts:
                vals[k] = self.consts[k]
            else:
                vals[k] = self.rules[k].value([vals[a] for a in node.args])  # type: ignore[union-attr]
        zero = backend.const(sympy.S.Zero)
        for (what, row), names in self.p.names.items():
            if wanted is not None and not any(s in wanted for s in names.values()):
                continue
            if what == "v":
                for k, sym in names.items():
                    if wanted is None or sym in wanted:
                        env[sym] = vals[k]
                continue
            adj = self._sweep(vals, self.p.outputs[row], what == "c", deadline)  # ("m": a magnitude program's rules)
            for k, sym in names.items():
                if wanted is None or sym in wanted:
                    a = adj[k]
                    env[sym] = zero if a is None else backend.const(a) if isinstance(a, sympy.Expr) else a

    def _sweep(self, vals: list[Any], output: int, cut: bool, deadline: Deadline) -> list[Any]:
        """One reverse sweep: each node's adjoint (a value, a sympy number, or None for 0)."""
        g, add = self.g, self.backend.add
        n = len(g.nodes)
        terms: list[list[Any] | None] = [None] * n
        adjoint: list[Any] = [None] * n
        selectable = [False] * n
        terms[output] = [sympy.S.One]
        dep = g.depends_on_vars
        for k in range(output, -1, -1):
            deadline.check("deriving the gradients")
            ts = terms[k]
            if not ts:
                continue
            terms[k] = None
            numbers = [t for t in ts if isinstance(t, sympy.Expr)]
            if len(numbers) == len(ts):
                adj: Any = sympy.Add(*numbers)  # exact, as derive's sums of numbers
                if adj == 0:
                    continue
            else:
                rest = [t for t in ts if not isinstance(t, sympy.Expr)]
                total = sympy.Add(*numbers) if numbers else sympy.S.Zero
                if total != 0:
                    rest.append(self.backend.const(total))
                adj = rest[0] if len(rest) == 1 else add(rest)
            adjoint[k] = adj
            node = g.nodes[k]
            rule = self.rules[k]
            if rule is None or not rule.partials or (cut and node.op in _CUTS):
                continue
            strong = selectable[k]
            static = self.static[k]
            args: list[Any] | None = None
            for j, a in enumerate(node.args):
                if not dep[a] or rule.partials[j] is None:  # (no partials into constants)
                    continue
                s = static[j] if static else None
                if s is not None:
                    if s == 0:
                        continue
                    partial: Any = s
                    selects = False
                else:
                    if args is None:
                        args = [vals[b] for b in node.args] + [None] * (3 - len(node.args)) + [vals[k]]
                    partial = rule.partials[j](args)  # type: ignore[misc]
                    selects = rule.selects[j]
                term = self._product(adj, partial, strong)
                found = terms[a]
                if found is None:
                    terms[a] = [term]
                else:
                    found.append(term)
                if strong or selects:
                    selectable[a] = True
        return adjoint

    def _product(self, a: Any, b: Any, strong: bool) -> Any:
        """adjoint * partial, as `sweep._product`: a sympy number where both are numbers."""
        a_num, b_num = isinstance(a, sympy.Expr), isinstance(b, sympy.Expr)
        if a_num and a == 1:
            return b
        if b_num and b == 1:
            return a
        if a_num and b_num:
            return zmul(a, b) if strong else a * b
        x = self.backend.const(a) if a_num else a
        y = self.backend.const(b) if b_num else b
        if strong:
            return self.zmul(x, y)
        return x * y if self.backend is TORCH else self.backend.mul([x, y])  # (mpmath's keeps IEEE's range)


def derive_numeric(graph: Graph, *, outputs: tuple[int, ...] | None = None,
                   deadline: Deadline | None = None) -> Derivation:
    """`symbolic.derive` for a large graph (first derivatives): the same `Derivation`, whose program is a
    `NumericProgram` and whose values and adjoints are the symbols naming its results."""
    deadline = deadline or NO_DEADLINE
    outputs = outputs if outputs is not None else (graph.output,)
    inputs = tuple(sympy.Symbol(v, real=True) for v in graph.variables)
    dep = graph.depends_on_vars
    values: dict[int, sympy.Expr] = {}
    own: dict[int, Any] = {}
    names: dict[tuple[str, int], dict[int, Any]] = {("v", 0): own}
    for node in graph.nodes:
        if node.op == "var":
            values[node.id] = sympy.Symbol(node.name or "", real=True)
        elif node.op in COMPARE:
            values[node.id] = own[node.id] = sympy.Symbol(f"b[{node.id}]")
        else:
            values[node.id] = own[node.id] = sympy.Symbol(f"v[{node.id}]")
    deadline.check("deriving the gradients")
    adjointed = [n.id for n in graph.nodes if dep[n.id] and n.op not in COMPARE]
    rows: list[tuple[dict[int, sympy.Expr], dict[int, sympy.Expr] | None]] = []
    for i in range(len(outputs)):
        tag = "" if i == 0 else str(i)
        full_names = names[("a", i)] = {k: sympy.Symbol(f"a{tag}[{k}]") for k in adjointed}
        cut_names = None
        if graph.has_cuts:
            cut_names = names[("c", i)] = {k: sympy.Symbol(f"c{tag}[{k}]") for k in adjointed}
        rows.append((dict(full_names), dict(cut_names) if cut_names is not None else None))
    memo: dict[str, Any] = {}
    program = NumericProgram(inputs, (), graph, tuple(outputs), "adjoint", names, memo)

    @functools.cache
    def magnitudes() -> tuple[Program, tuple[dict[int, Any], ...]]:
        # (keys of the environment, never compiled into an expression: no sympy symbol, which costs ~15 us to make)
        mag = {("m", i): {k: ("m", i, k) for k in adjointed} for i in range(len(outputs))}
        prog = NumericProgram(inputs, (), graph, tuple(outputs), "magnitude", {("v", 0): own, **mag}, memo)
        return prog, tuple(dict(m) for m in mag.values())

    method = (f"reverse sweep over the graph ({len(graph.nodes)} nodes), computed with numbers: each op kind's "
              f"derivatives derived once (graphs from {NUMERIC_MIN_NODES:,} nodes); no second opinion and no "
              "formulas (sympy.diff of the whole expression is used up to 60 nodes)")
    (adjoints, cut_adjoints), extra_rows = rows[0], tuple(rows[1:])
    return Derivation(program, values, adjoints, cut_adjoints, None, None, method, extra_rows, magnitudes, None, ())
