"""Activation functions (``torch.nn.functional``), each one `EwFn` — or a few, for glu and prelu.

Each function's math is written as torch's kernel defines it (softplus switches to the
identity above its threshold, celu divides by a float32-rounded alpha), with torch's
one-sided choices at kinks as its partials.  Where torch's backward evaluates another
formula than the reference (``aten/src/ATen/native/cpu/Activation.cpp``,
``derivatives.yaml``) and it rounds differently, that formula is given as
``grad_forms``, for the rounding allowance only: ``s*(1 + x*(1 - s))`` for silu,
``1 - (1 - tanh(x)**2)`` for tanhshrink (a composite in torch), ``alpha + result``
for elu run in place.  Reference partials are written so that they never overflow
where torch's value is finite.

rrelu in training mode draws one slope per non-positive element: the draw is replayed
from the generator state saved before the op, as dropout's mask is (see `nn`).
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import sympy
import torch

from .. import prims as P
from ..ew import EwFn
from .elementwise import apply, fn_rule, num, sym, unary, x, y
from .registry import Args, Ctx, Refused, rule

__all__: list[str] = []  # the rules register on import

F64 = torch.float64
_HALF = sympy.S.Half


def _sigmoid(e: sympy.Expr) -> sympy.Expr:
    return 1 / (1 + sympy.exp(-e))


def _dsigmoid(e: sympy.Expr) -> sympy.Expr:
    """sigmoid'(e) as exp(-|e|)/(1 + exp(-|e|))**2: no overflow on either side."""
    t = sympy.exp(-sympy.Abs(e))
    return t / (1 + t) ** 2


def _unevaluated_sub(a: sympy.Expr, b: sympy.Expr) -> sympy.Expr:
    """a - b as torch computes it, kept apart (sympy would simplify 1 - (1 - t) to t)."""
    return sympy.Add(a, sympy.Mul(-1, b, evaluate=False), evaluate=False)


# ---------------------------------------------------------------- smooth activations
_s = _sigmoid(x)
unary(("silu",), x * _s, torch.nn.functional.silu,
      partials=[_s * (1 + x / (1 + sympy.exp(x)))],  # 1 - s as 1/(1 + exp(x)): exact for large x
      grad_forms=[_s * (1 + x * (1 - _s))])  # silu_backward
_tsp = sympy.tanh(sym().log1p(sympy.exp(x)))
unary(("mish",), x * _tsp, torch.nn.functional.mish, partials=[_tsp + x * _s * (1 - _tsp**2)])  # mish_backward
# softsign and tanhshrink are Python composites in torch: autograd differentiates their pieces.
unary(("softsign",), x / (1 + sympy.Abs(x)), torch.nn.functional.softsign, partials=[1 / (1 + sympy.Abs(x)) ** 2],
      grad_forms=[_unevaluated_sub(1 / (1 + sympy.Abs(x)), x * sym().sign(x) / (1 + sympy.Abs(x)) ** 2)])
unary(("tanhshrink",), x - sympy.tanh(x), torch.nn.functional.tanhshrink, partials=[sympy.tanh(x) ** 2],
      grad_forms=[_unevaluated_sub(sympy.S.One, 1 - sympy.tanh(x) ** 2)])
_b = sympy.exp(-sympy.Abs(x))  # log_sigmoid_backward's buffer
unary(("logsigmoid", "log_sigmoid"), -sym().log1p(sympy.exp(-x)), torch.nn.functional.logsigmoid,
      partials=[1 / (1 + sympy.exp(x))],
      grad_forms=[sympy.Piecewise((1 - _b / (1 + _b), x < 0), (_b / (1 + _b), True))])


# ---------------------------------------------------------------- piecewise linear
unary(("relu6",), sympy.Min(sympy.Max(x, 0), 6), torch.nn.functional.relu6,
      partials=[sympy.Piecewise((1, sympy.And(x > 0, x < 6)), (0, True))], kink=lambda t: (t == 0) | (t == 6),
      convention="torch returns 0 at both bounds", masks=True)
# torch's hardsigmoid backward multiplies by a float32 1/6 in every dtype (relative error 3e-8).
unary(("hardsigmoid",), sympy.Min(sympy.Max(x / 6 + _HALF, 0), 1), torch.nn.functional.hardsigmoid,
      partials=[sympy.Piecewise((sympy.Rational(1, 6), sympy.And(x > -3, x < 3)), (0, True))], grad_rel_err=6e-8,
      kink=lambda t: (t == -3) | (t == 3), convention="torch returns 0 at both bounds")
