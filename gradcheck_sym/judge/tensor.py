"""The judge for traced functions: autograd's gradients against the tensor reference, element by element.

At each point the user's function runs once under the tracer (`autograd.user`):
the program gives the reference, the outputs give autograd.  What is compared:

* **rows**: the gradient of a scalar output; for tensor outputs the full Jacobian
  (one reverse sweep per output element) up to `JAC_ROWS` elements, else
  `PROJECTIONS` seeded random projections ``vᵀJ`` (the report says which);
* **Hessian** (order 2): Hessian-vector products of each row's objective — every
  basis direction up to `HESS_FULL` input elements (the whole Hessian), else
  `HESS_DIRECTIONS` seeded random directions — by sweeping the recorded sweep.

Each element passes the cheap test (``|a - r| <= 128 u |r|``) or gets the bound:
``tol = SAFETY (E + E64) + FLOOR (u |r| + tiny) + NORMWISE u max|r|``, ``E`` the rounding error bound of
the whole forward and backward computation in the user's dtype (each primitive's
error rule, over the program and its recorded sweep), ``E64`` the reference's own in
float64.  What fails is classified: the cuts explain it (`untracked`), a kink the
user's run sat on (`nondifferentiable`), a stale graph, non-finite values, or a
`mismatch`.  Gradients that flow through something the tracer could not model are
`not-verified`, never compared and never OK by default.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from ..autograd.user import TracedRun, hvp, vjp
from ..ir.program import Var
from ..reference.interpret import UNIT_ROUNDOFF, AbsEager, Traced, error_bounds, record_sweep, sweep
from .tensor_findings import Accumulator, element_name, output_names

__all__ = ["FunctionJudge", "JAC_ROWS", "PROJECTIONS", "HESS_FULL", "HESS_DIRECTIONS"]

F64 = torch.float64
JAC_ROWS = 64
PROJECTIONS = 3
HESS_FULL = 32
HESS_DIRECTIONS = 3
CHEAP_ULPS = 128.0
SAFETY = 8.0
FLOOR_ULPS = 4.0
# A normwise floor, in ulps of the largest element of the compared vector (one row's gradient or one
# Hessian-vector product, over all inputs).  Our bound E is componentwise for the formula we record;
# torch's backward may evaluate the same derivative by another formula (a dense product where ours keeps
# a structural zero, reflectors peeled off with their inverses), which BLAS and LAPACK bound only
# normwise: an element that is 0 in exact arithmetic comes back as rounding noise of the vector's scale.
NORMWISE_ULPS = 32.0
PROJECTION_SEED = 20_261_126


@dataclass
class Row:
    """One seed over the outputs: a Jacobian row, or a random projection."""

    label: str  # what is differentiated, e.g. "out[2]" or "v1·out"
    seeds: list[torch.Tensor]  # per output tensor, float64, the output's shape


def plan_rows(shapes: Sequence[tuple[int, ...]]) -> tuple[list[Row], str]:
    """The rows compared, and how they were chosen (for the report)."""
    sizes = [math.prod(s) for s in shapes]
    total = sum(sizes)
    names = output_names(shapes)
    if total <= JAC_ROWS:
        rows = []
        k = 0
        for o, shape in enumerate(shapes):
            for i in range(sizes[o]):
                seeds = [torch.zeros(s, dtype=F64) for s in shapes]
                seeds[o].view(-1)[i] = 1.0
                rows.append(Row(names[k], seeds))
                k += 1
        how = "the gradient" if total == 1 else f"the full Jacobian ({total} output elements, one sweep each)"
        return rows, how
    gen = torch.Generator().manual_seed(PROJECTION_SEED)
    rows = [Row(f"v{p + 1}·out", [torch.randn(s, dtype=F64, generator=gen) for s in shapes])
            for p in range(PROJECTIONS)]
    return rows, (f"{PROJECTIONS} random projections vᵀJ of the Jacobian ({total} output elements; seeded "
                  f"normal v)")


@dataclass
class _RowResult:
    ref: dict[int, Any]  # input var id -> full-math cotangent
    cut: dict[int, Any] | None
    tainted: set[int]
    blocked: list[tuple[int, str]]
    cts: dict[int, Any] = field(default_factory=dict)


class FunctionJudge:
    """Compares one traced function at each point given to `point`; `findings()` at the end."""

    def __init__(self, names: Sequence[str], dtype: torch.dtype, order: int, *, rtol: float | None = None,
                 atol: float | None = None, expected: bool = False) -> None:
        self.names = list(names)
        self.dtype = dtype
        self.order = order
        self.u = UNIT_ROUNDOFF[str(dtype).replace("torch.", "")]
        self.tiny = torch.finfo(dtype).tiny
        self.rtol, self.atol = rtol, atol
        self.expected = expected  # the math is an expression: a value that differs is an error
        self.acc = Accumulator()
        self.checked = 0
        self.not_verified = 0
        self.points = 0
        self.how = ""
        self.hess_how = ""
        self.first: dict[str, Any] = {}
        self.cut_sites: dict[tuple[str, int], dict[str, Any]] = {}
        self.custom: list[str] = []
        self.empty = False  # some point had no elements to compare at all

    # ------------------------------------------------------------ one point
    def point(self, index: int, run: TracedRun) -> None:
        self.points += 1
        prog, env = run.program, run.env
        tr = run.tracer
        for name in tr.custom:
            if name not in self.custom:
                self.custom.append(name)
        self._notes(index, run)
        if not self._values_hold(index, run):
            return
        rows, self.how = plan_rows(run.shapes)
        if not rows or all(leaf.numel() == 0 for leaf in run.leaves):
            self.empty = True
            return
        has_cuts = bool(tr.cuts)
        for r, row in enumerate(rows):
            seeds = {v.id: s for v, s in zip(prog.outputs, row.seeds) if isinstance(v, Var)}
            res = sweep(prog, env, seeds)
            cut = sweep(prog, env, seeds, cut=True).cts if has_cuts else None
            auto = vjp(run, row.seeds)
            self._cuts_dropped(run, res.cts)
            self._compare(index, run, row.label, r, auto, res.cts, cut, res.tainted, res.blocked, seeds, hess=None)
            if index == 0 and r == 0:
                self.first["auto"] = [a.detach().to(F64) for a in auto]
                self.first["ref"] = [res.cts.get(v.id) for v in prog.inputs]
        if self.order >= 2:
            self._hessian(index, run, rows)

    def _values_hold(self, index: int, run: TracedRun) -> bool:
        """The program must reproduce the function's values; else (or outside the domain) skip the point."""
        prog, env, errs = run.program, run.env, run.tracer.rec.errs or {}
        for k, (t, v) in enumerate(zip(run.outputs, prog.outputs)):
            user = t.detach().to(F64)
            ref = env[v.id] if isinstance(v, Var) else user
            if not bool(torch.isfinite(user).all()) or not bool(torch.isfinite(ref).all()):
                self.acc.point("outside-domain", "info", "", index, self._point(run, index))
                return False
            e = errs.get(v.id) if isinstance(v, Var) else None
            tol = SAFETY * (e if e is not None else 0) + 64 * self.u * ref.abs() + FLOOR_ULPS * self.tiny
            bad = (user - ref).abs() > tol
            if bool(bad.any()):
                i = int(torch.argmax(((user - ref).abs() - tol).reshape(-1)))
                a, r = float(user.reshape(-1)[i]), float(ref.reshape(-1)[i])
                if self.expected:
                    self.acc.element("value", "error", "value", index, self._point(run, index),
                                     f"{output_names(run.shapes)[i] if len(run.shapes) == 1 else 'out'}", a, r,
                                     float(tol.reshape(-1)[i]), entries_key=str(i))
                else:
                    self.acc.point("trace", "warning", "", index, self._point(run, index), autograd=a, symbolic=r)
                return False
        return True

    def _notes(self, index: int, run: TracedRun) -> None:
        for note in run.tracer.notes:
            site = run.tracer.sites[note.site]
            if note.kind == "stale-graph":
                self.acc.note("stale-graph", "error", f"{site.where}", index, note.text, site)
            elif note.kind == "leak":
                self.acc.note("leak", "info", f"{site.where}", index, note.text, site)

    # ------------------------------------------------------------ results
    def findings(self) -> list[Any]:
        """Every finding, errors first; nothing compared is never OK."""
        from ..report.records import Finding

        out = self.acc.findings(self.points, str(self.dtype).replace("torch.", ""))
        if self.checked == 0 and self.empty:
            out.append(Finding("empty", "info", "", "the inputs or the outputs have no elements: there is no "
                               "gradient to compare", self.points))
        elif self.checked == 0:
            out = [Finding(f.kind, "error", f.node, f.message, f.count, f.examples, f.quantity, f.node_id,
                           f.convention, f.cuts, f.file, f.line) if f.kind == "not-verified" else f for f in out]
            if not any(f.kind == "not-verified" for f in out):
                out.append(Finding("not-verified", "error", "", (
                    f"nothing was compared at the {self.points} point{'s' if self.points != 1 else ''} checked (the "
                    "function's output was not finite there, or the trace did not reproduce its value): no gradient "
                    "was verified"), self.points))
        rank = {"error": 0, "warning": 1, "info": 2}
        out.sort(key=lambda f: (rank[f.severity], f.kind, f.node))
        return out

    def status_by_input(self) -> dict[str, str]:
        """Input name -> the verdicts about it, in a few words (for the table)."""
        out: dict[str, list[str]] = {}
        for (kind, _sev, key), g in self.acc.groups.items():
            name = key.split(":", 1)[-1]
            if name in self.names:
                text = f"{kind} at {len(g.points)}/{self.points}" if self.points > 1 else kind
                out.setdefault(name, []).append(text)
        return {k: ", ".join(v) for k, v in out.items()}

    # ------------------------------------------------------------ comparison
    def _compare(self, index: int, run: TracedRun, label: str, r: int, auto: list[torch.Tensor],
                 ref: dict[int, Any], cut: dict[int, Any] | None, tainted: set[int],
                 blocked: list[tuple[int, str]], seeds: dict[int, Any], hess: tuple[str, Any] | None) -> None:
        prog = run.program
        bounds: dict[int, Any] | None = None
        reach: torch.Tensor | None = None
        scale = max([float(x.abs().nan_to_num(0.0, 0.0, 0.0).max()) for x in ref.values()
                     if isinstance(x, torch.Tensor) and x.numel()] + [0.0])
        for i, v in enumerate(prog.inputs):
            name = self.names[i] if i < len(self.names) else prog.input_names[i]
            a = auto[i].detach().to(F64)
            if v.id in tainted:
                self.not_verified += a.numel()
                reasons = sorted({reason for _, reason in blocked}) or ["a value the tracer could not follow"]
                self.acc.not_verified(name, index, reasons, a.numel())
                continue
            rv = ref.get(v.id)
            rv = torch.zeros_like(a) if rv is None else rv.to(F64).expand_as(a)
            self.checked += a.numel()
            cheap = _cheap(a, rv, self.u, self.rtol, self.atol)
            if bool(cheap.all()):
                continue
            if bounds is None:
                bounds = self._bounds(run, seeds, hess)
            tol = self._tolerance(bounds.get(v.id), rv, scale)
            ok = cheap | ((a - rv).abs() <= tol)
            nf = ~(torch.isfinite(a) & torch.isfinite(rv))
            bad = ~ok | nf
            if not bool(bad.any()):
                continue
            cv = None
            if cut is not None:
                c = cut.get(v.id)
                cv = torch.zeros_like(a) if c is None else c.to(F64).expand_as(a)
            self._classify(index, run, name, label, i, a, rv, cv, tol, bad, nf, hess,
                           lambda: self._kink_reach(run, seeds, i) if reach is None else reach)

    def _tolerance(self, e: Any, r: torch.Tensor, scale: float = 0.0) -> torch.Tensor:
        tol = FLOOR_ULPS * (self.u * r.abs() + self.tiny) + NORMWISE_ULPS * self.u * scale
        if e is not None:
            tol = tol + SAFETY * e.expand_as(r)
        if self.rtol is not None:
            tol = tol + self.rtol * r.abs()
        if self.atol is not None:
            tol = tol + self.atol
        return tol

    def _bounds(self, run: TracedRun, seeds: dict[int, Any], hess: tuple[str, Any] | None) -> dict[int, Any]:
        """Error bounds of autograd's result for each input: the computation recorded and bounded."""
        prog, env = run.program, run.env
        whole, values, res = record_sweep(prog, env, seeds)
        grads = {v.id: res.cts.get(v.id) for v in prog.inputs}
        if hess is not None:  # sweep the recorded sweep again, recorded too
            direction = hess[1]
            seeds2 = {g.var.id: d for g, d in zip(grads.values(), direction) if isinstance(g, Traced)}
            whole, values, res = record_sweep(whole, values, seeds2)
            grads = {v.id: res.cts.get(v.id) for v in prog.inputs}
        e = error_bounds(whole, values)
        e64 = error_bounds(whole, values, u=2.0**-53)
        out = {}
        for vid, g in grads.items():
            if isinstance(g, Traced):
                a, b = e.get(g.var.id), e64.get(g.var.id)
                out[vid] = (a if a is not None else 0) + (b if b is not None else 0)
        return out

    def _kink_reach(self, run: TracedRun, seeds: dict[int, Any], i: int) -> torch.Tensor | None:
        """Which elements of input `i` a kink of the user's run (relu at 0, a tie) can reach."""
        prog, env = run.program, run.env
        full = sweep(prog, env, seeds).cts
        kink_seeds: dict[int, Any] = {}
        for e in prog.eqns:
            fn = e.params.get("fn") if e.prim == "ew" else None
            if fn is None or fn.kink is None:
                continue
            vals = [env[a.id] if isinstance(a, Var) else _const(prog, a) for a in e.inputs]
            try:
                mask = fn.kink(*[v if isinstance(v, torch.Tensor) else torch.tensor(float(v), dtype=F64)
                                 for v in vals])
            except Exception:  # noqa: BLE001 - a kink predicate that cannot run here: no kink claimed
                continue
            mask = torch.as_tensor(mask)
            if not bool(mask.any()):
                continue
            g = full.get(e.outputs[0].id)
            weight = mask.to(F64) * (g.abs() if g is not None else 1.0)
            for a in e.inputs:
                if isinstance(a, Var) and env[a.id].is_floating_point():
                    w = weight.expand(torch.broadcast_shapes(weight.shape, tuple(a.shape)))
                    while w.dim() > len(a.shape):
                        w = w.sum(0)
                    for d, s in enumerate(a.shape):
                        if s == 1 and w.shape[d] != 1:
                            w = w.sum(d, keepdim=True)
                    kink_seeds[a.id] = kink_seeds.get(a.id, 0) + w
        if not kink_seeds:
            return None
        reach = sweep(prog, env, kink_seeds, interp=AbsEager()).cts.get(prog.inputs[i].id)
        return None if reach is None else reach > 0

    def _classify(self, index: int, run: TracedRun, name: str, label: str, i: int, a: torch.Tensor,
                  r: torch.Tensor, c: torch.Tensor | None, tol: torch.Tensor, bad: torch.Tensor,
                  nf: torch.Tensor, hess: tuple[str, Any] | None, reach_of: Any) -> None:
        shape = tuple(a.shape)
        what = "d2" if hess is not None else "d"
        group = f"hessian:{name}" if hess is not None else name
        point = self._point(run, index)
        flat = torch.nonzero(bad.reshape(-1)).reshape(-1)
        reach = None
        stale = any(n.kind == "stale-graph" for n in run.tracer.notes)
        for j in flat.tolist():
            av, rv = float(a.reshape(-1)[j]), float(r.reshape(-1)[j])
            tv = float(tol.reshape(-1)[j])
            quantity = (f"{hess[0]} of {label}, d/d {element_name(name, shape, j)}" if hess is not None else
                        f"d {label}/d {element_name(name, shape, j)}")
            if bool(nf.reshape(-1)[j]):
                agree = (math.isnan(av) and math.isnan(rv)) or av == rv
                self.acc.element("nonfinite", "info" if agree else "error", group, index, point, quantity, av, rv,
                                 tv, entries_key=f"{label}:{j}")
                continue
            if c is not None:
                cvv = float(c.reshape(-1)[j])
                if math.isfinite(cvv) and abs(av - cvv) <= 2 * tv + FLOOR_ULPS * self.u * abs(cvv):
                    self.acc.untracked("cuts", index, point, quantity, av, rv, cvv, tv)
                    continue
            if reach is None:
                reach = reach_of() if hess is None else None
                reach = False if reach is None else reach
            if reach is not False and bool(reach.reshape(-1)[j]):
                self.acc.element("nondifferentiable", "info", group, index, point, quantity, av, rv, tv,
                                 entries_key=f"{label}:{j}")
                continue
            kind = "stale-graph" if stale else "mismatch"
            self.acc.element(kind, "error", group, index, point, quantity, av, rv, tv, entries_key=f"{label}:{j}",
                             what=what)

    # ------------------------------------------------------------ cuts
    def _cuts_dropped(self, run: TracedRun, cts: dict[int, Any]) -> None:
        """For each cut, the largest full-math gradient flowing into it (0: a harmless cut)."""
        tr = run.tracer
        for cut in tr.cuts:
            site = tr.sites[cut.site]
            key = ("no_grad block" if cut.kind == "no_grad" else cut.kind,
                   cut.region if cut.kind == "no_grad" else cut.site)
            info = self.cut_sites.setdefault(key, {"kind": cut.kind, "site": site, "dropped": 0.0})
            for vid in cut.vars:
                g = cts.get(vid)
                if g is not None:
                    m = float(g.abs().max()) if g.numel() else 0.0
                    if math.isfinite(m):
                        info["dropped"] = max(info["dropped"], m)
        self.acc.cut_sites = self.cut_sites

    # ------------------------------------------------------------ second order
    def _hessian(self, index: int, run: TracedRun, rows: list[Row]) -> None:
        prog, env = run.program, run.env
        n_in = sum(v_numel(v) for v in prog.inputs)
        objectives = rows if len(rows) <= 8 else rows[:2]
        if n_in <= HESS_FULL:
            directions = []
            for k in range(n_in):
                d = [torch.zeros(v.shape, dtype=F64) for v in prog.inputs]
                _flat_set(d, k)
                directions.append((f"column {k}", d))
            self.hess_how = f"the whole Hessian ({n_in} input elements, one sweep of the sweep each)"
        else:
            gen = torch.Generator().manual_seed(PROJECTION_SEED + 1)
            directions = [(f"H·u{k + 1}", [torch.randn(v.shape, dtype=F64, generator=gen) for v in prog.inputs])
                          for k in range(HESS_DIRECTIONS)]
            self.hess_how = f"{HESS_DIRECTIONS} Hessian-vector products H·u ({n_in} input elements; seeded normal u)"
        if len(objectives) < len(rows):
            self.hess_how += f", for {len(objectives)} of the {len(rows)} rows"
        for r, row in enumerate(objectives):
            seeds = {v.id: s for v, s in zip(prog.outputs, row.seeds) if isinstance(v, Var)}
            whole, values, res = record_sweep(prog, env, seeds)
            grads_auto = vjp(run, row.seeds, create_graph=True)
            for dlabel, direction in directions:
                seeds2 = {}
                for v, d in zip(prog.inputs, direction):
                    g = res.cts.get(v.id)
                    if isinstance(g, Traced):
                        seeds2[g.var.id] = d
                ref2 = sweep(whole, values, seeds2)
                cts = {v.id: ref2.cts.get(v.id) for v in prog.inputs}
                auto = hvp(run, grads_auto, direction)
                self._compare(index, run, row.label, r, auto, cts, None, ref2.tainted | res.tainted,
                              ref2.blocked + res.blocked, seeds, hess=(dlabel, direction))

    def _point(self, run: TracedRun, index: int) -> dict[str, float]:
        """The point's input values, when small enough to show."""
        total = sum(t.numel() for t in run.leaves)
        if total > 12:
            return {}
        out = {}
        for name, t in zip(self.names, run.leaves):
            flat = t.detach().to(F64).reshape(-1).tolist()
            for j, v in enumerate(flat):
                out[element_name(name, tuple(t.shape), j)] = v
        return out


def _cheap(a: torch.Tensor, r: torch.Tensor, u: float, rtol: float | None, atol: float | None) -> torch.Tensor:
    bound = r.abs() * (CHEAP_ULPS * u)
    if rtol is not None:
        bound = bound + rtol * r.abs()
    if atol is not None:
        bound = bound + atol
    return ((a - r).abs() <= bound) & torch.isfinite(bound) & torch.isfinite(a)


def _const(prog: Any, atom: Any) -> Any:
    c = prog.consts[atom.index]
    return c.to(F64) if isinstance(c, torch.Tensor) and c.is_floating_point() else c


def v_numel(v: Var) -> int:
    return math.prod(v.shape)


def _flat_set(tensors: list[torch.Tensor], k: int) -> None:
    for t in tensors:
        if k < t.numel():
            t.view(-1)[k] = 1.0
            return
        k -= t.numel()

