"""Losses, decomposed into log_softmax, picks (takes) by the targets, elementwise math and reductions.

Targets are constants (class indices pick entries with a ``take``); torch's
conventions are followed where they are documented: ``ignore_index`` entries
contribute nothing, the mean of a weighted loss divides by the total weight of
the non-ignored targets, ``label_smoothing`` mixes in the uniform distribution,
``binary_cross_entropy`` clamps its logs at -100.
"""

from __future__ import annotations

import math
from typing import Any

import sympy
import torch

from .. import prims as P
from ..ew import ADD, DIV, MUL, SUB, WHERE, EwFn, ew_fn, P as X
from .reduce import softmax
from .registry import Args, Ctx, Refused, rule

F64 = torch.float64
x, y, z = X[0], X[1], X[2]


def legacy_reduction(a: Args) -> str:
    """The reduction, from `reduction` or the legacy `size_average` / `reduce` arguments."""
    if a.get("size_average") is not None or a.get("reduce") is not None:
        from torch.nn import _reduction as R

        return R.legacy_get_string(a.get("size_average"), a.get("reduce"))
    return a.reduction


def reduce(h: Any, reduction: str, shape: tuple[int, ...], divisor: Any = None) -> Any:
    if reduction == "none":
        return P.reshape(h, shape)
    total = P.sum_(h, tuple(range(len(P.shape_of(h)))))
    if reduction == "sum":
        return total
    if reduction == "mean":
        n = divisor if divisor is not None else float(max(1, _numel(P.shape_of(h))))
        return P.ew(DIV, total, n)
    raise Refused(f"reduction={reduction!r} is not modelled")


def _numel(shape: tuple[int, ...]) -> int:
    out = 1
    for s in shape:
        out *= s
    return out


def _pointwise(names: tuple[str, ...], make: Any, sig: Any, params: tuple[str, ...] = ()) -> None:
    made: dict[tuple[Any, ...], EwFn] = {}  # per parameter values: a loop's loss is built (in sympy) once

    def lower(c: Ctx, a: Args) -> Any:
        key = tuple(a[p] for p in params)
        fn = made.get(key)
        if fn is None:
            fn = made[key] = make(*key)
        h = P.ew(fn, c.v(a.input), c.v(a.target))
        shape = tuple(torch.broadcast_shapes(a.input.shape, a.target.shape))
        h = P.broadcast_to(h, shape)
        weight = a.get("weight")
        if weight is not None:
            h = P.ew(MUL, h, c.v(weight))
        return reduce(h, legacy_reduction(a), tuple(c.out.shape))

    rule(*names, sig=sig)(lower)


_pointwise(("mse_loss",), lambda: ew_fn("se", (x - y) ** 2, 2),
           lambda input, target, size_average=None, reduce=None, reduction="mean", weight=None: 0)
_pointwise(("l1_loss",), lambda: EwFn("ae", sympy.Abs(x - y), 2, partials=[sympy.sign(x - y), -sympy.sign(x - y)],
                                      kink=lambda a, b: a == b, convention="torch returns 0 where input == target"),
           lambda input, target, size_average=None, reduce=None, reduction="mean": 0)


def _smooth_l1(beta: float) -> EwFn:
    b = sympy.Float(beta, 53)
    d = x - y
    if beta == 0:
        return EwFn("ae", sympy.Abs(d), 2, partials=[sympy.sign(d), -sympy.sign(d)])
    expr = sympy.Piecewise((d**2 / (2 * b), sympy.Abs(d) < b), (sympy.Abs(d) - b / 2, True))
    return ew_fn(f"smooth_l1({beta})", expr, 2)


def _huber(delta: float) -> EwFn:
    dl = sympy.Float(delta, 53)
    d = x - y
    expr = sympy.Piecewise((d**2 / 2, sympy.Abs(d) < dl), (dl * (sympy.Abs(d) - dl / 2), True))
    return ew_fn(f"huber({delta})", expr, 2)


_pointwise(("smooth_l1_loss",), _smooth_l1,
           lambda input, target, size_average=None, reduce=None, reduction="mean", beta=1.0: 0, ("beta",))
_pointwise(("huber_loss",), _huber,
           lambda input, target, reduction="mean", delta=1.0, weight=None: 0, ("delta",))
_pointwise(("soft_margin_loss",), lambda: ew_fn("soft_margin", sympy.log(1 + sympy.exp(-y * x)), 2),
           lambda input, target, size_average=None, reduce=None, reduction="mean": 0)


