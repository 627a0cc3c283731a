"""What a backward's verdict reads besides the ladder (`judge.backward`): the exact .grad before it, a sparse
.grad made dense, and whether a hook that changed a gradient sits downstream."""

from __future__ import annotations

from typing import Any

import torch

from ..ir.program import Var
from ..ops.quick import all_true, any_true
from ..reference.interpret import Traced

__all__ = ["total_before", "dense", "hooked_downstream"]


def total_before(info: Any, before: Any, u: float) -> Any:
    """The exact value of .grad before this backward: None (no gradient or zeroed), the verified total,
    or False when unknown (an unverified earlier gradient, or .grad changed since in a way not seen)."""
    if before is None or not any_true(before):
        return None
    prev = info.exact_total
    if prev is None:
        return False
    prev = prev.expand_as(before)
    if all_true((before - prev).abs() <= 64 * u * (before.abs() + prev.abs()) + 1e-300):
        return prev
    return False


def dense(g: torch.Tensor) -> torch.Tensor:
    """A sparse .grad (nn.Embedding(sparse=True)) as the dense tensor it stands for."""
    return g if g.layout == torch.strided else g.to_dense()


def hooked_downstream(tr: Any, var: Var | None, index: int) -> bool:
    """Whether a tensor hook that changed a gradient in backward `index` sits downstream of `var` (between it
    and the output)."""
    if var is None:
        return False
    hooked = [r for r in tr.recs.values() if r.tensor is not None and id(r.tensor) in tr.infos
              and tr.infos[id(r.tensor)].hooks and tr.infos[id(r.tensor)].hook_changed == index
              and isinstance(r.handle, Traced)]
    if not hooked:
        return False
    for r in hooked:
        need = {r.handle.var.id}
        for e in reversed(tr.rec.eqns):
            if any(v.id in need for v in e.outputs):
                need.update(a.id for a in e.inputs if isinstance(a, Var))
        if var.id in need:
            return True
    return False
