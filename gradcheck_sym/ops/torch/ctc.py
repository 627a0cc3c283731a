"""CTC loss: the forward recursion over the alignment lattice, one matrix product per frame.

For a target ``l`` of length L the lattice has the S = 2L + 1 labels
``l' = (blank, l1, blank, l2, ..., lL, blank)``; the probability of all alignments
ending in state s at frame t is

    alpha[t, s] = (alpha[t-1, s] + alpha[t-1, s-1] + skip[s] alpha[t-1, s-2]) * exp(log_probs[t, l'_s])

(the skip only onto a label differing from the one two states back): a row vector
times a constant banded matrix, then an elementwise product.  The loss is
``-log(alpha[T-1, S-1] + alpha[T-1, S-2])``.  As in the scaled forward algorithm,
each frame's emissions are divided by a constant of the user's run (the largest
emission times the sum of that frame's alphas in the user's run), so nothing
underflows; the loss adds back the sum of their logs.  Constant scales, not the
traced sums, keep the rounding bound of the recursion linear in the frames.
Unreachable states are exactly 0; an impossible alignment is torch's infinite
loss.  The reverse sweep is the beta recursion, derived rather than written.

Torch's own backward returns ``exp(log_probs) - posterior``: the gradient through a
log_softmax, right only when `log_probs` are normalised (torch documents that they
come from log_softmax).  The reference is the exact derivative, so a raw input shows
the difference.
"""

from __future__ import annotations

from typing import Any, Sequence

import sympy
import torch

from .. import prims as P
from ..ew import DIV, P as X, ew_fn
from .losses import reduce
from .registry import Args, Ctx, Refused, rule

F64 = torch.float64
_x, _y = X[0], X[1]
_EMIT = ew_fn("exp(x-m)", sympy.exp(_x - _y), 2)
_LOG = ew_fn("log", sympy.log(_x), 1)


def _lengths(v: Any, n: int) -> torch.Tensor:
    return torch.as_tensor(v, dtype=torch.long).reshape(n)


def _targets(targets: torch.Tensor, lengths: torch.Tensor) -> list[list[int]]:
    """Each batch element's target labels (from a padded (N, S) or a concatenated 1-D tensor)."""
    if targets.dim() == 2:
        return [targets[i, : int(k)].tolist() for i, k in enumerate(lengths)]
    out, start = [], 0
    for k in lengths.tolist():
        out.append(targets[start:start + k].tolist())
        start += k
    return out


