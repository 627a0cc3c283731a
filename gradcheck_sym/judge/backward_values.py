"""What a backward's verdict reads besides the ladder (`judge.backward`): the exact .grad before it, a sparse
.grad made dense, whether a hook that changed a gradient sits downstream, and the rounding of the sums that
transpose a small tensor's broadcasts (a lower bound of its rounding-error bound)."""

from __future__ import annotations

import math
import statistics
from collections import deque
from typing import Any, Callable

import torch

from ..ir.program import Var
from ..ops.prims_base import gamma_sum
from ..ops.quick import all_finite, all_true, any_true
from ..reference.interpret import UNIT_ROUNDOFF, Traced, const_value
from ..reference.lazy import pending
from ..reference.rounded import rounded_sweep
from .elements import FLOOR_ULPS, SAFETY, WIDE, Verdicts, abs_max, small_pass

__all__ = ["TypicalNoise", "total_before", "dense", "hooked_downstream", "consumers", "last_sums", "within_last_sums",
           "own_scale", "measured_noise", "accumulation_slack", "exact_gradient", "largest_exact", "same_grad"]


def total_before(info: Any, before: Any, u: float) -> Any:
    """The exact value of .grad before this backward: None (no gradient or zeroed), the verified total,
    or False when unknown (an unverified earlier gradient, or .grad changed since in a way not seen)."""
    if before is None or not any_true(before):
        return None
    prev = info.exact_total
    if prev is None:
        return False
    prev = prev.expand_as(before)
    if all_true((before - prev).abs() <= 64 * u * (before.abs() + prev.abs()) + 1e-300):
        return prev
    # .grad left as the last backward made it (its rounding since a reset is more than 64 ulps of an entry that
    # cancels, as in gradient accumulation): the exact total is still the one that backward's check left
    seen = info.grad_seen
    if isinstance(seen, torch.Tensor) and seen.shape == before.shape and torch.equal(seen, before):
        return prev
    return False


def dense(g: torch.Tensor) -> torch.Tensor:
    """A sparse .grad (nn.Embedding(sparse=True)) as the dense tensor it stands for."""
    return g if g.layout == torch.strided else g.to_dense()


def hooked_downstream(tr: Any, var: Var | None, index: int) -> bool:
    """Whether a tensor hook that changed a gradient in backward `index` sits downstream of `var` (between it
    and the output)."""
    if var is None:
        return False
    hooked = [r for r in tr.recs.values() if r.tensor is not None and id(r.tensor) in tr.infos
              and tr.infos[id(r.tensor)].hooks and tr.infos[id(r.tensor)].hook_changed == index
              and isinstance(r.handle, Traced) and not pending(r.handle)]
    if not hooked:
        return False
    for r in hooked:
        need = {r.handle.var.id}
        for e in reversed(tr.rec.eqns):
            if any(v.id in need for v in e.outputs):
                need.update(a.id for a in e.inputs if isinstance(a, Var))
        if var.id in need:
            return True
    return False


# Above this many bytes of recorded values, a small gradient goes to the ladder at once (see `within_last_sums`).
LAST_SUMS_BYTES = 32 << 20


def consumers(program: Any) -> dict[int, list[tuple[Any, int]]]:
    """variable id -> the elementwise equations of `program` that read it, with the argument's position."""
    out: dict[int, list[tuple[Any, int]]] = {}
    for e in program.eqns:
        if e.prim == "ew":
            for i, a in enumerate(e.inputs):
                if isinstance(a, Var):
                    out.setdefault(a.id, []).append((e, i))
    return out


