"""What the tensor judge compares at a point: the rows it seeds, and (order 2) the Hessian-vector products.

A scalar output gives one row, its gradient; tensor outputs give the full Jacobian (one
reverse sweep per output element) up to `JAC_ROWS` elements, else `PROJECTIONS` seeded random
projections ``vᵀJ``.  At order 2, each row's objective is differentiated again along every
basis direction up to `HESS_FULL` input elements (the whole Hessian), else along
`HESS_DIRECTIONS` seeded random directions, by sweeping the recorded sweep (`SecondOrder`, a
mixin of `FunctionJudge`: it compares through the judge's `_compare`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from ..autograd.user import FunctionError, TracedRun, hvp, vjp
from ..ir.program import Var
from ..reference.interpret import Traced, record_sweep
from .tensor_findings import Accumulator, output_names

__all__ = ["Row", "plan_rows", "SecondOrder", "JAC_ROWS", "PROJECTIONS", "HESS_FULL", "HESS_DIRECTIONS"]

F64 = torch.float64
JAC_ROWS = 64
PROJECTIONS = 3
HESS_FULL = 32
HESS_DIRECTIONS = 3
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


class SecondOrder:
    """Hessian-vector products of each row's objective, compared element by element."""

    # Set by `FunctionJudge.__init__`; `_declared` and `_compare` are the judge's too.
    names: list[str]
    acc: Accumulator
    hess_how: str

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


def v_numel(v: Var) -> int:
    return math.prod(v.shape)


def _flat_set(tensors: list[torch.Tensor], k: int) -> None:
    for t in tensors:
        if k < t.numel():
            t.view(-1)[k] = 1.0
            return
        k -= t.numel()
