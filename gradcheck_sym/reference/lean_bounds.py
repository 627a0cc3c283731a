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
from ..ops.quick import all_finite
from .interpret import (UNIT_ROUNDOFF, Traced, compact_bound, narrow_bound, narrow_value, sweep, traced_values,
                        wide_bound)

__all__ = ["Bounded", "sweep_bounds"]


class Bounded(Traced):
    """A value of the sweep, its variable, and the bound of its rounding (None: exact)."""

    __slots__ = ("err",)

    def __init__(self, value: Any, var: Var, err: Any) -> None:
        super().__init__(value, var)
        self.err = err


# Bounds computed in float32 (`narrow`) are made this much larger at the end: each of their sums of non-negative
# terms is off by some log2(terms) float32 roundings in torch's kernels (a weight gradient's 2 million terms: 21, or
# 1.3e-6 of it), and the values they are computed from are off by about the bound itself, which moves the bound by
# a float32 rounding of it (second order).  1/64 is ten thousand times that.
NARROW_SLACK = 1.0 + 2.0**-6


class _BoundsOnly(Interpreter):
    """Evaluates each primitive and its bound (`Recorder`'s arithmetic), writing nothing down; with `narrow`, in
    float32 (a float32 program's bounds: see `sweep_bounds`)."""

    def __init__(self, next_id: int, errs: dict[int, Any], narrow: bool = False) -> None:
        self.next_id = next_id
        self.errs = errs  # the forward program's bounds, by variable id (read only)
        self.dtype = "float64"  # the user's dtype of the equation being swept (set by `sweep`)
        self.site = -1
        self.narrow = narrow

    def process(self, prim: Any, args: tuple[Any, ...], params: dict[str, Any]) -> Any:
        values, in_errs = [], []
        traced_in = False
        narrow = self.narrow
        for a in args:
            if isinstance(a, Traced):
                e = a.err if isinstance(a, Bounded) else self.errs.get(a.var.id)
                values.append(narrow_value(a.value) if narrow else a.value)
                in_errs.append(narrow_bound(e) if narrow else wide_bound(e))
                traced_in = True
            else:
                values.append(narrow_value(a) if narrow else a)
                in_errs.append(None)
        out = prim.impl(*values, **params)
        if not traced_in and prim.name != "opaque":
            return out  # constants only: folded, as the recorder folds them
        outs = out if prim.multiple else (out,)
        if narrow:
            outs = tuple(narrow_value(o) for o in outs)  # (an opaque value is kept in float64)
        errs: list[Any] = [None] * len(outs)
        if all(isinstance(o, torch.Tensor) and o.is_floating_point() for o in outs):
            errs = list(prim.err(in_errs, values, list(outs), UNIT_ROUNDOFF.get(self.dtype, 2.0**-53), **params))
        made = []
        for o, r in zip(outs, errs):
            made.append(Bounded(o, Var(self.next_id, tuple(o.shape), self.dtype), compact_bound(r)))
            self.next_id += 1
        return tuple(made) if prim.multiple else made[0]


def sweep_bounds(program: Program, env: dict[int, Any], seeds: dict[int, Any], *, errs: dict[int, Any],
                 keep: Collection[int], narrow: bool = False) -> dict[int, Any]:
    """The bound of each cotangent in `keep` (variable id -> bound), as `record_sweep(..., errs=errs)` would give
    them (`errs`: the forward program's bounds, by variable id).

    With `narrow`, for a program the user computed in float32: the sweep's values and bounds in float32, each
    bound made `NARROW_SLACK` larger at the end.  The bounds charge the user's float32 rounding, some 2**-24 of
    each term and more; ours, on sums of non-negative terms, is a few float32 roundings of the bound.  A conv +
    batch-norm tutorial's bounds at batch 2,048: float32 convolutions are 1.5-5x faster than float64 ones, which
    take columns a slice of the batch at a time."""
    next_id, traced_env = traced_values(program, env, seeds, errs)
    interp = _BoundsOnly(next_id, errs, narrow)
    # each seed a value of its own, exact (as `record_sweep` makes them)
    start = {}
    for vid, s in seeds.items():
        start[vid] = Bounded(narrow_value(s) if narrow else s, Var(interp.next_id, tuple(s.shape), "float64"), None)
        interp.next_id += 1
    res = sweep(program, traced_env, start, recorder=interp, keep=keep)  # type: ignore[arg-type]
    found = {vid: c.err for vid, c in res.cts.items() if vid in keep and isinstance(c, Bounded)}
    if narrow:
        if not all(not isinstance(e, torch.Tensor) or all_finite(e) for e in found.values()):
            # past float32's range somewhere (a forward bound of 1e39 made infinite, and infinity times a zero
            # cotangent NaN in a product's rule: found by review): in float64, as without `narrow`
            del res, start, traced_env
            return sweep_bounds(program, env, seeds, errs=errs, keep=keep)
        found = {vid: None if e is None else compact_bound(wide_bound(e) * NARROW_SLACK) for vid, e in found.items()}
    return found
