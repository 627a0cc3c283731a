"""Why an element of the tensor judge fails, and the findings it becomes.

A difference is explained before it is called a mismatch: a kink the user's run sat on (relu
at 0, a tie) that can reach the element, non-finite outputs whose NaN partials reach it, the
gradient the cuts dropped, the deviations the user declared (and a recognised undeclared one,
a straight-through estimator), a backward that is not re-entrant; the tracer's notes (stale
graphs, leaks) become findings too.  `Explain` is a mixin of `FunctionJudge`: it records
into the judge's `acc`.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..autograd.user import FunctionError, TracedRun, vjp
from ..ir.program import Var
from ..reference.interpret import AbsEager, sweep
from .tensor_findings import Accumulator, element_name
from .tensor_rows import Row

__all__ = ["Explain"]

F64 = torch.float64


class Explain:
    """Notes, reaches, declared deviations and cuts: what the judge's comparison is explained by."""

    # Set by `FunctionJudge.__init__`; `_point` is the judge's too.
    names: list[str]
    intended: list[Any]
    acc: Accumulator
    cut_sites: dict[tuple[str, int], dict[str, Any]]

    def _notes(self, index: int, run: TracedRun) -> None:
        for note in run.tracer.notes:
            site = run.tracer.sites[note.site]
            if note.kind == "stale-graph":
                self.acc.note("stale-graph", "error", f"{site.where}", index, note.text, site)
            elif note.kind == "leak":
                self.acc.note("leak", "info", f"{site.where}", index, note.text, site)

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
        from .intended import declared

        tr = run.tracer
        prog, cut_pred, problems = declared(run.program, tr.call_of, tr.sites, self.intended)
        for p in problems:
            self.acc.problem(p)
        return prog, cut_pred

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


def _const(prog: Any, atom: Any) -> Any:
    c = prog.consts[atom.index]
    return c.to(F64) if isinstance(c, torch.Tensor) and c.is_floating_point() else c
