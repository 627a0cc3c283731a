"""The verdict ladder: one compared value at one point, judged from its numbers alone.

Every verdict of the checker comes from `classify`, so the expression engine and a
tensor-level engine judge alike.  Inputs: autograd's value ``a``, the reference ``r``
(exact: high precision where the detailed test computed it), the tolerance ``tol`` of
`tolerance.tolerance`, and optionally the reference with the cuts treated as constants.
The ladder, first match wins:

1. ``kinked``: an op the value flows through is at a kink, tie or jump there
   → ``"kink"`` (the engine records a `nondifferentiable` info per kink node);
2. ``a`` or ``r`` is not finite → ``"nonfinite"``: *info* when both sides agree (both
   NaN, or the same infinity); *warning* when the reference is finite and the dtype's
   range is to blame (``range_issue()`` says how); else *error*;
3. ``|a - r| <= tol`` (or ``a == r``) → ``"ok"``;
4. the cut reference explains autograd, ``|a - cut| <= 2 tol + FLOOR_ULPS u |cut|``
   → ``"untracked"`` (error: a detach / no_grad changes the gradient);
5. the dtype's range explains the difference (``range_issue()``) → ``"range"`` (warning);
6. otherwise ``"stale-graph"`` when the subject assigned through ``.data`` on a tensor
   with a graph (that explains any disagreement), else ``"mismatch"`` (error).

A NaN tolerance (a Hessian entry whose gradients are NaN) means the rounding bound is
unknown at that point: it counts as an infinite tolerance, never as a mismatch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal

from ..report import Severity
from .tolerance import FLOOR_ULPS

__all__ = ["Verdict", "VerdictKind", "classify"]

VerdictKind = Literal["ok", "kink", "nonfinite", "untracked", "range", "mismatch", "stale-graph"]


@dataclass(frozen=True)
class Verdict:
    """The verdict for one value at one point.

    Attributes:
        kind: the rung of the ladder that matched (see the module docstring).
        severity: "error", "warning" or "info" (None for "ok" and "kink": no finding of their own).
        score: ``|a - r| / tol``, to rank the worst examples (inf where not finite).
        why: for "range" and a "nonfinite" warning: how the dtype's range is to blame.
    """

    kind: VerdictKind
    severity: Severity | None
    score: float = 0.0
    why: str = ""


def classify(
    a: float,
    r: float,
    tol: float,
    *,
    u: float,
    cut: float | None = None,
    kinked: bool = False,
    stale: bool = False,
    range_issue: Callable[[], str | None] = lambda: None,
) -> Verdict:
    """Judge autograd's `a` against the reference `r` (see the module docstring).

    Args:
        a: autograd's value.
        r: the exact reference.
        tol: the tolerance at this point.
        u: the unit roundoff of the checked dtype.
        cut: the reference with the cuts treated as constants (None: no cut).
        kinked: the point is at a kink of an op this value flows through.
        stale: the subject has a stale graph (a ``.data`` assignment).
        range_issue: says why the dtype's range is to blame, or None; called lazily.

    Returns:
        The `Verdict`.

    Example:
        >>> classify(1.0, 1.0 + 1e-17, 1e-15, u=2.0**-53).kind
        'ok'
    """
    if kinked:
        return Verdict("kink", None)
    if tol != tol:
        tol = math.inf
    fa, fr = math.isfinite(a), math.isfinite(r)
    diff = abs(a - r) if fa and fr else math.inf
    score = diff / tol if tol > 0 else (0.0 if diff == 0 else math.inf)
    if not (fa and fr):
        if (a != a and r != r) or (not fa and not fr and a == r):
            return Verdict("nonfinite", "info", 0.0)
        why = range_issue() if fr else None
        if why is not None:
            return Verdict("nonfinite", "warning", score, why)
        return Verdict("nonfinite", "error", score)
    if diff <= tol or diff == 0:
        return Verdict("ok", None, score)
    if cut is not None and math.isfinite(cut) and abs(a - cut) <= 2 * tol + FLOOR_ULPS * u * abs(cut):
        return Verdict("untracked", "error", score)
    why = range_issue()
    if why is not None:
        return Verdict("range", "warning", score, why)
    return Verdict("stale-graph" if stale else "mismatch", "error", score)