# binary cross entropy: torch clamps each log at -100; its backward divides by max(x (1 - x), 1e-12) and its
# double backward by (x + 1e-12)^2 (1 - x + 1e-12)^2 (measured in torch 2.13): the reference follows both.
_EPS = sympy.Float(1e-12, 53)
_BCE_DX = EwFn("d(bce)/dx", (x - y) / sympy.Max(x * (1 - x), _EPS), 2,
               partials=[(x**2 - 2 * x * y + y) / ((x + _EPS) ** 2 * (1 - x + _EPS) ** 2),
                         -1 / sympy.Max(x * (1 - x), _EPS)])
_BCE = EwFn("bce", -(y * sympy.Max(sympy.log(x), -100) + (1 - y) * sympy.Max(sympy.log(1 - x), -100)), 2,
            torch_impl=lambda a, b: torch.nn.functional.binary_cross_entropy(a, b.expand_as(a) if b.dim() < a.dim()
                                                                                else b, reduction="none"),
            partials=[_BCE_DX, sympy.Max(sympy.log(1 - x), -100) - sympy.Max(sympy.log(x), -100)],
            kink=lambda a, b: a * (1 - a) < 1e-12,
            convention="torch clamps the logs at -100 and its backward divides by max(x (1 - x), 1e-12)")


@rule("binary_cross_entropy", sig=lambda input, target, weight=None, size_average=None, reduce=None,
      reduction="mean": 0)
def _bce(c: Ctx, a: Args) -> Any:
    h = P.ew(_BCE, c.v(a.input), c.v(a.target))
    if a.weight is not None:
        h = P.ew(MUL, h, c.v(a.weight))
    return reduce(P.broadcast_to(h, tuple(a.input.shape)), legacy_reduction(a), tuple(c.out.shape))


# log(1 + exp(-x)), stable both ways, with its stable derivative
_SOFTPLUS_NEG = EwFn("softplus(-x)", sympy.log(1 + sympy.exp(-x)), 1,
                     torch_impl=lambda t: torch.nn.functional.softplus(-t, threshold=1e30),
                     partials=[-1 / (1 + sympy.exp(x))])


# (1 - t) x + log(1 + exp(-x)) as one function: torch's backward computes sigmoid(x) - t, which cancels where x is
# large and t is 1 (the form, for the rounding a float32 backward shows: a confident classifier's gradient is mostly
# that rounding); our partial, 1 - t - 1 / (1 + exp(x)), never overflows
_BCE_LOGITS = EwFn("bce_with_logits", (1 - y) * x + sympy.log(1 + sympy.exp(-x)), 2,
                   torch_impl=lambda a, b: torch.nn.functional.binary_cross_entropy_with_logits(
                       a, b.expand_as(a) if b.dim() < a.dim() else b, reduction="none"),
                   partials=[1 - y - 1 / (1 + sympy.exp(x)), -x],
                   grad_forms=[1 / (1 + sympy.exp(-x)) - y, -x])


@rule("binary_cross_entropy_with_logits", sig=lambda input, target, weight=None, size_average=None, reduce=None,
      reduction="mean", pos_weight=None: 0)
def _bce_logits(c: Ctx, a: Args) -> Any:
    xh, th = c.v(a.input), c.v(a.target)
    if a.pos_weight is None:
        h = P.ew(_BCE_LOGITS, xh, th)
        if a.weight is not None:
            h = P.ew(MUL, h, c.v(a.weight))
        return reduce(P.broadcast_to(h, tuple(a.input.shape)), legacy_reduction(a), tuple(c.out.shape))
    sp = P.ew(_SOFTPLUS_NEG, xh)  # -log sigmoid(x)
    # (1 - t) x + lw softplus(-x), lw = 1 + (pos_weight - 1) t
    lw = 1.0 if a.pos_weight is None else P.ew(ADD, 1.0, P.ew(MUL, P.ew(SUB, c.v(a.pos_weight), 1.0), th))
    h = P.ew(ADD, P.ew(MUL, P.ew(SUB, 1.0, th), xh), P.ew(MUL, lw, sp))
    if a.weight is not None:
        h = P.ew(MUL, h, c.v(a.weight))
    return reduce(P.broadcast_to(h, tuple(a.input.shape)), legacy_reduction(a), tuple(c.out.shape))


def _class_dim(t: torch.Tensor) -> int:
    return 1 if t.dim() >= 2 else 0


