"""Attention, decomposed: ``softmax(Q Kᵀ · scale + bias) V`` with matmuls, an additive bias and softmax.

* ``scaled_dot_product_attention`` follows torch's documented reference: the causal and
  boolean masks (and -inf entries of a float mask) say which pairs may attend — the
  others get weight exactly 0, kept out of the arithmetic (a -inf would make every
  rounding bound NaN) — a float mask is added; grouped-query attention repeats the
  key/value heads; rows where nothing is allowed give 0 (torch's safe softmax);
  dropout replays the mask the user's run drew.
* ``multi_head_attention_forward`` is torch's own sequence: the input projections
  (linear layers), the optional bias_k/bias_v rows and zero attention row, the masks
  made additive (``key_padding_mask`` merged in), the heads as a batch of attentions,
  the output projection, and the attention weights (averaged over heads or not); dropout on
  the weights is replayed too.
* ``_softmax_backward_data(g, y, dim)`` — softmax's backward formula exposed as an op —
  is modelled as the function it is, ``y * (g - sum(g * y, dim))``, from its arguments.
"""

from __future__ import annotations

import math
from typing import Any

import sympy
import torch

from .. import prims as P
from ..ew import ADD, DIV, MUL, SUB, WHERE, P as X, ew_fn
from .dropout import draw_mask
from .linalg import matmul
from .registry import Args, Ctx, Refused, rule

F64 = torch.float64
_NEG_INF = float("-inf")
_EXP = ew_fn("exp", sympy.exp(X[0]), 1)


def value_of(h: Any) -> torch.Tensor:
    """The float64 value of a handle (a recorded value, or a constant)."""
    return h.value if hasattr(h, "value") else torch.as_tensor(h, dtype=F64)


class Mask:
    """What may attend to what: an additive bias (a handle, finite, or None) and the allowed pairs
    (bool, broadcasting to the scores; None: all).  A -inf of torch's masks is "not allowed": kept
    out of the arithmetic (its weight is exactly 0), so no inf enters the reference or its bounds."""

    def __init__(self, bias: Any = None, allowed: torch.Tensor | None = None) -> None:
        self.bias, self.allowed = bias, allowed

    @staticmethod
    def of(c: Ctx, mask: Any, true_allows: bool) -> Mask:
        """torch's attn_mask: bool (True allows in sdpa, forbids in multi-head attention) or additive."""
        if mask is None:
            return Mask()
        if mask.dtype == torch.bool:
            return Mask(None, mask if true_allows else ~mask)
        allowed = ~torch.isneginf(c.user_value(mask))
        if bool(allowed.all()):
            return Mask(c.v(mask))
        return Mask(P.ew(WHERE, allowed.to(F64), c.v(mask), 0.0), allowed)

    @staticmethod
    def causal(rows: int, cols: int) -> Mask:
        return Mask(None, torch.ones(rows, cols, dtype=torch.bool).tril())

    def __and__(self, other: Mask) -> Mask:
        bias = self.bias if other.bias is None else other.bias if self.bias is None else P.ew(
            ADD, self.bias, other.bias)
        allowed = self.allowed if other.allowed is None else other.allowed if self.allowed is None else (
            self.allowed & other.allowed)
        return Mask(bias, allowed)

    def reshape(self, shape: tuple[int, ...]) -> Mask:
        return Mask(None if self.bias is None else P.reshape(self.bias, shape),
                    None if self.allowed is None else self.allowed.reshape(shape))

    def expand(self, shape: tuple[int, ...]) -> Mask:
        return Mask(None if self.bias is None else P.broadcast_to(self.bias, shape),
                    None if self.allowed is None else self.allowed.expand(shape))

    def pad(self) -> Mask:
        """One more key at the end of the last dim: allowed, bias 0 (torch pads its masks with 0)."""
        bias = None
        if self.bias is not None:
            shape = P.shape_of(self.bias)
            bias = _concat(self.bias, torch.zeros(shape[:-1] + (1,), dtype=F64), len(shape) - 1)
        allowed = None
        if self.allowed is not None:
            allowed = torch.cat([self.allowed, torch.ones(self.allowed.shape[:-1] + (1,), dtype=torch.bool)], -1)
        return Mask(bias, allowed)


