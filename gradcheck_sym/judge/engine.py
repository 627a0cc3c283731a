"""Stage 5: the checking engine — points in, verdicts out.

The engine compares a *subject*'s autograd with the symbolic reference derived
from its graph.  A subject is either an expression (the graph itself run
through torch, `ExpressionSubject`) or a traced user function
(`gradcheck_sym.trace.FunctionSubject`); both give the engine the same things:
a graph and its `Derivation`, the quantities to compare, the cut regions, and
an `autograd(points, order, trial)` that returns torch's numbers.

Points are processed in chunks (bounded memory); within a chunk everything is
one vectorised evaluation.  The cheap test runs on every (quantity, point); the
detailed test — measured rounding noise, high-precision reference, the
classification of `tolerance` — only on the points that fail it.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from typing import Any, Iterable, Protocol

import mpmath
import numpy as np
import sympy
import torch

from . import tolerance as tl
from ..autograd.expression import AutogradRun, run_autograd
from .compare import Accumulator, Quantity, example, finding, fmt
from ..reference.evaluate import MPMATH, TORCH, CompiledProgram, UnevaluableError, compile_program
from ..ir.graph import Graph
from ..ops import OPS
from .points import PointSet
from ..report import Finding, NodeRow, Report
from ..reference.symbolic import Derivation

__all__ = ["Region", "Run", "Subject", "ExpressionSubject", "Checker"]

# Elements (points x kept tensors) per chunk: about 1 GiB of float64 in flight.
CHUNK_ELEMENTS = 2**27


@dataclass(frozen=True)
class Region:
    """One place where the gradient is cut (a detach, a no_grad block, a .data read, ...).

    Attributes:
        key: stable identifier.
        label: what it is, for people ("detach(tanh(x))", "no_grad block").
        where: where it is ("column 3", "model.py:12").
        what: what the cut does, in words.
        nodes: the graph's cut nodes that belong to it.
        source: the source line, for traced code ("" for expressions).
    """

    key: str
    label: str
    where: str
    what: str
    nodes: tuple[int, ...]
    source: str = ""


class Run(Protocol):
    """Torch's numbers for one batch of points."""

    def quantity(self, q: Quantity) -> torch.Tensor:
        """Autograd's value of `q` at every point, float64, shape (n,)."""

    def outputs(self) -> list[torch.Tensor]:
        """The forward value of each output element, float64, shape (n,)."""

    def tensors(self) -> Iterable[tuple[str, torch.Tensor]]:
        """Labelled values and gradients, for the range check of narrow dtypes."""


class Subject(Protocol):
    """What the engine checks: see the module docstring."""

    graph: Graph
    derivation: Derivation
    outputs: tuple[int, ...]
    title: str

    def quantities(self) -> list[Quantity]: ...

    def regions(self) -> list[Region]: ...

    def autograd(self, xd: dict[str, torch.Tensor], order: int, trial: int | None,
                 detail: int | None = None) -> Run: ...

    def trials(self, xd: dict[str, torch.Tensor], order: int, count: int) -> list[Run]: ...

    def rows(self, first: dict[str, Any], n_points: int) -> list[NodeRow]: ...

    def extra_findings(self) -> list[Finding]: ...

    def notes(self) -> list[str]: ...

    def edges(self) -> list[tuple[int, int, str]]: ...


# ---------------------------------------------------------------- expressions
class _ExpressionRun:
    def __init__(self, run: AutogradRun, graph: Graph, n: int, small: AutogradRun | None = None) -> None:
        self.run, self.graph, self.n, self.small = run, graph, n, small

    def quantity(self, q: Quantity) -> torch.Tensor:
        if q.hess is not None:
            assert self.run.hessian is not None
            return _full(self.run.hessian[q.hess[0]][q.hess[1]].to(torch.float64), self.n)
        if self.small is not None and not q.is_input:  # intermediates: the leading points only
            m = len(next(iter(self.small.values.values())))
            gr = self.small.grads.get(q.node_id) if q.node_id is not None else None
            return torch.zeros(m, dtype=torch.float64) if gr is None else _full(gr.to(torch.float64), m)
        gr = self.run.grads.get(q.node_id) if q.node_id is not None else None
        if gr is None:
            return torch.zeros(self.n, dtype=torch.float64)
        return _full(gr.to(torch.float64), self.n)

    def outputs(self) -> list[torch.Tensor]:
        return [_full(self.run.values[self.graph.output].detach(), self.n)]

    def tensors(self) -> Iterable[tuple[str, torch.Tensor]]:
        g = self.graph
        for node in g.nodes:
            if not g.tracked[node.id]:
                continue
            if node.op != "var":  # a variable's value is exact in the dtype
                yield f"the value of {g.label(node.id)}", self.run.values[node.id]
            gr = self.run.grads.get(node.id)
            if gr is not None:
                yield f"the gradient of {g.label(node.id)}", gr


class _Slice:
    """One trial's share of a batched run."""

    def __init__(self, run: Run, start: int, n: int) -> None:
        self.run, self.start, self.n = run, start, n

    def quantity(self, q: Quantity) -> torch.Tensor:
        return self.run.quantity(q)[self.start : self.start + self.n]

    def outputs(self) -> list[torch.Tensor]:
        return [o[self.start : self.start + self.n] for o in self.run.outputs()]

    def tensors(self) -> Iterable[tuple[str, torch.Tensor]]:
        for label, t in self.run.tensors():
            yield label, t[self.start : self.start + self.n] if t.dim() else t


