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
``tol = SAFETY (E + E64) + FLOOR (u |r| + tiny) [+ NORMWISE u max|r| with linear-algebra ops]``, ``E`` the
rounding error bound of
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

from ..autograd.user import FunctionError, TracedRun, hvp, shadow_run, shadow_vjp, vjp
from ..ir.program import Var
from ..ops.torch import LINALG_OPS
from ..reference.interpret import UNIT_ROUNDOFF, AbsEager, Traced, error_bounds, record_sweep, sweep
from ..reference.precise import precise_cotangents
from .elements import CHEAP_ULPS, FLOOR_ULPS, SAFETY, classify
from .tensor_findings import Accumulator, element_name, output_names

__all__ = ["FunctionJudge", "JAC_ROWS", "PROJECTIONS", "HESS_FULL", "HESS_DIRECTIONS"]

F64 = torch.float64
JAC_ROWS = 64
PROJECTIONS = 3
HESS_FULL = 32
HESS_DIRECTIONS = 3
# A normwise floor, in ulps of the largest element of the compared vector (one row's gradient or one
# Hessian-vector product, over all inputs).  Our bound E is componentwise for the formula we record;
# torch's backward may evaluate the same derivative by another formula (a dense product where ours keeps
# a structural zero, reflectors peeled off with their inverses), which BLAS and LAPACK bound only
# normwise: an element that is 0 in exact arithmetic comes back as rounding noise of the vector's scale.
# Only programs with linear-algebra ops get it: elsewhere the per-element bound is the whole story, and a
# normwise floor would hide an error in a small element beside a large one.
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
                 atol: float | None = None, expected: bool = False, intended: list[Any] | None = None,
                 shadow: Any = None) -> None:
        self.names = list(names)
        # The user's call, to run again in float64 (a measurement of the checked dtype's rounding).
        self.shadow_call = shadow if dtype != F64 else None
        self.measured_used = False
        self.dtype = dtype
        self.order = order
        self.u = UNIT_ROUNDOFF[str(dtype).replace("torch.", "")]
        self.tiny = torch.finfo(dtype).tiny
        self.rtol, self.atol = rtol, atol
        self.expected = expected  # the math is an expression: a value that differs is an error
        self.intended = intended or []  # declared deviations (judge.intended)
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
        self.precise_used = False  # a 50-digit reference was computed somewhere
        self.nan_reach: dict[int, torch.Tensor] = {}
        self.normwise_used = False  # the linear-algebra floor was applied somewhere  # this point: input elements non-finite outputs reach

    # ------------------------------------------------------------ one point
    def point(self, index: int, run: TracedRun) -> None:
        self.points += 1
        prog, env = run.program, run.env
        tr = run.tracer
        for name in tr.custom:
            if name not in self.custom:
                self.custom.append(name)
        self._notes(index, run)
        finite = self._values_hold(index, run)
        if finite is None:
            return
        rows, self.how = plan_rows(run.shapes)
        for row in rows:  # autograd gets each seed in its output's dtype: the reference uses the same numbers
            row.seeds = [s.to(t.dtype).to(F64) for s, t in zip(row.seeds, run.outputs)]
            if finite:  # output elements that are NaN/inf on both sides get no seed: the others are compared
                row.seeds = [s * m if m is not None else s for s, m in zip(row.seeds, finite)]
        if finite:  # a Jacobian row of a left-out element has nothing left to compare
            rows = [row for row in rows if any(bool(s.any()) for s in row.seeds)]
        # Autograd still multiplies their (zero) seeds by NaN partials: 0 * NaN = NaN reaches the inputs
        # they depend on.  Those entries are left out where autograd is not finite.
        self.nan_reach = self._nonfinite_reach(run, finite) if finite else {}
        if not rows or all(leaf.numel() == 0 for leaf in run.leaves):
            self.empty = True
            return
        has_cuts = bool(tr.cuts)
        declared, cut_pred = self._declared(run)
        shadow = self._shadow(run)
        for r, row in enumerate(rows):
            seeds = {v.id: s for v, s in zip(prog.outputs, row.seeds) if isinstance(v, Var)}
            # The sweep is recorded as it runs: its equations are what the error bounds (needed only where
            # the cheap test fails) are computed over.
            recorded = record_sweep(prog, env, seeds)
            res = recorded[2]
            cts = {k: (c.value if isinstance(c, Traced) else c) for k, c in res.cts.items()}
            cut = sweep(prog, env, seeds, cut=True).cts if has_cuts else None
            intended = sweep(declared, env, seeds, cut=cut_pred).cts if declared is not None else None
            auto = vjp(run, row.seeds)
            auto64 = shadow_vjp(shadow, row.seeds) if shadow is not None else None
            measured = None if auto64 is None else [(a.detach().to(F64) - b.detach()).abs()
                                                    for a, b in zip(auto, auto64)]
            if r == 0 and tr.custom:
                self._reentrant(index, run, row, auto)
            self._cuts_dropped(run, cts)
            self._compare(index, run, row.label, r, auto, cts, cut, res.tainted, res.blocked, seeds, hess=None,
                          recorded=recorded, intended=intended, measured=measured)
            if index == 0 and r == 0:
                self.first["auto"] = [a.detach().to(F64) for a in auto]
                self.first["ref"] = [cts.get(v.id) for v in prog.inputs]
        if self.order >= 2:
            self._hessian(index, run, rows)

    def _values_hold(self, index: int, run: TracedRun) -> list[Any] | None:
        """The program must reproduce the function's values; else (or outside the domain) skip the point.

        Returns None to skip the point, else per output a mask of its finite elements (None where all are):
        output elements that are NaN or infinite alike on both sides are left out of the comparison (and
        said so), so one of them does not hide the others.
        """
        prog, env, errs = run.program, run.env, run.tracer.rec.errs or {}
        masks: list[Any] = []
        for k, (t, v) in enumerate(zip(run.outputs, prog.outputs)):
            user = t.detach().to(F64)
            ref = env[v.id] if isinstance(v, Var) else user
            fu, fr = torch.isfinite(user), torch.isfinite(ref)
            if bool(fu.all()) and bool(fr.all()):
                masks.append(None)
            else:
                alike = torch.equal(fu, fr) and bool(((user == ref) | (torch.isnan(user) & torch.isnan(ref)))[~fu].all())
                if not alike or not bool(fu.any()):
                    self.acc.point("outside-domain", "info", "", index, self._point(run, index))
                    return None
                self.acc.point("nonfinite-output", "info", "", index, self._point(run, index),
                               count=int((~fu).sum()))
                masks.append(fu.to(F64))
                user, ref = user[fu], ref[fu]
            e = errs.get(v.id) if isinstance(v, Var) else None
            if e is not None and masks[-1] is not None and isinstance(e, torch.Tensor) and e.shape == fu.shape:
                e = e[fu]
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
                return None
        return masks if any(m is not None for m in masks) else []

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

        out = self.acc.findings(self.points, str(self.dtype).replace("torch.", ""), judged=self.checked > 0)
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
                 blocked: list[tuple[int, str]], seeds: dict[int, Any], hess: tuple[str, Any] | None,
                 recorded: Any = None, intended: dict[int, Any] | None = None,
                 measured: list[torch.Tensor] | None = None, scale: float = 0.0) -> None:
        prog = run.program
        bounds: dict[int, Any] | None = None
        precise: dict[int, Any] | None = None
        normwise = None
        if any(site.op in LINALG_OPS for site in prog.sites):
            largest = max([float(x.abs().nan_to_num(0.0, 0.0, 0.0).max()) for x in ref.values()
                           if isinstance(x, torch.Tensor) and x.numel()] + [0.0])
            normwise = torch.tensor(NORMWISE_ULPS * self.u * largest, dtype=F64)
            self.normwise_used = True
        # A second derivative that is 0 by structure in the reference has no rounding bound, but torch's
        # backward may reach it through a formula that cancels (prod's and cumprod's grad / x): rounding
        # at the cheap test's level, relative to the largest element of the product or of the gradient it
        # differentiates (`scale`), is allowed there.
        structural = None
        if hess is not None:
            top = max([scale] + [float(g.abs().max()) for g in ref.values() if isinstance(g, torch.Tensor)
                                 and g.numel() and bool(torch.isfinite(g).all())])
            structural = torch.tensor(CHEAP_ULPS * self.u * top, dtype=F64)
        slack = normwise if structural is None else structural if normwise is None else normwise + structural
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
            reached = self.nan_reach.get(v.id) if hess is None else None
            if reached is not None:
                drop = reached & ~torch.isfinite(a)
                a = torch.where(drop, rv, a)
                self.checked -= int(drop.sum())
            self.checked += a.numel()
            cv = _value_for(cut, v.id, a)
            iv = _value_for(intended, v.id, a)

            def bound(vid: int = v.id, i: int = i) -> Any:
                nonlocal bounds
                if measured is not None:
                    # Torch's own rounding, measured against the same call in float64, is the allowance:
                    # |a - exact| <= |a - a64| + |a64 - exact|, the first measured, the second the float64
                    # run's own error, which scales like the measured one (the same conditioning, 2**-53
                    # instead of u; a generous factor, over the whole vector so that an exact 0 is not asked
                    # for).  The worst-case bound compounds through every layer (astronomically in a deep
                    # float32 net) and is not needed then.
                    m = measured[i]
                    self.measured_used = True
                    return m + 64.0 * (2.0**-53 / self.u) * (float(m.max()) if m.numel() else 0.0)
                if bounds is None:
                    bounds = self._bounds(run, seeds, hess, recorded)
                return bounds.get(vid)

            reach = lambda i=i: self._kink_reach(run, seeds, i)  # noqa: E731 - at order 2 too: a kink of the run
            verdicts = classify(a, rv, u=self.u, tiny=self.tiny, bound=bound, cut=cv, intended=iv, rtol=self.rtol,
                                atol=self.atol, reach=reach, slack=slack, kink_anywhere=lambda: _on_a_kink(run))
            if "mismatch" in verdicts.masks and self.dtype == F64 and hess is None:
                # The float64 reference may share the blame: recompute it in 50 digits where that is cheap.
                if precise is None:
                    precise = precise_cotangents(prog, run.env, seeds) or {}
                    self.precise_used = self.precise_used or bool(precise)
                if v.id in precise:
                    rv = precise[v.id].expand_as(a)
                    verdicts = classify(a, rv, u=self.u, tiny=self.tiny, bound=bound, cut=cv, intended=iv,
                                        rtol=self.rtol, atol=self.atol, reach=reach, slack=slack)
            if verdicts.loose:
                # compared, but under a tolerance that says little: not counted as verified
                self.checked -= verdicts.loose
                self.not_verified += verdicts.loose
                self.acc.not_verified(name, index, [
                    f"the rounding bound of the computation in {str(self.dtype).replace('torch.', '')} exceeds "
                    "the gradient's largest entry (a long chain of ill-conditioned operations): a comparison says "
                    "nothing there; check in float64, or as a module (whose float64 twin measures the rounding)"],
                    verdicts.loose)
            if verdicts.ok:
                continue
            self._record(index, run, name, label, a, rv, cv, verdicts, hess, iv)
            if "mismatch" in verdicts.masks and hess is None:
                self._hint(run, seeds, v.id, a, verdicts)

    def _bounds(self, run: TracedRun, seeds: dict[int, Any], hess: tuple[str, Any] | None,
                recorded: Any = None) -> dict[int, Any]:
        """Error bounds of autograd's result for each input: the computation recorded and bounded.

        The bound is linear in the unit roundoffs (first order), so the float64 reference's own error
        is the same bound scaled to 2**-53 (exact where the whole computation is in one dtype, an
        over-estimate where a cast to a narrower dtype sits inside).
        """
        prog, env = run.program, run.env
        # For second order, `recorded` is the sweep of the recorded sweep (itself recorded).
        whole, values, res = recorded if recorded is not None else record_sweep(prog, env, seeds)
        grads = {v.id: res.cts.get(v.id) for v in prog.inputs}
        e = error_bounds(whole, values)
        scale = 1.0 + 2.0**-53 / self.u
        return {vid: e[g.var.id] * scale for vid, g in grads.items()
                if isinstance(g, Traced) and e.get(g.var.id) is not None}

    def _shadow(self, run: TracedRun) -> Any:
        """The float64 twin of this run, if it ran and reproduces the reference's value to float64 precision
        (a function that computes in float32 inside would measure nothing: it is not used then)."""
        if self.shadow_call is None:
            return None
        sh = shadow_run(self.shadow_call, run)
        if sh is None:
            return None
        errs = run.tracer.rec.errs or {}
        for t, v in zip(sh.outputs, run.program.outputs):
            if not isinstance(v, Var):
                return None
            ref = run.env[v.id]
            e = errs.get(v.id)
            e64 = 0.0 if e is None else e * (2.0**-53 / self.u)
            tol = SAFETY * e64 + FLOOR_ULPS * (2.0**-53 * ref.abs() + torch.finfo(F64).tiny)
            got = t.detach()
            ok = ((got - ref).abs() <= tol) | (torch.isnan(got) & torch.isnan(ref)) | (got == ref)
            if not bool(ok.all()):
                return None
        return sh

    def _nonfinite_reach(self, run: TracedRun, finite: list[Any]) -> dict[int, torch.Tensor]:
        """Input elements that the non-finite output elements depend on (a magnitude sweep from them)."""
        prog = run.program
        seeds = {v.id: 1.0 - m for v, m in zip(prog.outputs, finite) if m is not None and isinstance(v, Var)}
        cts = sweep(prog, run.env, seeds, interp=AbsEager()).cts
        out = {}
        for v in prog.inputs:
            c = cts.get(v.id)
            if c is not None:
                out[v.id] = ((c != 0) | torch.isnan(c)).expand(tuple(v.shape))
        return out

    def _kink_reach(self, run: TracedRun, seeds: dict[int, Any], i: int) -> torch.Tensor | None:
        """Which elements of input `i` a kink of the user's run (relu at 0, a tie) can reach."""
        prog, env = run.program, run.env
        full = sweep(prog, env, seeds).cts
        kink_seeds: dict[int, Any] = {}
        for e, mask in _kinks(run):
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

    def _record(self, index: int, run: TracedRun, name: str, label: str, a: torch.Tensor, r: torch.Tensor,
                c: torch.Tensor | None, verdicts: Any, hess: tuple[str, Any] | None,
                intended: torch.Tensor | None = None) -> None:
        shape = tuple(a.shape)
        group = f"hessian:{name}" if hess is not None else name
        point = self._point(run, index)
        stale = any(n.kind == "stale-graph" for n in run.tracer.notes)

        def quantity(j: int) -> str:
            elem = element_name(name, shape, j)
            return f"{hess[0]} of {label}, d/d {elem}" if hess is not None else f"d {label}/d {elem}"

        tol = verdicts.tol
        for kind, mask in verdicts.masks.items():
            if kind == "untracked":
                self.acc.many("untracked", "error", "cuts", index, point, quantity, a, r, tol, mask, cut=c)
            elif kind == "intended":
                self.acc.many("intended", "info", group, index, point, quantity, a, r, tol, mask, cut=intended)
            elif kind == "nonfinite-agree":
                self.acc.many("nonfinite", "info", group, index, point, quantity, a, r, tol, mask)
            elif kind == "nonfinite":
                self.acc.many("nonfinite", "error", group, index, point, quantity, a, r, tol, mask)
            elif kind == "nondifferentiable":
                self.acc.many("nondifferentiable", "info", group, index, point, quantity, a, r, tol, mask)
            else:
                self.acc.many("stale-graph" if stale else "mismatch", "error", group, index, point, quantity, a, r,
                              tol, mask, what="d2" if hess is not None else "d")

    def _reentrant(self, index: int, run: TracedRun, row: Row, first: list[torch.Tensor]) -> None:
        """A second backward through the same graph must give the same gradient (gradcheck's "Backward is not
        reentrant"): a custom backward that changes a tensor saved in ctx in place fails this."""
        try:
            again = vjp(run, row.seeds)
        except FunctionError as exc:
            self.acc.reentrant(self.names[0], index, {}, ", ".join(run.tracer.custom), "", math.nan, math.nan,
                               str(exc.message))
            return
        for name, a, b in zip(self.names, first, again):
            a64, b64 = a.detach().to(F64), b.detach().to(F64)
            differ = ~((a64 == b64) | (torch.isnan(a64) & torch.isnan(b64)))
            if bool(differ.any()):
                j = int(differ.reshape(-1).nonzero()[0])
                self.acc.reentrant(name, index, self._point(run, index), ", ".join(run.tracer.custom),
                                   element_name(name, tuple(a.shape), j), float(a64.reshape(-1)[j]),
                                   float(b64.reshape(-1)[j]))

    # ------------------------------------------------------------ declared deviations
    def _declared(self, run: TracedRun) -> tuple[Any, Any]:
        """The program with the declared deviations, and which cuts are declared (None: nothing declared)."""
        if not self.intended:
            return None, False
        from .intended import declared_program

        tr = run.tracer
        prog, problems = declared_program(run.program, tr.call_of, tr.sites, self.intended)
        for p in problems:
            self.acc.problem(p)
        cuts = [d for d in self.intended if d.is_cut]

        def declared_cut(e: Any) -> bool:
            site = tr.sites[e.site] if e.site >= 0 else None
            return site is not None and any(d.matches_cut(site.file, site.line) for d in cuts)

        return prog, (declared_cut if cuts else False)

    def _hint(self, run: TracedRun, seeds: dict[int, Any], vid: int, a: torch.Tensor, verdicts: Any) -> None:
        """Recognise a common deviation in a mismatch: a custom Function whose backward is one constant times
        the identity (a straight-through estimator, a gradient-reversal or scaling layer), the same constant at
        every mismatching element of every row (collected here, judged by the findings)."""
        tr = run.tracer
        from .intended import Declaration, declared_program

        mask = verdicts.masks["mismatch"]
        for name in tr.custom:
            seen = self.acc.hint_ks.setdefault(name, [])
            if seen and seen[-1] is None:
                continue
            ident_prog, problems = declared_program(run.program, tr.call_of, tr.sites,
                                                    [Declaration(name, "straight-through", 1.0)])
            base_prog, _ = declared_program(run.program, tr.call_of, tr.sites, [Declaration(name, "scale", 0.0)])
            ident = sweep(ident_prog, run.env, seeds).cts.get(vid) if not problems else None
            base = sweep(base_prog, run.env, seeds).cts.get(vid) if not problems else None
            if ident is None:
                seen.append(None)
                continue
            ident = ident.to(F64).expand_as(a)
            base = torch.zeros_like(a) if base is None else base.to(F64).expand_as(a)
            path = ident - base
            denom = float((path[mask] ** 2).sum())
            k = float(((a - base)[mask] * path[mask]).sum()) / denom if denom else math.nan
            fits = math.isfinite(k) and bool(((a - (base + k * path)).abs() <= verdicts.tol + 1e-12)[mask].all())
            seen.extend([k] * int(mask.sum()) if fits else [None])

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
        declared, cut_pred = self._declared(run)
        for r, row in enumerate(objectives):
            seeds = {v.id: s for v, s in zip(prog.outputs, row.seeds) if isinstance(v, Var)}
            first = record_sweep(prog, env, seeds)
            grads = [(lambda c: c.value if isinstance(c, Traced) else c)(first[2].cts.get(v.id)) for v in prog.inputs]
            grad_scale = max([float(g.abs().max()) for g in grads if isinstance(g, torch.Tensor) and g.numel()
                              and bool(torch.isfinite(g).all())] + [0.0])
            # The second order of the alternatives too: the cuts as constants, the declared deviations.
            alts = {"cut": record_sweep(prog, env, seeds, cut=True) if run.tracer.cuts else None,
                    "intended": record_sweep(declared, env, seeds, cut=cut_pred) if declared is not None else None}
            # The seeds require grad, as in gradgradcheck: a once_differentiable backward then says so when
            # differentiated, and a backward that detaches what it saved shows a zero second derivative.
            grads_auto = vjp(run, [s.clone().requires_grad_(True) for s in row.seeds], create_graph=True)
            if any(type(g.grad_fn).__name__ in ("Error", "DelayedError") for g in grads_auto):
                self.acc.not_verified(self.names[0], index, [
                    "second order: the backward is marked @once_differentiable, so autograd has no second "
                    "derivative to compare (torch raises if you differentiate it twice)"], 0)
                return
            for dlabel, direction in directions:
                rec2, cts = _second(first, prog, direction)
                alt_cts = {"cut": _second(alts["cut"], prog, direction, cut=True)[1] if alts["cut"] else None,
                           "intended": _second(alts["intended"], prog, direction, cut=cut_pred)[1]
                           if alts["intended"] else None}
                try:
                    auto = hvp(run, grads_auto, direction)
                except FunctionError as exc:
                    self.acc.not_verified(self.names[0], index, [f"second order: {exc.message}"], 0)
                    return
                self._compare(index, run, row.label, r, auto, cts, alt_cts["cut"], rec2[2].tainted | first[2].tainted,
                              rec2[2].blocked + first[2].blocked, seeds, hess=(dlabel, None), recorded=rec2,
                              intended=alt_cts["intended"], scale=grad_scale)

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