def last_sums(program: Any, reads: dict[int, list[tuple[Any, int]]], cts: dict[int, Any], values: dict[int, Any],
              var: Var, typical: bool = False) -> torch.Tensor | None:
    """A lower bound of the rounding-error bound `record_sweep` tracks for `var`'s cotangent: the rounding of the
    sums that transpose its broadcasts alone, gamma_sum(n) u sum|terms|, for each elementwise equation reading it
    whose partial is a plain factor (1, -1 or another argument: a sum, a difference, a product), where the sweep's
    term is the cotangent or its product with that argument (`ops.prims._ew_vjp`) and its sum is charged exactly
    so (`ops.prims_movement`); every other part of that bound is >= 0.  A 0-d parameter's gradient near a fit's
    optimum is a sum of 2,000 terms that cancel: this part alone explains its rounding, without writing the sweep
    down.  None when nothing of that kind reads `var`.  With `typical`, u sum|terms| instead: the size of the
    rounding a sum of them shows in any order (a random walk of n roundings of partial sums), not its worst case."""
    return last_sums_pair(program, reads, cts, values, var)[1 if typical else 0]


def last_sums_pair(program: Any, reads: dict[int, list[tuple[Any, int]]], cts: dict[int, Any],
                   values: dict[int, Any], var: Var) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """`last_sums` of `var` and `last_sums(typical=True)`, from one pass over its terms."""
    size = math.prod(var.shape)
    if size == 0:
        return None, None
    total = typical = None
    for e, i in reads.get(var.id, ()):
        g = cts.get(e.outputs[0].id)
        if not isinstance(g, torch.Tensor):
            continue
        n = math.prod(e.outputs[0].shape) // size
        if n <= 1:
            continue  # no sum: nothing rounded here
        d = e.params["fn"].partial(i)
        if d.arg is not None:
            other = e.inputs[d.arg]
            o = values[other.id] if isinstance(other, Var) else const_value(program.consts[other.index])
            if isinstance(o, torch.Tensor) and not o.is_floating_point():
                continue  # (a mask's factor: left out, which keeps this a lower bound)
            terms = g.abs() * (o.abs() if isinstance(o, torch.Tensor) else abs(float(o)))
        elif (d.is_one and not d.rel_err) or d.is_minus_one:
            terms = g.abs()
        else:
            continue  # (its share is left out, which keeps this a lower bound)
        if tuple(terms.shape) != tuple(e.outputs[0].shape):
            continue
        part = terms.sum() if not var.shape else terms.sum_to_size(var.shape)
        unit = UNIT_ROUNDOFF.get(e.outputs[0].dtype, 2.0**-53)
        typical = part * unit if typical is None else typical + part * unit
        part = part.mul_(gamma_sum(n) * unit)
        total = part if total is None else total + part
    return total, typical


def within_last_sums(tr: Any, plan: Any, t: torch.Tensor, var: Var | None, exact: Any, a: torch.Tensor,
                     r: torch.Tensor, base: Any, cut: Any, u: float, tiny: float, scale: float | None,
                     foreign: Callable[[], bool]) -> Verdicts | None:
    """The verdict of a small gradient whose every entry is within the rounding of the sums that transpose its
    broadcasts alone (`last_sums`, a lower bound of the rounding bound), that allowance small beside the gradient
    (as `elements.small_pass` asks), and within the measured noise where there is one; else None, and the ladder
    decides.  A pass here passes the ladder's own allowances, the whole bound or where that is wide the smaller of
    it and the measured noise (4% off near a fit's optimum is within the last sums' worst case, not within the
    float32 run's own rounding), and is never a loose one (its allowance is at most a tenth of the gradient).

    A 0-d parameter's gradient near a fit's optimum cancels over its 2,000 terms: a fifth of a dynamic net's
    150,000 comparisons had the sweep written down for a bound this part answers.  Not where anything but the
    plain reference is compared (a cut, a declaration, a second-order backward), nor through a custom Function
    (`foreign`: its own sums round differently)."""
    if plan.create or plan.intended is not None or plan.program is None or var is None or \
            not isinstance(exact, torch.Tensor) or (cut is not None and not torch.equal(cut, r)):
        return None
    if plan.bounds is not None or ((plan.rounded64 if t.dtype == torch.float64 else plan.rounded) is None and
                                   tr.rec.nbytes > LAST_SUMS_BYTES):
        # the bound is at hand already; or the measured noise would be a recomputation of a model's whole
        # backward in its dtype, where the ladder's own order (the bound, the noise only where that is wide) costs less
        return None
    if tr.call_of and foreign():
        return None
    if plan.reads is None:
        plan.reads = consumers(plan.program)
    e, own_typical = last_sums_pair(plan.program, plan.reads, plan.cts, tr.rec.values, var)
    if e is None:
        return None
    own, zero_below = own_scale(r, scale, u)
    slack = accumulation_slack(base, a, u)
    done = small_pass(a, r, e, u=u, tiny=tiny, slack=slack, scale=own, zero_below=zero_below, wide_at=WIDE)
    if done is None:
        return None
    # The measured noise is never below the typical rounding of those sums (`measured_noise` takes the larger):
    # within that alone, the noise would pass it too, and the float32 recomputation of the backward is not needed
    # (near a dynamic net's optimum, two backwards in five are decided here; the recomputation was a tenth of its run)
    floor = _last_sums_of(tr, plan, var, own_typical)
    within = (a - r).abs()
    least = FLOOR_ULPS * (u * r.abs() + tiny) + (0.0 if slack is None else slack)
    if floor is not None and tuple(floor.shape) == tuple(r.shape) and all_true(within <= least + SAFETY * floor):
        return done
    m = measured_noise(tr, plan, t, var, r, floor=floor)
    if m is not None and not all_true(within <= least + SAFETY * m):
        return None
    return done


