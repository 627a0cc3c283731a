"""Which cotangents a large backward's reference sweep keeps (`kept`): the ones something after the sweep reads.

A conv + batch-norm tutorial's sweep at batch 512 held every intermediate's cotangent at once (2 GB, as much as the
forward's float64 copies); the judge reads only a few of them.  Every reader of `Plan.cts`, `Plan.cut` and
`Plan.intended` is listed here: a reader added elsewhere must add its variables, or it finds None (which reads as
"not reached").
"""

from __future__ import annotations

from typing import Any, Iterable

import torch

from ..ir.program import Var
from ..reference.interpret import Traced
from ..reference.lazy import pending
from .backward_values import consumers
from .replay import call_results

__all__ = ["kept"]


def kept(tr: Any, program: Any, tensors: Iterable[torch.Tensor]) -> tuple[set[int], dict[int, Any]]:
    """(the variables whose cotangents a backward of `program` comparing the gradients of `tensors` reads, the
    elementwise readers of each variable (`backward_values.consumers`, which `Plan.reads` holds))."""
    compared: set[int] = set()
    for t in tensors:  # the compared gradients (`exact_gradient`)
        r = tr.recs.get(id(t))
        if r is not None and r.tensor is t and isinstance(r.handle, Traced) and not pending(r.handle):
            compared.add(r.handle.var.id)
    keep = set(compared)
    for info in list(tr.infos.values()):  # a named tensor's row shows the gradient it would hold (`_verify`)
        t = None if info.internal else info.ref()
        r = tr.recs.get(id(t)) if t is not None else None
        if r is not None and r.tensor is t and isinstance(r.handle, Traced) and not pending(r.handle):
            keep.add(r.handle.var.id)  # (a value not recorded yet is in no program: nothing reaches it)
    reads = consumers(program)
    reshaped: dict[int, list[int]] = {}
    for e in program.eqns:
        if e.prim == "stop":  # whether a cut was reached, and where (`backward_words.cuts_between`)
            keep.update(v.id for v in e.outputs)
        elif e.prim == "reshape" and isinstance(e.inputs[0], Var):
            reshaped.setdefault(e.inputs[0].id, []).append(e.outputs[0].id)
    for _, vars_ in tr._stale_pending:  # a stale graph's old values (`ScriptTracer._stale_reached`)
        keep.update(vars_)
    keep |= call_results(tr, program)  # a custom Function's results: its replay's seeds (`judge.replay`)
    for c in tr.custom_calls.calls.values():  # and its arguments' (`Replays._exact_of`)
        keep.update(h.var.id for h in [*c.args, *c.kwargs.values()] if isinstance(h, Traced))
    # the sums that transpose a compared gradient's broadcasts, and its reshape's (`backward_values.last_sums`)
    near = set(compared)
    for vid in compared:
        near.update(reshaped.get(vid, ()))
    for vid in near:
        keep.add(vid)
        for e, _ in reads.get(vid, ()):
            keep.add(e.outputs[0].id)
    return keep, reads
