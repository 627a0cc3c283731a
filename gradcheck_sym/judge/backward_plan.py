"""A backward's plan (`Plan`): what `judge.backward` derives before the script's backward runs — the reference's
cotangents, the tensors whose .grad it writes (`targets_of`) — and what its verdicts fill in as they go."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..autograd.attrs import is_leaf, leaf_window
from .backward_values import dense, exact_gradient

__all__ = ["Plan", "targets_of"]

F64 = torch.float64


@dataclass
class Plan:
    """One backward's plan: the seeds, the reference's cotangents (full math, with the cuts as constants, as
    declared), the tensors compared, and what its comparisons computed once for all (bounds, measured noise,
    replays)."""

    seeds: dict[int, Any]
    recorded: Any  # () -> (program extended by the sweep, values, SweepResult), or None
    cts: dict[int, Any]
    cut: dict[int, Any] | None
    tainted: set[int]
    blocked: list[tuple[int, str]]
    targets: list[tuple[Any, Any, Any]] = field(default_factory=list)  # (info, tensor, .grad before)
    inputs: list[torch.Tensor] | None = None
    create: bool = False
    bounds: dict[int, Any] | None = None
    program: Any = None  # the forward program the sweep went over
    rounded: dict[int, Any] | None = None  # the sweep recomputed in the user's dtype (a noise sample)
    trained: bool | None = None  # every leaf given a gradient is an optimizer's (`_trained_by_optimizers`)
    rounded64: dict[int, Any] | None = None  # the sweep of a float64 backward recomputed in float32 (`measured_noise`)
    replays: Any = None  # the custom Function calls on the way, run again in float64 when asked (judge.replay)
    seconds: float = 0.0  # how long the script's own backward took
    sampled: bool | None = None  # whether a passed custom gradient is replayed in this backward (`_sampled`)
    why: dict[int, set[str]] = field(default_factory=dict)  # a tainted variable's own reasons (SweepResult.why)
    intended: dict[int, Any] | None = None  # the cotangents with the declared deviations (None: none declared)
    reads: dict[int, Any] | None = None  # variable id -> the elementwise equations that read it (`consumers`)
    reshaped: dict[int, Any] | None = None  # variable id -> the variables reshapes of it make (`_last_sums_of`)
    # tensor id -> its program variable when the backward began (an optimizer step in a hook during the backward makes
    # a parameter's next value: its gradient is the one it had when the graph was made)
    target_vars: dict[int, Any] = field(default_factory=dict)
    # why nothing of this backward is compared: it reaches values whose computation was let go (`ScriptMemory.spend`)
    spent: list[str] = field(default_factory=list)
    _written: Any = None
    _compared: set[int] | None = None
    _inputs: tuple[set[int], int] | None = None

    def input_ids(self) -> tuple[set[int], int]:
        """The variables of the program's inputs (the leaf versions the sweep can reach), and the oldest (-1: none)."""
        if self._inputs is None:
            ids = {v.id for v in self.program.inputs} if self.program is not None else set()
            self._inputs = ids, min(ids, default=-1)
        return self._inputs

    def compared(self, tr: Any) -> set[int]:
        """The variables whose gradient this backward compares (its targets', or the inputs' of autograd.grad)."""
        if self._compared is None:
            tensors = self.inputs if self.inputs is not None else [t for _, t, _ in self.targets]
            self._compared = {var.id for var in (exact_gradient(tr, self, t)[1] for t in tensors) if var is not None}
        return self._compared

    def written(self) -> Any:
        """The sweep written down (once): (the program extended by it, the values, its SweepResult)."""
        if self._written is None:
            self._written = self.recorded()
        return self._written


def targets_of(tr: Any, only: Any = None) -> list[tuple[Any, torch.Tensor, Any]]:
    """(info, tensor, .grad before) of every tensor a backward writes .grad of: the leaves that require grad
    and the tensors that retain it; with `only` (``backward(inputs=...)``: a tensor or a sequence of them), those
    alone (torch leaves every other .grad as it was)."""
    targets = []
    seen = set()
    if only is not None:
        wanted = {id(t) for t in ([only] if isinstance(only, torch.Tensor) else only)}
        seen = {id(t) for r in tr.recs.values() for t in [r.tensor] if t is not None and id(t) not in wanted}
        seen |= {id(t) for i in tr.infos.values() for t in [i.ref()] if t is not None and id(t) not in wanted}
    for r in list(tr.recs.values()) + [i for i in tr.infos.values()]:
        t = r.tensor if hasattr(r, "handle") else r.ref()
        if t is None or id(t) in seen or not ((is_leaf(t) and t.requires_grad) or t.retains_grad) or \
                leaf_window(t):  # (a view of a leaf taken under no_grad: the leaf is the target)
            continue
        seen.add(id(t))
        info = tr._info(t)
        if info.internal and is_leaf(t):
            continue  # a leaf made inside a custom Function's forward: the Function's own, not this backward's
        before = None if t.grad is None else dense(t.grad.detach().to(F64)).clone()
        targets.append((info, t, before))
    return targets
