"""Dropout, replayed: the reference uses the very mask the user's run drew.

The tracer saves the default generator's state just before a random op; the rule
draws the Bernoulli mask again from a generator set to that state, the way ATen's
``_dropout_impl`` draws it (``empty(noise shape).bernoulli_(1 - p)`` in the input's
dtype), and checks that it reproduces torch's output exactly — else it refuses,
rather than compare against another mask.  Then each variant is elementwise math
with constants:

* dropout:        ``x * mask / (1 - p)``
* feature forms:  the same with one mask entry per (sample, channel), broadcast;
* alpha forms:    ``x * (mask * a) + b`` with ``b = (mask - 1) * alpha * a + alpha * a * p``
                  (SELU's alpha; ``a`` keeps mean and variance);
* ``native_dropout`` returns its mask, and ``native_dropout_backward(g, mask, scale)`` is the
  linear map ``g * mask * scale``.

``gumbel_softmax`` is replayed the same way: its Gumbel noise ``-log(Exp(1))`` is drawn again into
``empty_like(logits)``, a constant; the sample is ``softmax((logits + g) / tau)``, and ``hard=True``'s
straight-through one-hot is that one-hot plus the soft sample less its own value (the value one-hot, the
gradient the soft sample's, as torch's ``y_hard - y_soft.detach() + y_soft``).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .. import prims as P
from ..ew import ADD, DIV, MUL, SUB
from .reduce import softmax
from .registry import Args, Ctx, Refused, rule

F64 = torch.float64
_SELU_ALPHA = 1.7580993408473766  # ATen's alpha for alpha dropout (SELU's alpha * scale)


def _noise_shape(name: str, t: torch.Tensor) -> tuple[int, ...]:
    """The shape of the mask torch draws for `t`, as it broadcasts against `t`."""
    if not name.startswith("feature") and name not in ("dropout1d", "dropout2d", "dropout3d"):
        return tuple(t.shape)
    # dropout1d/3d add a batch dim to unbatched inputs; the others take dims 0, 1 as (N, C)
    unbatched = (name == "dropout1d" and t.dim() == 2) or (name == "dropout3d" and t.dim() != 5)
    keep = 1 if unbatched else 2
    return tuple(t.shape[:keep]) + (1,) * (t.dim() - keep)


def draw_mask(c: Ctx, t: torch.Tensor, p: float, shape: tuple[int, ...]) -> torch.Tensor:
    """The Bernoulli(1 - p) mask torch drew for this call, replayed from the generator state before it."""
    if c.rng_state is None or t.device.type != "cpu":
        raise Refused(f"{c.name}'s mask could not be recovered (not a CPU generator)")
    gen = torch.Generator()
    gen.set_state(c.rng_state)
    # torch draws an elementwise mask into empty_like(input): a permuted input's memory order (multi-head
    # attention's output with batch_first), which bernoulli_ fills in; a feature mask is a new contiguous tensor
    noise = torch.empty_like(t) if tuple(shape) == tuple(t.shape) else torch.empty(shape, dtype=t.dtype)
    return noise.bernoulli_(1 - p, generator=gen)


def _dropout_rule(alpha: bool) -> Any:
    def lower(c: Ctx, a: Args) -> Any:
        t, p = a.input, float(a.p)
        if not a.training or p == 0 or t.numel() == 0:
            return c.v(t)
        if p == 1:
            return P.ew(MUL, c.v(t), 0.0)
        mask = draw_mask(c, t, p, _noise_shape(c.name, t))
        user = c.user_value(t).to(t.dtype)
        if alpha:
            scale = 1.0 / math.sqrt((_SELU_ALPHA**2 * p + 1) * (1 - p))
            shift = (mask - 1) * (_SELU_ALPHA * scale) + _SELU_ALPHA * scale * p
            noise = mask * scale
            replay = user * noise + shift
        else:
            noise, shift = mask / (1 - p), None
            replay = user * noise
        if not torch.equal(replay, c.out.detach()):
            raise Refused(f"{c.name}'s mask could not be recovered from the generator state")
        out = P.ew(MUL, c.v(t), noise.to(F64))
        return out if shift is None else P.ew(ADD, out, shift.to(F64))

    return lower


rule("dropout", "dropout1d", "dropout2d", "dropout3d", "feature_dropout",
     sig=lambda input, p=0.5, training=True, inplace=False: 0)(_dropout_rule(False))
rule("alpha_dropout", "feature_alpha_dropout",
     sig=lambda input, p=0.5, training=False, inplace=False: 0)(_dropout_rule(True))


@rule("native_dropout", sig=lambda input, p, train: 0)
def _native_dropout(c: Ctx, a: Args) -> Any:
    out, mask = c.out
    if a.train is False:
        return c.v(a.input), None
    scale = 0.0 if a.p == 1 else 1.0 / (1 - float(a.p))
    # ATen: input * mask * scale, scale rounded to the input's dtype
    noise = mask.to(a.input.dtype) * torch.tensor(scale, dtype=a.input.dtype)
    return P.ew(MUL, c.v(a.input), noise.to(F64)), None


@rule("native_dropout_backward.default", "native_dropout_backward", sig=lambda grad_output, mask, scale: 0)
def _native_dropout_backward(c: Ctx, a: Args) -> Any:
    noise = a.mask.to(a.grad_output.dtype) * torch.tensor(float(a.scale), dtype=a.grad_output.dtype)
    return P.ew(MUL, c.v(a.grad_output), noise.to(F64))


@rule("gumbel_softmax", sig=lambda logits, tau=1, hard=False, eps=1e-10, dim=-1: 0)
def _gumbel_softmax(c: Ctx, a: Args) -> Any:
    t, tau, dim = a.logits, float(a.tau), int(a.dim)
    if c.rng_state is None or t.device.type != "cpu" or not t.is_floating_point():
        raise Refused("gumbel_softmax's noise could not be recovered (not a CPU generator)")
    gen = torch.Generator()
    gen.set_state(c.rng_state)
    g = -torch.empty_like(t, memory_format=torch.legacy_contiguous_format).exponential_(generator=gen).log()
    scores = (c.user_value(t).to(t.dtype) + g) / tau
    soft = scores.softmax(dim)
    one_hot = None
    if a.hard:
        one_hot = torch.zeros_like(t, memory_format=torch.legacy_contiguous_format).scatter_(
            dim, soft.max(dim, keepdim=True)[1], 1.0)
    replay = soft if one_hot is None else one_hot - soft + soft
    if not torch.equal(replay, c.out.detach()):
        raise Refused("gumbel_softmax's noise could not be recovered from the generator state")
    y = softmax(c, P.ew(DIV, P.ew(ADD, c.v(t), g.to(F64)), tau), scores, dim, log=False)
    if one_hot is None:
        return y
    return P.ew(ADD, one_hot.to(F64), P.ew(SUB, y, getattr(y, "value", y).detach()))
