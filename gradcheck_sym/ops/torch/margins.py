"""Margin and embedding losses: hinges of differences, distances and cosines.

Each is written as torch's kernel computes it, with its convention at the hinge:
``clamp_min(v, 0)`` (margin_ranking, hinge_embedding, triplet, cosine_embedding)
passes the gradient at ``v = 0``; the C++ kernels of multi_margin and
multilabel_margin test ``z > 0`` and give 0 there.  Targets of ±1 are decisions
(torch only compares them), class indices pick entries with a ``take``.
"""

from __future__ import annotations

import functools
from typing import Any

import sympy
import torch

from .. import prims as P
from ..ew import DIV, EwFn, P as X, ew_fn
from .groups import codes
from .losses import legacy_reduction, reduce
from .reduce import norm_of
from .registry import Args, Ctx, Refused, rule

F64 = torch.float64
x, y, z = X[0], X[1], X[2]
_PASSES = "torch's clamp_min passes the gradient at the hinge (v = 0)"
_STOPS = "torch's kernel tests z > 0: the gradient at the hinge (z = 0) is 0"


@functools.lru_cache(maxsize=None)
def _hinge(power: int, inclusive: bool) -> EwFn:
    """max(0, v)^power, with torch's derivative at v = 0 (1 if `inclusive`, else 0)."""
    on = x >= 0 if inclusive else x > 0
    expr = sympy.Piecewise((x**power, on), (0, True))
    return EwFn(f"hinge{power}", expr, 1, partials=[sympy.Piecewise((power * x ** (power - 1), on), (0, True))],
                kink=lambda v: v == 0, convention=_PASSES if inclusive else _STOPS)


def hinge(c: Ctx, v: Any, v_user: torch.Tensor, power: int = 1, inclusive: bool = True) -> Any:
    """max(0, v)^power on a handle, its branch taken from the user's value of v."""
    return P.ew(_hinge(power, inclusive).branched, v, v_user)


def _user(c: Ctx, t: Any, dtype: torch.dtype) -> torch.Tensor:
    """A tensor's value in the user's run, in the user's dtype (for decisions computed as torch does)."""
    return c.user_value(t).to(dtype) if isinstance(t, torch.Tensor) else torch.tensor(float(t), dtype=dtype)


@rule("margin_ranking_loss", sig=lambda input1, input2, target, margin=0, size_average=None, reduce=None,
      reduction="mean": 0)
def _margin_ranking(c: Ctx, a: Args) -> Any:
    dt = c.out.dtype
    v = P.ew(ew_fn("margin_ranking", -z * (x - y) + sympy.Float(float(a.margin), 53), 3),
             c.v(a.input1), c.v(a.input2), c.v(a.target))
    v_user = -_user(c, a.target, dt) * (_user(c, a.input1, dt) - _user(c, a.input2, dt)) + a.margin
    shape = tuple(v_user.shape)
    return reduce(hinge(c, P.broadcast_to(v, shape), v_user.to(F64)), legacy_reduction(a), tuple(c.out.shape))


@rule("hinge_embedding_loss", sig=lambda input, target, margin=1.0, size_average=None, reduce=None,
      reduction="mean": 0)
def _hinge_embedding(c: Ctx, a: Args) -> Any:
    dt = c.out.dtype
    t = c.user_value(a.target)
    h = c.v(a.input)
    v = P.ew(ew_fn("margin-x", sympy.Float(float(a.margin), 53) - x, 1), h)
    v_user = (float(a.margin) - _user(c, a.input, dt)).to(F64)
    shape = tuple(torch.broadcast_shapes(a.input.shape, a.target.shape))
    far = P.mul(P.broadcast_to(hinge(c, v, v_user), shape), (t != 1).to(F64))
    near = P.mul(P.broadcast_to(h, shape), (t != -1).to(F64))
    return reduce(P.add(far, near), legacy_reduction(a), tuple(c.out.shape))


def _rows(t: torch.Tensor) -> tuple[int, int]:
    """(samples, classes) of a (C,) or (N, C) input (a 0-d input is one sample of one class)."""
    if t.dim() == 0:
        return 1, 1
    return (1, t.shape[0]) if t.dim() == 1 else (t.shape[0], t.shape[1])


@rule("multi_margin_loss", sig=lambda input, target, p=1, margin=1.0, weight=None, size_average=None, reduce=None,
      reduction="mean": 0)
