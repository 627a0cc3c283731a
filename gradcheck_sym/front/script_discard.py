"""A cut's missing gradient that the script throws away unused: a GAN's ``fake.detach()`` in the discriminator's step.

An `untracked` check says: this backward gave leaf ``p`` less gradient than the math, because of a cut.  Whether
that matters is what the script does with ``p.grad`` next.  If the next thing is a reset — ``p.grad = None`` (every
``zero_grad()``), ``p.grad.zero_()`` — before any optimizer step over ``p``, any read of ``p.grad`` by the script
and any later backward adding to it, the cut changed nothing the script used: the generator's gradient through the
discriminator's ``fake.detach()`` is never wanted, and ``optG.zero_grad()`` clears it before the generator's own
backward.  Such a check becomes ``discarded`` (info).  A use first, or the script's end, leaves it ``untracked``: a
``fake.detach()`` in the generator's own step is found, since its optimizer steps on what the cut left.  Resets are
torch's ``zero_grad()`` (its look at ``p.grad`` too: it resets what is there, nothing where the cut left None), a
``p.grad = ...`` and a statement ``p.grad.zero_()``; any other read of ``p.grad`` is a use.  Only a gradient that
lives in ``.grad`` waits: one ``autograd.grad`` returned, or one a hook on the leaf saw, was used whatever becomes
of ``.grad`` (`judge.backward` does not ask).  Checks wait together: a WGAN's critic takes five steps on
``fake.detach()`` before the generator's ``zero_grad()``, each backward leaving the generator's ``.grad`` as it was
(None): none of them used it, and that reset discards all five.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["DiscardedCuts", "DISCARDED"]

DISCARDED = "; the script then reset its .grad ({where}) before any step, read or backward used it: the cut changed " \
            "nothing it used"


@dataclass
class _Pending:
    ref: Any  # weak reference to the leaf
    event: int  # index of its `untracked` event in the tracer's events
    ev: Any  # the backward's record (its error count)
    info: Any  # the leaf's row (its check's status)
    check: tuple  # the check, as appended to info.checks


class DiscardedCuts:
    """The `untracked` checks waiting on what the script does next with the leaf's .grad (a mixin of ScriptTracer)."""

    events: list
    pending_cuts: dict[int, list[_Pending]]

    def cut_pending(self, t: torch.Tensor, info: Any, ev: Any) -> None:
        """`t`'s check just recorded (the last event, the last check) is `untracked`: wait for its next use, with
        the checks of `t` already waiting (the backwards since added nothing to its .grad: `judge.backward` calls
        `grad_used` where one did)."""
        waiting = self.pending_cuts.get(id(t))
        if waiting is None or waiting[0].ref() is not t:  # (an id reused by a new tensor: the old one's are moot)
            waiting = self.pending_cuts[id(t)] = []
        waiting.append(_Pending(weakref.ref(t), len(self.events) - 1, ev, info, info.checks[-1]))

    def grad_used(self, t: Any) -> None:
        """The script used `t`'s .grad (a step over it, a read, a backward into it): its cut's finding stands."""
        self.pending_cuts.pop(id(t), None)

    def grad_reset(self, t: Any, where: str) -> None:
        """`t`'s .grad was thrown away at `where` before any use: its cut changed nothing the script used."""
        for p in self.pending_cuts.pop(id(t), ()):
            if p.ref() is not t:
                return
            kind, line, text, key, call = self.events[p.event]
            if kind != "untracked":
                continue
            self.events[p.event] = ("discarded", line, text + DISCARDED.format(where=where), key, call)
            p.ev.errors -= 1
            checks = p.info.checks
            for i, c in enumerate(checks):
                if c is p.check:
                    checks[i] = c[:3] + ("discarded",)

    def grads_zeroed(self, args: tuple, where: str) -> None:
        """``zero_`` / ``_foreach_zero_`` on tensors: any that is a waiting leaf's .grad is a reset."""
        targets = args[0] if args and isinstance(args[0], (list, tuple)) else args[:1]
        for waiting in list(self.pending_cuts.values()):
            t = waiting[0].ref()
            g = None if t is None else t.grad
            if g is not None and any(g is x for x in targets):
                self.grad_reset(t, where)