def attend(q: Any, k: Any, v: Any, mask: Mask, scale: float, *, safe: bool, noise: Any = None) -> tuple[Any, Any]:
    """(softmax(q kᵀ scale + bias) v over the allowed pairs, the attention weights).

    A row that allows nothing gives weights 0 with `safe` (torch's safe softmax), else NaN (0/0, as
    softmax of -inf).  `noise` (dropout's mask / (1 - p)) multiplies the weights, which are returned
    so, as multi-head attention returns them.
    """
    scores = P.ew(MUL, matmul(q, P.mT(k)), float(scale))
    if mask.bias is not None:
        scores = P.ew(ADD, scores, mask.bias)
    val = value_of(scores)
    allowed = torch.ones((), dtype=torch.bool) if mask.allowed is None else mask.allowed
    allowed = allowed.expand(val.shape)
    # softmax is exact for any per-row shift: the float64 scores only keep exp from overflowing
    top = torch.where(allowed, val, _NEG_INF).amax(dim=-1, keepdim=True)
    shifted = P.ew(SUB, scores, torch.where(torch.isfinite(top), top, 0.0))
    if not bool(allowed.all()):
        keep = allowed.to(F64)
        e = P.ew(MUL, P.ew(_EXP, P.ew(WHERE, keep, shifted, 0.0)), keep)
    else:
        e = P.ew(_EXP, shifted)
    total = P.sum_(e, (len(val.shape) - 1,), keepdim=True)
    blocked = ~allowed.any(dim=-1, keepdim=True)
    if safe and bool(blocked.any()):
        total = P.ew(ADD, total, blocked.to(F64))
    weights = P.ew(DIV, e, total)
    if noise is not None:
        weights = P.ew(MUL, weights, noise)
    return matmul(weights, v), weights


def _repeat_heads(h: Any, shape: tuple[int, ...], times: int) -> Any:
    """repeat_interleave(times, dim=-3) as a take."""
    codes = torch.arange(math.prod(shape)).reshape(shape).repeat_interleave(times, dim=-3)
    return P.take(h, codes)


@rule("scaled_dot_product_attention", sig=lambda query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False,
      scale=None, enable_gqa=False: 0)