unary(("hardswish",), x * sympy.Min(sympy.Max(x + 3, 0), 6) / 6, torch.nn.functional.hardswish,
      partials=[sympy.Piecewise((0, x <= -3), (1, x >= 3), (x / 3 + _HALF, True))],
      kink=lambda t: (t == -3) | (t == 3), convention="torch returns 0 at -3 and 1 at 3 (the outer sides)")


def _hardtanh(lo: float, hi: float) -> EwFn:
    a, b = num(lo), num(hi)
    return EwFn("hardtanh", sympy.Min(sympy.Max(x, a), b), 1,
                torch_impl=lambda t: torch.nn.functional.hardtanh(t, lo, hi),
                partials=[sympy.Piecewise((1, sympy.And(x > a, x < b)), (0, True))],
                kink=lambda t: (t == lo) | (t == hi), convention="torch returns 0 at both bounds (bounds excluded)",
                masks=True)


fn_rule(("hardtanh",), lambda input, min_val=-1.0, max_val=1.0, inplace=False: 0, _hardtanh, ("min_val", "max_val"))


def _leaky(slope: float) -> EwFn:
    s = num(slope)
    return EwFn("leaky_relu", sympy.Piecewise((x, x > 0), (s * x, True)), 1,
                torch_impl=lambda t: torch.nn.functional.leaky_relu(t, slope),
                partials=[sympy.Piecewise((1, x > 0), (s, True))], kink=lambda t: t == 0,
                convention="torch takes the slope of the negative side at 0")


fn_rule(("leaky_relu",), lambda input, negative_slope=0.01, inplace=False: 0, _leaky, ("negative_slope",))


def _shrink(kind: str) -> Any:
    def make(lambd: float) -> EwFn:
        lam = num(lambd)
        if kind == "hard":
            expr = sympy.Piecewise((x, sympy.Abs(x) > lam), (0, True))
        else:
            expr = sympy.Piecewise((x - lam, x > lam), (x + lam, x < -lam), (0, True))
        impl = getattr(torch.nn.functional, f"{kind}shrink")
        return EwFn(f"{kind}shrink", expr, 1, torch_impl=lambda t: impl(t, lambd),
                    partials=[sympy.Piecewise((1, sympy.Abs(x) > lam), (0, True))], kink=lambda t: t.abs() == lambd,
                    convention="torch returns 0 at the threshold")

    return make


fn_rule(("hardshrink",), lambda input, lambd=0.5: 0, _shrink("hard"), ("lambd",))
fn_rule(("softshrink",), lambda input, lambd=0.5: 0, _shrink("soft"), ("lambd",))


def _threshold(threshold: float, value: float) -> EwFn:
    th = num(threshold)
    return EwFn("threshold", sympy.Piecewise((x, x > th), (num(value), True)), 1,
                torch_impl=lambda t: torch.nn.functional.threshold(t, threshold, value),
                partials=[sympy.Piecewise((1, x > th), (0, True))], kink=lambda t: t == threshold,
                convention="torch returns 0 at the threshold", masks=True)


fn_rule(("threshold", "_threshold"), lambda input, threshold, value, inplace=False: 0, _threshold,
        ("threshold", "value"))


# ---------------------------------------------------------------- the elu family
# elu(x, alpha, scale, input_scale) as torch's kernel computes it: exp(x*input_scale) - 1, not expm1 (the
# allowance sees the cancellation near 0).  elu_backward differentiates from the input, or — run in place —
# from the result: input_scale*(result + alpha*scale), which cancels for very negative x.
@functools.lru_cache(maxsize=256)
def _elu(name: str, alpha: float, scale: float, input_scale: float, in_place: bool, grad_rel_err: float = 0.0
         ) -> EwFn:
    al, sc, ins = num(alpha), num(scale), num(input_scale)
    negative = al * sc * (sympy.exp(ins * x) - 1)
    partial = sympy.Piecewise((sc, x > 0), (al * sc * ins * sympy.exp(ins * x), True))
    result_plus = sympy.Add(negative, al * sc, evaluate=False)  # kept apart: sympy would cancel it
    form = sympy.Piecewise((sc, x > 0), (ins * result_plus, True)) if in_place else partial
    smooth = alpha * input_scale == 1 and scale == 1
    return EwFn(name, sympy.Piecewise((sc * x, x > 0), (negative, True)), 1,
                torch_impl=lambda t: torch.ops.aten.elu(t, alpha, scale, input_scale), partials=[partial],
                grad_forms=[form], grad_rel_err=grad_rel_err, kink=None if smooth else (lambda t: t == 0),
                convention="" if smooth else "torch takes the left derivative at 0")


