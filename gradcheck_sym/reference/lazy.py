"""A traced value recorded when first read (`front.tracer_lazy` makes them, for ops under a script's no_grad).

A `Lazy` is a `Traced` whose value and variable are computed by a thunk the first time either is asked for: every
reader that reads ``.value`` or ``.var`` gets what recording at once would have given.  Code that only keeps values
alive, or looks a variable up in a finished sweep, peeks (`pending`, `kept_vars`): a value not yet recorded is in no
program, so no sweep reaches it.
"""

from __future__ import annotations

from typing import Any, Callable

from .interpret import Traced

__all__ = ["Lazy", "pending", "kept_vars"]

_VALUE, _VAR = Traced.value, Traced.var  # (the slots a `Lazy` fills when asked)


class Lazy(Traced):
    """A traced value recorded when first read (see the module docstring)."""

    __slots__ = ("thunk", "reads", "depth")

    def __init__(self, thunk: Callable[[], Traced], reads: list[Any], depth: int) -> None:
        self.thunk, self.reads, self.depth = thunk, reads, depth

    @property  # type: ignore[override]
    def value(self) -> Any:
        if self.thunk is not None:
            self.force()
        return _VALUE.__get__(self)

    @property  # type: ignore[override]
    def var(self) -> Any:
        if self.thunk is not None:
            self.force()
        return _VAR.__get__(self)

    def force(self) -> Lazy:
        thunk, self.thunk = self.thunk, None  # (cleared first: a reader inside asks once)
        if thunk is not None:
            h = thunk()
            _VALUE.__set__(self, h.value)
            _VAR.__set__(self, h.var)
            self.reads = []  # (the copies and handles it read are let go)
        return self


def pending(h: Any) -> bool:
    return isinstance(h, Lazy) and h.thunk is not None


def kept_vars(h: Any) -> list[int]:
    """The variables handle `h` keeps alive, without asking for a deferred value: its own, or those a deferred one
    will read."""
    out: list[int] = []
    todo, seen = [h], set()
    while todo:
        x = todo.pop()
        if pending(x):
            if id(x) not in seen:
                seen.add(id(x))
                todo.extend(x.reads)
        elif isinstance(x, Traced):
            out.append(x.var.id)
    return out