def _sdpa(c: Ctx, a: Args) -> Any:
    q, k, v = a.query, a.key, a.value
    L, S, E = q.shape[-2], k.shape[-2], q.shape[-1]
    scale = a.scale if a.scale is not None else 1 / math.sqrt(E)
    mask = Mask.of(c, a.attn_mask, True)
    if a.is_causal:
        mask = Mask.causal(L, S) & mask
    hk, hv = c.v(k), c.v(v)
    if a.enable_gqa and q.dim() >= 3 and k.shape[-3] != q.shape[-3]:
        hk = _repeat_heads(hk, tuple(k.shape), q.shape[-3] // k.shape[-3])
        hv = _repeat_heads(hv, tuple(v.shape), q.shape[-3] // v.shape[-3])
    noise = None
    if a.dropout_p > 0:  # torch.dropout on the weights: the mask has the weights' shape
        shape = tuple(torch.broadcast_shapes(q.shape[:-1] + (S,), k.shape[:-2] + (L, S)))
        # (drawn into a new contiguous tensor, as torch's softmax output is: `empty_like(q)` kept a transposed q's
        # memory order where its shape happened to be the weights' (head size = sequence length), a nanoGPT's)
        noise = (draw_mask(c, _fresh(q, shape), float(a.dropout_p), shape) / (1 - float(a.dropout_p))).to(F64)
    out, _ = attend(c.v(q), hk, hv, mask, scale, safe=True, noise=noise)
    if noise is not None and not _close(value_of(out), c.out):
        raise Refused("the dropout mask of scaled_dot_product_attention could not be recovered")
    return P.reshape(out, tuple(c.out.shape))


def _fresh(like: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """A new contiguous tensor of `shape` on `like`'s device and dtype (what torch draws an attention mask into)."""
    return torch.empty(shape, dtype=like.dtype, device=like.device)


def _close(mine: torch.Tensor, theirs: torch.Tensor) -> bool:
    # a wrong mask changes the result by O(1); the kernels' rounding is far below this bound
    ref = theirs.detach().to(F64)
    return bool(((mine - ref).abs() <= 1e-3 * (ref.abs().max() + 1)).all())


def _rows(h: Any, w: torch.Tensor, start: int, n: int) -> Any:
    """Rows start..start+n of a weight (or entries of a bias) handle."""
    codes = torch.arange(w.numel()).reshape(w.shape).narrow(0, start, n)
    return P.take(h, codes)


def _linear(x: Any, w: Any, b: Any) -> Any:
    out = matmul(x, P.mT(w))
    return out if b is None else P.ew(ADD, out, b)


def _concat(a: Any, b: Any, dim: int) -> Any:
    """[a, b] along `dim`, as two scatters into zeros (a linear map)."""
    sa, sb = list(P.shape_of(a)), list(P.shape_of(b))
    shape = list(sa)
    shape[dim] = sa[dim] + sb[dim]
    index = torch.arange(math.prod(shape)).reshape(shape)
    return P.ew(ADD, P.segsum(a, index.narrow(dim, 0, sa[dim]), shape),
                P.segsum(b, index.narrow(dim, sa[dim], sb[dim]), shape))


@rule("multi_head_attention_forward", sig=lambda query, key, value, embed_dim_to_check, num_heads, in_proj_weight,
      in_proj_bias, bias_k, bias_v, add_zero_attn, dropout_p, out_proj_weight, out_proj_bias, training=True,
      key_padding_mask=None, need_weights=True, attn_mask=None, use_separate_proj_weight=False, q_proj_weight=None,
      k_proj_weight=None, v_proj_weight=None, static_k=None, static_v=None, average_attn_weights=True,
      is_causal=False: 0)
def _mha(c: Ctx, a: Args) -> Any:
    batched = a.query.dim() == 3
    one = (lambda t: t) if batched else (lambda t: P.reshape(t, (P.shape_of(t)[0], 1) + P.shape_of(t)[1:]))
    query, key, value = one(c.v(a.query)), one(c.v(a.key)), one(c.v(a.value))
    L, N, E = P.shape_of(query)
    H = int(a.num_heads)
    hd = E // H
    # the input projections
    if not a.use_separate_proj_weight:  # one packed (3E, E) weight: rows for q, k, v
        ws = tuple(_rows(c.v(a.in_proj_weight), a.in_proj_weight, i * E, E) for i in range(3))
    else:
        ws = (c.v(a.q_proj_weight), c.v(a.k_proj_weight), c.v(a.v_proj_weight))
    bs = (None, None, None) if a.in_proj_bias is None else tuple(
        _rows(c.v(a.in_proj_bias), a.in_proj_bias, i * E, E) for i in range(3))
    q, k, v = (_linear(x, wi, bi) for x, wi, bi in zip((query, key, value), ws, bs))
    # the masks (a bool mask: True is *not* allowed); key_padding_mask merged in below
    mask = Mask.of(c, a.attn_mask, False)
    if a.attn_mask is not None and a.attn_mask.dim() == 2:
        mask = mask.reshape((1, L, a.attn_mask.shape[-1]))
    kpm = Mask.of(c, a.key_padding_mask, False)
    if a.key_padding_mask is not None and not batched:
        kpm = kpm.reshape((1, a.key_padding_mask.shape[-1]))
    if a.bias_k is not None and a.bias_v is not None:
        k = _concat(k, P.broadcast_to(P.reshape(c.v(a.bias_k), (1, 1, E)), (1, N, E)), 0)
        v = _concat(v, P.broadcast_to(P.reshape(c.v(a.bias_v), (1, 1, E)), (1, N, E)), 0)
        mask, kpm = mask.pad(), kpm.pad()
    q = P.permute(P.reshape(q, (L, N * H, hd)), (1, 0, 2))
    k = c.v(a.static_k) if a.static_k is not None else P.permute(P.reshape(k, (P.shape_of(k)[0], N * H, hd)), (1, 0, 2))
    v = c.v(a.static_v) if a.static_v is not None else P.permute(P.reshape(v, (P.shape_of(v)[0], N * H, hd)), (1, 0, 2))
    if a.add_zero_attn:
        k = _concat(k, torch.zeros(N * H, 1, hd, dtype=F64), 1)
        v = _concat(v, torch.zeros(N * H, 1, hd, dtype=F64), 1)
        mask, kpm = mask.pad(), kpm.pad()
    S = P.shape_of(k)[1]
    if a.key_padding_mask is not None:
        mask = mask & kpm.reshape((N, 1, 1, S)).expand((N, H, 1, S)).reshape((N * H, 1, S))
    if a.is_causal and a.key_padding_mask is None and not a.need_weights:
        mask = Mask.causal(L, S)  # torch drops attn_mask for sdpa's is_causal here
    noise = None
    if a.training and a.dropout_p > 0:  # dropout on the weights (N*H, L, S), replayed
        p = float(a.dropout_p)
        noise = (draw_mask(c, _fresh(a.query, (N * H, L, S)), p, (N * H, L, S)) / (1 - p)).to(F64)
    out, weights = attend(q, k, v, mask, 1 / math.sqrt(hd), safe=not a.need_weights, noise=noise)
    out = P.reshape(P.permute(out, (1, 0, 2)), (L * N, E))
    out = P.reshape(_linear(out, c.v(a.out_proj_weight), None if a.out_proj_bias is None else c.v(a.out_proj_bias)),
                    (L, N, E))
    if not batched:
        out = P.reshape(out, (L, E))
    if noise is not None and not _close(value_of(out), c.out[0]):
        raise Refused("the dropout mask of multi_head_attention_forward could not be recovered")
    if not a.need_weights:
        return out, None
    weights = P.reshape(weights, (N, H, L, S))
    if a.average_attn_weights:
        weights = P.ew(DIV, P.sum_(weights, (1,)), float(H))
    return out, P.reshape(weights, tuple(c.out[1].shape))


@rule("_softmax_backward_data", sig=lambda grad_output, output, dim, input_dtype: 0)
def _softmax_backward_data(c: Ctx, a: Args) -> Any:
    g, y = c.v(a.grad_output), c.v(a.output)
    dim = int(a.dim) % max(a.output.dim(), 1)
    total = P.sum_(P.ew(MUL, g, y), (dim,), keepdim=True) if a.output.dim() else P.ew(MUL, g, y)
    return P.ew(MUL, y, P.ew(SUB, g, total))