def _in_place(c: Ctx, a: Args) -> bool:
    return bool(a.get("inplace")) or getattr(c, "before", None) is not None


@rule("elu", sig=lambda input, alpha=1.0, inplace=False: 0)
def _elu_rule(c: Ctx, a: Args) -> Any:
    return apply(c, _elu("elu", _number(a, "alpha"), 1.0, 1.0, _in_place(c, a)), a.input)


_SELU_ALPHA, _SELU_SCALE = 1.6732632423543772848170429916717, 1.0507009873554804934193349852946


@rule("selu", sig=lambda input, inplace=False: 0)
def _selu_rule(c: Ctx, a: Args) -> Any:
    return apply(c, _elu("selu", _SELU_ALPHA, _SELU_SCALE, 1.0, _in_place(c, a)), a.input)


@rule("celu", sig=lambda input, alpha=1.0, inplace=False: 0)
def _celu_rule(c: Ctx, a: Args) -> Any:
    alpha = _number(a, "alpha")
    return apply(c, _elu("celu", alpha, 1.0, 1.0 / alpha, _in_place(c, a), _celu_backward_error(alpha)), a.input)


def _celu_backward_error(alpha: float) -> float:
    """celu's forward divides by alpha, its backward (derivatives.yaml) by alpha rounded to float32: torch's
    gradient alpha*b*exp(x*b), b = 1/float32(alpha), is off by |alpha*b - 1| + |x| |b - 1/alpha| relative.
    Bounded for |x/alpha| <= 64 (beyond, exp(x/alpha) < 2e-28); 0 where alpha is a float32 number."""
    b = 1.0 / float(np.float32(alpha))
    return abs(alpha * b - 1) + 64 * abs(alpha) * abs(b - 1.0 / alpha) * 1.01


def _number(a: Args, name: str) -> float:
    if isinstance(a[name], torch.Tensor):
        raise Refused(f"argument {name} as a tensor is not modelled")
    return float(a[name])


# ---------------------------------------------------------------- softplus, gelu
def _softplus(beta: float, threshold: float) -> EwFn:
    b, th = num(beta), num(threshold)
    bx = b * x
    # torch switches to the identity above the threshold (a tiny jump and a kink there)
    return EwFn("softplus", sympy.Piecewise((x, bx > th), (sym().log1p(sympy.exp(bx)) / b, True)), 1,
                torch_impl=lambda t: torch.nn.functional.softplus(t, beta, threshold),
                partials=[sympy.Piecewise((1, bx > th), (_sigmoid(bx), True))],
                grad_forms=[sympy.Piecewise((1, bx > th), (sympy.exp(bx) / (sympy.exp(bx) + 1), True))],
                kink=lambda t: t * beta == threshold, convention="torch switches to the identity above the threshold")


fn_rule(("softplus",), lambda input, beta=1.0, threshold=20.0: 0, _softplus, ("beta", "threshold"))

_SQRT1_2 = 1 / sympy.sqrt(2)


def _gelu(approximate: str) -> EwFn:
    if approximate == "none":
        cdf = sympy.erfc(-x * _SQRT1_2) / 2  # erfc: no cancellation for very negative x
        pdf = sympy.exp(-x * x / 2) / sympy.sqrt(2 * sympy.pi)
        return EwFn("gelu", x / 2 * (1 + sympy.erf(x * _SQRT1_2)), 1, torch_impl=torch.nn.functional.gelu,
                    partials=[cdf + x * pdf], grad_forms=[(1 + sympy.erf(x * _SQRT1_2)) / 2 + x * pdf])
    if approximate == "tanh":
        inner = sympy.sqrt(2 / sympy.pi) * (x + num(0.044715) * x**3)
        return EwFn("gelu(tanh)", x / 2 * (1 + sympy.tanh(inner)), 1,
                    torch_impl=lambda t: torch.nn.functional.gelu(t, approximate="tanh"))
    raise Refused(f"gelu(approximate={approximate!r}) is not modelled")


fn_rule(("gelu",), lambda input, approximate="none": 0, _gelu, ("approximate",))