def _multi_margin(c: Ctx, a: Args) -> Any:
    n, k = _rows(a.input)
    if int(a.p) not in (1, 2):
        raise Refused(f"argument p={a.p} of multi_margin_loss is not modelled (torch accepts 1 and 2)")
    dt = c.out.dtype
    X_h = P.reshape(c.v(a.input), (n, k))
    X_u = _user(c, a.input, dt).reshape(n, k)
    y_idx = a.target.reshape(n).to(torch.long)
    picked = codes((n, k)).gather(1, y_idx.unsqueeze(1))  # (n, 1): x[i, y_i]
    v = P.ew(ew_fn("margin-xy+x", sympy.Float(float(a.margin), 53) - x + y, 2), P.take(X_h, picked), X_h)
    v_user = (float(a.margin) - X_u.gather(1, y_idx.unsqueeze(1)) + X_u).to(F64)
    other = torch.ones(n, k, dtype=F64).scatter(1, y_idx.unsqueeze(1), 0.0)  # d != y_i
    if a.weight is not None:
        other = other * a.weight.detach().to(F64)[y_idx].unsqueeze(1)
    terms = P.mul(hinge(c, v, v_user, int(a.p), inclusive=False), other)
    per_sample = P.ew(DIV, P.sum_(terms, (1,)), float(k))
    return reduce(per_sample, legacy_reduction(a), tuple(c.out.shape))


@rule("multilabel_margin_loss", sig=lambda input, target, size_average=None, reduce=None, reduction="mean": 0)
def _multilabel_margin(c: Ctx, a: Args) -> Any:
    n, k = _rows(a.input)
    dt = c.out.dtype
    X_h = P.reshape(c.v(a.input), (n, k))
    X_u = _user(c, a.input, dt).reshape(n, k)
    target = a.target.reshape(n, k).to(torch.long)
    # the targets of a sample are its entries before the first -1
    valid = torch.cumprod((target >= 0).to(torch.long), 1).bool()
    safe = torch.where(valid, target, torch.zeros((), dtype=torch.long))
    is_target = torch.zeros(n, k, dtype=torch.long).scatter_add(1, safe, valid.to(torch.long)) > 0
    picked = P.take(X_h, codes((n, k)).gather(1, safe))  # (n, K): x[i, y_ij]
    v = P.ew(ew_fn("1-xy+x", 1 - x + y, 2), P.reshape(picked, (n, k, 1)), P.reshape(X_h, (n, 1, k)))
    v_user = (1 - X_u.gather(1, safe).unsqueeze(2) + X_u.unsqueeze(1)).to(F64)
    mask = (valid.unsqueeze(2) & ~is_target.unsqueeze(1)).to(F64)
    terms = P.mul(hinge(c, v, v_user, 1, inclusive=False), mask)
    per_sample = P.ew(DIV, P.sum_(terms, (1, 2)), float(k))
    return reduce(per_sample, legacy_reduction(a), tuple(c.out.shape))


_SIG = 1 / (1 + sympy.exp(-x))
# torch's double backward of logsigmoid evaluates -s (1 - s), which cancels for large x: for the allowance
_LOGSIG = EwFn("logsigmoid", -sympy.log(1 + sympy.exp(-x)), 1, torch_impl=torch.nn.functional.logsigmoid,
               partials=[EwFn("d(logsigmoid)", 1 / (1 + sympy.exp(x)), 1, grad_forms=[-_SIG * (1 - _SIG)])])
_NEG = ew_fn("neg", -x, 1)


@rule("multilabel_soft_margin_loss", sig=lambda input, target, weight=None, size_average=None, reduce=None,
      reduction="mean": 0)
def _multilabel_soft_margin(c: Ctx, a: Args) -> Any:
    h, t = c.v(a.input), c.v(a.target)
    pos, neg = P.ew(_LOGSIG, h), P.ew(_LOGSIG, P.ew(_NEG, h))
    loss = P.ew(_NEG, P.add(P.mul(t, pos), P.mul(P.ew(ew_fn("1-x", 1 - x, 1), t), neg)))
    if a.weight is not None:
        loss = P.mul(loss, c.v(a.weight))
    shape = tuple(torch.broadcast_shapes(a.input.shape, a.target.shape,
                                         a.weight.shape if a.weight is not None else ()))
    loss = P.broadcast_to(loss, shape)
    cd = a.input.dim() - 1
    per_sample = P.ew(DIV, P.sum_(loss, (cd,)), float(a.input.shape[cd]))
    return reduce(per_sample, legacy_reduction(a), tuple(c.out.shape))


_EPS12 = sympy.Float(1e-12, 53)


@rule("cosine_embedding_loss", sig=lambda input1, input2, target, margin=0, size_average=None, reduce=None,
      reduction="mean": 0)
