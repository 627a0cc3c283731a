"""Primitives and the one function that applies them, `bind`.

A `Prim` is a primitive of the tensor engine: how to compute it (on float64
torch tensors, and on numpy object arrays of mpmath or sympy numbers), its
vector-Jacobian product written with other primitives, and how rounding errors
pass through it (for the tolerance).  Rules never call torch directly: they call
`bind`, which hands the primitive to the interpreter on top of a thread-local
stack — by default eager evaluation in torch; `gradcheck_sym.reference` adds
evaluation in mpmath or sympy and a recorder that writes the equations down (so
the reverse sweep can itself be differentiated, for second order).  This is
autodidax's design, on whole tensors.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable

import torch

__all__ = ["Prim", "PRIMS", "register", "vjp_reads", "bind", "Interpreter", "TorchEager", "interpreting", "current", "leaves",
           "set_relief", "relief"]

# vjp(cts, ins, outs, **params) -> one cotangent (or None) per input.
Vjp = Callable[..., list[Any]]
# err(errs, ins, outs, u, **params) -> one error bound per output (absolute, float64 tensors).
Err = Callable[..., list[Any]]


@dataclass(frozen=True)
class Prim:
    """One primitive.

    Attributes:
        name: its name in programs.
        impl: ``(*args, **params) -> value or tuple`` on torch tensors (float64 for the reference).
        obj: the same on numpy object arrays (mpmath / sympy elements), or None.
        vjp: the vector-Jacobian product, written with `bind` (None: not differentiable here).
        err: forward propagation of absolute error bounds plus this primitive's own rounding.
        multiple: whether it returns a tuple of outputs.
        linear: linear in its (float) inputs, so its second derivative is 0.
        needs: its vjp takes ``needed=`` (per input: whether the sweep wants its cotangent — a
            constant's is thrown away) and computes nothing for the others.
        reads: ``(n_inputs, **params) -> positions``: the inputs whose values its vjp reads (None: every input
            and output; a linear primitive reads none, only their shapes) — what a sweep needs kept (`vjp_reads`).
    """

    name: str
    impl: Callable[..., Any]
    obj: Callable[..., Any] | None
    vjp: Vjp | None
    err: Err
    multiple: bool = False
    linear: bool = False
    needs: bool = False
    reads: Callable[..., Any] | None = None


PRIMS: dict[str, Prim] = {}


def vjp_reads(prim: Prim, n_inputs: int, params: dict[str, Any]) -> frozenset[int] | None:
    """The positions of the inputs whose values `prim`'s vjp (and so a sweep's rounding bound) reads; None: every
    input's and output's."""
    if prim.linear:
        return frozenset()
    if prim.reads is None:
        return None
    return frozenset(prim.reads(n_inputs, **params))


def register(prim: Prim) -> Prim:
    if prim.name in PRIMS:
        raise ValueError(f"primitive {prim.name!r} registered twice")
    PRIMS[prim.name] = prim
    return prim


class Interpreter:
    """Applies primitives to values. Subclasses decide what a value is."""

    def process(self, prim: Prim, args: tuple[Any, ...], params: dict[str, Any]) -> Any:
        raise NotImplementedError


class TorchEager(Interpreter):
    """Evaluate at once on torch tensors."""

    def process(self, prim: Prim, args: tuple[Any, ...], params: dict[str, Any]) -> Any:
        return prim.impl(*args, **params)


class _Stack(threading.local):
    def __init__(self) -> None:
        self.items: list[Interpreter] = [TorchEager()]


_STACK = _Stack()


def current() -> Interpreter:
    return _STACK.items[-1]


class interpreting:  # noqa: N801 - used as a context manager, like torch.no_grad
    """``with interpreting(interp): ...`` makes `interp` the one `bind` uses (in this thread)."""

    def __init__(self, interp: Interpreter) -> None:
        self.interp = interp

    def __enter__(self) -> Interpreter:
        _STACK.items.append(self.interp)
        return self.interp

    def __exit__(self, *exc: Any) -> None:
        _STACK.items.pop()


# Called before each primitive is applied while set (`set_relief`): the command line's malloc keeps what is freed,
# and gives it back when the system runs low (`front.allocator.relieve`; a float64 batch of images allocates
# hundreds of megabytes per primitive, and what is kept is fragmented).
_RELIEF: list[Callable[[], Any] | None] = [None]


def set_relief(fn: Callable[[], Any] | None) -> None:
    _RELIEF[0] = fn


def relief() -> None:
    """Where a primitive allocates much in a loop of its own (a convolution a slice of the batch at a time)."""
    fn = _RELIEF[0]
    if fn is not None:
        fn()


def bind(name: str, *args: Any, **params: Any) -> Any:
    """Apply primitive `name` to `args` with the current interpreter."""
    fn = _RELIEF[0]
    if fn is not None:
        fn()
    return _STACK.items[-1].process(PRIMS[name], args, params)


_NESTED = (list, tuple, dict)


def leaves(x: Any) -> list[Any]:
    """The leaves of nested lists, tuples and dicts (a call's arguments), in order (a list: the tracer walks every
    op's arguments several times, and a generator cost twice as much)."""
    if not isinstance(x, _NESTED):
        return [x]
    if type(x) is tuple and len(x) == 2 and type(x[0]) is tuple and type(x[1]) is dict:
        flat = [*x[0], *x[1].values()]  # a call's (args, kwargs) with nothing nested: the common case, at once
        for e in flat:
            if isinstance(e, _NESTED):
                break
        else:
            return flat
    out: list[Any] = []
    stack = [iter(x.values() if isinstance(x, dict) else x)]  # (not recursion: any depth of nesting)
    while stack:
        for e in stack[-1]:
            if isinstance(e, _NESTED):
                stack.append(iter(e.values() if isinstance(e, dict) else e))
                break
            out.append(e)
        else:
            stack.pop()
    return out


def is_tensor(x: Any) -> bool:
    return isinstance(x, torch.Tensor)
