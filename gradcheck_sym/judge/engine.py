"""Stage 5: the checking engine — points in, verdicts out.

The engine compares a *subject*'s autograd with the symbolic reference derived from its
graph (`subject.Subject`: an expression, `expression.ExpressionSubject`, or a traced user
function).  Points are processed in chunks (bounded memory); within a chunk everything is
one vectorised evaluation.  The cheap test (`tolerance.cheap_pass`) runs here on every
(quantity, point); the detailed test (`detailed`) — measured rounding noise, the
high-precision reference, the verdict ladder of `verdict` — only on the points that fail it:
at once for the chunk holding the leading points, and for the chunks after it together
(`deferred`), whose few candidates cost it as much one chunk at a time as all at once.
The words of the report come from `findings` and `report.messages`.

A check runs with autograd on (grad mode enabled, inference mode off) whatever the caller's
thread has set, and restores the caller's modes afterwards; it honours its `Deadline`.
"""

from __future__ import annotations

import math
import sys
from typing import Any

import sympy
import torch

from ..autograd.mode import autograd_on
from ..budget import NO_DEADLINE, Deadline
from ..ops import OPS
from ..ops.quick import any_true
from ..reference.formulas import formulas
from ..report import Report
from ..report.records import Formula, LazyFormulas
from . import tolerance as tl
from .compare import Accumulator, Quantity, example, full
from .chunk import Chunk
from .deferred import Deferred
from .findings import build_finding, cut_findings, sort_findings, tolerance_line
from .points import PointSet
from .progress import Progress
from .programs import References
from .subject import Region, Run, Subject, kink_ancestry

__all__ = ["Checker", "Region", "Run", "Subject", "kink_ancestry", "CHUNK_ELEMENTS"]

# Elements (points x kept tensors) per chunk: at most about 1 GiB of float64 in flight.
CHUNK_ELEMENTS = 2**27
# Chunks aim at this many elements (32 MiB of float64): their arrays stay in the cache and in memory the allocator
# has kept from the last chunk (one chunk of a million points had a third of a small check's time in page faults,
# freshly mapped memory), but hold at least MIN_CHUNK_POINTS points (a large graph's work per chunk) where
# CHUNK_ELEMENTS allows.
CHUNK_TARGET = 2**22
MIN_CHUNK_POINTS = 2**15


