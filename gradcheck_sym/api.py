"""The pipeline composed: parse -> derive -> autograd -> compare -> report.

`check` is the public entry point for expressions; `check_graph` takes a graph
built by code.  Points are processed in chunks (bounded memory); within a
chunk everything is one vectorised torch evaluation, with the detailed
(noise-measuring, high-precision) test run only on the points that fail the
cheap one — see `tolerance` for the policy.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import mpmath
import numpy as np
import sympy
import torch

from . import tolerance as tl
from .autograd import DTYPES, AutogradRun, run_autograd
from .compare import Accumulator, Quantity, example, finding, fmt
from .errors import InputError
from .evaluate import MPMATH, TORCH, CompiledProgram, UnevaluableError, compile_program
from .graph import Graph
from .ops import OPS
from .parse import Limits, parse
from .points import PointSet, make_points
from .report import Finding, NodeRow, Report
from .symbolic import Derivation, derive

__all__ = ["check", "check_graph"]

# Elements (points x kept tensors) per chunk: about 1 GiB of float64 in flight.
CHUNK_ELEMENTS = 2**27


def check(
    expression: str,
    *,
    at: Mapping[str, Any] | None = None,
    domain: Mapping[str, Any] | None = None,
    samples: int | None = None,
    seed: int | None = None,
    dtype: str = "float64",
    order: int = 1,
    variables: Sequence[str] | None = None,
    limits: Limits | None = None,
    chunk_size: int | None = None,
    progress: bool | None = None,
) -> Report:
    """Check torch autograd against exact symbolic derivatives for an expression.

    Args:
        expression: Python-syntax math, e.g. ``"sin(x)*exp(y)"``.
        at: variable -> value (or list of values: one point per entry).
        domain: variable -> (low, high) box to sample `samples` points from.
        samples: number of sampled points (default 100 with a domain).
        seed: sampling seed (drawn and recorded when None).
        dtype: "float64" (default), "float32", "float16" or "bfloat16".
        order: 1 for gradients, 2 to check the Hessian by double backward too.
        variables: declare the variables (unused ones get gradient 0).
        limits: size limits for parsing and points.
        chunk_size: points per vectorised chunk (default: by memory).
        progress: show a progress bar (default: on a terminal, for long runs).

    Returns:
        A `Report`; ``report.ok`` is False when an error finding exists.

    Raises:
        GradcheckSymError: bad expression or input (a `ParseError`, `LimitError`, `InputError`, ...).

    Example:
        >>> check("sin(x)*exp(y)", at={"x": 0.7, "y": 1.3}).ok
        True
    """
    names = set(at or {}) | set(domain or {})
    graph = parse(expression, variables=variables, as_variables=names, limits=limits)
    return check_graph(
        graph, at=at, domain=domain, samples=samples, seed=seed, dtype=dtype, order=order,
        limits=limits, chunk_size=chunk_size, progress=progress,
    )


def _options(dtype: str, order: int) -> torch.dtype:
    if dtype not in DTYPES:
        raise InputError(f"unknown dtype {dtype!r}: use one of " + ", ".join(DTYPES))
    if order not in (1, 2) or isinstance(order, bool):
        raise InputError(f"order must be 1 or 2, not {order!r}")
    return DTYPES[dtype]


def check_graph(
    graph: Graph,
    *,
    at: Mapping[str, Any] | None = None,
    domain: Mapping[str, Any] | None = None,
    samples: int | None = None,
    seed: int | None = None,
    dtype: str = "float64",
    order: int = 1,
    limits: Limits | None = None,
    chunk_size: int | None = None,
    progress: bool | None = None,
) -> Report:
    """`check` for a `Graph` built by `parse` or by code. Same arguments and result."""
    torch_dtype = _options(dtype, order)
    limits = limits or Limits()
    if not graph.variables and (at or domain):
        raise InputError("the expression has no variables: give no at/domain values")
    points = make_points(graph.variables, at=at, domain=domain, samples=samples, seed=seed, max_points=limits.max_points)
    derivation = derive(graph, order=order)
    run = _Checker(graph, derivation, points, torch_dtype, order)
    return run.run(chunk_size, progress)


@dataclass
class _Chunk:
    """One chunk's numbers, shared by the cheap and the detailed test."""

    start: int
    n: int
    x64: dict[str, torch.Tensor]  # the points as rounded to the dtype, in float64
    xd: dict[str, torch.Tensor]  # the same in the dtype
    autograd: AutogradRun
    env: dict[sympy.Symbol, Any]