def nll(c: Ctx, logp: Any, logits: torch.Tensor, target: torch.Tensor, weight: Any, ignore_index: int,
        reduction: str, label_smoothing: float, out_shape: tuple[int, ...]) -> Any:
    """Negative log-likelihood of class-index targets from log-probabilities `logp` (a handle)."""
    cd = _class_dim(logits)
    ncls = logits.shape[cd]
    shape = tuple(logits.shape)
    keep = target != ignore_index
    safe = torch.where(keep, target, torch.zeros((), dtype=target.dtype))
    codes = torch.arange(logits.numel()).reshape(shape)
    if cd == 1:
        index = torch.gather(codes, 1, safe.unsqueeze(1)).squeeze(1)
    else:
        index = codes[safe]
    picked = P.take(logp, torch.where(keep, index, torch.full((), -1, dtype=torch.long)))
    wt = torch.ones(ncls, dtype=F64) if weight is None else weight.detach().to(F64)
    w_i = torch.where(keep, wt[safe], torch.zeros((), dtype=F64))
    loss = P.ew(MUL, picked, -w_i)
    if label_smoothing:
        eps = float(label_smoothing)
        wshape = [1] * logits.dim()
        wshape[cd] = ncls
        smooth = P.sum_(P.ew(MUL, logp, wt.reshape(wshape)), (cd,))
        smooth = P.ew(MUL, smooth, torch.where(keep, torch.full((), -eps / ncls, dtype=F64),
                                               torch.zeros((), dtype=F64)))
        loss = P.ew(ADD, P.ew(MUL, loss, 1 - eps), smooth)
    divisor = float(w_i.sum()) if reduction == "mean" else None
    return reduce(loss, reduction, out_shape, divisor)


@rule("nll_loss", sig=lambda input, target, weight=None, size_average=None, ignore_index=-100, reduce=None,
      reduction="mean": 0)
def _nll(c: Ctx, a: Args) -> Any:
    return nll(c, c.v(a.input), a.input, a.target, a.weight, int(a.ignore_index), legacy_reduction(a), 0.0,
               tuple(c.out.shape))


def cross_entropy(c: Ctx, h: Any, t: torch.Tensor, target: torch.Tensor, weight: Any, ignore_index: int,
                  reduction: str, label_smoothing: float, out_shape: tuple[int, ...]) -> Any:
    """Cross entropy of the logits `h` (a handle; `t` their values, for decisions and shapes)."""
    cd = _class_dim(t)
    logp = softmax(c, h, t, cd, log=True)
    if not target.is_floating_point():
        return nll(c, logp, t, target, weight, ignore_index, reduction, label_smoothing, out_shape)
    ncls = t.shape[cd]  # class probabilities
    p = c.v(target)
    if label_smoothing:
        p = P.ew(ADD, P.ew(MUL, p, 1 - label_smoothing), label_smoothing / ncls)
    wshape = [1] * t.dim()
    wshape[cd] = ncls
    terms = P.ew(MUL, logp, p)
    if weight is not None:
        terms = P.ew(MUL, terms, P.reshape(c.v(weight), tuple(wshape)))
    loss = P.ew(MUL, P.sum_(terms, (cd,)), -1.0)
    n = t.numel() // max(ncls, 1)
    return reduce(loss, reduction, out_shape, float(max(n, 1)) if reduction == "mean" else None)


@rule("cross_entropy", sig=lambda input, target, weight=None, size_average=None, ignore_index=-100, reduce=None,
      reduction="mean", label_smoothing=0.0: 0)
def _cross_entropy(c: Ctx, a: Args) -> Any:
    return cross_entropy(c, c.v(a.input), c.user_value(a.input), a.target, a.weight, int(a.ignore_index),
                         legacy_reduction(a), float(a.label_smoothing), tuple(c.out.shape))


@rule("linear_cross_entropy", sig=lambda input, linear_weight, target, *, linear_bias=None, weight=None,
      reduction="mean", ignore_index=None, label_smoothing=0.0, options=None: 0)
