"""The rules' values checked against torch's, as the tracer records (`Tracer` inherits `ValueChecks`).

A rule's float64 value must reproduce the value torch computed for the user: to a few ulps, or within the rounding
bound of everything recorded before it.  Else it is our error (an internal note, and the value opaque), never the
user's.  Also here: the dtype an op's rounding is charged in (`_working_dtype`).
"""

from __future__ import annotations

from typing import Any

import torch

from ..ops.quick import all_true
from ..reference.interpret import UNIT_ROUNDOFF, Traced
from .tracer_calls import _CASTS, _dtype_name, _walk

__all__ = ["ValueChecks", "CHECK_ALWAYS", "CHECK_EVERY", "CHECK_ELEMENTS"]

F64 = torch.float64
_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_EPS = {d: torch.finfo(d).eps for d in _FLOATS}
_DTYPE_NAMES = {d: str(d).replace("torch.", "") for d in _FLOATS}


def _eps(dtype: torch.dtype) -> float:
    e = _EPS.get(dtype)
    return e if e is not None else torch.finfo(dtype).eps


# A rule's value is checked against torch's the first CHECK_ALWAYS times a site makes a tensor of one shape and
# dtype, then every CHECK_EVERY-th time: the formula is the same at every pass of a loop, and the check (with the
# rounding bounds it needs where float32 and float64 differ by more than a few ulps) was a tenth of the cost of
# recording a training loop.  A large tensor counts for more: once CHECK_ELEMENTS entries of a site's tensors were
# compared, only every CHECK_EVERY-th is (a conv's 9 million outputs at batch 256 are a sample far larger than 16
# small tensors; comparing them at every step was a sixth of a tutorial's checked run).
CHECK_ALWAYS = 16
CHECK_EVERY = 32
CHECK_ELEMENTS = 1 << 22


def _rows(t: torch.Tensor) -> int | None:
    """How many of a tensor's first rows (along its first dimension) the value check compares, where it has more
    than CHECK_ELEMENTS entries: a rule computes every row of a batch alike, and the whole was a tenth of a conv +
    batch-norm tutorial's checked run; None: all of it."""
    if t.numel() <= CHECK_ELEMENTS or t.dim() == 0 or t.shape[0] <= 1:
        return None
    rows = -(-CHECK_ELEMENTS // (t.numel() // t.shape[0]))
    return rows if rows < t.shape[0] else None


class ValueChecks:
    """The value check and the working dtype, for `Tracer` (its `rec`, `value_checks` and `is_traced`)."""

    rec: Any
    value_checks: dict[tuple[int, tuple[int, ...], torch.dtype], tuple[int, int]]

    def _sample_value(self, t: torch.Tensor, h: Any, site: int) -> None:
        """`_check_value` on the first CHECK_ALWAYS tensors of a (site, shape, dtype), then every CHECK_EVERY-th."""
        key = (site, tuple(t.shape), t.dtype)
        n, seen = self.value_checks.get(key, (0, 0))
        n += 1
        if (n <= CHECK_ALWAYS and seen < CHECK_ELEMENTS) or n % CHECK_EVERY == 0:
            self._check_value(t, h, site)
            seen += t.numel()
        self.value_checks[key] = (n, seen)

    def _working_dtype(self, base: str, result: torch.Tensor, args: tuple, kwargs: dict) -> str:
        """The dtype the op's rounding is charged in: its result's, or a coarser one a traced input has (torch
        computes part of a mixed op, such as loss(x32, target64), in the input's precision); a cast's is its
        result's."""
        coarsest = result.dtype
        if base not in _CASTS:
            eps = _eps(coarsest) if coarsest.is_floating_point else 0.0
            for x in _walk((args, kwargs)):
                if isinstance(x, torch.Tensor) and x.dtype != coarsest and x.is_floating_point() and \
                        _eps(x.dtype) > eps and self.is_traced(x):
                    coarsest, eps = x.dtype, _eps(x.dtype)
        return _DTYPE_NAMES.get(coarsest) or str(coarsest).replace("torch.", "")

    def _check_value(self, t: torch.Tensor, h: Any, site: int) -> None:
        """The rule's float64 value must reproduce torch's: else it is our error (a note, and opaque)."""
        if not isinstance(h, Traced) or tuple(h.value.shape) != tuple(t.shape):
            if isinstance(h, Traced):
                raise RuntimeError(f"rule gave shape {tuple(h.value.shape)}, torch {tuple(t.shape)}")
            return
        mine, t = h.value, t.detach()
        rows = _rows(t)
        if rows is not None:  # a large batch: its first rows (a convolution's 75 million outputs at batch 2,048)
            mine, t = mine[:rows], t[:rows]
        # Most ops agree to the last bit once the reference is rounded to the user's dtype: one
        # comparison instead of the whole test below.
        if t.is_floating_point() and torch.equal(mine if mine.dtype == t.dtype else mine.to(t.dtype), t):
            return
        theirs = t.to(F64)
        u = UNIT_ROUNDOFF.get(_dtype_name(t), 2.0**-53)
        # below the dtype's smallest normal number results are subnormal: absolute, not relative, precision
        tol = 64 * u * mine.abs() + torch.finfo(t.dtype).tiny
        diff = (mine - theirs).abs()
        if all_true(diff <= tol):
            return  # every element within a few ulps: the rounding bound is not needed
        errs = self.rec.bounds()  # (computed when first asked for: the equations recorded since)
        err = errs.get(h.var.id) if errs is not None else None
        if rows is not None and isinstance(err, torch.Tensor) and err.dim() == mine.dim() and err.shape[0] > 1:
            err = err[:rows]
        if err is not None:
            tol = tol + 16 * err
            if all_true(diff <= tol):
                return  # every element within the bound (a NaN or infinity on either side goes on below)
        both = torch.isfinite(mine) & torch.isfinite(theirs)
        bad = both & (diff > tol)
        nan_mismatch = torch.isnan(theirs) != torch.isnan(mine)
        if bool(bad.any()) or bool((nan_mismatch & (mine.abs() < torch.finfo(t.dtype).max)).any()):
            worst = float(((mine - theirs).abs() / (mine.abs() + 1e-300)).nan_to_num(1.0).max()) if mine.numel() else 0
            raise RuntimeError(f"the rule's value differs from torch's (relative {worst:.3g})")