def _lattice(labels: Sequence[list[int]], blank: int, states: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(label of each state, whether the two-state skip onto it is allowed), both (N, states)."""
    n = len(labels)
    lab = torch.full((n, states), blank, dtype=torch.long)
    skip = torch.zeros(n, states, dtype=torch.bool)
    for i, seq in enumerate(labels):
        for j, k in enumerate(seq):
            lab[i, 2 * j + 1] = k
            if j > 0 and seq[j - 1] != k:
                skip[i, 2 * j + 1] = True
    return lab, skip


@rule("ctc_loss", sig=lambda log_probs, targets, input_lengths, target_lengths, blank=0, reduction="mean",
      zero_infinity=False: 0)
def _ctc_loss(c: Ctx, a: Args) -> Any:
    lp = a.log_probs
    batched = lp.dim() == 3
    T, C = lp.shape[0], lp.shape[-1]
    n = lp.shape[1] if batched else 1
    in_len, tg_len = _lengths(a.input_lengths, n), _lengths(a.target_lengths, n)
    labels = _targets(a.targets.reshape(n, -1) if not batched and a.targets.dim() == 1 else a.targets, tg_len)
    states = 2 * max((len(s) for s in labels), default=0) + 1
    if T * n * states > 2**22:
        raise Refused("ctc_loss this large is not modelled (its lattice is unrolled frame by frame)")
    lab, skip = _lattice(labels, int(a.blank), states)
    user = c.user_value(lp).reshape(T, n, C)
    h = P.reshape(c.v(lp), (T * n * C,))
    frame = torch.arange(n).unsqueeze(1) * C + lab  # (n, states): position within one frame
    s = torch.arange(states)
    step = ((s.unsqueeze(1) == s) | (s.unsqueeze(1) == s - 1)).to(F64).expand(n, states, states).clone()
    step[:, torch.arange(states - 2), torch.arange(2, states)] = skip[:, 2:].to(F64)  # the skips
    shifts = _scales(user, frame, step)
    flat = torch.arange(n * states).reshape(n, states)
    last = (2 * tg_len).unsqueeze(1)  # S - 1 per element
    ends = torch.cat([flat.gather(1, last), flat.gather(1, (last - 1).clamp(min=0))], 1)
    ends = torch.where((tg_len == 0).unsqueeze(1) & (torch.arange(2) == 1), -1, ends)  # one end state if L = 0
    finals: Any = None
    alpha: Any = (s <= 1).to(F64).expand(n, states)
    for t in range(T):
        if t:
            alpha = P.reshape(P.matmul(P.reshape(alpha, (n, 1, states)), step), (n, states))
        alpha = P.mul(alpha, P.ew(_EMIT, P.take(h, t * n * C + frame), shifts[t].unsqueeze(1)))
        here = in_len - 1 == t
        if bool(here.any()):
            got = P.take(alpha, torch.where(here.unsqueeze(1), ends, torch.full((), -1, dtype=torch.long)))
            finals = got if finals is None else P.add(finals, got)
    if finals is None:
        raise Refused("ctc_loss with no frames is not modelled")
    shift = (shifts * (torch.arange(T).unsqueeze(1) < in_len)).sum(0)  # what was taken out, per element
    # impossible alignments: torch's loss is inf (0 with zero_infinity, its gradient 0 too)
    per = _per_element(c, a, n)
    bad = torch.isinf(per)
    final = P.add(P.sum_(finals, (1,)), bad.to(F64))  # log(1) = 0 where the probability is 0
    loss = P.mul(P.add(P.ew(_LOG, final), shift), -1.0)
    if bool(bad.any()):
        loss = P.add(P.mul(loss, (~bad).to(F64)),
                     torch.where(bad, 0.0 if a.zero_infinity else float("inf"), 0.0).to(F64))
    if a.reduction == "mean":
        loss = P.ew(DIV, loss, tg_len.clamp(min=1).to(F64))
        return P.reshape(P.ew(DIV, P.sum_(loss, (0,)), float(n)), tuple(c.out.shape))
    return reduce(loss, a.reduction, tuple(c.out.shape))


def _scales(user: torch.Tensor, frame: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """Each frame's log-scale (T, n): its largest log-probability plus the log of the sum of the scaled
    alphas, from the user's values — constants that keep every alpha near 1 (the scaled forward algorithm
    with fixed scales: they cancel exactly in the loss, and leave the gradient alone)."""
    T, n = user.shape[:2]
    alpha = (torch.arange(step.shape[-1]) <= 1).to(F64).expand(n, -1)
    out = torch.zeros(T, n, dtype=F64)
    for t in range(T):
        top = user[t].max(-1).values
        if t:
            alpha = (alpha.unsqueeze(1) @ step).squeeze(1)
        alpha = alpha * torch.exp(user[t].reshape(-1)[frame] - top.unsqueeze(1))
        total = alpha.sum(1).clamp(min=torch.finfo(F64).tiny)
        alpha = alpha / total.unsqueeze(1)
        out[t] = top + total.log()
    return out


def _per_element(c: Ctx, a: Args, n: int) -> torch.Tensor:
    """torch's per-element losses (without zero_infinity), to find the impossible alignments."""
    with torch.no_grad():
        out = torch.nn.functional.ctc_loss(c.user_value(a.log_probs), a.targets, a.input_lengths,
                                           a.target_lengths, blank=a.blank, reduction="none", zero_infinity=False)
    return out.reshape(n)