def _linear_cross_entropy(c: Ctx, a: Args) -> Any:
    """cross_entropy(linear(input, linear_weight, linear_bias), target): `options` only choose how torch
    chunks the work, not what it computes."""
    x, w = a.input, a.linear_weight
    k = x.shape[-1]
    out_features = tuple(w.shape[:-1])
    rows = P.reshape(c.v(x), (x.numel() // max(k, 1), k))
    logits = P.matmul(rows, P.mT(P.reshape(c.v(w), (w.numel() // max(k, 1), k))))
    shape = tuple(x.shape[:-1]) + out_features
    logits = P.reshape(logits, shape)
    user = torch.tensordot(c.user_value(x), c.user_value(w), dims=([-1], [-1]))
    if a.linear_bias is not None:
        logits = P.add(logits, c.v(a.linear_bias))
        user = user + c.user_value(a.linear_bias)
    ignore = -100 if a.ignore_index is None else int(a.ignore_index)
    return cross_entropy(c, logits, user, a.target, a.weight, ignore, a.reduction, float(a.label_smoothing),
                         tuple(c.out.shape))


def _kl(log_target: bool) -> EwFn:
    if log_target:
        return ew_fn("kl(log)", sympy.exp(y) * (y - x), 2)
    # target * (log target - input), 0 where target == 0 (xlogy)
    return EwFn("kl", sympy.Piecewise((0, sympy.Eq(y, 0)), (y * (sympy.log(y) - x), True)), 2,
                torch_impl=lambda a, b: torch.nn.functional.kl_div(a, b.expand_as(a), reduction="none"))


@rule("kl_div", sig=lambda input, target, size_average=None, reduce=None, reduction="mean", log_target=False: 0)
def _kl_div(c: Ctx, a: Args) -> Any:
    h = P.broadcast_to(P.ew(_kl(bool(a.log_target)), c.v(a.input), c.v(a.target)), tuple(a.input.shape))
    reduction = legacy_reduction(a)
    if reduction == "batchmean":
        return P.ew(DIV, reduce(h, "sum", ()), float(a.input.shape[0] if a.input.dim() else 1))
    return reduce(h, reduction, tuple(c.out.shape))


def _poisson_fn(log_input: bool, eps: float) -> EwFn:
    if log_input:
        return ew_fn("exp(x)-y*x", sympy.exp(x) - y * x, 2)
    return ew_fn(f"x-y*log(x+{eps})", x - y * sympy.log(x + sympy.Float(eps, 53)), 2)


_STIRLING = ew_fn("stirling", x * sympy.log(x) - x + sympy.log(2 * sympy.pi * x) / 2, 1)


@rule("poisson_nll_loss", sig=lambda input, target, log_input=True, full=False, size_average=None, eps=1e-8,
      reduce=None, reduction="mean": 0)
def _poisson_nll(c: Ctx, a: Args) -> Any:
    h = P.ew(_poisson_fn(bool(a.log_input), float(a.eps)), c.v(a.input), c.v(a.target))
    shape = tuple(torch.broadcast_shapes(a.input.shape, a.target.shape))
    if a.full:  # Stirling's term where target > 1 (torch masks the rest to 0)
        big = (c.user_value(a.target) > 1).to(F64)
        h = P.add(h, P.ew(WHERE, big, P.ew(_STIRLING, c.v(a.target)), 0.0))
    return reduce(P.broadcast_to(h, shape), legacy_reduction(a), tuple(c.out.shape))


_GAUSS = ew_fn("gaussian_nll", (sympy.log(z) + (x - y) ** 2 / z) / 2, 3)
_CLAMPED = "torch clamps var at eps under no_grad: the gradient passes as if it were not clamped"


@rule("gaussian_nll_loss", sig=lambda input, target, var, full=False, eps=1e-6, reduction="mean": 0)
def _gaussian_nll(c: Ctx, a: Args) -> Any:
    var = a.var
    if isinstance(var, (int, float)):
        v, v_user = float(var), torch.tensor(float(var), dtype=F64)
    else:
        v, v_user = c.v(var), c.user_value(var)
        if tuple(var.shape) != tuple(a.input.shape) and tuple(a.input.shape[:-1]) == tuple(var.shape):
            v, v_user = P.reshape(v, tuple(var.shape) + (1,)), v_user.unsqueeze(-1)
    # torch clamps a clone of var in place under no_grad: the value is clamped, the gradient is not
    clamped = v_user.clamp(min=float(a.eps))
    if bool((clamped != v_user).any()):
        from .reduce import mark_kinks

        v = mark_kinks(P.add(v, clamped - v_user), clamped != v_user, _CLAMPED) if not isinstance(v, float) \
            else float(clamped)
    h = P.ew(_GAUSS, c.v(a.input), c.v(a.target), v)
    if a.full:
        h = P.add(h, 0.5 * math.log(2 * math.pi))
    shape = tuple(torch.broadcast_shapes(a.input.shape, a.target.shape, tuple(v_user.shape)))
    return reduce(P.broadcast_to(h, shape), a.reduction, tuple(c.out.shape))