def _kinks(run: TracedRun) -> Any:
    """(equation, mask) for each elementwise op of the run that sits exactly on one of its kinks."""
    prog, env = run.program, run.env
    for e in prog.eqns:
        fn = e.params.get("fn") if e.prim == "ew" else None
        if fn is None or fn.kink is None:
            continue
        vals = [env[a.id] if isinstance(a, Var) else _const(prog, a) for a in e.inputs]
        try:
            mask = torch.as_tensor(fn.kink(*[v if isinstance(v, torch.Tensor) else torch.tensor(float(v), dtype=F64)
                                             for v in vals]))
        except Exception:  # noqa: BLE001 - a kink predicate that cannot run here: no kink claimed
            continue
        if bool(mask.any()):
            yield e, mask


def _on_a_kink(run: TracedRun) -> bool:
    return next(_kinks(run), None) is not None


def _second(recorded: Any, prog: Any, direction: list[torch.Tensor], cut: Any = False) -> tuple[Any, dict[int, Any]]:
    """Sweep a recorded sweep with the input-gradient seeds `direction`: a Hessian-vector product."""
    whole, values, res = recorded
    seeds2 = {}
    for v, d in zip(prog.inputs, direction):
        g = res.cts.get(v.id)
        if isinstance(g, Traced):
            seeds2[g.var.id] = d
    rec2 = record_sweep(whole, values, seeds2, cut=cut)
    cts = {v.id: (c.value if isinstance(c, Traced) else c) for v in prog.inputs
           for c in [rec2[2].cts.get(v.id)]}
    return rec2, cts


def _value_for(cts: dict[int, Any] | None, vid: int, like: torch.Tensor) -> torch.Tensor | None:
    if cts is None:
        return None
    c = cts.get(vid)
    return torch.zeros_like(like) if c is None else c.to(F64).expand_as(like)


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