def measured_noise(tr: Any, plan: Any, t: torch.Tensor, var: Var | None, r: torch.Tensor,
                   floor: Any = False) -> torch.Tensor | None:
    """A measured rounding noise of `t`'s gradient (exact value `r`): the distance of our own formulas recomputed in
    its dtype (`rounded_sweep`, once per backward) from the exact value, plus its largest entry; None where nothing
    was measured.  `floor`: `_last_sums_of(tr, plan, var)`, where the caller has it already.

    The worst-case bound compounds through every layer of a deep float32 net (a batch-norm MLP's reached 1e8 times
    the rounding torch's run shows); the forward and the sweep recomputed in the user's dtype by our own formulas
    are a sample of that rounding, close to torch's (0.65x to 1.9x its largest entry on that MLP): its largest entry
    is allowed everywhere in the tensor.  A float64 gradient's rounding cannot be sampled against a float64
    reference: it is recomputed in float32, its noise scaled by the ratio of the unit roundoffs (rounding errors are
    first order in it).  Through a recurrence the worst case grows as |W|'s norm to the sequence's length (a 6-step
    GRU with attention: a bound 1e4 times a float64 gradient's size, nothing verified in float64)."""
    if plan.program is None or var is None or not t.is_floating_point():
        return None
    if t.dtype == torch.float64:
        if plan.rounded64 is None:
            plan.rounded64 = rounded_sweep(plan.program, tr.rec.values, plan.seeds, keep=plan.compared(tr),
                                           proxy={torch.float64: torch.float32})
            tr.release()
        got32, sample = plan.rounded64.get(var.id), torch.float32
    else:
        if plan.rounded is None:
            plan.rounded = rounded_sweep(plan.program, tr.rec.values, plan.seeds, keep=plan.compared(tr),
                                         user=tr.rec.user)
            tr.release()
        got32, sample = plan.rounded.get(var.id), t.dtype
    if not isinstance(got32, torch.Tensor) or not got32.is_floating_point() or got32.dtype == torch.float64:
        return None  # not recomputed in a coarser dtype: nothing was measured
    # (a float32 parameter cast to bfloat16 under autocast gets its cotangent in bfloat16: that is the rounding its
    # backward does too)
    d = (got32.to(torch.float64).expand(tuple(r.shape)) - r).abs()
    top = abs_max(d)
    if top == 0.0 or not all_finite(d):
        return None
    noise = d + top
    if sample != t.dtype:  # (float64's rounding, from float32's)
        # ... and twice it: the reference is computed in float64 too, and its own rounding is as large as the
        # user's (the worst-case bound is doubled for it the same way: `BackwardVerifier._classify`).  A Gaussian
        # process's marginal likelihood through a 50x50 Cholesky: torch's float64 gradient 11x the sample from
        # its exact value, 2.6e-13 of it — a false mismatch.
        noise = noise * (2 * UNIT_ROUNDOFF["float64"] / UNIT_ROUNDOFF[str(sample).replace("torch.", "")])
    # The sums that transpose a parameter's broadcast (a bias's over a batch of images: 12,544 terms) round as the
    # kernel orders them: torch's single-threaded conv summed a CNN's bias gradient to 8.5x our recomputation's
    # noise (a false mismatch).  The typical size of a sum's rounding, u sum|terms| (`last_sums(typical=True)`), is
    # the least allowed: there the actual error was half of it.  (A sixteenth of the worst case let a bias gradient
    # 1.5% off pass where its terms cancel 1,500-fold: a review.)
    if floor is False:  # (else the caller's: `_last_sums_of` of this variable)
        floor = _last_sums_of(tr, plan, var)
    if floor is not None and tuple(floor.shape) == tuple(r.shape):
        noise = torch.maximum(noise, floor)
    return noise