def _cosine_embedding(c: Ctx, a: Args) -> Any:
    d = a.input1.dim() - 1
    h1, h2 = c.v(a.input1), c.v(a.input2)
    dot = P.sum_(P.mul(h1, h2), (d,))
    sq = ew_fn("x^2+1e-12", x**2, 1)
    m1 = P.ew(ew_fn("s+1e-12", x + _EPS12, 1), P.sum_(P.ew(sq, h1), (d,)))
    m2 = P.ew(ew_fn("s+1e-12", x + _EPS12, 1), P.sum_(P.ew(sq, h2), (d,)))
    cos = P.ew(ew_fn("cos", x / sympy.sqrt(y * z), 3), dot, m1, m2)
    # the user's cosine, computed as torch computes it, for the hinge's branch
    u1, u2 = c.user_value(a.input1).to(c.out.dtype), c.user_value(a.input2).to(c.out.dtype)
    cos_u = (u1 * u2).sum(d) / ((u1 * u1).sum(d) + 1e-12).mul((u2 * u2).sum(d) + 1e-12).sqrt()
    t = c.user_value(a.target)
    shape = tuple(torch.broadcast_shapes(cos_u.shape, t.shape))
    pos = P.mul(P.broadcast_to(P.ew(ew_fn("1-x", 1 - x, 1), cos), shape), (t == 1).to(F64))
    v = P.ew(ew_fn("x-m", x - sympy.Float(float(a.margin), 53), 1), cos)
    neg = P.mul(P.broadcast_to(hinge(c, v, (cos_u - a.margin).to(F64)), shape), (t == -1).to(F64))
    return reduce(P.add(pos, neg), legacy_reduction(a), tuple(c.out.shape))


def _distance(c: Ctx, h1: Any, h2: Any, t1: torch.Tensor, t2: torch.Tensor, p: float, eps: float,
              keepdim: bool = False) -> tuple[Any, torch.Tensor]:
    """pairwise_distance: ||x1 - x2 + eps||_p over the last dim (a handle), and its user value."""
    diff = P.ew(ew_fn("x-y+eps", x - y + sympy.Float(eps, 53), 2), h1, h2)
    diff_u = (t1 - t2 + eps)
    nd = max(t1.dim(), t2.dim())
    diff = P.broadcast_to(diff, tuple(diff_u.shape))
    dims = (nd - 1,) if nd else ()
    value = torch.linalg.vector_norm(diff_u, p, dims, keepdim) if nd else diff_u.abs()
    return norm_of(diff, diff_u.to(F64), p, dims, keepdim), value


def _triplet(c: Ctx, a: Args, p: float, eps: float, margin: float, swap: bool) -> Any:
    dt = c.out.dtype
    ua, up, un = (_user(c, t, dt) for t in (a.anchor, a.positive, a.negative))
    ha, hp, hn = (c.v(t) for t in (a.anchor, a.positive, a.negative))
    d_pos, d_pos_u = _distance(c, ha, hp, ua, up, p, eps)
    d_neg, d_neg_u = _distance(c, ha, hn, ua, un, p, eps)
    if swap:  # torch.minimum: a tie splits the gradient evenly
        from .elementwise import table_fn

        d_swap, d_swap_u = _distance(c, hp, hn, up, un, p, eps)
        d_neg = P.ew(table_fn("min", 2).branched, d_neg, d_swap, d_neg_u.to(F64), d_swap_u.to(F64))
        d_neg_u = torch.minimum(d_neg_u, d_swap_u)
    v = P.ew(ew_fn("m+x-y", sympy.Float(margin, 53) + x - y, 2), d_pos, d_neg)
    v_user = (margin + d_pos_u - d_neg_u).to(F64)
    return reduce(hinge(c, v, v_user), legacy_reduction(a), tuple(c.out.shape))


@rule("triplet_margin_loss", sig=lambda anchor, positive, negative, margin=1.0, p=2, eps=1e-6, swap=False,
      size_average=None, reduce=None, reduction="mean": 0)
def _triplet_margin(c: Ctx, a: Args) -> Any:
    return _triplet(c, a, float(a.p), float(a.eps), float(a.margin), bool(a.swap))


@rule("triplet_margin_with_distance_loss", sig=lambda anchor, positive, negative, *, distance_function=None,
      margin=1.0, swap=False, reduction="mean": 0)
def _triplet_with_distance(c: Ctx, a: Args) -> Any:
    fn = a.distance_function
    if fn is None:
        p, eps = 2.0, 1e-6
    elif isinstance(fn, torch.nn.PairwiseDistance) and not fn.keepdim:
        p, eps = float(fn.norm), float(fn.eps)
    else:  # the loss calls it where the tracer cannot see
        raise Refused("argument distance_function= of triplet_margin_with_distance_loss is not modelled (only "
                      "pairwise distances): compute the distances yourself and apply clamp_min(margin + d_pos - "
                      "d_neg, 0)")
    return _triplet(c, a, p, eps, float(a.margin), bool(a.swap))

