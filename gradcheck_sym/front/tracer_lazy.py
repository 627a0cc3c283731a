"""Ops run under the script's ``no_grad`` recorded when their value is first read, not when they run.

A training loop's bookkeeping under ``no_grad`` — a lecture's update-to-data ratios of every parameter at every
step, ``((lr * p.grad).std() / p.data.std()).log10().item()`` — was 70% of the equations the tracer recorded and
bounded, and no backward ever read it: its floats left by ``.item()`` for a list.  Such an op's result is bound to a
`Lazy` handle: a `Traced` whose value and variable are computed (the op's rule lowered, its cut made, its value
checked against torch's) when something first asks for them — an op with grad on that reads it, a backward's
sweep, a float that left by ``.item()`` coming back.  Asking is all it takes: every reader that reads ``.value`` or
``.var`` gets the same handle the op would have made at once, so correctness never depends on who peeks.  The
bookkeeping that only keeps values alive (`kept_vars`) peeks without asking.

What the rule will read is taken when the op runs: copies of its tensor arguments and result (the script may write
them in place before the value is asked for), and the handles of its traced arguments.  Only small results of ops
that make a tensor of their own are deferred (a view shares what it was taken of; an op over large tensors costs
its copies more than its recording); a chain of deferred ops is asked for every `CHAIN` links (an average updated
from itself every step would otherwise hold every step's copies).
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import torch

from ..ops import prims as P
from ..ops.core import interpreting
from ..reference.interpret import Traced
from ..reference.lazy import Lazy, pending
from .tracer_calls import _RANDOM, _walk
from .tracer_sites import Note

__all__ = ["LazyOps"]

# The most entries (arguments and result together) of an op that is deferred.
DEFER_UP_TO = 1 << 14
# A deferred op reading a chain of this many deferred ones has them recorded first.
CHAIN = 8


def _plain(x: Any) -> bool:
    """Whether the containers in `x` are plain lists, tuples and dicts (`_copy_tree` copies the tensors in those)."""
    if type(x) in (list, tuple):
        return all(_plain(e) for e in x)
    if type(x) is dict:
        return all(_plain(e) for e in x.values())
    return not isinstance(x, (list, tuple, dict))


def _copy_tree(x: Any, copy: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    if isinstance(x, torch.Tensor):
        return copy(x)
    if type(x) in (list, tuple):
        return type(x)(_copy_tree(e, copy) for e in x)
    if type(x) is dict:
        return {k: _copy_tree(v, copy) for k, v in x.items()}
    return x


class LazyOps:
    """Deferring ops under the script's no_grad (a mixin of `Tracer`: it works on the tracer's attributes)."""

    def _deferrable(self, name: str, site: int, target: Any, out: Any, args: tuple, kwargs: dict) -> bool:
        s = self.sites[site]
        if s.grad != "no_grad" or s.custom is not None or self.call is not None or target is not None:
            return False
        if not isinstance(out, torch.Tensor) or not out.is_floating_point() or out.layout != torch.strided or \
                out.is_complex() or name.rstrip("_") in _RANDOM or out._base is not None or not _plain((args, kwargs)):
            return False
        size, ptr = out.numel(), out.untyped_storage().data_ptr()
        for x in _walk((args, kwargs)):
            if isinstance(x, torch.Tensor):
                if x is out or x.layout != torch.strided or x.is_complex() or \
                        (x.numel() and x.untyped_storage().data_ptr() == ptr):
                    return False  # (its result shares storage with an argument: a view, or the argument itself)
                size += x.numel()
            elif isinstance(x, float) and x in self.items:
                return False  # (a number that left by .item(): which handle it has may change before it is asked)
        return size <= DEFER_UP_TO

    def _defer(self, func: Any, base: str, swap: bool, args: tuple, kwargs: dict, out: torch.Tensor, site: int,
               kind: str, region: int, line: int) -> Lazy:
        """`out`'s handle, recorded when first read (see the module docstring)."""
        pairs: list[tuple[torch.Tensor, Any]] = []

        def copy(x: torch.Tensor) -> torch.Tensor:
            c = x.detach().clone()
            if x.is_floating_point() and self.is_traced(x):
                pairs.append((c, self.v(x)))
            return c

        args_c, kwargs_c = _copy_tree(args, copy), _copy_tree(kwargs, copy)
        out_c, dtype = out.detach().clone(), self.rec.dtype
        reads = [h for _, h in pairs]
        chained = [h for h in reads if pending(h)]
        depth = 1 + max((h.depth for h in chained), default=0)
        if depth > CHAIN:
            for h in chained:
                h.force()
            depth = 1

        def thunk() -> Traced:
            return self._late(func, base, swap, args_c, kwargs_c, out_c, site, dtype, kind, region, line, pairs)

        return Lazy(thunk, reads, depth)

    def _late(self, func: Any, base: str, swap: bool, args: tuple, kwargs: dict, out: torch.Tensor, site: int,
              dtype: str, kind: str, region: int, line: int, pairs: list[tuple[torch.Tensor, Any]]) -> Traced:
        """Record a deferred op now, as `Tracer._record` would have then, with the copies taken then."""
        saved = (self.out, self.name, self.func, self.args, self.kwargs, self.before, self.rng_state, self.call,
                 self._site, self.rec.dtype)
        try:
            with self._late_at(site):
                for c, h in pairs:
                    self._bind(c, h.force() if isinstance(h, Lazy) else h)
                self.out, self.name, self.func, self.args, self.kwargs = out, base, func, args, kwargs
                self.before, self.rng_state, self.call, self._site = None, None, None, site
                self.rec.dtype = dtype
                try:
                    handles = self._lower(base, swap, args, kwargs, site)
                    h = handles[0] if isinstance(handles, (tuple, list)) else handles
                    h = self._cut(kind, h, site, region, line)
                    if not isinstance(h, Traced):  # (a constant of traced values: a value of its own)
                        h = P.fixed(self.const(out))
                    self._sample_value(out, h, site)
                except Exception as exc:  # noqa: BLE001 - our failure: a note and an opaque value, as `_internal` does
                    text = self._internal_text(base, site, exc)
                    self.notes.append(Note("internal", site, text))
                    h = P.opaque(*[h for _, h in pairs], value=out, reason=text)
                self._keep_user_value(out, h, copied=True)
                return h
        finally:
            (self.out, self.name, self.func, self.args, self.kwargs, self.before, self.rng_state, self.call,
             self._site, self.rec.dtype) = saved

    @contextlib.contextmanager
    def _late_at(self, site: int) -> Iterator[None]:
        """Recording late, as at `site` then: into the tracer's own program, outside any mode (a value may be asked
        for where ours is active), grad off; whatever the op being recorded now had set is given back."""
        saved = self.rec.site
        try:
            with torch._C.DisableTorchFunction(), torch.no_grad(), interpreting(self.rec):
                self.rec.site = site
                yield
        finally:
            self.rec.site = saved

    def _ask_args(self, args: tuple, kwargs: dict) -> None:
        """Record the deferred values an op reads before its own equations (a rule that returns an argument's handle
        is told apart by its variable's number; a custom Function's equations are counted from the first)."""
        for x in _walk((args, kwargs)):
            if isinstance(x, torch.Tensor):
                r = self.recs.get(id(x))
                if r is not None and r.tensor is x:
                    for h in (r.handle, r.root.handle if r.root is not None else None):
                        if pending(h):
                            h.force()
            elif isinstance(x, float):
                h = self.items.get(x)
                if pending(h):
                    h.force()

    def _lazy_cut(self, kind: str, h: Any, site: int) -> Any:
        """A cut of `h` through a value (`.data`), recorded when first read."""
        if not isinstance(h, Traced):
            return h

        def thunk() -> Traced:
            with self._late_at(site):
                return self._cut(kind, h.force() if isinstance(h, Lazy) else h, site, -site - 1)

        return Lazy(thunk, [h], h.depth + 1 if pending(h) else 1)

    def _lazy_item(self, h: Lazy, value: float, site: int) -> None:
        """`.item()` of a deferred value: the float's handle deferred as well."""
        def thunk() -> Traced:
            with self._late_at(site):
                return self._cut(".item()", P.take(P.reshape(h.force(), (1,)), torch.tensor(0)), site, -site - 1)

        self.items[value] = Lazy(thunk, [h], h.depth + 1)
