"""What `run` keeps of the script's tensors and backward calls: a `TensorInfo` per tensor that takes part in
autograd, a `Backward` per call, and `InfoLog`, which lightens the records of tensors that died.

A training loop makes a few named tensors per iteration; their records outlive them (the report's rows count
them and show the last values).  Kept whole, 30,000 iterations held every cotangent they received (1.5 GB) and
every intermediate's record, and each iteration grew slower.  A dead tensor's record keeps its statuses and a
summary of its values; one no row shows (an intermediate of a statement, a tensor no backward reached) and no
edge of the graph refers to is dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..report.run import summary_value

__all__ = ["TensorInfo", "Backward", "InfoLog", "DETACHED"]

# a row's `cut` for a tensor the script detached (its status in the table; `report.run_render` shortens it)
DETACHED = "detached: a constant for autograd"


@dataclass
class TensorInfo:
    """A tensor that took part in autograd (a leaf that requires grad, a retained or a cut tensor)."""

    serial: int
    ref: Any
    line: int
    source: str
    leaf: bool
    version: int = 0
    shape: tuple[int, ...] = ()
    retains: bool = False
    hooks: list[int] = field(default_factory=list)
    leaf_vars: list[int] = field(default_factory=list)  # the variables of its leaf versions, oldest first
    grad_fn: str | None = None
    requires_grad: bool = True
    value: Any = None
    cut: str = ""  # how it was cut, in words, if it was
    hidden: bool = False  # an intermediate of its line's statement, not what the line's name is bound to
    made: bool = False  # a leaf seen where it was made (its line's name is its name)
    # a leaf its own line's statement goes on to use (`b = torch.ones(5, requires_grad=True) * 2`): the line's name
    # is the result's, not the leaf's
    inner: bool = False
    # a parameter's path in a module the script held at a backward (`model.fc.weight`), for one whose module the
    # script no longer holds at its end (`model` rebound to the next section's network)
    path: str | None = None
    internal: bool = False  # made inside a custom Function's forward: no backward of the script's fills its .grad
    hook_changed: int = -1  # the last backward (index) in which one of its hooks changed its gradient
    # (backward index, its .grad when a post-accumulate-grad hook was given it: what the backward made, before the
    # hook's optimizer step and zero_grad — the tutorial that fuses the step into the backward)
    accumulated: tuple | None = None
    # per backward that reached it: (backward index, .grad after (float64), exact contribution, status)
    checks: list[tuple[int, Any, Any, str]] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)  # the statuses of checks let go (only the first few are kept)
    exact_total: Any = None  # the exact .grad if every contribution since a reset was verified, else None
    grad_seen: Any = None  # .grad (float64) as the last backward that filled it left it (not a returned gradient)

    def statuses(self) -> list[str]:
        """Every check's status in the order they came, the ones let go included (the second onwards are let go:
        `judge.backward`)."""
        return [*(c[3] for c in self.checks[:1]), *self.dropped, *(c[3] for c in self.checks[1:])]


@dataclass
class Backward:
    """One backward call of the script (or torch.autograd.grad)."""

    index: int
    kind: str  # "backward" or "autograd.grad"
    line: int
    source: str
    verified: bool = True
    reasons: list[str] = field(default_factory=list)
    checked: int = 0  # tensors compared
    errors: int = 0
    skipped: str = ""  # why the call was not compared at all (inside gradcheck, ...)
    raised: bool = False  # the script's own backward raised (its error, in its traceback): no gradient to compare
    returned: list[tuple[str, Any, Any]] = field(default_factory=list)  # autograd.grad: (name, got, exact)
    call: int = 1  # which call of its line (1 first): a finding of a loop's backward says which step


class InfoLog:
    """Every `TensorInfo` made, in order, with serial numbers; the records of dead tensors made light."""

    def __init__(self) -> None:
        self.items: list[TensorInfo] = []
        self.next_serial = 0
        self.dead: list[TensorInfo] = []  # died since the last `retire` (weakref callbacks only append here)
        self.linked: set[int] = set()  # serials an edge of the graph refers to (findings name leaves only)
        self._dropped = 0

    def __iter__(self) -> Any:
        return (i for i in self.items if i.serial >= 0)

    def add(self, info: TensorInfo) -> TensorInfo:
        self.items.append(info)
        return info

    def serial(self) -> int:
        self.next_serial += 1
        return self.next_serial - 1

    def retire(self) -> None:
        """Lighten the records of the tensors that died (outside torch's dispatch: values are summarised)."""
        dead = []
        while self.dead:  # drained in place: the callbacks hold this very list
            dead.append(self.dead.pop())
        for info in dead:
            if info.ref() is not None:
                continue
            # an intermediate of a statement, or a tensor no backward reached: no row shows it, so its
            # values are let go rather than summarised (most tensors of a training loop end here)
            if (info.hidden or not info.checks) and not (info.leaf or info.retains or info.hooks) \
                    and info.serial not in self.linked:
                info.serial = -1 - info.serial  # marked: dropped at the next compaction
                info.checks, info.value, info.exact_total, info.grad_seen = (), None, None, None
                self._dropped += 1
            else:
                info.checks = [(i, _light(got), _light(exact), status) for i, got, exact, status in info.checks] \
                    if info.checks else ()
                info.value, info.exact_total, info.grad_seen = _light(info.value), None, None
            # A dead tensor's row is only read from here on: its empty lists let go for the shared empty tuple
            # (python's cycle collector visits every list in its full passes, some 100,000 of them by a training
            # loop's 3,000th step: 5% of its checked run)
            info.hooks, info.leaf_vars, info.dropped = info.hooks or (), info.leaf_vars or (), info.dropped or ()
            info.ref = _dead  # (its weak reference too: it answers None, as the dead one did)
        if self._dropped > max(1024, len(self.items) // 2):  # amortised: a list rebuilt, not searched
            self.items = [i for i in self.items if i.serial >= 0]
            self._dropped = 0


def _dead() -> None:
    """A dead tensor's `TensorInfo.ref`."""
    return None


def _light(x: Any) -> Any:
    return summary_value(x) if isinstance(x, torch.Tensor) else x