class ExpressionSubject:
    """An expression: its graph is evaluated node by node in torch (see `autograd`)."""

    def __init__(self, graph: Graph, derivation: Derivation) -> None:
        self.graph = graph
        self.derivation = derivation
        self.outputs = (graph.output,)
        self.title = graph.source or str(graph)
        self._first: AutogradRun | None = None
        # Integer constants are exact in every dtype (and perturbing the 2 of x**2 would make
        # x**2 NaN for negative x); other constants are rounded like any value.
        self._perturbable = [n.id for n in graph.nodes if (n.op == "const" and not _is_integer(n.value)) or (
            n.op in OPS and OPS[n.op].kind != "compare")]
        self._approx = {n.id: OPS[n.op].approx_rtol for n in graph.nodes if n.op in OPS and OPS[n.op].approx_rtol > 0}

    def quantities(self) -> list[Quantity]:
        g, d = self.graph, self.derivation
        qs: list[Quantity] = []
        kink_map = kink_ancestry(g)
        for node in g.nodes:
            k = node.id
            # Cut nodes, nodes inside no_grad and nodes fed only through cuts have no .grad
            # in torch by design; what the cuts drop is judged upstream (see the regions).
            if k not in d.adjoints or not g.tracked[k]:
                continue
            text = node.name if node.op == "var" else g.label(k)
            label = f"d out/d {text}" if node.op == "var" else f"d out/d ({text})"
            cut = d.cut_adjoints.get(k) if d.cut_adjoints is not None else None
            affected = frozenset(c for c, anc in kink_map.items() if k in anc)
            qs.append(Quantity(f"grad:%{k}", label, str(text), k, d.adjoints[k], cut, affected,
                               is_input=node.op == "var"))
        if d.hessian is not None:
            all_kinks = frozenset(kink_map)
            for i, xi in enumerate(g.variables):
                for j, xj in enumerate(g.variables):
                    qs.append(Quantity(f"hess:{xi},{xj}", f"d2 out/d{xi} d{xj}", f"{xi}, {xj}", None,
                                       d.hessian[i][j], None, all_kinks, hess=(i, j), group="hessian"))
        return qs

    def regions(self) -> list[Region]:
        out = []
        for node in self.graph.nodes:
            if node.op in ("detach", "no_grad") and self.graph.depends_on_vars[node.args[0]]:
                what = ("detach(...) makes autograd treat its value as a constant" if node.op == "detach" else
                        "no_grad(...) evaluates its argument under torch.no_grad(), so autograd never sees it")
                where = f"column {node.span[1] + 1}" if node.span else f"node %{node.id}"
                out.append(Region(f"cut:%{node.id}", self.graph.label(node.id), where, what, (node.id,)))
        return out

    def autograd(self, xd: dict[str, torch.Tensor], order: int, trial: int | None, detail: int | None = None) -> Run:
        n = len(next(iter(xd.values()))) if xd else 1
        if detail is not None and detail < n:
            # Intermediate nodes are compared on the first `detail` points only: retain_grad()
            # on every node there, and the whole batch run as plain user code would be.
            run = run_autograd(self.graph, xd, order=order, retain=False)
            small = run_autograd(self.graph, {k: v[:detail] for k, v in xd.items()}, order=order) if detail else None
            if self._first is None and small is not None:
                self._first = small
            return _ExpressionRun(run, self.graph, n, small)
        run = run_autograd(self.graph, xd, order=order)
        if self._first is None:
            self._first = run
        return _ExpressionRun(run, self.graph, n)

    def trials(self, xd: dict[str, torch.Tensor], order: int, count: int) -> list[Run]:
        """`count` perturbed runs in one batch: the points repeated, each copy with its own noise."""
        n = len(next(iter(xd.values()))) if xd else 1
        dtype = next(iter(xd.values())).dtype if xd else torch.float64
        perturb = tl.noise_factors(self._perturbable, n, tl.UNIT_ROUNDOFF[dtype], self._approx, dtype, count)
        run = run_autograd(self.graph, {k: v.repeat(count) for k, v in xd.items()}, order=order, perturb=perturb)
        whole = _ExpressionRun(run, self.graph, n * count)
        return [_Slice(whole, t * n, n) for t in range(count)]

    def rows(self, first: dict[str, Any], n_points: int) -> list[NodeRow]:
        g = self.graph
        run = self._first
        rows = []
        for node in g.nodes:
            k = node.id
            if node.op == "const" or (node.op in OPS and OPS[node.op].kind == "compare"):
                continue
            q: Quantity | None = first["by_node"].get(k)
            a, r = first.get(q.key, (None, None)) if q else (None, None)
            status = _status(q, n_points) if q else "constant"
            if node.region is not None or node.op in ("detach", "no_grad"):
                status += " (cut)" if node.op in ("detach", "no_grad") else " (in no_grad)"
            md = run.meta.get(k) if run else None
            value = run.values[k] if run else None
            rows.append(NodeRow(
                id=k, expression=g.label(k), op=node.op,
                grad_fn=md.grad_fn if md else None, is_leaf=md.is_leaf if md else True,
                requires_grad=md.requires_grad if md else False, retains_grad=md.retains_grad if md else False,
                cut=node.cut, value=None if value is None or value.dtype == torch.bool else float(value.detach().flatten()[0]),
                autograd_grad=a if (md and md.requires_grad) else None, symbolic_grad=r, status=status,
            ))
        return rows

    def extra_findings(self) -> list[Finding]:
        return []

    def notes(self) -> list[str]:
        return []

    def edges(self) -> list[tuple[int, int, str]]:
        """Argument -> node edges between shown nodes; the edge into a cut carries its name."""
        shown = {n.id for n in self.graph.nodes if n.op != "const" and not (n.op in OPS and OPS[n.op].kind == "compare")}
        out = []
        for n in self.graph.nodes:
            if n.id in shown:
                for a in n.args:
                    if a in shown:
                        out.append((a, n.id, n.op if n.op in ("detach", "no_grad") else ""))
        return out


def kink_ancestry(g: Graph) -> dict[int, set[int]]:
    """Kink node -> the nodes whose adjoints flow through it (a where's branches for comparisons)."""
    out: dict[int, set[int]] = {}
    for n in g.nodes:
        op = OPS.get(n.op)
        if op is None or op.kink is None or not g.depends_on_vars[n.id]:
            continue
        # A kink leaves the node's own adjoint alone and makes its arguments' undefined
        # (for a comparison: the branches of the where() that uses it).
        if op.kind == "compare":
            anc: set[int] = set()
            for u in g.consumers[n.id]:
                if g.nodes[u].op == "where":
                    anc |= g.ancestors(u) - {u}
            out[n.id] = anc
        else:
            out[n.id] = g.ancestors(n.id) - {n.id}
    return out


