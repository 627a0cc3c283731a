"""The reference in 50-digit arithmetic, for the elements the detailed test still doubts.

The same program and the same VJP rules, run by the object-array interpreter on mpmath numbers:
forward values, then the reverse sweep.  It costs per element what the float64 path costs per
tensor, so it runs only for small programs (`MAX_ELEMENTS` values in all) and only when a float64
check found a difference the float64 reference could share the blame for.
"""

from __future__ import annotations

from typing import Any

import mpmath
import numpy as np
import torch

from ..ir.program import Program
from .evaluate import MP_LOCK
from .interpret import ObjectEager, evaluate, sweep

__all__ = ["precise_cotangents", "MAX_ELEMENTS", "DIGITS"]

DIGITS = 50
# Values (of every variable of the program) computed in mpmath at most: a few seconds' work.
MAX_ELEMENTS = 20_000


def program_size(program: Program) -> int:
    return sum(int(np.prod(v.shape)) if v.shape else 1 for e in program.eqns for v in e.outputs)


def precise_cotangents(program: Program, env: dict[int, Any], seeds: dict[int, torch.Tensor],
                       cut: Any = False) -> dict[int, torch.Tensor] | None:
    """The inputs' cotangents in `DIGITS`-digit arithmetic (rounded to float64), or None when the program
    is too large or a primitive has no object-array rule."""
    if program_size(program) > MAX_ELEMENTS:
        return None
    try:
        with MP_LOCK, mpmath.workdps(DIGITS):  # mpmath's global context: one such sweep at a time
            inputs = [_obj(env[v.id]) for v in program.inputs]
            values = evaluate(program, inputs, interp=ObjectEager())
            obj_seeds = {k: _obj(s) for k, s in seeds.items()}
            res = sweep(program, values, obj_seeds, cut=cut, interp=ObjectEager())
    except Exception:  # noqa: BLE001 - a refinement only: without it the float64 verdict stands
        return None
    out = {}
    for v in program.inputs:
        c = res.cts.get(v.id)
        if c is not None:
            out[v.id] = torch.tensor(np.vectorize(lambda z: float(z), otypes=[float])(np.asarray(c, dtype=object)),
                                     dtype=torch.float64).reshape(v.shape)
    return out


def _obj(t: Any) -> Any:
    if isinstance(t, torch.Tensor):
        arr = t.detach().to(torch.float64).numpy() if t.is_floating_point() else t.detach().numpy()
        if t.is_floating_point():
            return np.vectorize(lambda z: mpmath.mpf(float(z)), otypes=[object])(arr) if arr.size else \
                arr.astype(object)
        return arr.astype(object)
    return t

