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

What is compared lives in `tensor_rows` (the rows and the second order), how a failure is
explained in `tensor_explain`; `FunctionJudge` composes them with the comparison itself.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from ..autograd.user import TracedRun, shadow_run, shadow_vjp, vjp
from ..ir.program import Var
from ..ops.torch import LINALG_OPS
from ..reference.interpret import UNIT_ROUNDOFF, Traced, error_bounds, record_sweep, sweep
from ..reference.precise import precise_cotangents
from .elements import CHEAP_ULPS, FLOOR_ULPS, SAFETY, abs_max, classify
from .tensor_explain import Explain, _on_a_kink
from .tensor_findings import Accumulator, element_name, output_names
from .tensor_rows import HESS_DIRECTIONS, HESS_FULL, JAC_ROWS, PROJECTIONS, SecondOrder, plan_rows

__all__ = ["FunctionJudge", "JAC_ROWS", "PROJECTIONS", "HESS_FULL", "HESS_DIRECTIONS"]

F64 = torch.float64
# A normwise floor, in ulps of the largest element of the compared vector (one row's gradient or one
# Hessian-vector product, over all inputs).  Our bound E is componentwise for the formula we record;
# torch's backward may evaluate the same derivative by another formula (a dense product where ours keeps
# a structural zero, reflectors peeled off with their inverses), which BLAS and LAPACK bound only
# normwise: an element that is 0 in exact arithmetic comes back as rounding noise of the vector's scale.
# Only programs with linear-algebra ops get it: elsewhere the per-element bound is the whole story, and a
# normwise floor would hide an error in a small element beside a large one.
NORMWISE_ULPS = 32.0


class FunctionJudge(Explain, SecondOrder):
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
            for v in prog.inputs:  # a transpose's view (a conv weight's): every pass over it below is 10x slower
                c = cts.get(v.id)
                if isinstance(c, torch.Tensor) and not c.is_contiguous():
                    cts[v.id] = c.contiguous()
            cut = sweep(prog, env, seeds, cut=True).cts if has_cuts else None
            intended = sweep(declared, env, seeds, cut=cut_pred).cts if declared is not None else None
            auto = vjp(run, row.seeds)
            auto64 = shadow_vjp(shadow, row.seeds) if shadow is not None else None
            # torch's float64 twin's gradients: |autograd's - these| is measured where a comparison needs it
            measured = None if auto64 is None else [b.detach() for b in auto64]
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
        prog, env, errs = run.program, run.env, run.tracer.rec.bounds() or {}
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
        row_top: float | None = None
        precise: dict[int, Any] | None = None

        def own64() -> float:
            # The float64 reference's own rounding at the scale of this row's gradients: where torch's float32
            # and float64 runs both give an exact 0 (a bias before batch norm), the measurement is 0 and cannot
            # stand for the reference's cancellation (1e-16 where the math says 0).
            nonlocal row_top
            if row_top is None:  # over the inputs' gradients (`ref` holds every variable's cotangent)
                grads = [ref.get(u.id) for u in prog.inputs]
                row_top = max([abs_max(x) for x in grads if isinstance(x, torch.Tensor)] + [0.0])
            return CHEAP_ULPS * 2.0**-53 * row_top

        normwise = None
        if any(site.op in LINALG_OPS for site in prog.sites):
            largest = max([abs_max(x) for x in ref.values() if isinstance(x, torch.Tensor)] + [0.0])
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

            def bound(vid: int = v.id, i: int = i, a: torch.Tensor = a) -> Any:
                nonlocal bounds
                if measured is not None:
                    # Torch's own rounding, measured against the same call in float64, is the allowance:
                    # |a - exact| <= |a - a64| + |a64 - exact|, the first measured, the second the float64
                    # run's own error, which scales like the measured one (the same conditioning, 2**-53
                    # instead of u; a generous factor, over the whole vector so that an exact 0 is not asked
                    # for).  The worst-case bound compounds through every layer (astronomically in a deep
                    # float32 net) and is not needed then.
                    m = (a - measured[i]).abs()
                    self.measured_used = True
                    return (m + 64.0 * (2.0**-53 / self.u) * (float(m.max()) if m.numel() else 0.0)
                            + own64())
                if bounds is None:
                    bounds = self._bounds(run, seeds, hess, recorded)
                return bounds.get(vid)

            reach = lambda i=i: self._kink_reach(run, seeds, i)  # noqa: E731 - at order 2 too: a kink of the run
            # the LOOSE rule on this gradient's own scale, that of the row's largest gradient entry standing in for
            # a gradient 0 in the math (as a backward of `run` does: judge.backward)
            top = own64() / (CHEAP_ULPS * 2.0**-53)
            own = abs_max(rv)
            zero_below = self.u**0.5 * top if top > 0 else None
            scale = own if own > self.u**0.5 * top or top == 0 else top
            verdicts = classify(a, rv, u=self.u, tiny=self.tiny, bound=bound, cut=cv, intended=iv, rtol=self.rtol,
                                atol=self.atol, reach=reach, slack=slack, kink_anywhere=lambda: _on_a_kink(run),
                                scale=scale, zero_below=zero_below)
            if "mismatch" in verdicts.masks and self.dtype == F64 and hess is None:
                # The float64 reference may share the blame: recompute it in 50 digits where that is cheap.
                if precise is None:
                    precise = precise_cotangents(prog, run.env, seeds) or {}
                    self.precise_used = self.precise_used or bool(precise)
                if v.id in precise:
                    rv = precise[v.id].expand_as(a)
                    verdicts = classify(a, rv, u=self.u, tiny=self.tiny, bound=bound, cut=cv, intended=iv,
                                        rtol=self.rtol, atol=self.atol, reach=reach, slack=slack, scale=scale,
                                        zero_below=zero_below)
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
        # the forward program's bounds were tracked as it was traced: only the sweep's are computed here
        e = error_bounds(whole, values, start=run.tracer.rec.bounds(), skip=len(prog.eqns))
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
        errs = run.tracer.rec.bounds() or {}
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


def _value_for(cts: dict[int, Any] | None, vid: int, like: torch.Tensor) -> torch.Tensor | None:
    if cts is None:
        return None
    c = cts.get(vid)
    return torch.zeros_like(like) if c is None else c.to(F64).expand_as(like)