# ---------------------------------------------------------------- rrelu, prelu, glu
@rule("rrelu", sig=lambda input, lower=1.0 / 8, upper=1.0 / 3, training=False, inplace=False, generator=None: 0,
      refuse=("generator",))
def _rrelu(c: Ctx, a: Args) -> Any:
    lower, upper = float(a.lower), float(a.upper)
    if not a.training:  # eval mode: leaky_relu with the mean slope
        return apply(c, _leaky((lower + upper) / 2), a.input)
    t = c.user_value(a.input)
    noise = _replayed_slopes(c, t, lower, upper)
    return P.ew(_RRELU, c.v(a.input), noise)


_RRELU = EwFn("rrelu", x * y, 2, partials=[y, sympy.S.Zero])


def _replayed_slopes(c: Ctx, t: torch.Tensor, lower: float, upper: float) -> torch.Tensor:
    """torch draws u*(hi - lo) + lo in double, u uniform in [0, 1) from 53 random bits and lo, hi the bounds
    rounded to the input's opmath dtype, for each element <= 0 in row-major order; the slope is that rounded
    to opmath.  The bits are replayed exactly; the arithmetic may or may not be fused (one ulp apart), so each
    slope is the candidate that reproduces torch's output exactly (else the op is refused)."""
    state = getattr(c, "rng_state", None)
    if state is None or t.device.type != "cpu":
        raise Refused("rrelu's random slopes could not be recovered (not the default CPU generator)")
    dtype = c.out.dtype
    opmath = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    lo, hi = (float(torch.tensor(b, dtype=opmath)) for b in (lower, upper))
    gen = torch.Generator()
    gen.set_state(state)
    flat = t.reshape(-1)
    neg = flat <= 0
    u = torch.empty(int(neg.sum()), dtype=F64).uniform_(0.0, 1.0, generator=gen)  # exact: no arithmetic
    r = u * (hi - lo) + lo
    want, xs = c.out.detach().reshape(-1)[neg], flat[neg]
    slopes, found = r.clone(), torch.zeros_like(neg[neg])
    for candidate in (r, torch.nextafter(r, r + 1), torch.nextafter(r, r - 1)):
        cand = candidate.to(opmath).to(F64)
        hit = ((xs * cand).to(opmath).to(dtype) == want) & ~found
        slopes[hit], found = cand[hit], found | hit
    if not bool(found.all()):
        raise Refused("rrelu's random slopes could not be recovered from the generator state")
    noise = torch.ones_like(flat)
    noise[neg] = slopes
    return noise.reshape(t.shape)


_PRELU = EwFn("prelu", sympy.Piecewise((x, x > 0), (y * x, True)), 2,
              partials=[sympy.Piecewise((1, x > 0), (y, True)), sympy.Piecewise((0, x > 0), (x, True))],
              kink=lambda t, w: (t == 0) & (w != 1), convention="torch takes the slope of the negative side at 0")


@rule("prelu", sig=lambda input, weight: 0)
def _prelu(c: Ctx, a: Args) -> Any:
    t, w = a.input, a.weight
    wh, wu = c.v(w), c.user_value(w)
    if t.dim() != w.dim():  # torch.prelu: the weight runs over dimension 1 (the channels)
        shape = [1] * t.dim()
        if t.dim() > 1:
            shape[1] = w.numel()
        wh, wu = P.reshape(wh, shape), wu.reshape(shape)
    return P.ew(_PRELU.branched, c.v(t), wh, c.user_value(t), wu)


@rule("glu", sig=lambda input, dim=-1: 0)
def _glu(c: Ctx, a: Args) -> Any:
    t = a.input
    dim = a.dim % t.dim()
    half = t.shape[dim] // 2
    codes = torch.arange(t.numel()).reshape(t.shape)
    h = c.v(t)
    first = P.take(h, codes.narrow(dim, 0, half).contiguous())
    second = P.take(h, codes.narrow(dim, half, half).contiguous())
    user = c.user_value(t)
    return P.ew(_GLU.branched, first, second, user.narrow(dim, 0, half), user.narrow(dim, half, half))


# glu_backward: sigmoid(b) and (1 - sigmoid(b)) * sigmoid(b) * a
_GLU = EwFn("glu", x * _sigmoid(y), 2, partials=[_sigmoid(y), x * _dsigmoid(y)],
            grad_forms=[_sigmoid(y), x * _sigmoid(y) * (1 - _sigmoid(y))])