class TypicalNoise:
    """The rounding noise a line's backwards measured lately for one gradient, relative to its largest entry: the
    median of the last few is a floor for the next one's sample (`floor`).

    One float32 recomputation is one draw of the rounding, and the largest of a few entries' draws can fall far below
    what torch's own run shows: a Bi-LSTM CRF tutorial's (8, 2) LSTM weight, behind scores at -10000 (a worst-case
    bound 1e7 times the gradient), got 1/13 of autograd's distance from the exact value at one call in 600 — a false
    mismatch, where the other calls' samples were of its size.  The noise of a loop's line is a property of its
    computation; the median leaves out one call's outlier either way."""

    KEEP = 9
    FROM = 3  # (calls seen before a median is trusted)
    LIMIT = 4096  # (keys kept: a loop's intermediates are new tensors each iteration)

    def __init__(self) -> None:
        self.seen: dict[Any, deque[float]] = {}

    def floor(self, key: Any, m: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        """`m` (a measured noise of the gradient whose exact value is `r`), at least the median noise of `key`'s
        last calls scaled to this one's largest entry; this call's joins them."""
        top = abs_max(r)
        if not (top > 0.0 and math.isfinite(top)):
            return m
        hist = self.seen.get(key)
        if hist is None:
            if len(self.seen) >= self.LIMIT:
                self.seen.clear()
            hist = self.seen[key] = deque(maxlen=self.KEEP)
        typical = statistics.median(hist) * top if len(hist) >= self.FROM else 0.0
        hist.append(abs_max(m) / top)
        return torch.clamp(m, min=typical) if typical > 0.0 else m


def _last_sums_of(tr: Any, plan: Any, var: Var, own: Any = False) -> torch.Tensor | None:
    """`last_sums(typical=True)` of `var`: of the broadcasts that read it, and of those that read its reshape (a
    conv's bias, as (C, 1, 1)); None where none does.  (`within_last_sums` decides with the worst case of the
    former where the gradient is not near 0; a gradient 0 in the math — a bias before a softmax, which the shift
    leaves alone — is rounding alone, and one float32 sample of it was 12x below autograd's: a false mismatch of a
    seq2seq tutorial's attention.)"""
    if plan.reads is None:
        plan.reads = consumers(plan.program)
    if plan.reshaped is None:  # (once per backward: asked for each compared gradient)
        plan.reshaped = {}
        for e in plan.program.eqns:
            if e.prim == "reshape" and isinstance(e.inputs[0], Var):
                plan.reshaped.setdefault(e.inputs[0].id, []).append(e.outputs[0])
    # (`own`: that of the broadcasts reading `var` itself, where the caller has it)
    total = last_sums(plan.program, plan.reads, plan.cts, tr.rec.values, var, typical=True) if own is False else own
    for out in plan.reshaped.get(var.id, ()):
        inner = last_sums(plan.program, plan.reads, plan.cts, tr.rec.values, out, typical=True)
        if inner is not None:
            total = inner.reshape(var.shape) if total is None else total + inner.reshape(var.shape)
    return total


def accumulation_slack(base: Any, a: torch.Tensor, u: float) -> Any:
    """The rounding of adding this backward's gradient `a` into a .grad that held `base` (None: nothing there)."""
    return None if base is None else u * (base.abs() + a.abs()) * 2


def own_scale(r: torch.Tensor, scale: float | None, u: float) -> tuple[float | None, float | None]:
    """The LOOSE rule's scale for exact gradient `r` and what "within rounding of 0" is, from the backward's largest
    entry `scale`.  It is the gradient's own largest entry: a 10% error in a conv weight whose entries are a third of
    the backward's largest passed under a bound three times its own size.  The backward's largest entry stands in
    only for a gradient that is 0 in the math (a bias before batch norm: its float64 value is rounding noise, below
    sqrt(u) of the others), and sets what "within rounding of 0" is."""
    if scale is None:
        return None, None
    own = abs_max(r)
    return (own if own > u**0.5 * scale else scale), u**0.5 * scale


# How many of a leaf's latest versions a backward's exact gradient sums (`exact_gradient`).
_RECENT_VERSIONS = 16


def older_versions(tr: Any, plan: Any, t: torch.Tensor, var: Any, cts: dict[int, Any]) -> list[Any]:
    """The cotangents in `cts` of `t`'s older leaf versions, for a leaf changed in place under no_grad between a
    forward and its backward (`w.mul_(10)` where the graph did not save w): the backward reaches the older version
    and autograd adds that gradient into the same .grad (the exact one was the newest version's alone, 0: a false
    mismatch).  From the cotangents with the cuts as constants (`cts`: what autograd can reach): an older version
    reached only through a cut (an average of the weights under no_grad) is another value, not this leaf's gradient.

    Only versions of their own (program inputs, as the leaf's value is now): one written from an older one
    (`nn.init.normal_(w.data[:2])`, a slice written) passes its cotangent on to it, and the older one's is then part
    of the newer one's.  Its last few versions only, none older than the program's oldest input: a training loop's
    parameter has one per step, long pruned."""
    info = getattr(tr, "infos", {}).get(id(t)) if var is not None else None
    if info is None or len(info.leaf_vars) < 2 or info.leaf_vars[-1] != var.id or info.ref() is not t:
        return []
    older = []
    inputs, oldest = plan.input_ids()
    for v in info.leaf_vars[-1:-_RECENT_VERSIONS - 1:-1]:
        if v < oldest:
            break
        if v not in inputs:
            if v in plan.cts:
                return []  # written from an older version, and reached: that one's cotangent is in it
            continue  # not in the program any more
        if v != var.id and cts.get(v) is not None:
            older.append(cts[v])
    return older


def exact_gradient(tr: Any, plan: Any, t: torch.Tensor) -> tuple[Any, Any]:
    """The exact gradient of `t` in this backward (Traced, a tensor or None: its older versions' too, `older_versions`)
    and its program variable."""
    var = plan.target_vars.get(id(t))  # (its variable when the backward began: see Plan.target_vars)
    if var is None:
        h = tr.recs.get(id(t))
        var = h.handle.var if h is not None and h.tensor is t and isinstance(h.handle, Traced) else None
    exact = plan.cts.get(var.id) if var is not None else None
    older = older_versions(tr, plan, t, var, plan.cut if plan.cut is not None else plan.cts)
    if older and not any(isinstance(c, Traced) for c in older + [exact]):
        for c in older:
            exact = c if exact is None else exact + c
    return exact, var


def largest_exact(tr: Any, plan: Any, tensors: Any) -> float:
    """The largest exact gradient entry of a backward call, over all its leaves."""
    out = 0.0
    for t in tensors:
        e, _ = exact_gradient(tr, plan, t)
        e = e.value if isinstance(e, Traced) else e
        if isinstance(e, torch.Tensor) and e.numel():
            out = max(out, abs_max(e))
    return out


def same_grad(a: Any, b: Any) -> bool:
    """Whether two .grad values (float64 copies, or None) are the same: a backward that left it as it was."""
    if a is None or b is None:
        return a is None and b is None
    return a.shape == b.shape and bool(torch.equal(a, b))