class Checker:
    """Checks one subject over a point set and returns a `Report`.

    Args:
        subject: what is checked (see `subject.Subject`).
        points: where.
        dtype: the torch dtype of the autograd side.
        order: 1, or 2 to compare the Hessian too.
        deadline: the check's time budget (none by default).
    """

    def __init__(self, subject: Subject, points: PointSet, dtype: torch.dtype, order: int, *,
                 deadline: Deadline | None = None) -> None:
        self.s = subject
        self.graph = subject.graph
        self.d = subject.derivation
        self.points = points
        self.dtype = dtype
        self.order = order
        self.deadline = deadline or NO_DEADLINE
        self.u = tl.UNIT_ROUNDOFF[dtype]
        self.acc = Accumulator()
        self.quantities = subject.quantities()
        self.regions = subject.regions()
        self._q_by_node = {q.node_id: i for i, q in enumerate(self.quantities)
                           if q.node_id is not None and q.row == 0 and q.hess is None}
        self.refs = References(self.graph, self.d, self.quantities, self.regions, subject.outputs, self.deadline)
        self.checked = 0
        self.first: dict[str, Any] = {"by_node": {q.node_id: q for q in self.quantities
                                                  if q.node_id is not None and q.hess is None and q.row == 0}}
        self._kink_quantity: dict[int, str] = {}
        self._stale = bool(subject.extra_findings())
        self.notes: list[str] = []
        self.deferred = Deferred(len(self.quantities))
        from .detailed import Detailed  # the detailed test reads this checker's state

        self.detailed = Detailed(self)

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).replace("torch.", "")

    # ------------------------------------------------------------ main loop
    def run(self, chunk_size: int | None = None, progress: bool | None = None) -> Report:
        """Check every point; return the report."""
        n_kept = (len(self.graph.nodes) * (3 if self.order == 1 else 5) + len(self.refs.extra)
                  + len(self.d.program.steps) // 4 + 8)
        most = max(256, CHUNK_ELEMENTS // n_kept)
        size = chunk_size or min(most, max(CHUNK_TARGET // n_kept, MIN_CHUNK_POINTS))
        size = max(1, min(size, self.points.n))
        chunks = math.ceil(self.points.n / size)
        show = progress if progress is not None else (chunks > 1 and self.points.n >= 1_000_000 and sys.stderr.isatty())
        bar = Progress(self.points.n, show)
        try:
            with autograd_on():
                done = 0  # (the last chunk counts once its gathered candidates are tested too)
                for start, arrays in self.points.chunks(size):
                    self.deadline.check(f"checking points {start:,} onwards")
                    self._chunk(start, arrays)
                    bar.advance(done)
                    done = len(next(iter(arrays.values()))) if arrays else 1
                self._detail_gathered()
                bar.advance(done)
        finally:
            bar.close()
        return self._report()

    def _chunk(self, start: int, arrays: dict[str, torch.Tensor]) -> None:
        n = len(next(iter(arrays.values()))) if arrays else 1
        xd = {name: a.to(self.dtype) for name, a in arrays.items()}
        x64 = {name: t.to(torch.float64) for name, t in xd.items()}
        sub = min(n, max(0, tl.NODE_POINTS - start))
        run = self.s.autograd(xd, self.order, None, sub)
        ch = Chunk(start, n, x64, xd, run, self.refs.env(x64, self.refs.keep, sub))

        inside: torch.Tensor | None = None
        refs, autos = [], run.outputs()
        for o in range(len(self.s.outputs)):
            r = self.ref(ch, f"out{o}")
            refs.append(r)
            both = torch.isfinite(r).logical_and_(torch.isfinite(autos[o]))
            inside = both if inside is None else inside.logical_and_(both)
        if inside is None:
            inside = torch.ones(n, dtype=torch.bool)
        outside = ~inside
        self._record_outside(ch, outside, refs[0], autos[0])
        forward = getattr(self.s, "check_forward", None)
        if forward:
            diverged = self._diverged(ch, refs, autos, outside, forward)
            if forward in ("trace", "conditioning"):  # the values differ there: gradients are not compared
                outside |= diverged
        kinks = self._kinks(ch)
        candidates = torch.zeros(n, dtype=torch.bool)
        # Intermediate nodes are compared on the first NODE_POINTS points only (see tolerance);
        # the inputs' gradients and the Hessian at every point.
        if forward in ("trace", "conditioning"):
            inside = ~outside
        ch.outside = ~inside
        valid = int(inside.sum())
        valid_sub = int(inside[:sub].sum())
        per_q_bad: list[torch.Tensor | None] = [None] * len(self.quantities)
        leading: list[int] = []
        for i, q in enumerate(self.quantities):
            if not (q.is_input or q.hess is not None):
                leading.append(i)  # intermediate nodes: compared in groups, on the leading points
                continue
            a = run.quantity(q)
            r = self.ref(ch, f"q{i}")
            bad = inside > tl.cheap_pass(a, r, self.u)  # inside and not passing (True > False)
            self.checked += valid
            self._note_bad(ch, i, q, bad, a, r, kinks, per_q_bad, candidates)
        if sub:
            # One cheap test per group of intermediate nodes (x+x+...+x has 45,000 of them), in groups
            # of at most 2**22 values, each quantity a row.
            size = max(1, 2**22 // sub)
            for g in range(0, len(leading), size):
                group = leading[g : g + size]
                a_rows = torch.stack([run.quantity(self.quantities[i])[:sub] for i in group])
                r_rows = torch.stack([self.ref(ch, f"q{i}")[:sub] for i in group])
                bad_rows = inside[:sub].unsqueeze(0) > tl.cheap_pass(a_rows, r_rows, self.u)
                self.checked += valid_sub * len(group)
                flagged = bad_rows.any(dim=1).tolist()
                firsts = (a_rows[:, 0].tolist(), r_rows[:, 0].tolist()) if start == 0 else None
                for k, i in enumerate(group):
                    q = self.quantities[i]
                    if firsts is not None:
                        self.first[q.key] = (firsts[0][k], firsts[1][k])
                    if flagged[k] or self.kinked(q, kinks) is not None:
                        self._note_bad(ch, i, q, bad_rows[k], a_rows[k], r_rows[k], kinks, per_q_bad, candidates,
                                       record_first=False)
        self._second_opinion(ch, outside, kinks, sub)
        if any_true(candidates):
            if sub:  # (intermediate nodes compared here: tested with this chunk's numbers)
                self.detailed.run(ch, candidates, per_q_bad, kinks)
            elif self.deferred.add(start, candidates, x64, xd, per_q_bad, kinks):
                self._detail_gathered()
        if start == 0:
            self.first["point"] = {name: float(t[0]) for name, t in x64.items()}

    def _detail_gathered(self) -> None:
        """The detailed test of the candidates gathered from chunks past the leading points (see `deferred`)."""
        g = self.deferred.take()
        if g is None:
            return
        m = len(g.index)
        ch = Chunk(-1, m, g.x64, g.xd, None, self.refs.env(g.x64, self.refs.keep), torch.zeros(m, dtype=torch.bool),
                   index=g.index)
        self.detailed.run(ch, torch.ones(m, dtype=torch.bool), g.bad, g.kinks)

    def _note_bad(self, ch: Chunk, i: int, q: Quantity, bad: torch.Tensor, a: torch.Tensor, r: torch.Tensor,
                  kinks: dict[int, torch.Tensor], per_q_bad: list[torch.Tensor | None], candidates: torch.Tensor,
                  record_first: bool = True) -> None:
        """Quantity `i` failed the cheap test where `bad` (or sits at a kink): note it for the detailed test.

        `bad` covers every point of the chunk, or the leading points only for an intermediate node.
        """
        n = ch.n
        kinked = self.kinked(q, kinks)
        if kinked is not None:
            bad = bad | (kinked & ~ch.outside)[: len(bad)]
            self._record_kinks(ch, q, kinks, a, r[: len(a)])
        if any_true(bad):
            if len(bad) < n:
                bad = torch.cat([bad, torch.zeros(n - len(bad), dtype=torch.bool)])
            per_q_bad[i] = bad
            candidates |= bad
        if record_first and ch.start == 0:
            self.first[q.key] = (float(a[0]), float(r[0]))

    # ------------------------------------------------------------ reading the reference
    def ref(self, ch: Chunk, name: str) -> torch.Tensor:
        """A reference value at the chunk's points (intermediate nodes': the leading points only)."""
        return full(ch.env[self.refs.syms[name]], ch.n)

    def ref_at(self, ch: Chunk, name: str, idx: torch.Tensor) -> torch.Tensor:
        """A reference value at the points `idx` (0 beyond the leading points, where it is not computed)."""
        r = self.ref(ch, name)
        if len(r) == ch.n:
            return r[idx]
        out = torch.zeros(len(idx), dtype=torch.float64)
        ok = idx < len(r)
        out[ok] = r[idx[ok]]
        return out

    def qindex(self, node_id: int) -> int:
        """Index of the quantity for node `node_id`'s adjoint (primary output), or -1."""
        return self._q_by_node.get(node_id, -1)

    def point(self, ch: Chunk, i: int) -> dict[str, float]:
        return {name: float(t[i]) for name, t in ch.x64.items()}

    # ------------------------------------------------------------ kinks, domain, trace
    def _kinks(self, ch: Chunk) -> dict[int, torch.Tensor]:
        out = {}
        for k in self.refs.kink_nodes:
            node = self.graph.nodes[k]
            args = [self.ref(ch, f"v{a}") for a in node.args]
            mask = full(OPS[node.op].kink(torch, *args), ch.n).bool()  # type: ignore[misc]
            if any_true(mask):
                out[k] = mask
        return out

    def _record_kinks(self, ch: Chunk, q: Quantity, kinks: dict[int, torch.Tensor], a: torch.Tensor,
                      r: torch.Tensor) -> None:
        """One nondifferentiable finding per kink node, with examples from its first affected quantity."""
        for k, mask in kinks.items():
            if k not in q.affected_by or self._kink_quantity.setdefault(k, q.key) != q.key:
                continue
            idx = [i for i in torch.nonzero(mask).flatten().tolist() if i < len(a)]
            for i in idx[:3]:
                ex = example(ch.start + i, self.point(ch, i), float(a[i]), float(r[i]))
                self.acc.add("nondifferentiable", "info", f"kink:%{k}", ex, 0.0, kink=k, quantity=q)
            if len(idx) > 3:
                self.acc.count("nondifferentiable", "info", f"kink:%{k}", len(idx) - 3, kink=k, quantity=q)

    def kinked(self, q: Quantity, kinks: dict[int, torch.Tensor]) -> torch.Tensor | None:
        """Where `q` flows through a kink, or None."""
        mask = None
        for k, m in kinks.items():
            if k in q.affected_by:
                mask = m if mask is None else mask | m
        return mask

    def _record_outside(self, ch: Chunk, outside: torch.Tensor, ref: torch.Tensor, auto: torch.Tensor) -> None:
        if not any_true(outside):
            return
        idx = torch.nonzero(outside).flatten().tolist()
        for i in idx[:3]:
            self.acc.add("outside-domain", "info", "", example(ch.start + i, self.point(ch, i), float(auto[i]),
                                                                float(ref[i])), 0.0)
        if len(idx) > 3:
            self.acc.count("outside-domain", "info", "", len(idx) - 3)

    def _diverged(self, ch: Chunk, refs: list[torch.Tensor], autos: list[torch.Tensor],
                  outside: torch.Tensor, kind: str) -> torch.Tensor:
        """Points where the math does not reproduce the function's value.

        kind "trace": a data-dependent trace (warning; those points are skipped).
        kind "value": the function differs from an `expected` expression (an error).
        kind "conditioning": an expression whose value in the dtype is not the exact one: rounding
            changes it there (info; those points are skipped: the gradients would be of a
            different number).
        """
        bad = torch.zeros(ch.n, dtype=torch.bool)
        factor = tl.CONDITION_RTOL_FACTOR if kind == "conditioning" else tl.TRACE_RTOL_FACTOR
        for r, a in zip(refs, autos):
            # (in place: four passes over a million points fewer than the plain expression)
            loose = r.abs().add_(a.abs()).mul_(factor * math.sqrt(self.u)).add_(torch.finfo(self.dtype).tiny)
            bad |= (r - a).abs_() > loose
        bad &= ~outside
        if not any_true(bad):
            return bad
        for i in torch.nonzero(bad).flatten().tolist():
            ex = example(ch.start + i, self.point(ch, i), float(autos[0][i]), float(refs[0][i]), quantity="out")
            if kind == "trace":
                self.acc.add("trace", "warning", "", ex, 0.0)
            elif kind == "conditioning":
                self.acc.add("ill-conditioned", "info", "", ex, 0.0)
            else:
                self.acc.add("mismatch", "error", "value", ex, ex.abs_err or 0.0, value=True)
        return bad

    # ------------------------------------------------------------ second opinion
    def _second_opinion(self, ch: Chunk, outside: torch.Tensor, kinks: dict[int, torch.Tensor], sub: int) -> None:
        """sympy.diff of the whole expression against the sweep, on the first NODE_POINTS points."""
        if self.refs.whole is None or sub == 0 or self.d.whole is None:
            return
        env = self.refs.whole_env(ch.x64, sub)
        anykink = torch.zeros(sub, dtype=torch.bool)
        for m in kinks.values():
            anykink |= m[:sub]
        for name in self.d.whole:
            qi = self.qindex(self.graph.var_ids[name])
            if qi < 0:
                continue
            r = self.ref(ch, f"q{qi}")[:sub]
            w = full(env[sympy.Symbol(f"extra[w:{name}]", real=True)], sub)
            both = torch.isfinite(r) & torch.isfinite(w) & ~outside[:sub] & ~anykink
            off = both & ((r - w).abs() > 1e-6 * (r.abs() + w.abs()) + 1e-12)
            for i in torch.nonzero(off).flatten().tolist()[:50]:
                # Two formulas in float64 can differ by their rounding, underflow and overflow (x1 =
                # 1e299): a disagreement is reported only if it holds in high precision too.
                if not self.refs.confirm_second_opinion(ch.x64, i, name, qi):
                    continue
                ex = example(ch.start + i, self.point(ch, i), float(w[i]), float(r[i]))
                self.acc.add("second-opinion", "warning", f"whole:{name}", ex, float((r[i] - w[i]).abs()), name=name)

    # ------------------------------------------------------------ the report
    def _report(self) -> Report:
        findings = [build_finding(kind, severity, key, count, examples, info, graph=self.graph,
                                  n_points=self.points.n, dtype_name=self.dtype_name, regions=self.regions)
                    for kind, severity, key, count, examples, info in self.acc.groups()]
        findings += cut_findings(self.regions, {key for _, _, key in self.acc.keys()}) + self.s.extra_findings()
        derivation = "; ".join([self.d.method] + self.s.notes() + self.notes + self.detailed.notes())
        rows = tuple(self.s.rows(self.first, self.points.n))
        # computed when first read (the report keeps the graph and derivation, not this engine's tensors)
        graph, d, names = self.graph, self.d, {r.id: r.expression for r in rows}
        return Report(
            expression=self.s.title,
            variables=self.graph.variables,
            dtype=self.dtype_name,
            order=self.order,
            n_points=self.points.n,
            seed=self.points.seed,
            derivation=derivation,
            tolerance=tolerance_line(self.dtype_name, self.dtype == torch.float64),
            findings=tuple(sort_findings(findings)),
            nodes=rows,
            checked=self.checked,
            high_precision_points=self.refs.mp_points,
            first_point=self.first.get("point", {}),
            edges=tuple(self.s.edges()),
            derivatives=LazyFormulas(lambda: _formulas(graph, d, names)),
        )


def _formulas(graph: Any, d: Any, names: dict[int, str]) -> tuple[Formula, ...]:
    """The exact derivatives as formulas, where small (a teacher shows them beside the numbers)."""
    try:
        found = formulas(graph, d, names)
        return tuple(Formula(of, k, str(e), sympy.latex(e), e) for of, k, e in found)
    except Exception:  # noqa: BLE001 - a presentation extra: the check's verdicts stand without it
        return ()