class _Checker:
    def __init__(self, graph: Graph, derivation: Derivation, points: PointSet, dtype: torch.dtype, order: int) -> None:
        self.graph = graph
        self.d = derivation
        self.points = points
        self.dtype = dtype
        self.order = order
        self.u = tl.UNIT_ROUNDOFF[dtype]
        self.acc = Accumulator()
        self.quantities = self._quantities()
        extra: dict[str, sympy.Expr] = {}
        for i, q in enumerate(self.quantities):
            extra[f"q{i}"] = q.ref
            if q.cut_ref is not None:
                extra[f"c{i}"] = q.cut_ref
        for node in graph.nodes:  # the gradient each cut drops: its own full-math adjoint
            if node.cut in ("detach", "no_grad"):
                extra[f"a{node.id}"] = derivation.adjoints.get(node.id, sympy.S.Zero)
        out_value = derivation.values[graph.output]
        extra["value"] = out_value
        self.whole_keys: dict[str, str] = {}
        if derivation.whole is not None:
            for name, expr in derivation.whole.items():
                self.whole_keys[name] = f"w:{name}"
                extra[f"w:{name}"] = expr
        self.extra_syms = {name: sympy.Symbol(f"extra[{name}]", real=True) for name in extra}
        self.compiled = compile_program(derivation.program, TORCH, extra)
        self._extra = extra
        self._mp: CompiledProgram | None = None
        self.mp_points = 0
        self.mp_budget = tl.MP_BUDGET
        self.checked = 0
        self.first: dict[str, Any] = {}
        self.kink_nodes = [
            n.id for n in graph.nodes if OPS.get(n.op) is not None and OPS[n.op].kink is not None
            and graph.depends_on_vars[n.id] and graph.reaches_output[n.id]
        ]
        self.cut_nodes = [n.id for n in graph.nodes if n.op in ("detach", "no_grad") and graph.depends_on_vars[n.args[0]]]
        self._kink_quantity: dict[int, str] = {}
        self._q_by_node = {q.node_id: i for i, q in enumerate(self.quantities) if q.node_id is not None}
        self.approx = {
            n.id: OPS[n.op].approx_rtol for n in graph.nodes if n.op in OPS and OPS[n.op].approx_rtol > 0
        }

    # ------------------------------------------------------------ setup
    def _quantities(self) -> list[Quantity]:
        g, d = self.graph, self.d
        qs: list[Quantity] = []
        kink_map = self._kink_ancestry()
        for node in g.nodes:
            k = node.id
            # Cut nodes, nodes inside no_grad and nodes fed only through cuts have no .grad
            # in torch by design; what the cuts drop is judged upstream (see _cut_findings).
            if k not in d.adjoints or not g.tracked[k]:
                continue
            text = node.name if node.op == "var" else g.label(k)
            label = f"d out/d {text}" if node.op == "var" else f"d out/d ({text})"
            cut = d.cut_adjoints.get(k) if d.cut_adjoints is not None else None
            affected = frozenset(c for c, anc in kink_map.items() if k in anc)
            qs.append(Quantity(f"grad:%{k}", label, str(text), k, d.adjoints[k], cut, affected))
        if d.hessian is not None:
            all_kinks = frozenset(kink_map)
            for i, xi in enumerate(g.variables):
                for j, xj in enumerate(g.variables):
                    qs.append(Quantity(f"hess:{xi},{xj}", f"d2 out/d{xi} d{xj}", f"{xi}, {xj}", None,
                                       d.hessian[i][j], None, all_kinks, hess=(i, j)))
        return qs

    def _kink_ancestry(self) -> dict[int, set[int]]:
        """Kink node -> the nodes whose adjoints flow through it (where's branches for comparisons)."""
        g = self.graph
        out: dict[int, set[int]] = {}
        for n in g.nodes:
            op = OPS.get(n.op)
            if op is None or op.kink is None or not g.depends_on_vars[n.id]:
                continue
            # A kink leaves the node's own adjoint alone and makes its arguments' undefined
            # (for a comparison: the branches of the where() that uses it).
            if op.kind == "compare":
                users = [u for u in g.consumers[n.id] if g.nodes[u].op == "where"]
                anc: set[int] = set()
                for u in users:
                    anc |= g.ancestors(u) - {u}
                out[n.id] = anc
            else:
                out[n.id] = g.ancestors(n.id) - {n.id}
        return out

    # ------------------------------------------------------------ main loop
    def run(self, chunk_size: int | None, progress: bool | None) -> Report:
        n_kept = len(self.graph.nodes) * (3 if self.order == 1 else 5) + len(self._extra) + len(self.d.program.steps) // 4 + 8
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

    def _chunk(self, start: int, arrays: dict[str, np.ndarray]) -> None:
        g = self.graph
        n = len(next(iter(arrays.values()))) if arrays else 1
        xd = {name: torch.tensor(np.asarray(a), dtype=torch.float64).to(self.dtype) for name, a in arrays.items()}
        x64 = {name: t.to(torch.float64) for name, t in xd.items()}
        run = run_autograd(g, xd, order=self.order)
        env = {sympy.Symbol(name, real=True): x64[name] for name in x64}
        env = self.compiled.run(env, keep=set(self.extra_syms.values()))
        ch = _Chunk(start, n, x64, xd, run, env)

        out_ref = self._ref(ch, "value")
        out_auto = _full(run.values[g.output], n)
        outside = ~torch.isfinite(out_ref) | ~torch.isfinite(out_auto)
        self._record_outside(ch, outside, out_ref, out_auto)
        kinks = self._kinks(ch)
        candidates = torch.zeros(n, dtype=torch.bool)
        per_q_bad: list[torch.Tensor | None] = []
        for i, q in enumerate(self.quantities):
            a = self._auto(ch, q)
            r = self._ref(ch, f"q{i}")
            bad = ~tl.cheap_pass(a, r, self.u) & ~outside
            kinked = self._kinked(q, kinks)
            if kinked is not None:
                bad = bad | (kinked & ~outside)
                self._record_kinks(ch, q, kinks, a, r)
            per_q_bad.append(bad if bool(bad.any()) else None)
            if per_q_bad[-1] is not None:
                candidates |= bad
            self.checked += int((~outside).sum())
            if start == 0:
                self.first[q.key] = (float(a[0]), float(r[0]))
        self._second_opinion(ch, outside, kinks)
        if bool(candidates.any()):
            self._detailed(ch, candidates, per_q_bad, kinks)
        if start == 0:
            self.first["values"] = {k: float(_full(v.detach(), n)[0]) if v.dtype != torch.bool else None
                                   for k, v in run.values.items()}
            self.first["meta"] = run.meta
            self.first["point"] = {name: float(t[0]) for name, t in x64.items()}

    def _ref(self, ch: _Chunk, name: str) -> torch.Tensor:
        v = ch.env[self.extra_syms[name]]
        return _full(v, ch.n)

    def _auto(self, ch: _Chunk, q: Quantity, run: AutogradRun | None = None, n: int | None = None) -> torch.Tensor:
        run = run or ch.autograd
        n = n if n is not None else ch.n
        if q.node_id is not None:
            gr = run.grads.get(q.node_id)
            if gr is None:
                return torch.zeros(n, dtype=torch.float64)
            return _full(gr.to(torch.float64), n)
        assert run.hessian is not None and q.hess is not None
        i, j = q.hess
        return _full(run.hessian[i][j].to(torch.float64), n)

    def _kinks(self, ch: _Chunk) -> dict[int, torch.Tensor]:
        out = {}
        for k in self.kink_nodes:
            node = self.graph.nodes[k]
            args = [ch.autograd.values[a].detach() for a in node.args]
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
            idx = torch.nonzero(mask).flatten().tolist()
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

    # ------------------------------------------------------------ outside the domain
    def _record_outside(self, ch: _Chunk, outside: torch.Tensor, ref: torch.Tensor, auto: torch.Tensor) -> None:
        idx = torch.nonzero(outside).flatten().tolist()
        for i in idx[:3]:
            r, a = float(ref[i]), float(auto[i].detach())
            self.acc.add("outside-domain", "info", "", example(ch.start + i, self._point(ch, i), a, r), 0.0)
        if len(idx) > 3:
            self.acc.count("outside-domain", "info", "", len(idx) - 3)

    # ------------------------------------------------------------ the detailed test
    def _detailed(self, ch: _Chunk, candidates: torch.Tensor, per_q_bad: list[torch.Tensor | None],
                  kinks: dict[int, torch.Tensor]) -> None:
        g = self.graph
        idx = torch.nonzero(candidates).flatten()
        m = len(idx)
        sub_xd = {name: t[idx] for name, t in ch.xd.items()}
        base = run_autograd(g, sub_xd, order=self.order)
        # Integer constants are exact in every dtype (and perturbing the 2 of x**2 would make
        # x**2 NaN for negative x); other constants are rounded like any value.
        perturbable = [n.id for n in g.nodes if (n.op == "const" and not _is_integer(n.value)) or (
            n.op in OPS and OPS[n.op].kind != "compare")]
        trials = []
        for t in range(tl.NOISE_TRIALS):
            factors = tl.noise_factors(perturbable, m, self.u, self.approx, self.dtype, t)
            trials.append(run_autograd(g, sub_xd, order=self.order, perturb=factors))
        hp = self._high_precision(ch, idx)
        a64run = None
        if self.dtype != torch.float64:
            a64run = run_autograd(g, {k: v.to(torch.float64) for k, v in sub_xd.items()}, order=self.order)
        pos = {int(p): j for j, p in enumerate(idx.tolist())}
        for qi, q in enumerate(self.quantities):
            bad = per_q_bad[qi]
            if bad is None:
                continue
            a_all = self._auto(ch, q, base, m)
            noise = torch.zeros(m, dtype=torch.float64)
            for tr in trials:
                noise = torch.maximum(noise, (self._auto(ch, q, tr, m) - a_all).abs())
            # A NaN in a perturbed run means one ulp of rounding can change the result
            # arbitrarily (e.g. sqrt near 0): the noise there is unbounded.
            noise = torch.nan_to_num(noise, nan=math.inf)
            r64 = self._ref(ch, f"q{qi}")[idx]
            r = hp[qi] if hp is not None else r64
            ref_is_64 = hp is None and self.dtype == torch.float64
            tol = tl.tolerance(noise, r, self.u, ref_is_64, torch.finfo(self.dtype).tiny)
            if q.hess is not None:  # a Hessian entry: see tolerance.HESSIAN_ULPS
                scale = sum(self._ref(ch, f"q{self._qindex(g.var_ids[g.variables[v]])}")[idx].abs() for v in q.hess)
                tol = tol + tl.HESSIAN_ULPS * self.u * (scale + r.abs())
            kinked = self._kinked(q, kinks)
            cut = self._ref(ch, f"c{qi}")[idx] if q.cut_ref is not None else None
            for i in torch.nonzero(bad).flatten().tolist():
                j = pos[i]
                self._classify(ch, q, i, _Numbers(
                    float(a_all[j]), float(r[j]), float(tol[j]), float(noise[j]),
                    None if a64run is None else (a64run, j), None if cut is None else float(cut[j]),
                    ref_is_64, hp is not None), kinked is not None and bool(kinked[i]), kinks)

    def _high_precision(self, ch: _Chunk, idx: torch.Tensor) -> list[torch.Tensor] | None:
        """The reference at the candidate points in mpmath (float64 checks, within the budget)."""
        if self.dtype != torch.float64:
            return None
        steps = len(self.compiled.steps)
        if self.mp_budget < steps * len(idx):
            return None
        if self._mp is None:
            try:
                self._mp = compile_program(self.d.program, MPMATH, self._extra)
            except UnevaluableError:
                self.mp_budget = 0
                return None
        self.mp_budget -= steps * len(idx)
        names = list(ch.x64)
        cols: list[list[float]] = [[] for _ in self.quantities]
        with mpmath.workdps(tl.MP_DPS):
            for p in idx.tolist():
                env = {sympy.Symbol(name, real=True): mpmath.mpf(float(ch.x64[name][p])) for name in names}
                env = self._mp.run(env, keep=set(self.extra_syms.values()))
                for qi in range(len(self.quantities)):
                    v = env[self.extra_syms[f"q{qi}"]]
                    cols[qi].append(float(v) if not isinstance(v, bool) else float(v))
        self.mp_points += len(idx)
        return [torch.tensor(c, dtype=torch.float64) for c in cols]

    def _classify(self, ch: _Chunk, q: Quantity, i: int, num: _Numbers, kinked: bool,
                  kinks: dict[int, torch.Tensor]) -> None:
        """The verdict for quantity `q` at point `i` of the chunk (which failed the cheap test)."""
        a, r, tol, noise, cut = num.a, num.r, num.tol, num.noise, num.cut
        ref_is_64, hp = num.ref_is_64, num.hp
        point = self._point(ch, i)
        index = ch.start + i
        ref_words = f"reference in {tl.MP_DPS}-digit arithmetic" if hp else (
            "reference in float64" + (" (high-precision budget spent: tolerance doubled)" if ref_is_64 else ""))
        why = (f"tol = {tl.NOISE_SAFETY:g} x rounding noise {noise:.2g} measured by {tl.NOISE_TRIALS} perturbed re-runs"
               f" + {tl.FLOOR_ULPS:g} ulp; {ref_words}")
        fa, fr = math.isfinite(a), math.isfinite(r)
        diff = abs(a - r) if fa and fr else math.inf
        score = diff / tol if tol > 0 else (0.0 if diff == 0 else math.inf)
        ex = example(index, point, a, r, tol, why)
        counts = q.counts
        if kinked:  # the finding is recorded per kink node by _record_kinks
            counts["kink"] = counts.get("kink", 0) + 1
            return
        if not (fa and fr):
            ex = example(index, point, a, r, None, ref_words)
            same = (a != a and r != r) or (not fa and not fr and a == r)
            if same:
                self.acc.add("nonfinite", "info", q.key, ex, 0.0, quantity=q)
                counts["nonfinite (agree)"] = counts.get("nonfinite (agree)", 0) + 1
                return
            overflow = self._range_issue(ch, i, num.run64) if fr else None
            if overflow is not None:
                self.acc.add("nonfinite", "warning", q.key, ex, score, quantity=q, overflow=overflow)
                counts["overflow"] = counts.get("overflow", 0) + 1
                return
            self.acc.add("nonfinite", "error", q.key, ex, score, quantity=q)
            counts["nonfinite"] = counts.get("nonfinite", 0) + 1
            return
        if diff <= tol:
            return
        if cut is not None and math.isfinite(cut) and abs(a - cut) <= 2 * tol + tl.FLOOR_ULPS * self.u * abs(cut):
            counts["untracked"] = counts.get("untracked", 0) + 1
            if self.graph.nodes[q.node_id].op != "var":  # type: ignore[index]
                return  # intermediate nodes: counted in the table; the finding is per cut
            for c in self.cut_nodes:
                dropped = float(self._ref(ch, f"a{c}")[i])
                if dropped != 0:
                    self.acc.add("untracked", "error", f"cut:%{c}", ex, score, quantity=q, cut=c,
                                 cut_value=cut, dropped=dropped)
            return
        overflow = self._range_issue(ch, i, num.run64)
        if overflow is not None:
            self.acc.add("range", "warning", q.key, ex, score, quantity=q, overflow=overflow)
            counts["range"] = counts.get("range", 0) + 1
            return
        self.acc.add("mismatch", "error", q.key, ex, score, quantity=q)
        counts["mismatch"] = counts.get("mismatch", 0) + 1

    def _range_issue(self, ch: _Chunk, i: int, run64: tuple[AutogradRun, int] | None) -> str | None:
        """Why the dtype cannot represent the computation at point `i`, or None.

        Narrow dtypes: some value or gradient of the float64 re-run lies outside the dtype's
        normal range (overflows to inf or underflows to 0).  Any dtype: a node's value became
        inf from finite, non-zero arguments (overflow, e.g. exp(909); 1/0 is a pole, not this).
        """
        g = self.graph
        if run64 is not None:
            run, j = run64
            info = torch.finfo(self.dtype)
            for node in g.nodes:
                if not g.tracked[node.id]:
                    continue
                # a variable's value is exact in the dtype; its gradient may still overflow
                pairs = [("gradient", run.grads.get(node.id))]
                if node.op != "var":
                    pairs.insert(0, ("value", run.values[node.id]))
                for what, t in pairs:
                    if t is None or t.dtype == torch.bool:
                        continue
                    v = abs(float(_full(t.detach(), j + 1)[j]))
                    if math.isfinite(v) and (v > info.max or 0 < v < info.tiny):
                        return f"the {what} of {g.label(node.id)} ({v:.3g}) is outside the range of {self.dtype_name}"
        vals = ch.autograd.values
        for node in g.nodes:
            if node.op in ("var", "const") or not g.tracked[node.id]:
                continue
            v = vals[node.id]
            if v.dtype == torch.bool or not bool(torch.isinf(_full(v.detach(), ch.n)[i])):
                continue
            args = [float(_full(vals[a].detach().to(torch.float64), ch.n)[i]) for a in node.args]
            if all(math.isfinite(x) and x != 0 for x in args):
                return f"{g.label(node.id)} overflows {self.dtype_name}"
        return None

    def _qindex(self, node_id: int) -> int:
        """Index of the quantity for node `node_id`'s adjoint, or -1."""
        return self._q_by_node.get(node_id, -1)

    # ------------------------------------------------------------ second opinion
    def _second_opinion(self, ch: _Chunk, outside: torch.Tensor, kinks: dict[int, torch.Tensor]) -> None:
        if not self.whole_keys:
            return
        anykink = torch.zeros(ch.n, dtype=torch.bool)
        for m in kinks.values():
            anykink |= m
        for name, key in self.whole_keys.items():
            qi = self._qindex(self.graph.var_ids[name])
            if qi < 0:
                continue
            r = self._ref(ch, f"q{qi}")
            w = self._ref(ch, key)
            both = torch.isfinite(r) & torch.isfinite(w) & ~outside & ~anykink
            off = both & ((r - w).abs() > 1e-6 * (r.abs() + w.abs()) + 1e-12)
            for i in torch.nonzero(off).flatten().tolist()[:50]:
                ex = example(ch.start + i, self._point(ch, i), float(w[i]), float(r[i]))
                self.acc.add("second-opinion", "warning", f"whole:{name}", ex, float((r[i] - w[i]).abs()), name=name)

    # ------------------------------------------------------------ the report
    def _report(self) -> Report:
        g = self.graph
        findings: list[Finding] = []
        for kind, severity, key, count, examples, info in self.acc.groups():
            findings.append(self._finding(kind, severity, key, count, examples, info))
        findings += self._cut_findings()
        order = {"error": 0, "warning": 1, "info": 2}
        findings.sort(key=lambda f: (order[f.severity], f.kind, f.node_id if f.node_id is not None else -1))
        rows = self._rows()
        tol_line = (
            f"{self.dtype_name}: cheap test |a - r| <= {tl.CHEAP_ULPS:g} ulp, then measured rounding noise "
            f"x {tl.NOISE_SAFETY:g} (+{tl.FLOOR_ULPS:g} ulp) against the exact derivative"
            + (f" ({tl.MP_DPS} digits)" if self.dtype == torch.float64 else " (float64)")
        )
        return Report(
            expression=g.source or str(g),
            variables=g.variables,
            dtype=self.dtype_name,
            order=self.order,
            n_points=self.points.n,
            seed=self.points.seed,
            derivation=self.d.method,
            tolerance=tol_line,
            findings=tuple(findings),
            nodes=tuple(rows),
            checked=self.checked,
            high_precision_points=self.mp_points,
            first_point=self.first.get("point", {}),
        )

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).replace("torch.", "")

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
        worst = (f"worst at point {ex.index} ({_point_text(ex.point)}): autograd {fmt(ex.autograd)}, "
                 f"exact {fmt(ex.symbolic)}")
        if ex.abs_err is not None:
            worst += f", error {ex.abs_err:.3g}" + (f" (relative {ex.rel_err:.3g})" if ex.rel_err is not None else "")
            worst += f", tolerance {ex.tol:.3g}" if ex.tol is not None else ""
        if kind == "mismatch":
            cuts = " The expression has gradient cuts (detach/no_grad), but they do not explain it." if self.cut_nodes else ""
            msg = f"autograd's {q.label} differs from the exact derivative {where}; {worst}.{cuts}"
        elif kind == "untracked":
            c = info["cut"]
            node = g.nodes[c]
            text = g.label(c)
            what = ("detach(...) makes autograd treat its value as a constant" if node.op == "detach" else
                    "no_grad(...) evaluates its argument under torch.no_grad(), so autograd never sees it")
            col = f"column {node.span[1] + 1}" if node.span else "?"
            msg = (f"the cut {text} ({col}) changes the gradient {where}: {what}, dropping the gradient "
                   f"d out/d ({text}) = {fmt(info.get('dropped'))} that flows into it. {q.label}: {worst}; "
                   f"with the cuts treated as constants the exact value is {fmt(info.get('cut_value'))}, which "
                   "autograd matches. Remove the cut, or keep it only where the value is meant to be a constant")
            return finding(kind, "error", text, msg, count, examples, q.label, c)
        elif kind == "nonfinite":
            if severity == "info":
                msg = f"{q.label} is not finite {where}, and autograd agrees ({fmt(ex.autograd)})"
            elif severity == "warning":
                cause = info.get("overflow")
                msg = (f"{q.label} is not finite in autograd {where} although the exact derivative is finite: "
                       f"{cause}; not a bug in the derivative, a limit of the dtype; {worst}")
            else:
                hint = (" (the unselected branch of where() still back-propagates, and 0 * inf is NaN: "
                        "make the unselected branch safe, e.g. where(x > 0, sqrt(where(x > 0, x, 1)), 0))"
                        if any(n.op == "where" for n in g.nodes) else "")
                msg = (f"{q.label}: autograd gives {fmt(ex.autograd)} where the exact derivative is "
                       f"{fmt(ex.symbolic)} {where}{hint}; {worst}")
        elif kind == "range":
            msg = (f"autograd's {q.label} is off {where} because {info.get('overflow')}: a limit of "
                   f"{self.dtype_name}, not a wrong derivative (float64 gets it right); {worst}")
        else:
            msg = f"{q.label}: {worst}"
        return finding(kind, severity, q.node, msg, count, examples, q.label, q.node_id)  # type: ignore[arg-type]

    def _cut_findings(self) -> list[Finding]:
        """One finding per gradient cut: which one matters (error) or that it is harmless (info)."""
        out = []
        for c in self.cut_nodes:
            text = self.graph.label(c)
            node = self.graph.nodes[c]
            what = "detach(...) treats its value as a constant" if node.op == "detach" else \
                "no_grad(...) evaluates its argument under torch.no_grad()"
            if ("untracked", "error", f"cut:%{c}") not in self.acc.keys():
                out.append(finding("cut", "info", text, (
                    f"the cut {text}: {what}; it does not change any checked gradient here"), 1, (), "", c))
        return out

    def _rows(self) -> list[NodeRow]:
        g = self.graph
        rows = []
        values = self.first.get("values", {})
        meta = self.first.get("meta", {})
        byid = {q.node_id: q for q in self.quantities if q.node_id is not None}
        for node in g.nodes:
            k = node.id
            if node.op == "const" or (node.op in OPS and OPS[node.op].kind == "compare"):
                continue
            q = byid.get(k)
            a, r = self.first.get(q.key, (None, None)) if q else (None, None)
            status = "ok"
            if q is None:
                status = "constant"
            elif q.counts:
                status = ", ".join(f"{name} at {c}/{self.points.n}" for name, c in q.counts.items())
            if node.region is not None or node.op in ("detach", "no_grad"):
                status += " (cut)" if node.op in ("detach", "no_grad") else " (in no_grad)"
            md = meta.get(k)
            rows.append(NodeRow(
                id=k, expression=g.label(k), op=node.op,
                grad_fn=md.grad_fn if md else None, is_leaf=md.is_leaf if md else True,
                requires_grad=md.requires_grad if md else False, retains_grad=md.retains_grad if md else False,
                cut=node.cut, value=values.get(k), autograd_grad=a if (md and md.requires_grad) else None,
                symbolic_grad=r, status=status,
            ))
        return rows


@dataclass(frozen=True)
class _Numbers:
    """The numbers behind one verdict."""

    a: float  # autograd
    r: float  # reference (high precision where available)
    tol: float
    noise: float
    run64: tuple[AutogradRun, int] | None  # autograd re-run in float64 and this point's index (narrow dtypes)
    cut: float | None  # reference with cuts as constants
    ref_is_64: bool
    hp: bool


def _is_integer(value: object) -> bool:
    return isinstance(value, int) or (isinstance(value, float) and value.is_integer())


def _point_text(point: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.6g}" for k, v in point.items())


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
