"""The custom Function calls a script made, kept so that their backward can be run again in float64.

In float32, a custom Function's backward rounds by its own formula (a fused batch norm's cancels far more
than ours): a difference from the exact gradient beyond the rounding we measure for our formulas, but within
the worst-case bound, cannot be told from a wrong formula by the comparison alone.  `judge.replay` settles it
by calling the Function again on the same inputs in float64; for that, each call keeps what its ``apply`` got,
with the tensors as the program's handles (their float64 values), and which program variables it made.

Only calls on tensors of a coarser dtype than float64 are kept (in float64 the bound is tight: nothing to
settle).  A tensor argument is tied to its handle once an op of the call has run (the call's first op makes a
parameter used there for the first time a leaf): nothing is recorded from here, in the middle of another op.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any

import torch

from ..reference.interpret import Traced

__all__ = ["CustomCall", "CustomCalls"]

F64 = torch.float64
_UNSEEN = object()  # an argument not tied to a handle yet


@dataclass
class CustomCall:
    """One ``cls.apply(*args, **kwargs)``.

    Attributes:
        cls: the Function class.
        args, kwargs: as apply got them, each tensor replaced by its handle: a `Traced` (a program
            variable), a float64 copy (a constant), or None where the tracer could not tell (no replay then).
        line: the line of the script that called ``apply``.
        made: the program variables its forward's equations made.
    """

    cls: Any
    args: list
    kwargs: dict
    line: int = 0  # the line that called apply()
    made: set[int] = field(default_factory=set)
    pending: dict[Any, Any] = field(default_factory=dict)  # position -> weak reference to the tensor given there


class CustomCalls:
    """The calls of one script tracer (see the module docstring)."""

    def __init__(self) -> None:
        self.calls: dict[int, CustomCall] = {}
        self.given_up: dict[Any, str] = {}  # a Function class whose replay timed out -> why (not tried again)

    def started(self, call: int, cls: Any, args: tuple, kwargs: dict, line: int = 0) -> None:
        given = list(enumerate(args)) + list(kwargs.items())
        floats = [x.dtype for _, x in given if isinstance(x, torch.Tensor) and x.is_floating_point()]
        if not floats or all(d == F64 for d in floats):
            return  # nothing to settle in float64 (or nothing to replay)
        c = CustomCall(cls, list(args), dict(kwargs), line)
        for key, x in given:
            if isinstance(x, torch.Tensor):
                if type(x) is not torch.Tensor and not isinstance(x, torch.nn.Parameter):
                    return  # a subclass: its own semantics (no replay)
                c.pending[key] = weakref.ref(x)
                self._put(c, key, _UNSEEN)
        self.calls[call] = c

    def made(self, tracer: Any, call: int, eqns: Any) -> None:
        """Equations `eqns` belong to `call`: their outputs are its variables, and its arguments the ops so far
        used are tied to their handles."""
        c = self.calls.get(call)
        if c is None:
            return
        for e in eqns:
            c.made.update(v.id for v in e.outputs)
        for key, ref in list(c.pending.items()):
            x = ref()
            if x is None:
                self._put(c, key, None)  # gone before it could be tied: no replay
                del c.pending[key]
                continue
            r = tracer.recs.get(id(x))
            h = r.handle if r is not None and r.tensor is x else _UNSEEN
            if isinstance(h, Traced):
                self._put(c, key, h)
            elif x.requires_grad:
                continue  # a tensor autograd follows, not used by an op of the call yet
            elif (h is _UNSEEN or isinstance(h, torch.Tensor)) and x.layout == torch.strided:
                self._put(c, key, x.detach().to(F64, copy=True))  # a constant: its value as the call used it
            else:
                self._put(c, key, None)  # a value the tracer handles otherwise: no replay
            del c.pending[key]

    @staticmethod
    def _put(c: CustomCall, key: Any, value: Any) -> None:
        if isinstance(key, int):
            c.args[key] = value
        else:
            c.kwargs[key] = value

    def prune(self, needed: set[int]) -> None:
        """Forget the calls none of whose variables a live tensor still needs."""
        for k in [k for k, c in self.calls.items() if not (c.made & needed)]:
            del self.calls[k]
