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

The semantics are those of derive's program: an adjoint that is a number by structure (a
constant's partials, sums of numbers) is kept as a sympy number, and one that is 0 by structure
is not propagated (the adjoint of ``sqrt(x)`` in ``sqrt(x) - sqrt(x)`` is 0, and 0 times
sqrt's infinite partial at 0 is not computed); zmul's strong zero for the adjoints a selection
(``where``, ``relu``, ``max``) can make exactly 0; no partials into constants or comparisons;
cuts as constants in the cut sweep.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from typing import Any, Callable

import sympy

from ..budget import NO_DEADLINE, Deadline
from ..ir.graph import Graph
from ..ops import OPS
from .evaluate import TORCH, Backend, CompiledProgram, _compile, _compile_program
from .sweep import _SELECTORS, magnitude as magnitude_of
from .symbolic import Derivation, Program
from .sympy_functions import S, zmul
from .templates import _OUT, _P, _TEMPLATES, _folded_away, _opaque, _rebuild, _substitute, const_expr

__all__ = ["NUMERIC_MIN_NODES", "NumericProgram", "derive_numeric", "suits"]

# From this many graph nodes on, first derivatives are derived numerically (see the docstring).
# Below it the per-node sympy program is cheap, and it also gives the formulas of the report.
NUMERIC_MIN_NODES = 1500

_COMPARE = frozenset(name for name, op in OPS.items() if op.kind == "compare")
_CUTS = ("detach", "no_grad")
_POSITIONS = {**{p: i for i, p in enumerate(_P)}, _OUT: len(_P)}  # a rule reads [p0, p1, p2, out]

Env = dict[sympy.Symbol, Any]


def suits(graph: Graph, order: int) -> bool:
    """Whether `graph` is checked with the numeric sweep: first derivatives of a large graph whose
    comparisons are only where's conditions (as `parse` builds them)."""
    if order != 1 or len(graph.nodes) < NUMERIC_MIN_NODES:
        return False
    for node in graph.nodes:
        for i, a in enumerate(node.args):
            if (graph.nodes[a].op in _COMPARE) != (node.op == "where" and i == 0):
                return False
    return True


@dataclass(frozen=True)
class _Rule:
    """One op kind at one arity, compiled for one backend."""

    value: Callable[[list[Any]], Any]
    partials: tuple[Callable[[list[Any]], Any] | None, ...]  # None: 0 by structure
    selects: tuple[bool, ...]  # whether the partial can be exactly 0 by selection


_CONDITION = sympy.Symbol("c")  # where's condition, a boolean


@functools.cache
def _templates(opname: str, nargs: int, kind: str) -> tuple[sympy.Expr, tuple[sympy.Expr, ...]]:
    """The expression and the partials of `opname` over placeholders, for the sweep of `kind`
    ("adjoint", or "magnitude": the partials as torch's kernel computes them, as derive's magnitudes)."""
    if opname == "where":
        pieces = (sympy.Piecewise((1, _CONDITION), (0, True)), sympy.Piecewise((0, _CONDITION), (1, True)))
        return sympy.S.Zero, (sympy.S.Zero,) + pieces
    op = OPS[opname]
    args = _P[:nargs]
    if op.kind == "compare":
        return op.sympy(S, *args), ()
    template, partials = _TEMPLATES.get(opname, nargs)
    if kind == "magnitude":
        forms = tuple(op.kernel(S, _OUT, *args)) if op.kernel is not None else partials
        partials = tuple(magnitude_of(d) for d in forms)
    return template, partials


def _rule(opname: str, nargs: int, backend: Backend, consts: dict[sympy.Expr, Any], kind: str) -> _Rule:
    """The rule of `opname` for the sweep of `kind`, compiled for `backend`."""
    template, partials = _templates(opname, nargs, kind)
    if opname == "where":
        one, zero, where = backend.const(sympy.S.One), backend.const(sympy.S.Zero), backend.where
        return _Rule(lambda a: where(a[0], a[1], a[2]),
                     (None, lambda a: where(a[0], one, zero), lambda a: where(a[0], zero, one)), (False, True, True))
    compiled = tuple(None if d == 0 else _compile(d, backend, consts, _POSITIONS) for d in partials)
    return _Rule(_compile(template, backend, consts, _POSITIONS), compiled, tuple(d.has(*_SELECTORS) for d in partials))


@functools.cache
def _torch_rule(opname: str, nargs: int, kind: str) -> _Rule:
    return _rule(opname, nargs, TORCH, {}, kind)


@dataclass(frozen=True, eq=False)
class NumericProgram(Program):
    """A derivation's program run as a numeric sweep (see the module docstring).

    `kind` is "adjoint" (values, adjoints and cut adjoints of every output row) or "magnitude"
    (values and the magnitude sweeps).
    """

    graph: Graph | None = None
    outputs: tuple[int, ...] = ()
    kind: str = "adjoint"
    names: dict[str, dict[int, sympy.Symbol]] = field(default_factory=dict)  # row tag -> node -> symbol
    memo: dict[str, Any] = field(default_factory=dict, repr=False)  # what every backend's sweeper shares

    def prepared(self) -> tuple[list[sympy.Expr | None], list[list[sympy.Expr | None] | None]]:
        """Per node, derive's folded value (`_folded`) and the partials that are numbers (`_static_partials`):
        the same for every backend, computed once (`memo` is shared by a derivation's two programs)."""
        assert self.graph is not None
        g = self.graph
        if "folded" not in self.memo:
            self.memo["folded"] = [_folded(g, node) for node in g.nodes]
        if "adjoint" not in self.memo:
            self.memo["adjoint"] = _static_partials(g)
        if self.kind == "magnitude" and "magnitude" not in self.memo:
            # |d| where the partial d is a number (`sweep.magnitude` of a number); a kernel's own forms are
            # computed (only unary ops have them, and a unary op of a constant is folded, never swept)
            self.memo["magnitude"] = [None if row is None or OPS[node.op].kernel is not None else
                                      [None if d is None else abs(d) for d in row]
                                      for node, row in zip(g.nodes, self.memo["adjoint"])]
        return self.memo["folded"], self.memo[self.kind]

    def size(self) -> int:
        """The work of one sweep, in the units of `Program.size` (about four operations per node)."""
        return 4 * len(self.graph.nodes) if self.graph is not None else 0

    def __str__(self) -> str:
        return f"numeric {self.kind} sweep over {len(self.graph.nodes) if self.graph else 0} nodes"

    def compile(self, backend: Backend, extra: dict[str, sympy.Expr], deadline: Deadline | None) -> CompiledProgram:
        """`extra` compiled for `backend`, after a prelude that runs the sweep into the environment."""
        compiled = _compile_program(Program(self.inputs, ()), backend, extra, deadline, None)
        wanted: set[sympy.Basic] = set()
        for e in extra.values():  # (most are one symbol: the judge's quantities are adjoints)
            wanted.update((e,) if isinstance(e, sympy.Symbol) else e.free_symbols)
        sweeper = _Sweeper(self, backend)

        def prelude(env: Env, everything: bool, dl: Deadline | None) -> None:
            sweeper.run(env, None if everything else wanted, dl or NO_DEADLINE)

        return dataclasses.replace(compiled, prelude=prelude, work=self.size())


class _Sweeper:
    """A `NumericProgram` ready to run on one backend: the rules, the constants and the numbers
    each partial is by structure (``static``), prepared once."""

    def __init__(self, program: NumericProgram, backend: Backend) -> None:
        assert program.graph is not None
        self.p, self.g, self.backend = program, program.graph, backend
        g, consts = self.g, {}
        rules: dict[tuple[str, int], _Rule] = {}
        self.rules: list[_Rule | None] = []
        folds, self.static = program.prepared()
        # the constants' values: float64's are the same for both programs of a derivation
        known = program.memo.setdefault("torch constants", {}) if backend is TORCH else {}
        self.consts: dict[int, Any] = known
        for node, folded in zip(g.nodes, folds):
            if folded is not None:  # computed once, as derive computes it (see _folded)
                if node.id not in known:
                    known[node.id] = (backend.const(folded) if node.op == "const" else
                                      _compile(folded, backend, consts)({}))
                self.rules.append(None if node.op == "const" else _NO_PARTIALS)
            elif node.op == "const":
                if node.id not in known:
                    known[node.id] = backend.const(const_expr(node.value))  # type: ignore[arg-type]
                self.rules.append(None)
            elif node.op == "var":
                self.rules.append(None)
            else:
                key = (node.op, len(node.args))
                if key not in rules:
                    if backend is TORCH:  # float64's rules serve every check (an mpmath backend is per check)
                        rules[key] = _torch_rule(node.op, len(node.args), program.kind)
                    else:
                        rules[key] = _rule(node.op, len(node.args), backend, consts, program.kind)
                self.rules.append(rules[key])
        self.zmul = backend.funcs.get(zmul)

    def run(self, env: Env, wanted: set[sympy.Symbol] | None, deadline: Deadline) -> None:
        g, backend = self.g, self.backend
        vals: list[Any] = [None] * len(g.nodes)
        for node in g.nodes:
            deadline.check("evaluating the reference")
            k = node.id
            if node.op == "var":
                vals[k] = env[sympy.Symbol(node.name or "", real=True)]
            elif k in self.consts:
                vals[k] = self.consts[k]
            else:
                vals[k] = self.rules[k].value([vals[a] for a in node.args])  # type: ignore[union-attr]
        for k, sym in self.p.names.get("v", {}).items():
            if wanted is None or sym in wanted:
                env[sym] = vals[k]
        for tag, names in self.p.names.items():
            if tag == "v" or (wanted is not None and not any(s in wanted for s in names.values())):
                continue
            out = self.p.outputs[int(tag[1:] or 0)]
            adj = self._sweep(vals, out, tag[0] == "c", deadline)
            zero = backend.const(sympy.S.Zero)
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


_NO_PARTIALS = _Rule(lambda a: None, (), ())  # a node computed once: no variable reaches it


def _folded(graph: Graph, node: Any) -> sympy.Expr | None:
    """The value of an op node whose arguments are all constants, as derive's substitution makes it.

    sympy folds it exactly: ``cot(pi)`` is ``zoo``, undefined, where floats see -8.2e15 at the
    rounded pi; but ``0*y`` and ``log2(0)`` keep what IEEE arithmetic keeps (`templates._folded_away`).
    None for every other node, and where a constant is opaque to sympy (`templates._opaque`).
    """
    if node.op == "const":
        return None if _opaque(node.value) else const_expr(node.value)
    if not node.args or any(graph.nodes[a].op != "const" or _opaque(graph.nodes[a].value) for a in node.args):
        return None
    if node.op in _COMPARE:  # a boolean: computed as any comparison (where's condition must be a tensor)
        return None
    args = tuple(const_expr(graph.nodes[a].value) for a in node.args)  # type: ignore[arg-type]
    template, _ = _TEMPLATES.get(node.op, len(args))
    mapping = dict(zip(_P, args))
    expr = _substitute(template, mapping)
    return _rebuild(template, mapping) if _folded_away(expr, args, template, mapping) else expr


@functools.cache
def _slots(template: sympy.Expr) -> frozenset[int]:
    """The placeholders a template reads (-1 for any other symbol)."""
    return frozenset(_POSITIONS.get(s, -1) for s in template.free_symbols)


def _static_partials(graph: Graph) -> list[list[sympy.Expr | None] | None]:
    """Per node, the partials that are numbers by structure (every argument they read a constant),
    as derive's substitution makes them (``2*a`` for ``a**2``: the 2 is read, the a is not); None
    for the others."""
    out: list[list[sympy.Expr | None] | None] = []
    nodes = graph.nodes
    for node in nodes:
        if node.op in ("var", "const") or node.op in _COMPARE:
            out.append(None)
            continue
        consts = {i for i, a in enumerate(node.args) if nodes[a].op == "const" and not _opaque(nodes[a].value)}
        row: list[sympy.Expr | None] = []
        for d in _templates(node.op, len(node.args), "adjoint")[1]:
            if d.is_Number:  # (add's 1, sub's -1, a structural 0)
                row.append(d)
                continue
            slot = _POSITIONS.get(d)
            if slot is not None:  # mul's partial: the other argument itself
                row.append(const_expr(nodes[node.args[slot]].value) if slot in consts else None)  # type: ignore[arg-type]
                continue
            free = _slots(d)
            if free <= consts:
                mapping = {_P[i]: const_expr(nodes[node.args[i]].value) for i in free}  # type: ignore[arg-type]
                e = d.xreplace(mapping)
                row.append(e if e.is_Number else None)
            else:
                row.append(None)
        out.append(row if any(s is not None for s in row) else None)
    return out


def derive_numeric(graph: Graph, *, outputs: tuple[int, ...] | None = None,
                   deadline: Deadline | None = None) -> Derivation:
    """`symbolic.derive` for a large graph (first derivatives): the same `Derivation`, whose program is a
    `NumericProgram` and whose values and adjoints are the symbols naming its results."""
    deadline = deadline or NO_DEADLINE
    outputs = outputs if outputs is not None else (graph.output,)
    inputs = tuple(sympy.Symbol(v, real=True) for v in graph.variables)
    dep = graph.depends_on_vars
    values: dict[int, sympy.Expr] = {}
    names: dict[str, dict[int, sympy.Symbol]] = {"v": {}}
    for node in graph.nodes:
        if node.op == "var":
            values[node.id] = sympy.Symbol(node.name or "", real=True)
        elif node.op in _COMPARE:
            values[node.id] = names["v"][node.id] = sympy.Symbol(f"b[{node.id}]")
        else:
            values[node.id] = names["v"][node.id] = sympy.Symbol(f"v[{node.id}]")
    deadline.check("deriving the gradients")
    adjointed = [n.id for n in graph.nodes if dep[n.id] and n.op not in _COMPARE]
    rows: list[tuple[dict[int, sympy.Expr], dict[int, sympy.Expr] | None]] = []
    for i in range(len(outputs)):
        tag = "" if i == 0 else str(i)
        full_names = names[f"a{tag}"] = {k: sympy.Symbol(f"a{tag}[{k}]") for k in adjointed}
        cut_names = None
        if graph.has_cuts:
            cut_names = names[f"c{tag}"] = {k: sympy.Symbol(f"c{tag}[{k}]") for k in adjointed}
        rows.append((dict(full_names), dict(cut_names) if cut_names is not None else None))
    memo: dict[str, Any] = {}
    program = NumericProgram(inputs, (), graph, tuple(outputs), "adjoint", names, memo)

    def magnitudes() -> tuple[Program, tuple[dict[int, sympy.Expr], ...]]:
        mag = {f"m{'' if i == 0 else i}": {k: sympy.Symbol(f"m{'' if i == 0 else i}[{k}]") for k in adjointed}
               for i in range(len(outputs))}
        # the sweeper reads a row's output from the tag's digits; "m" rows sweep like full adjoints
        prog = NumericProgram(inputs, (), graph, tuple(outputs), "magnitude", {"v": names["v"], **mag}, memo)
        return prog, tuple(dict(m) for m in mag.values())

    method = (f"reverse sweep over the graph ({len(graph.nodes)} nodes), computed with numbers: each op kind's "
              f"derivatives derived once (graphs from {NUMERIC_MIN_NODES:,} nodes); no second opinion and no "
              "formulas (sympy.diff of the whole expression is used up to 60 nodes)")
    (adjoints, cut_adjoints), extra_rows = rows[0], tuple(rows[1:])
    return Derivation(program, values, adjoints, cut_adjoints, None, None, method, extra_rows,
                      _cached(magnitudes), None, ())


def _cached(fn: Callable[[], Any]) -> Callable[[], Any]:
    memo: list[Any] = []

    def once() -> Any:
        if not memo:
            memo.append(fn())
        return memo[0]

    return once