def _status(q: Quantity, n_points: int) -> str:
    if not q.counts:
        return "ok"
    return ", ".join(f"{name} at {c}/{n_points}" for name, c in q.counts.items())


# ---------------------------------------------------------------- the engine
@dataclass
class _Chunk:
    """One chunk's numbers, shared by the cheap and the detailed test."""

    start: int
    n: int
    x64: dict[str, torch.Tensor]  # the points as rounded to the dtype, in float64
    xd: dict[str, torch.Tensor]  # the same in the dtype
    autograd: Run
    env: dict[sympy.Symbol, Any]


@dataclass(frozen=True)
class _Numbers:
    """The numbers behind one verdict."""

    a: float  # autograd
    r: float  # reference (high precision where available)
    tol: float
    noise: float
    cut: float | None  # reference with cuts as constants
    ref_is_64: bool
    hp: bool


@dataclass
class _Detail:
    """What the detailed test computed once for all candidate points of a chunk."""

    idx: torch.Tensor
    run64: Run | None
    env_all: dict[sympy.Symbol, Any] | None = field(default=None)


class Checker:
    """Checks one subject over a point set and returns a `Report`."""

    def __init__(self, subject: Subject, points: PointSet, dtype: torch.dtype, order: int) -> None:
        self.s = subject
        self.graph = subject.graph
        self.d = subject.derivation
        self.points = points
        self.dtype = dtype
        self.order = order
        self.u = tl.UNIT_ROUNDOFF[dtype]
        self.acc = Accumulator()
        self.quantities = subject.quantities()
        self.regions = subject.regions()
        self._q_by_node = {q.node_id: i for i, q in enumerate(self.quantities)
                           if q.node_id is not None and q.row == 0 and q.hess is None}
        extra: dict[str, sympy.Expr] = {}
        # Intermediate nodes' references are needed on the first NODE_POINTS points only: they
        # get their own program, run on those points (see _chunk).
        self._leading_only: set[str] = set()
        for i, q in enumerate(self.quantities):
            extra[f"q{i}"] = q.ref
            if q.cut_ref is not None:
                extra[f"c{i}"] = q.cut_ref
            if not q.is_input and q.hess is None:
                self._leading_only |= {f"q{i}", f"c{i}"}
        rows = [(self.d.adjoints, None)] + list(self.d.extra_rows)
        self.rows_used = sorted({q.row for q in self.quantities})
        for region in self.regions:  # the gradient each cut drops: its own full-math adjoint
            for c in region.nodes:
                for row in self.rows_used:
                    extra[f"a{row}:{c}"] = rows[row][0].get(c, sympy.S.Zero)
        for o, k in enumerate(subject.outputs):
            extra[f"out{o}"] = self.d.values[k]
        self.kink_nodes = [
            n.id for n in self.graph.nodes if OPS.get(n.op) is not None and OPS[n.op].kink is not None
            and self.graph.depends_on_vars[n.id]
        ]
        for k in self.kink_nodes:
            for a in self.graph.nodes[k].args:
                extra[f"v{a}"] = self.d.values[a]
        self.extra_syms = {name: sympy.Symbol(f"extra[{name}]", real=True) for name in extra}
        self.keep = set(self.extra_syms.values())
        self.compiled = compile_program(self.d.program, TORCH,
                                        {k: e for k, e in extra.items() if k not in self._leading_only})
        self.compiled_leading = compile_program(self.d.program, TORCH, extra) if self._leading_only else None
        self._extra = extra
        # The second opinion has its own program: it runs on the first NODE_POINTS points only.
        self.whole_keys: dict[str, str] = {}
        self._whole: CompiledProgram | None = None
        if self.d.whole is not None:
            from ..reference.symbolic import Program

            self.whole_keys = {name: f"w:{name}" for name in self.d.whole}
            self._whole = compile_program(Program(self.d.program.inputs, ()), TORCH,
                                          {f"w:{name}": e for name, e in self.d.whole.items()})
        self._mp: CompiledProgram | None = None
        self._mag: CompiledProgram | None = None
        self._mag_env: dict[sympy.Symbol, Any] = {}
        self._mag_env_key: int | None = None
        self.mp_points = 0
        self.mp_budget = tl.MP_BUDGET
        self.checked = 0
        self.first: dict[str, Any] = {"by_node": {q.node_id: q for q in self.quantities
                                                  if q.node_id is not None and q.hess is None and q.row == 0}}
        self._kink_quantity: dict[int, str] = {}
        self._stale = bool(subject.extra_findings())

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).replace("torch.", "")

    # ------------------------------------------------------------ main loop
    def run(self, chunk_size: int | None = None, progress: bool | None = None) -> Report:
        n_kept = (len(self.graph.nodes) * (3 if self.order == 1 else 5) + len(self._extra)
                  + len(self.d.program.steps) // 4 + 8)
        size = chunk_size or max(256, CHUNK_ELEMENTS // n_kept)
        size = max(1, min(size, self.points.n))
        chunks = math.ceil(self.points.n / size)
        show = progress if progress is not None else (chunks > 1 and self.points.n >= 1_000_000 and sys.stderr.isatty())
        bar = _Progress(self.points.n, show)
        try:
            for start, arrays in self.points.chunks(size):
                self._chunk(start, arrays)
                bar.advance(len(next(iter(arrays.values()))) if arrays else 1)
        finally:
            bar.close()
        return self._report()

    def _env(self, x64: dict[str, torch.Tensor], keep: set[sympy.Symbol] | None, sub: int | None = None
             ) -> dict[sympy.Symbol, Any]:
        """The reference program's values: every point for the full-batch quantities, and (with
        `sub`) the intermediate nodes' references on the first `sub` points, padded with 0."""
        env: dict[sympy.Symbol, Any] = {sympy.Symbol(name, real=True): x64[name] for name in x64}
        if keep is None:  # everything, at a handful of points (the detailed test)
            return (self.compiled_leading or self.compiled).run(env, keep=None)
        out = self.compiled.run(env, keep=keep)
        if sub and self.compiled_leading is not None:
            n = len(next(iter(x64.values()))) if x64 else 1
            lead = self.compiled_leading.run({sympy.Symbol(name, real=True): t[:sub] for name, t in x64.items()},
                                             keep=keep)
            del n
            for name in self._leading_only:  # left short: only their leading points are used
                sym = self.extra_syms.get(name)
                if sym is not None and sym in lead:
                    out[sym] = _full(lead[sym], sub)
        return out

    def _chunk(self, start: int, arrays: dict[str, torch.Tensor]) -> None:
        n = len(next(iter(arrays.values()))) if arrays else 1
        xd = {name: a.to(self.dtype) for name, a in arrays.items()}
        x64 = {name: t.to(torch.float64) for name, t in xd.items()}
        sub = min(n, max(0, tl.NODE_POINTS - start))
        run = self.s.autograd(xd, self.order, None, sub)
        ch = _Chunk(start, n, x64, xd, run, self._env(x64, self.keep, sub))

        inside = torch.ones(n, dtype=torch.bool)
        refs, autos = [], run.outputs()
        for o in range(len(self.s.outputs)):
            r = self._ref(ch, f"out{o}")
            refs.append(r)
            inside &= torch.isfinite(r)
            inside &= torch.isfinite(autos[o])
        outside = ~inside
        self._record_outside(ch, outside, refs[0], autos[0])
        forward = getattr(self.s, "check_forward", None)
        if forward:
            diverged = self._diverged(ch, refs, autos, outside, forward)
            if forward == "trace":  # the traced math does not hold there: do not compare
                outside |= diverged
        kinks = self._kinks(ch)
        candidates = torch.zeros(n, dtype=torch.bool)
        per_q_bad: list[torch.Tensor | None] = []
        # Intermediate nodes are compared on the first NODE_POINTS points only (see tolerance);
        # the inputs' gradients and the Hessian at every point.
        if forward == "trace":
            inside = ~outside
        valid = int(inside.sum())
        valid_sub = int(inside[:sub].sum())
        for i, q in enumerate(self.quantities):
            full = q.is_input or q.hess is not None
            if not full and sub == 0:
                per_q_bad.append(None)
                continue
            a = run.quantity(q)  # intermediates: the leading `sub` points only
            r = self._ref(ch, f"q{i}")
            # bad = inside and not passing (one comparison of booleans: True > False); for an
            # intermediate node a mask over the leading `sub` points only.
            if full:
                bad = inside > tl.cheap_pass(a, r, self.u)
                self.checked += valid
            else:
                bad = inside[:sub] > tl.cheap_pass(a[:sub], r[:sub], self.u)
                self.checked += valid_sub
            kinked = self._kinked(q, kinks)
            if kinked is not None:
                bad = bad | (kinked & inside)[: len(bad)]
                self._record_kinks(ch, q, kinks, a, r[: len(a)])
            any_bad = bool(bad.any())
            if any_bad and len(bad) < n:
                bad = torch.cat([bad, torch.zeros(n - len(bad), dtype=torch.bool)])
            per_q_bad.append(bad if any_bad else None)
            if any_bad:
                candidates |= bad
            if start == 0:
                self.first[q.key] = (float(a[0]), float(r[0]))
        self._second_opinion(ch, outside, kinks, sub)
        if bool(candidates.any()):
            self._detailed(ch, candidates, per_q_bad, kinks)
        if start == 0:
            self.first["point"] = {name: float(t[0]) for name, t in x64.items()}

    def _ref(self, ch: _Chunk, name: str) -> torch.Tensor:
        """A reference value at the chunk's points (intermediate nodes': the leading points only)."""
        return _full(ch.env[self.extra_syms[name]], ch.n)

    def _ref_at(self, ch: _Chunk, name: str, idx: torch.Tensor) -> torch.Tensor:
        """A reference value at the points `idx` (0 beyond the leading points, where it is not computed)."""
        r = self._ref(ch, name)
        if len(r) == ch.n:
            return r[idx]
        out = torch.zeros(len(idx), dtype=torch.float64)
        ok = idx < len(r)
        out[ok] = r[idx[ok]]
        return out

    def _kinks(self, ch: _Chunk) -> dict[int, torch.Tensor]:
        out = {}
        for k in self.kink_nodes:
            node = self.graph.nodes[k]
            args = [self._ref(ch, f"v{a}") for a in node.args]
            mask = _full(OPS[node.op].kink(torch, *args), ch.n).bool()  # type: ignore[misc]
            if bool(mask.any()):
                out[k] = mask
        return out

    def _record_kinks(self, ch: _Chunk, q: Quantity, kinks: dict[int, torch.Tensor], a: torch.Tensor,
                      r: torch.Tensor) -> None:
        """One nondifferentiable finding per kink node, with examples from its first affected quantity."""
        for k, mask in kinks.items():
            if k not in q.affected_by or self._kink_quantity.setdefault(k, q.key) != q.key:
                continue
            idx = [i for i in torch.nonzero(mask).flatten().tolist() if i < len(a)]
            for i in idx[:3]:
                ex = example(ch.start + i, self._point(ch, i), float(a[i]), float(r[i]))
                self.acc.add("nondifferentiable", "info", f"kink:%{k}", ex, 0.0, kink=k, quantity=q)
            if len(idx) > 3:
                self.acc.count("nondifferentiable", "info", f"kink:%{k}", len(idx) - 3, kink=k, quantity=q)

    def _kinked(self, q: Quantity, kinks: dict[int, torch.Tensor]) -> torch.Tensor | None:
        mask = None
        for k, m in kinks.items():
            if k in q.affected_by:
                mask = m if mask is None else mask | m
        return mask

    def _point(self, ch: _Chunk, i: int) -> dict[str, float]:
        return {name: float(t[i]) for name, t in ch.x64.items()}

    def _record_outside(self, ch: _Chunk, outside: torch.Tensor, ref: torch.Tensor, auto: torch.Tensor) -> None:
        idx = torch.nonzero(outside).flatten().tolist()
        for i in idx[:3]:
            self.acc.add("outside-domain", "info", "", example(ch.start + i, self._point(ch, i), float(auto[i]),
                                                                float(ref[i])), 0.0)
        if len(idx) > 3:
            self.acc.count("outside-domain", "info", "", len(idx) - 3)

    def _diverged(self, ch: _Chunk, refs: list[torch.Tensor], autos: list[torch.Tensor],
                  outside: torch.Tensor, kind: str) -> torch.Tensor:
        """Points where the math does not reproduce the function's value.

        kind "trace": a data-dependent trace (warning; those points are skipped).
        kind "value": the function differs from an `expected` expression (an error).
        """
        bad = torch.zeros(ch.n, dtype=torch.bool)
        for r, a in zip(refs, autos):
            loose = tl.TRACE_RTOL_FACTOR * math.sqrt(self.u) * (r.abs() + a.abs()) + torch.finfo(self.dtype).tiny
            bad |= (r - a).abs() > loose
        bad &= ~outside
        for i in torch.nonzero(bad).flatten().tolist():
            ex = example(ch.start + i, self._point(ch, i), float(autos[0][i]), float(refs[0][i]), quantity="out")
            if kind == "trace":
                self.acc.add("trace", "warning", "", ex, 0.0)
            else:
                self.acc.add("mismatch", "error", "value", ex, ex.abs_err or 0.0, value=True)
        return bad

    # ------------------------------------------------------------ the detailed test
    def _detailed(self, ch: _Chunk, candidates: torch.Tensor, per_q_bad: list[torch.Tensor | None],
                  kinks: dict[int, torch.Tensor]) -> None:
        idx = torch.nonzero(candidates).flatten()
        m = len(idx)
        sub_xd = {name: t[idx] for name, t in ch.xd.items()}
        base = self.s.autograd(sub_xd, self.order, None)
        trials = self.s.trials(sub_xd, self.order, tl.NOISE_TRIALS)
        run64 = None
        if self.dtype != torch.float64:
            run64 = self.s.autograd({k: v.to(torch.float64) for k, v in sub_xd.items()}, self.order, None)
        detail = _Detail(idx, run64)
        tiny = torch.finfo(self.dtype).tiny
        # Phase 1: measured noise against the float64 reference. In a float64 check that
        # reference is no more precise than autograd, so its tolerance is doubled; what fails
        # phase 1 there gets the high-precision reference (phase 2).
        pending: list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]] = []
        need_hp = torch.zeros(m, dtype=torch.bool)
        for qi, q in enumerate(self.quantities):
            bad = per_q_bad[qi]
            if bad is None:
                continue
            a = base.quantity(q)
            noise = torch.zeros(m, dtype=torch.float64)
            for tr in trials:
                noise = torch.maximum(noise, (tr.quantity(q) - a).abs())
            # A NaN in a perturbed run means one ulp of rounding can change the result
            # arbitrarily (e.g. sqrt near 0): the noise there is unbounded.
            noise = torch.nan_to_num(noise, nan=math.inf)
            r64 = self._ref_at(ch, f"q{qi}", idx)
            noise = noise + self._magnitude(ch, idx, qi) * (tl.MAGNITUDE_ULPS * self.u / tl.NOISE_SAFETY)
            tol64 = self._tolerance(ch, q, idx, noise, r64, self.dtype == torch.float64, tiny)
            kinked = self._kinked(q, kinks)
            still = bad[idx].clone()
            settled = torch.isfinite(a) & torch.isfinite(r64) & ((a - r64).abs() <= tol64)
            if kinked is not None:
                settled &= ~kinked[idx]
            still &= ~settled
            if bool(still.any()):
                pending.append((qi, a, r64, noise, kinked, still))
                need_hp |= still
        if not pending:
            return
        hp = self._high_precision(ch, idx, need_hp) if self.dtype == torch.float64 else None
        for qi, a, r64, noise, kinked, still in pending:
            q = self.quantities[qi]
            has_hp = hp is not None and hp[1] is not None
            r = torch.where(hp[1], hp[0][qi], r64) if has_hp else r64  # type: ignore[index]
            ref_is_64 = (~hp[1]) if has_hp else torch.full((m,), self.dtype == torch.float64)  # type: ignore[index]
            tol = self._tolerance(ch, q, idx, noise, r, False, tiny)
            tol = torch.where(ref_is_64 & (self.dtype == torch.float64), tol + tl.NOISE_SAFETY * noise, tol)
            cut = self._ref_at(ch, f"c{qi}", idx) if q.cut_ref is not None else None
            for j in torch.nonzero(still).flatten().tolist():
                i = int(idx[j])
                num = _Numbers(float(a[j]), float(r[j]), float(tol[j]), float(noise[j]),
                               None if cut is None else float(cut[j]), bool(ref_is_64[j]) and self.dtype == torch.float64,
                               has_hp and bool(hp[1][j]))  # type: ignore[index]
                self._classify(ch, q, i, j, num, kinked is not None and bool(kinked[i]), detail)

    def _magnitude(self, ch: _Chunk, idx: torch.Tensor, qi: int) -> torch.Tensor:
        """The magnitude sweep's value for quantity `qi` at the candidate points (0 where it has none)."""
        q = self.quantities[qi]
        if q.hess is not None or q.node_id is None or self.d.magnitudes is None:
            return torch.zeros(len(idx), dtype=torch.float64)
        program, mags = self.d.magnitudes()
        if q.row >= len(mags) or q.node_id not in mags[q.row]:
            return torch.zeros(len(idx), dtype=torch.float64)
        if self._mag is None:
            extra = {f"m{row}:{k}": e for row, m in enumerate(mags) for k, e in m.items()}
            self._mag = compile_program(program, TORCH, extra)
        key = (ch.start, qi)
        if self._mag_env_key != ch.start:
            x64 = {sympy.Symbol(name, real=True): t[idx] for name, t in ch.x64.items()}
            self._mag_env = self._mag.run(x64)
            self._mag_env_key = ch.start
        del key
        v = self._mag_env[sympy.Symbol(f"extra[m{q.row}:{q.node_id}]", real=True)]
        return torch.nan_to_num(_full(v, len(idx)).abs(), nan=math.inf)

    def _tolerance(self, ch: _Chunk, q: Quantity, idx: torch.Tensor, noise: torch.Tensor, r: torch.Tensor,
                   ref_is_64: bool, tiny: float) -> torch.Tensor:
        tol = tl.tolerance(noise, r, self.u, ref_is_64, tiny)
        if q.hess is not None:  # a Hessian entry: see tolerance.HESSIAN_ULPS
            g = self.graph
            scale = sum(self._ref_at(ch, f"q{self._qindex(g.var_ids[g.variables[v]])}", idx).abs() for v in q.hess)
            tol = tol + tl.HESSIAN_ULPS * self.u * (scale + r.abs())
        return tol

    def _high_precision(self, ch: _Chunk, idx: torch.Tensor, want: torch.Tensor
                        ) -> tuple[list[torch.Tensor], torch.Tensor] | None:
        """The reference in mpmath at the candidates marked in `want`, within the budget.

        Returns (one column per quantity over all candidates, mask of the candidates computed).
        """
        steps = len(self.compiled.steps)
        chosen = torch.nonzero(want).flatten().tolist()
        affordable = max(0, self.mp_budget // max(steps, 1))
        chosen = chosen[:affordable]
        if not chosen:
            return None
        if self._mp is None:
            try:
                self._mp = compile_program(self.d.program, MPMATH, self._extra)
            except UnevaluableError:
                self.mp_budget = 0
                return None
        self.mp_budget -= steps * len(chosen)
        names = list(ch.x64)
        m = len(idx)
        cols = [torch.full((m,), math.nan, dtype=torch.float64) for _ in self.quantities]
        done = torch.zeros(m, dtype=torch.bool)
        with mpmath.workdps(tl.MP_DPS):
            for j in chosen:
                p = int(idx[j])
                env = {sympy.Symbol(name, real=True): mpmath.mpf(float(ch.x64[name][p])) for name in names}
                env = self._mp.run(env, keep=self.keep)
                for qi in range(len(self.quantities)):
                    cols[qi][j] = float(env[self.extra_syms[f"q{qi}"]])
                done[j] = True
        self.mp_points += len(chosen)
        return cols, done

    def _classify(self, ch: _Chunk, q: Quantity, i: int, j: int, num: _Numbers, kinked: bool, detail: _Detail) -> None:
        """The verdict for quantity `q` at point `i` of the chunk (`j` among the candidates)."""
        a, r, tol, noise, cut = num.a, num.r, num.tol, num.noise, num.cut
        point = self._point(ch, i)
        index = ch.start + i
        ref_words = f"reference in {tl.MP_DPS}-digit arithmetic" if num.hp else (
            "reference in float64" + (" (high-precision budget spent: tolerance doubled)" if num.ref_is_64 else ""))
        why = (f"tol = {tl.NOISE_SAFETY:g} x rounding noise {noise:.2g} measured by {tl.NOISE_TRIALS} perturbed re-runs"
               f" + {tl.FLOOR_ULPS:g} ulp; {ref_words}")
        fa, fr = math.isfinite(a), math.isfinite(r)
        diff = abs(a - r) if fa and fr else math.inf
        score = diff / tol if tol > 0 else (0.0 if diff == 0 else math.inf)
        ex = example(index, point, a, r, tol, why, q.label)
        counts = q.counts
        if kinked:  # the finding is recorded per kink node by _record_kinks
            counts["kink"] = counts.get("kink", 0) + 1
            return
        if not (fa and fr):
            ex = example(index, point, a, r, None, ref_words, q.label)
            same = (a != a and r != r) or (not fa and not fr and a == r)
            if same:
                self.acc.add("nonfinite", "info", q.group, ex, 0.0, quantity=q)
                counts["nonfinite (agree)"] = counts.get("nonfinite (agree)", 0) + 1
                return
            overflow = self._range_issue(ch, i, j, detail) if fr else None
            if overflow is not None:
                self.acc.add("nonfinite", "warning", q.group, ex, score, quantity=q, overflow=overflow)
                counts["overflow"] = counts.get("overflow", 0) + 1
                return
            self.acc.add("nonfinite", "error", q.group, ex, score, quantity=q)
            counts["nonfinite"] = counts.get("nonfinite", 0) + 1
            return
        if diff <= tol:
            return
        if cut is not None and math.isfinite(cut) and abs(a - cut) <= 2 * tol + tl.FLOOR_ULPS * self.u * abs(cut):
            counts["untracked"] = counts.get("untracked", 0) + 1
            if not q.is_input:
                return  # intermediate nodes: counted in the table; the finding is per cut region
            for region in self.regions:
                dropped = max((abs(float(self._ref(ch, f"a{q.row}:{c}")[i])) for c in region.nodes), default=0.0)
                if dropped != 0:
                    self.acc.add("untracked", "error", region.key, ex, score, quantity=q, region=region,
                                 cut_value=cut, dropped=dropped)
            return
        overflow = self._range_issue(ch, i, j, detail)
        if overflow is not None:
            self.acc.add("range", "warning", q.group, ex, score, quantity=q, overflow=overflow)
            counts["range"] = counts.get("range", 0) + 1
            return
        # A stale graph (a .data assignment) explains a disagreement that no cut explains.
        kind = "stale-graph" if self._stale else "mismatch"
        self.acc.add(kind, "error", q.group, ex, score, quantity=q)
        counts[kind] = counts.get(kind, 0) + 1

    def _range_issue(self, ch: _Chunk, i: int, j: int, detail: _Detail) -> str | None:
        """Why the dtype cannot represent the computation at point `i`, or None.

        Narrow dtypes: some value or gradient of the float64 re-run lies outside the dtype's
        normal range (overflows to inf or underflows to 0).  Any dtype: a node's exact value
        became inf from finite, non-zero arguments (overflow, e.g. exp(909); 1/0 is a pole).
        """
        if detail.run64 is not None:
            info = torch.finfo(self.dtype)
            for label, t in detail.run64.tensors():
                if t is None or t.dtype == torch.bool:
                    continue
                v = abs(float(_full(t.detach(), len(detail.idx))[j]))
                if math.isfinite(v) and (v > info.max or 0 < v < info.tiny):
                    return f"{label} ({v:.3g}) is outside the range of {self.dtype_name}"
        if detail.env_all is None:  # every value of the reference program at the candidates
            x64 = {name: t[detail.idx] for name, t in ch.x64.items()}
            detail.env_all = self._env(x64, None)
        env, g = detail.env_all, self.graph
        m = len(detail.idx)

        def value(k: int) -> float:
            expr = self.d.values[k]
            if isinstance(expr, sympy.Symbol):
                return float(_full(env[expr], m)[j])
            return float(expr) if expr.is_Number else math.nan

        for node in g.nodes:
            if node.op in ("var", "const") or (node.op in OPS and OPS[node.op].kind == "compare"):
                continue
            if node.op == "where" or not math.isinf(value(node.id)):
                continue
            args = [value(a) for a in node.args]
            if all(math.isfinite(x) and x != 0 for x in args):
                return f"{g.label(node.id)} overflows {self.dtype_name}"
        return None

    def _qindex(self, node_id: int) -> int:
        """Index of the quantity for node `node_id`'s adjoint (primary output), or -1."""
        return self._q_by_node.get(node_id, -1)

    # ------------------------------------------------------------ second opinion
    def _second_opinion(self, ch: _Chunk, outside: torch.Tensor, kinks: dict[int, torch.Tensor], sub: int) -> None:
        """sympy.diff of the whole expression against the sweep, on the first NODE_POINTS points."""
        if self._whole is None or sub == 0:
            return
        env = self._whole.run({sympy.Symbol(name, real=True): t[:sub] for name, t in ch.x64.items()})
        anykink = torch.zeros(sub, dtype=torch.bool)
        for m in kinks.values():
            anykink |= m[:sub]
        for name, key in self.whole_keys.items():
            qi = self._qindex(self.graph.var_ids[name])
            if qi < 0:
                continue
            r = self._ref(ch, f"q{qi}")[:sub]
            w = _full(env[sympy.Symbol(f"extra[{key}]", real=True)], sub)
            both = torch.isfinite(r) & torch.isfinite(w) & ~outside[:sub] & ~anykink
            off = both & ((r - w).abs() > 1e-6 * (r.abs() + w.abs()) + 1e-12)
            for i in torch.nonzero(off).flatten().tolist()[:50]:
                ex = example(ch.start + i, self._point(ch, i), float(w[i]), float(r[i]))
                self.acc.add("second-opinion", "warning", f"whole:{name}", ex, float((r[i] - w[i]).abs()), name=name)

    # ------------------------------------------------------------ the report
    def _report(self) -> Report:
        findings: list[Finding] = []
        for kind, severity, key, count, examples, info in self.acc.groups():
            findings.append(self._finding(kind, severity, key, count, examples, info))
        findings += self._cut_findings() + self.s.extra_findings()
        order = {"error": 0, "warning": 1, "info": 2}
        findings.sort(key=lambda f: (order[f.severity], f.kind, f.node_id if f.node_id is not None else -1))
        tol_line = (
            f"{self.dtype_name}: cheap test |a - r| <= {tl.CHEAP_ULPS:g} ulp, then measured rounding noise "
            f"x {tl.NOISE_SAFETY:g} (+{tl.FLOOR_ULPS:g} ulp) against the exact derivative"
            + (f" ({tl.MP_DPS} digits)" if self.dtype == torch.float64 else " (float64)")
        )
        derivation = "; ".join([self.d.method] + self.s.notes())
        return Report(
            expression=self.s.title,
            variables=self.graph.variables,
            dtype=self.dtype_name,
            order=self.order,
            n_points=self.points.n,
            seed=self.points.seed,
            derivation=derivation,
            tolerance=tol_line,
            findings=tuple(findings),
            nodes=tuple(self.s.rows(self.first, self.points.n)),
            checked=self.checked,
            high_precision_points=self.mp_points,
            first_point=self.first.get("point", {}),
            edges=tuple(self.s.edges()),
        )

    def _finding(self, kind: str, severity: str, key: str, count: int, examples: tuple, info: dict) -> Finding:
        g = self.graph
        n = self.points.n
        q: Quantity | None = info.get("quantity")
        where = f"at {count} of {n} point{'s' if n != 1 else ''}"
        if kind == "outside-domain":
            return finding(kind, "info", "", (
                f"the output is not a finite real number {where} (NaN: outside the real domain, e.g. sqrt or log of "
                f"a negative number; inf: a pole or overflow in {self.dtype_name}); these points are not compared"),
                count, examples)
        if kind == "trace":
            return finding(kind, "warning", "", (
                f"the traced computation does not reproduce the function's value {where} (its control flow or "
                "its indexing depends on the values, e.g. `if x.sum() > 0`); these points are not compared: "
                "check them one by one, or give the math with expected="), count, examples)
        if info.get("value"):
            ex = examples[0]
            return finding(kind, "error", "value", (
                f"the function's value differs from the expected expression {where}; worst at point {ex.index} "
                f"({_point_text(ex.point)}): function {fmt(ex.autograd)}, expected {fmt(ex.symbolic)}"),
                count, examples, "value")
        if kind == "nondifferentiable":
            k = info["kink"]
            op = OPS[g.nodes[k].op]
            text = g.label(k)
            ex = examples[0] if examples else None
            detail = (f"; e.g. {q.label}: torch {fmt(ex.autograd)}, sympy {fmt(ex.symbolic)}" if ex and q else "")
            return finding(kind, "info", text, (
                f"{text} is at a kink, tie or jump {where}, where the derivative is undefined: "
                f"{op.convention}{detail}"), count, examples, q.label if q else "", k, op.convention)
        if kind == "second-opinion":
            name = info["name"]
            ex = examples[0]
            return finding(kind, "warning", name, (
                f"the reverse sweep and sympy.diff of the whole expression disagree on d out/d {name} {where} "
                f"(sympy.diff {fmt(ex.autograd)}, sweep {fmt(ex.symbolic)}); please report this"),
                count, examples, f"d out/d {name}", g.var_ids.get(name))
        assert q is not None, kind
        ex = examples[0]
        entries = info.get("entries", 1)
        if entries > 1:
            where += f" ({entries} entries)"
        what = q.label if entries == 1 else "the Hessian" if q.hess is not None else f"d out/d {q.node}"
        label = ex.quantity or q.label
        worst = (f"worst at point {ex.index} ({_point_text(ex.point)})"
                 + (f", {label}" if entries > 1 else "") + f": autograd {fmt(ex.autograd)}, "
                 f"exact {fmt(ex.symbolic)}")
        if ex.abs_err is not None:
            worst += f", error {ex.abs_err:.3g}" + (f" (relative {ex.rel_err:.3g})" if ex.rel_err is not None else "")
            worst += f", tolerance {ex.tol:.3g}" if ex.tol is not None else ""
        if kind == "mismatch":
            cuts = ""
            if self.regions:
                cuts = (" The gradient is cut at " + ", ".join(f"{r.label} ({r.where})" for r in self.regions)
                        + ", but treating the cuts as constants does not explain it either.")
            msg = f"autograd's {what} differs from the exact derivative {where}; {worst}.{cuts}"
        elif kind == "untracked":
            region = info["region"]
            src = f" `{region.source}`" if region.source else ""
            dropped = (f"the gradient d out/d ({region.label}) = {fmt(info.get('dropped'))}" if len(region.nodes) == 1
                       else f"gradients of up to {fmt(info.get('dropped'))} (over its {len(region.nodes)} elements)")
            if entries > 1:
                tail = f"; {worst}; with the cuts treated as constants the exact derivatives match autograd"
            else:
                tail = (f". {label}: {worst}; with the cuts treated as constants the exact value is "
                        f"{fmt(info.get('cut_value'))}, which autograd matches")
            msg = (f"the cut {region.label} ({region.where}){src} changes the gradient {where}: {region.what}, "
                   f"dropping {dropped} that flows into it{tail}. Remove the cut, or keep it only where the value "
                   "is meant to be a constant")
            return finding(kind, "error", region.label, msg, count, examples, q.label, region.nodes[0])
        elif kind == "nonfinite":
            if severity == "info":
                msg = f"{what} is not finite {where}, and autograd agrees ({fmt(ex.autograd)})"
            elif severity == "warning":
                msg = (f"{what} is not finite in autograd {where} although the exact derivative is finite: "
                       f"{info.get('overflow')}; not a bug in the derivative, a limit of the dtype; {worst}")
            else:
                hint = (" (the unselected branch of where() still back-propagates, and 0 * inf is NaN: "
                        "make the unselected branch safe, e.g. where(x > 0, sqrt(where(x > 0, x, 1)), 0))"
                        if any(nd.op == "where" for nd in g.nodes) else "")
                msg = (f"{what}: autograd gives {fmt(ex.autograd)} where the exact derivative is "
                       f"{fmt(ex.symbolic)} {where}{hint}; {worst}")
        elif kind == "stale-graph":
            msg = (f"autograd's {what} differs from the exact derivative {where}, as the stale graph (see the "
                   f"stale-graph finding) makes it: backward differentiates the old value; {worst}")
        elif kind == "range":
            msg = (f"autograd's {what} is off {where} because {info.get('overflow')}: a limit of "
                   f"{self.dtype_name}, not a wrong derivative (float64 gets it right); {worst}")
        else:
            msg = f"{q.label}: {worst}"
        node = "hessian" if q.hess is not None and entries > 1 else q.node
        return finding(kind, severity, node, msg, count, examples, q.label, q.node_id)  # type: ignore[arg-type]

    def _cut_findings(self) -> list[Finding]:
        """Each cut that changed no checked gradient: a harmless cut (info)."""
        keys = {key for _, _, key in self.acc.keys()}
        return [finding("cut", "info", r.label, (
            f"the cut {r.label} ({r.where}){' `' + r.source + '`' if r.source else ''}: {r.what}; "
            "it does not change any checked gradient here"), 1, (), "", r.nodes[0])
            for r in self.regions if r.key not in keys]


def _is_integer(value: object) -> bool:
    return isinstance(value, int) or (isinstance(value, float) and value.is_integer())


def _point_text(point: dict[str, float]) -> str:
    items = list(point.items())
    text = ", ".join(f"{k}={v:.6g}" for k, v in items[:8])
    return text + (f", ... ({len(items)} values)" if len(items) > 8 else "")


def _full(t: Any, n: int) -> torch.Tensor:
    """`t` as a float64 (or bool) tensor of shape (n,), broadcasting scalars."""
    if isinstance(t, bool):
        return torch.full((n,), t, dtype=torch.bool)
    if not isinstance(t, torch.Tensor):
        t = torch.tensor(float(t), dtype=torch.float64)
    if t.dtype != torch.bool and t.dtype != torch.float64:
        t = t.to(torch.float64)
    if t.dim() == 0:
        return t.expand(n)
    return t


class _Progress:
    """A rich progress bar on stderr for long runs; does nothing when not shown."""

    def __init__(self, total: int, show: bool) -> None:
        self._bar = None
        if show:
            from rich.progress import Progress

            self._bar = Progress(transient=True)
            self._bar.start()
            self._task = self._bar.add_task("checking points", total=total)

    def advance(self, n: int) -> None:
        if self._bar is not None:
            self._bar.advance(self._task, n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
