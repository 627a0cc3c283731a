"""One verdict per compared element, vectorised: the ladder both `check_function` and `run` use.

For autograd's values ``a`` against the exact ``r`` (same shape):

1. the cheap test: ``|a - r| <= 128 u |r|`` (plus the caller's rtol/atol);
2. the bound: ``|a - r| <= tol``, ``tol = SAFETY * E + FLOOR_ULPS (u |r| + tiny)`` with ``E`` the rounding
   error bound of the computation (asked for only when the cheap test fails somewhere);
3. what still fails is, in this order: ``nonfinite`` (NaN/inf on a side: ``nonfinite-agree`` when both
   sides agree), ``intended`` (autograd matches the declared deviations' reference, `judge.intended`),
   ``untracked`` (autograd matches the exact derivative with the cuts as constants),
   ``nondifferentiable`` (a kink the user's run sat on reaches the element), else ``mismatch``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..ops.quick import all_true, any_nan, any_true

__all__ = ["Verdicts", "classify", "cheap_floats", "small_pass", "abs_max", "CHEAP_ULPS", "SAFETY", "FLOOR_ULPS",
           "KINDS", "LOOSE", "WIDE"]

F64 = torch.float64
CHEAP_ULPS = 128.0
SAFETY = 8.0
FLOOR_ULPS = 4.0
# A rounding allowance above LOOSE of the gradient's largest entry says nothing about the entry: it is not counted
# as verified (a worst-case bound compounds through every layer of a deep float32 computation; in a ResNet it
# reached 1e35).  Above WIDE of it the worst case says too little, and a measured noise, where there is one and it
# is smaller, stands in for it (a bias gradient 30% off passed under a bound 0.64 of its size, 10,000 times the
# float32 run's own error; a gradient near a float32 fit's optimum is itself mostly rounding, and is still compared
# within its measured noise).
LOOSE = 1.0
WIDE = 0.1
# How far beyond our measured float32 noise the rounding of a formula we did not measure (a custom Function's
# backward) may go before a difference is an error: 128x (a conv + batch-norm Function at batch 256 reached 120x).
FOREIGN_NOISE = 128.0
# Tensors of at most this many elements (a polynomial's 0-d coefficients) are judged on Python floats when
# every element passes (`_small_pass`): the vectorised ladder costs ~40 kernel launches whatever the size.
SMALL = 16
KINDS = ("nonfinite-agree", "nonfinite", "intended", "untracked", "nondifferentiable", "mismatch")


@dataclass
class Verdicts:
    """Masks (same shape as the values) of the elements of each failing kind, and the tolerance used."""

    masks: dict[str, torch.Tensor]
    tol: torch.Tensor | None
    compared: int
    loose: int = 0  # entries that passed only under an allowance above LOOSE of the tensor's largest entry
    # entries outside the measured noise but inside the worst-case bound, where the measured noise is not a sample
    # of the formula that computed the gradient (`classify`'s `foreign`): neither passed nor failed
    unmeasured: int = 0

    @property
    def ok(self) -> bool:
        return not any(any_true(m) for m in self.masks.values())


def cheap(a: torch.Tensor, r: torch.Tensor, u: float, rtol: float | None, atol: float | None) -> torch.Tensor:
    bound = r.abs().mul_(CHEAP_ULPS * u + (rtol or 0.0))
    if atol:
        bound.add_(atol)
    # An infinite reference gets a bound of 0: an infinite or NaN difference is never <= 0, so the
    # element goes on to the ladder (as a NaN difference fails the comparison by itself).
    bound.nan_to_num_(nan=0.0, posinf=0.0)
    return (a - r).abs_() <= bound


def cheap_floats(a: torch.Tensor, r: torch.Tensor, u: float) -> bool:
    """Whether every entry passes `cheap` (no rtol, atol), on Python floats: the same float64 arithmetic (an
    infinite or NaN reference gets a bound of 0, as there) without its kernel launches, for a few entries (a
    training loop's 0-d parameters)."""
    k = CHEAP_ULPS * u
    try:
        pairs = list(zip(a.reshape(-1).tolist(), r.reshape(-1).tolist()))
    except RuntimeError:  # a tensor without storage (autograd's efficient zero tensor): the vectorised test decides
        return False
    for x, y in pairs:
        bound = abs(y) * k
        if bound != bound or bound == math.inf:
            bound = 0.0
        if not abs(x - y) <= bound:
            return False
    return True


def classify(a: torch.Tensor, r: torch.Tensor, *, u: float, tiny: float, bound: Callable[[], Any],
             cut: torch.Tensor | None = None, reach: Callable[[], Any] | None = None,
             rtol: float | None = None, atol: float | None = None, slack: torch.Tensor | None = None,
             intended: torch.Tensor | None = None, kink_anywhere: Callable[[], bool] | None = None,
             scale: float | None = None, measured: Callable[[], Any] | None = None,
             foreign: bool | Callable[[], bool] = False, zero_below: float | None = None,
             context: float | None = None, wide_at: float | None = None) -> Verdicts:
    """The verdict of every element (see the module docstring).

    Only the elements that fail the cheap test go through the rest, gathered into a flat vector (a
    model's gradient has millions of elements, nearly all of which pass it); the masks and the
    tolerance come back in the full shape (the tolerance is 0 where the cheap test passed).

    Args:
        a, r: autograd's and the exact values (float64, same shape).
        u, tiny: the unit roundoff and smallest normal number of the checked dtype.
        bound: () -> the error bound E (a tensor broadcastable to `a`, or None): called only if needed.
        cut: the exact values with the cuts as constants, when there are cuts.
        intended: the values with the declared deviations, when some are declared.
        reach: () -> a bool mask of the elements a kink can reach (or None): called only if needed.
        slack: an absolute allowance added to the tolerance (e.g. the rounding of an accumulation).
        kink_anywhere: () -> whether the run sits on a kink anywhere (for non-finite disagreements only).
        scale: the size of the gradient for the LOOSE rule (default: the largest |r|); a backward
            call passes its largest entry over all leaves (a gradient that is 0 in the math, like a
            bias before batch norm, is rounding noise on the scale of the others).
        measured: () -> a measured rounding noise (absolute, broadcastable to `a`, or None), used in place of
            the bound where it is smaller and the bound is above `wide_at` of the scale (the worst case compounds
            through every layer of a deep float32 net; a measured sample of the noise does not).
        wide_at: above this fraction of the scale a measured noise may stand in for the bound (default LOOSE: only
            where the bound says nothing; a backward of `run` passes WIDE, where its own float32 sweep is the sample).
        context: the call's largest gradient entry (a backward's, over all its leaves): where a measured noise is the
            allowance, the LOOSE rule's scale.
        zero_below: an allowance at most this (absolute) is never loose: the rounding of a gradient that is 0 in
            the math, on the scale of the call's other gradients (default sqrt(u), absolute terms; a small
            gradient, 6e-5 near a fit's optimum, then passed with its sign flipped under a bound 2x its size).
        foreign: (or a () -> bool asked only where it matters) the gradient came through a formula the measured
            sample does not follow (a custom Function's backward: its own rounding can be 100x our formulas' under
            cancellation): an entry outside the measured noise but within FOREIGN_NOISE times it (and the worst-case
            bound) is then counted in `unmeasured`, not failed.
    """
    zb = u**0.5 if zero_below is None else zero_below
    if a.numel() <= SMALL and rtol is None and atol is None and cheap_floats(a, r, u):
        return Verdicts({}, None, a.numel())
    ok = cheap(a, r, u, rtol, atol)
    if all_true(ok):
        return Verdicts({}, None, a.numel())
    if a.numel() <= SMALL:
        e = _unknown_as_wide(bound())
        done = _small_pass(a, r, ok, e, u=u, tiny=tiny, slack=slack, rtol=rtol, atol=atol, scale=scale,
                           zero_below=zero_below, wide_at=wide_at)
        if done is not None:
            return done
        bound = lambda: e  # noqa: E731 - asked for once
    shape = a.shape
    flat = (~ok).reshape(-1).nonzero().squeeze(1)

    def sub(x: Any) -> Any:
        if x is None:
            return None
        x = torch.as_tensor(x, dtype=a.dtype) if not isinstance(x, torch.Tensor) else x
        if x.shape == shape:
            return x.reshape(-1)[flat]
        if x.numel() == 1:  # a scalar allowance: no need to spread it over the whole shape first
            return x.reshape(()).expand(flat.shape)
        return x.expand(shape).reshape(-1)[flat]

    def full(m: torch.Tensor, fill: Any = False) -> torch.Tensor:
        out = torch.full((a.numel(),), fill, dtype=m.dtype)
        out[flat] = m
        return out.reshape(shape)

    A, R = sub(a), sub(r)
    e = _unknown_as_wide(bound())
    worst = None  # the tolerance before a measured noise replaced the bound (where it did)
    sampled_at: Any = False  # where a measured noise is the allowance
    tol = FLOOR_ULPS * (u * R.abs() + tiny)
    if e is not None:
        tol = tol + SAFETY * sub(e)
    if slack is not None:
        tol = tol + sub(slack)
    if measured is not None and e is not None:
        # Where the worst case says too little (above WIDE of the gradient's scale), a measured noise, when
        # smaller, is the allowance.  Only there: a measured sample can miss a kernel's own way of rounding
        # (torch's batch-norm backward against our decomposition of it, a conv bias before batch norm) by
        # more than the safety factor, which a bound that still says something never does.
        if scale is None:
            scale = abs_max(r)
        wide = (tol > zb) & (tol > (LOOSE if wide_at is None else wide_at) * scale)
        if any_true(wide):
            m = measured()
            if m is not None:
                floor = FLOOR_ULPS * (u * R.abs() + tiny) + (0.0 if slack is None else sub(slack))
                sampled = floor + SAFETY * sub(m)
                # the band left undecided through another formula: up to FOREIGN_NOISE times the sample, never
                # beyond the worst case (a backward 1% off, or returning 0, is still a mismatch)
                worst = torch.where(wide, torch.minimum(tol, floor + SAFETY * FOREIGN_NOISE * sub(m)), tol)
                tol = torch.where(wide, torch.minimum(tol, sampled), tol)
                sampled_at = wide
    own = tol  # the rounding allowance alone: the user's rtol/atol are a choice, not a looseness
    extra = (rtol * R.abs() if rtol else 0.0) + (atol or 0.0)
    tol = tol + extra
    finite = torch.isfinite(A) & torch.isfinite(R)
    bad = ~(finite & ((A - R).abs() <= tol))
    unmeasured, inside = 0, None
    if worst is not None and (foreign() if callable(foreign) else foreign):
        inside = bad & finite & ((A - R).abs() <= worst + extra)
        unmeasured = int(inside.sum())
        bad = bad & ~inside
    if worst is not None and any_true(bad):  # (`scale` is set wherever a measured noise was)
        # A gradient 0 in the math (a conv's bias before a batch norm in training: its float32 value is the sum of
        # 32,768 terms that cancel) is rounding alone, and torch's batch-norm kernel rounds those terms its own way:
        # 8x to 14x our recomputation's sample at 5 of a mixup tutorial's 30 calls.  Within the band where a measured
        # noise says too little (FOREIGN_NOISE times it, never beyond the worst case) and within rounding of 0 at the
        # call's scale (`zero_below`), it is that rounding, not an error.
        zeros = bad & finite & (R.abs() <= u * scale) & ((A - R).abs() <= torch.clamp(worst + extra, max=zb))
        bad = bad & ~zeros
    # Passed, but only under a rounding allowance above LOOSE of the gradient's scale: the comparison
    # says nothing there.  (An entry small by cancellation may have a large allowance relative to itself; that
    # is ordinary floating point, so the scale is the tensor's largest entry, not the entry's own value.)
    kinked: Any = False  # computed once, when first needed

    def kinks() -> Any:
        nonlocal kinked
        if kinked is False:
            k = reach() if reach is not None else None
            kinked = None if k is None else sub(k)
        return kinked

    # ... and above `zero_below` (the caller's: sqrt(u) of the largest gradient entry of the call; sqrt(u) in
    # absolute terms if not given): a gradient that is 0 in the math (a normalised scalar, a bias before batch
    # norm) is compared within rounding of 0, which is a statement worth making.
    # (Within rounding of 0 in absolute terms, sqrt(u), only where the allowance is a measured noise, the float32
    # run's own; a worst-case bound that large says nothing: there `zero_below` decides.)
    measured_here = sampled_at is not False
    loose_mask = ~bad & (own > (torch.where(sampled_at, u**0.5, zb) if measured_here else zb)) & (R != 0)
    if inside is not None:
        loose_mask = loose_mask & ~inside
    if any_true(loose_mask):  # (the scale is a pass over the whole tensor: only when it can matter)
        if scale is None:
            scale = abs_max(r)
        # where the allowance is a measured noise (the float32 run's own rounding: as tight as float32 allows), it
        # says nothing only against the call's largest entry (a parameter's gradient crossing 0 in a training loop
        # is mostly rounding at that step)
        against = torch.where(sampled_at, max(context, scale), scale) if measured_here and context is not None \
            else scale
        loose_mask = loose_mask & (own > LOOSE * against)
    if any_true(loose_mask) and reach is not None:
        k = kinks()  # at a jump the run sat on, the allowance is the jump: that is its convention, not looseness
        if k is not None:
            loose_mask = loose_mask & ~k
    loose = int(loose_mask.sum())
    masks: dict[str, torch.Tensor] = {}
    if not any_true(bad):
        return Verdicts(masks, full(tol, 0.0), a.numel(), loose, unmeasured)

    nf = bad & ~finite
    if any_true(nf):
        agree = nf & ((torch.isnan(A) & torch.isnan(R)) | (A == R))
        masks["nonfinite-agree"] = agree
        disagree = nf & ~agree
        k = kinks() if any_true(disagree) else None
        if (k is None or not any_true(disagree & k)) and kink_anywhere is not None and any_true(disagree):
            # The magnitude sweep misses a kink behind a zero partial (the norm of 0: d|x|^2 = 2x = 0);
            # a NaN against a finite value where the run sits on a kink is the kink's convention.
            k = torch.ones_like(disagree) if kink_anywhere() else k
        if k is not None:  # a NaN/inf from a convention at a kink the run sat on (a norm at 0, twice)
            masks["nondifferentiable"] = disagree & k
            disagree = disagree & ~k
        masks["nonfinite"] = disagree
    rest = bad & finite
    for kind, alt in (("intended", intended), ("untracked", cut)):
        if alt is None or not any_true(rest):
            continue
        c = sub(alt)
        near = 2 * tol + FLOOR_ULPS * u * c.abs()
        if kind == "intended":
            # a declared derivative has no rounding bound of its own, and the exact one may have none at all (a
            # straight-through estimator's exact derivative is 0): the cheap test's allowance on the declared
            # gradient's scale (a float32 Linear before a declared STE missed 4 ulps and was a mismatch)
            near = near + CHEAP_ULPS * u * (c.abs() + abs_max(alt))
        # (only where the alternative is another number, nearer autograd's than the exact one is, and by more than
        # half the allowance: where it is the exact gradient itself, as for a cut that does not reach this entry,
        # its doubled allowance would turn a mismatch into a wrong name.  "More than the allowance" was too strict:
        # a ResNet's cut moved a conv weight's gradient by 7.012 under an allowance of 7.018, and float32 rounding
        # of 0.88 on top made it a mismatch.)
        moved = (c - R).abs()
        match = rest & torch.isfinite(c) & ((A - c).abs() <= near) & (moved > (A - c).abs()) & (moved > tol / 2)
        masks[kind] = match
        rest = rest & ~match
    if reach is not None and any_true(rest):
        k = kinks()
        if k is not None:
            nd = rest & k
            masks["nondifferentiable"] = masks["nondifferentiable"] | nd if "nondifferentiable" in masks else nd
            rest = rest & ~nd
    masks["mismatch"] = rest
    return Verdicts({k: full(m) for k, m in masks.items() if any_true(m)}, full(tol, 0.0), a.numel(), loose,
                    unmeasured)


def _small_pass(a: torch.Tensor, r: torch.Tensor, ok: torch.Tensor, e: Any, *, u: float, tiny: float,
                slack: Any, rtol: float | None, atol: float | None, scale: float | None,
                zero_below: float | None = None, wide_at: float | None = None) -> Verdicts | None:
    """The ladder's verdict for a small tensor (a training loop's 0-d parameters) whose every element passes
    under the bound, on Python floats; None whenever anything else may happen (a failure, a NaN, an allowance
    wide enough for the measured noise or the LOOSE rule to matter): the ladder then decides.

    The same numbers as the ladder's, without its ~40 kernel launches on a few elements.
    """
    shape = a.shape
    n = a.numel()
    av, rv, okv = a.reshape(-1).tolist(), r.reshape(-1).tolist(), ok.reshape(-1).tolist()
    ev, sv = _floats(e, shape, a.dtype), _floats(slack, shape, a.dtype)
    top = scale  # the ladder's scale, asked for only where it can matter (as there)
    root = u**0.5 if zero_below is None else zero_below
    tols = []
    for i in range(n):
        if okv[i]:
            tols.append(0.0)
            continue
        x, y = av[i], rv[i]
        t = FLOOR_ULPS * (u * abs(y) + tiny)
        if ev is not None:
            t = t + SAFETY * ev[i]
        if sv is not None:
            t = t + sv[i]
        if not (math.isfinite(x) and math.isfinite(y) and math.isfinite(t)):
            return None
        if t > root:
            top = abs_max(r) if top is None else top
            if t > (LOOSE if wide_at is None else wide_at) * top:  # (a measured noise may stand in: the ladder decides)
                return None
        if rtol:
            t = t + rtol * abs(y)
        if atol:
            t = t + atol
        if not abs(x - y) <= t:
            return None
        tols.append(t)
    return Verdicts({}, torch.tensor(tols, dtype=a.dtype).reshape(shape), n, 0)


def small_pass(a: torch.Tensor, r: torch.Tensor, e: Any, *, u: float, tiny: float, slack: Any = None,
               scale: float | None = None, zero_below: float | None = None,
               wide_at: float | None = None) -> Verdicts | None:
    """`_small_pass` under the allowance `e` (and `slack`), the cheap test included: the verdict when every entry
    passes and nothing else could decide, else None."""
    return _small_pass(a, r, cheap(a, r, u, None, None), e, u=u, tiny=tiny, slack=slack, rtol=None, atol=None,
                       scale=scale, zero_below=zero_below, wide_at=wide_at)


def _floats(x: Any, shape: torch.Size, dtype: torch.dtype) -> list[float] | None:
    if x is None:
        return None
    x = torch.as_tensor(x, dtype=dtype) if not isinstance(x, torch.Tensor) else x
    return x.expand(shape).reshape(-1).tolist()


def _unknown_as_wide(e: Any) -> Any:
    """A rounding bound with its NaN entries as infinite: a bound that overflowed (a word LM's hidden state carried
    over 100 LSTM steps, its worst case past 1e38, then inf times 0) says nothing there, as a wide one does — a
    measured noise may stand in, else the entry is loose — and is never a tolerance no value meets (every entry a
    mismatch, by about 1e-5 of itself)."""
    if isinstance(e, torch.Tensor) and any_nan(e):
        return torch.where(torch.isnan(e), torch.full((), math.inf, dtype=e.dtype), e)
    return e


def abs_max(t: torch.Tensor) -> float:
    """The largest |entry| of `t` among its finite entries (0 for an empty tensor).

    One pass of aminmax (a model's gradients have millions of entries; abs, nan_to_num and max were three
    passes and two copies); the slow way only where a NaN or infinity is present.
    """
    if not t.numel():
        return 0.0
    lo, hi = (float(v) for v in torch.aminmax(t))
    if math.isfinite(lo) and math.isfinite(hi):
        return max(-lo, hi)
    return float(t.abs().nan_to_num(0.0, 0.0, 0.0).max())
