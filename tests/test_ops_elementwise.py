"""Elementwise op rules (math and arithmetic, piecewise ops, activations, special functions).

One table of cases drives the per-rule tests: each rule against sympy's derivative of the
traced program (`tests/oracle.py`, independent of our VJP rules), then end to end in float64
and float32.  Then torch's conventions at special points, the hard points where torch's
backward formula rounds far worse than the math (no false alarm), and errors injected into
torch's backward (still caught: the allowance is not so loose it hides real errors).
"""

import math

import mpmath
import pytest
import torch

import gradcheck_sym as gs
from gradcheck_sym.autograd.user import run_traced
from gradcheck_sym.front.tracer import _normalise
from gradcheck_sym.ops.torch import RULES
from gradcheck_sym.reference.interpret import sweep

from .oracle import assert_matches_oracle

F = torch.nn.functional
F64 = torch.float64
INF = math.inf


def t(*values):
    return torch.tensor(values, dtype=F64)


X = t(-1.3, -0.4, 0.7, 2.1)  # away from 0, the integers and every kink below
Y = t(0.9, -1.7, 1.2, -0.3)
POS = t(0.3, 0.9, 1.7, 3.2)
UNIT = t(0.15, 0.4, 0.6, 0.85)
M23 = torch.tensor([[-1.3, 0.4, 2.1], [0.7, -0.2, 1.6]], dtype=F64)
TRIGAMMA = 2e-9  # torch's trigamma is good to ~5e-10 relative (our float64 reference uses it)

# (id, function, inputs[, oracle rtol]): every elementwise rule once (aliases share the rule).
CASES = [
    # the op table's functions
    ("sin", torch.sin, (X,)), ("cos", torch.cos, (X,)), ("tan", torch.tan, (X / 2,)),
    ("asin", torch.asin, (UNIT,)), ("acos", torch.acos, (UNIT,)), ("atan", torch.atan, (X,)),
    ("sinh", torch.sinh, (X,)), ("cosh", torch.cosh, (X,)), ("tanh", torch.tanh, (X,)),
    ("asinh", torch.asinh, (X,)), ("acosh", torch.acosh, (POS + 1,)), ("atanh", torch.atanh, (UNIT - 0.5,)),
    ("exp", torch.exp, (X,)), ("expm1", torch.expm1, (X,)), ("log", torch.log, (POS,)), ("log1p", torch.log1p, (POS,)),
    ("log2", torch.log2, (POS,)), ("log10", torch.log10, (POS,)), ("sqrt", torch.sqrt, (POS,)),
    ("abs", torch.abs, (X,)), ("sign", torch.sign, (X,)), ("floor", torch.floor, (X,)), ("ceil", torch.ceil, (X,)),
    ("erf", torch.erf, (X,)), ("erfc", torch.erfc, (X,)), ("sigmoid", torch.sigmoid, (X,)), ("relu", torch.relu, (X,)),
    ("neg", torch.neg, (X,)), ("rsqrt", torch.rsqrt, (POS,)), ("reciprocal", torch.reciprocal, (X,)),
    ("square", torch.square, (X,)), ("exp2", torch.exp2, (X,)), ("deg2rad", torch.deg2rad, (X,)),
    ("rad2deg", torch.rad2deg, (X,)),
    # arithmetic
    ("add alpha", lambda a, b: torch.add(a, b, alpha=2.5), (X, Y)),
    ("sub alpha", lambda a, b: torch.sub(a, b, alpha=3), (X, Y)),
    ("rsub alpha", lambda a, b: torch.rsub(a, b, alpha=2), (X, Y)), ("rsub scalar", lambda a: torch.rsub(a, 2.0), (X,)),
    ("__rsub__", lambda a: 3.0 - a, (X,)), ("__radd__", lambda a: 1.5 + a, (X,)), ("__rmul__", lambda a: 2.5 * a, (X,)),
    ("__rdiv__", lambda a: 2.0 / a, (X,)), ("mul broadcast", torch.mul, (M23, X[:3])),
    ("true_divide", torch.true_divide, (X, Y)), ("div", torch.div, (X, POS)),
    ("div floor", lambda a, b: torch.div(a, b, rounding_mode="floor"), (X, POS)),
    ("div trunc", lambda a, b: torch.div(a, b, rounding_mode="trunc"), (X, POS)),
    ("atan2", torch.atan2, (X, Y)), ("hypot", torch.hypot, (X, Y)), ("maximum", torch.maximum, (X, Y)),
    ("minimum", torch.minimum, (X, Y)), ("logaddexp", torch.logaddexp, (X, Y)),
    ("logaddexp2", torch.logaddexp2, (X, Y)),
    ("pow", torch.pow, (POS, X)), ("pow scalar exponent", lambda a: a**2.5, (POS,)),
    ("pow int exponent", lambda a: a**3, (X,)),
    ("pow int tensor exponent", lambda a: a.pow(torch.tensor(2)), (X,)), ("__rpow__", lambda a: 2.0**a, (X,)),
    ("float_power", torch.float_power, (POS, X)),
    ("clamp", lambda a: torch.clamp(a, -1.0, 1.5), (X,)), ("clip min", lambda a: torch.clip(a, min=0.1), (X,)),
    ("clamp tensor bounds", torch.clamp, (M23, t(-1.0, 0.0, 0.5), t(1.0, 1.5).reshape(2, 1))),
    ("clamp_min", lambda a, b: torch.clamp_min(a, b), (X, Y)), ("clamp_max", lambda a: torch.clamp_max(a, 0.5), (X,)),
    ("where", lambda a, b: torch.where(a > 0, a, b), (X, Y)),
    ("where scalar", lambda a: torch.where(a > 0, a, 0.0), (X,)),
    ("Tensor.where", lambda a, b: a.where(a > 0, b), (X, Y)),
    ("lerp", torch.lerp, (X, Y, UNIT)), ("lerp scalar weight", lambda a, b: torch.lerp(a, b, 0.3), (X, Y)),
    ("addcmul", lambda a, b, c: torch.addcmul(a, b, c, value=0.5), (X, Y, POS)),
    ("addcdiv", lambda a, b, c: torch.addcdiv(a, b, c, value=-2), (X, Y, POS)),
    # piecewise
    ("trunc", torch.trunc, (X,)), ("frac", torch.frac, (X,)), ("round", torch.round, (X,)),
    ("round decimals", lambda a: torch.round(a, decimals=1), (X * 1.01,)),
    ("fmod", torch.fmod, (X * 3, POS)), ("fmod scalar", lambda a: torch.fmod(a, 0.8), (X,)),
    ("remainder", torch.remainder, (X * 3, POS)), ("remainder scalar", lambda a: torch.remainder(a, 0.8), (X,)),
    ("__rmod__ tensor", lambda a, b: b.__rmod__(a), (X * 3, POS)),
    ("copysign", torch.copysign, (X, t(1.0, -2.0, -0.0, 3.0))),
    ("copysign scalar", lambda a: torch.copysign(a, -1.0), (X,)),
    ("angle", lambda a: torch.angle(a) + a, (X,)), ("real", lambda a: torch.real(a) * a.real, (X,)),
    ("ldexp", torch.ldexp, (X, Y)), ("ldexp int", lambda a: torch.ldexp(a, torch.tensor([1, 0, 3, 2])), (X,)),
    ("frexp", lambda a: torch.frexp(a).mantissa, (X * 5,)), ("nextafter", torch.nextafter, (X, Y)),
    ("nan_to_num", lambda a: torch.nan_to_num(a + t(0, INF, 0, -INF), posinf=7.0), (X,)),
    ("fmax", torch.fmax, (X, Y)), ("fmin", torch.fmin, (X, Y)),
    # activations
    ("silu", F.silu, (X,)), ("mish", F.mish, (X,)), ("softsign", F.softsign, (X,)), ("tanhshrink", F.tanhshrink, (X,)),
    ("logsigmoid", F.logsigmoid, (X,)), ("relu6", F.relu6, (X * 4,)), ("hardsigmoid", F.hardsigmoid, (X * 2,)),
    ("hardswish", F.hardswish, (X * 2,)), ("hardtanh", lambda a: F.hardtanh(a, -0.5, 1.5), (X,)),
    ("leaky_relu", lambda a: F.leaky_relu(a, 0.2), (X,)), ("hardshrink", lambda a: F.hardshrink(a, 0.6), (X,)),
    ("softshrink", lambda a: F.softshrink(a, 0.6), (X,)), ("threshold", lambda a: F.threshold(a, 0.5, -2.0), (X,)),
    ("elu", lambda a: F.elu(a, 1.5), (X,)), ("elu in place", lambda a: F.elu(a * 1, inplace=True), (X,)),
    ("selu", F.selu, (X,)), ("celu", lambda a: F.celu(a, 0.8), (X,)),
    ("softplus", lambda a: F.softplus(a, beta=2, threshold=1.0), (X,)), ("gelu", F.gelu, (X,)),
    ("gelu tanh", lambda a: F.gelu(a, approximate="tanh"), (X,)),
    ("rrelu eval", F.rrelu, (X,)), ("rrelu train", lambda a: F.rrelu(a, 0.1, 0.3, training=True), (X,)),
    ("prelu", F.prelu, (M23.reshape(1, 2, 3), t(0.2, 0.3))), ("prelu one weight", F.prelu, (M23, t(0.25))),
    ("glu", lambda a: F.glu(a, 0), (torch.cat([M23, M23.flip(1)]),)),
    # special functions
    ("i0", torch.i0, (X,)), ("i1", torch.special.i1, (X,)), ("i0e", torch.special.i0e, (X,)),
    ("i1e", torch.special.i1e, (X,)), ("erfcx", torch.special.erfcx, (X,)), ("log_ndtr", torch.special.log_ndtr, (X,)),
    ("ndtri", torch.special.ndtri, (UNIT,)), ("ndtr", torch.special.ndtr, (X,)),
    ("erfinv", torch.erfinv, (UNIT - 0.5,)),
    ("entr", torch.special.entr, (POS,)), ("sinc", torch.sinc, (X,)),
    ("lgamma", torch.lgamma, (t(-2.3, -0.6, 0.4, 3.1),), TRIGAMMA),
    ("digamma", torch.digamma, (t(-2.3, -0.6, 0.4, 3.1),), TRIGAMMA),
    ("polygamma", lambda a: torch.polygamma(2, a), (t(-2.3, -0.6, 0.4, 3.1),)),
    ("Tensor.polygamma", lambda a: a.polygamma(1), (POS,), TRIGAMMA),
    ("mvlgamma", lambda a: torch.mvlgamma(a, 3), (POS + 1.2,), TRIGAMMA),
    ("xlogy", torch.xlogy, (X, POS)), ("xlogy scalar other", lambda a: torch.xlogy(a, 2.5), (X,)),
    ("xlogy scalar self", lambda b: torch.xlogy(2.0, b), (POS,)), ("xlog1py", torch.special.xlog1py, (X, POS)),
    ("logit", torch.logit, (UNIT,)), ("logit eps", lambda a: torch.logit(a, 0.2), (t(0.1, 0.4, 0.6, 0.9),)),
]
IDS = [c[0] for c in CASES]
_MODULES = {f"gradcheck_sym.ops.torch.{m}" for m in ("elementwise", "piecewise", "activations", "special")}


def _rtol(case):
    return case[3] if len(case) > 3 else 1e-10


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_rule_matches_sympy_on_the_traced_program(case):
    torch.manual_seed(0)
    assert_matches_oracle(case[1], *case[2], rtol=_rtol(case))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_correct_torch_op_checks_clean(case, dtype):
    torch.manual_seed(0)
    report = gs.check_function(case[1], *case[2], dtype=dtype)
    assert report.ok, str(report)
    assert not [f for f in report.findings if f.kind == "not-verified"], str(report)


# torch has no double backward for these ("derivative for aten::hardsigmoid_backward is not implemented")
NO_GRADGRAD = ("hardsigmoid",)


@pytest.mark.parametrize("case", [c for c in CASES if not c[0].startswith(NO_GRADGRAD)], ids=lambda c: c[0])
def test_second_order_checks_clean(case):
    torch.manual_seed(0)
    report = gs.check_function(case[1], *case[2], order=2)
    assert report.ok, str(report)


def test_every_elementwise_rule_has_a_case():
    seen = set()
    for case in CASES:
        torch.manual_seed(0)
        run = run_traced(lambda leaves, f=case[1]: f(*leaves), list(case[2]), [f"a{i}" for i in range(len(case[2]))])
        names = {_normalise(s.op)[0] for s in run.tracer.sites}
        seen |= {RULES[n].lower for n in names if n in RULES}
    rules = {r.lower for r in RULES.values() if r.lower.__module__ in _MODULES}
    missing = sorted({n for n, r in RULES.items() if r.lower in rules - seen})
    assert not missing, missing


# ---------------------------------------------------------------- torch's conventions at special points
def _torch_grads(fn, inputs):
    leaves = [x.clone().requires_grad_() for x in inputs]
    out = fn(*leaves)
    grads = torch.autograd.grad(out.sum(), leaves, allow_unused=True)
    return [torch.zeros_like(x) if g is None else g for x, g in zip(inputs, grads)]


def _our_grads(fn, inputs):
    run = run_traced(lambda leaves: fn(*leaves), list(inputs), [f"a{i}" for i in range(len(inputs))])
    prog = run.program
    res = sweep(prog, run.env, {v.id: torch.ones(v.shape, dtype=F64) for v in prog.outputs if hasattr(v, "id")})
    return [res.cts.get(v.id, torch.zeros(v.shape, dtype=F64)).expand(v.shape) for v in prog.inputs]


# (id, function, point, torch's gradient there: shared/reference/torch-conventions.md, measured)
SPECIAL_POINTS = [
    ("pow at (0, 0)", torch.pow, (t(0.0), t(0.0)), [0.0, 0.0]),
    ("pow at (0, 2)", torch.pow, (t(0.0), t(2.0)), [0.0, 0.0]),
    ("pow at (0, -1)", torch.pow, (t(0.0), t(-1.0)), [-INF, -INF]),
    ("0 ** y at y = 2", lambda b: torch.pow(0.0, b), (t(2.0),), [0.0]),
    ("0 ** y at y = -1", lambda b: torch.pow(0.0, b), (t(-1.0),), [-INF]),
    ("x ** 0 at 0", lambda a: a**0, (t(0.0),), [0.0]),
    ("atan2 at (0, 0)", torch.atan2, (t(0.0), t(0.0)), [0.0, 0.0]),
    ("hypot at (0, 0)", torch.hypot, (t(0.0), t(0.0)), [math.nan, math.nan]),
    ("xlogy at (0, 0)", torch.xlogy, (t(0.0), t(0.0)), [0.0, math.nan]),
    ("xlogy at (0, -1)", torch.xlogy, (t(0.0), t(-1.0)), [0.0, 0.0]),
    ("xlogy at (0, 2)", torch.xlogy, (t(0.0), t(2.0)), [math.log(2.0), 0.0]),
    ("xlog1py at (0, -2)", torch.special.xlog1py, (t(0.0), t(-2.0)), [0.0, 0.0]),
    ("clamp at its bounds", lambda a: torch.clamp(a, 0.0, 1.0), (t(0.0, 1.0),), [1.0]),
    ("clamp tensor bounds, min == max", torch.clamp, (t(0.0, 2.0), t(1.0, 1.0), t(1.0, 1.0)),
     [0.0, 0.0, [0.0, 1.0]]),
    ("clamp min > max", torch.clamp, (t(0.0), t(2.0), t(1.0)), [0.0, 0.0, 1.0]),
    ("hardtanh at its bounds", F.hardtanh, (t(-1.0, 1.0),), [0.0]),
    ("relu6 at 0 and 6", F.relu6, (t(0.0, 6.0),), [0.0]),
    ("hardswish at -3 and 3", F.hardswish, (t(-3.0, 3.0),), [[0.0, 1.0]]),
    ("hardsigmoid at -3 and 3", F.hardsigmoid, (t(-3.0, 3.0),), [0.0]),
    ("relu at 0", torch.relu, (t(0.0),), [0.0]),
    ("leaky_relu at 0", lambda a: F.leaky_relu(a, 0.1), (t(0.0),), [0.1]),
    ("elu(alpha=2) at 0", lambda a: F.elu(a, 2.0), (t(0.0),), [2.0]),
    ("prelu at 0", lambda a, w: F.prelu(a, w), (t(0.0), t(0.25)), [0.25, 0.0]),
    ("threshold at the threshold", lambda a: F.threshold(a, 1.0, 5.0), (t(1.0),), [0.0]),
    ("softshrink at lambda", lambda a: F.softshrink(a, 0.5), (t(-0.5, 0.5),), [0.0]),
    ("abs at 0", torch.abs, (t(0.0),), [0.0]),
    ("sign at 0", torch.sign, (t(0.0),), [0.0]),
    ("copysign at 0", torch.copysign, (t(0.0), t(-1.0)), [0.0, 0.0]),
    ("maximum tie", torch.maximum, (t(1.0), t(1.0)), [0.5, 0.5]),
    ("fmax tie", torch.fmax, (t(1.0), t(1.0)), [1.0, 0.0]),
    ("fmin with NaN", torch.fmin, (t(1.0), t(math.nan)), [1.0, 0.0]),
    ("sinc at 0", torch.sinc, (t(0.0),), [0.0]),
    ("i1 at 0", torch.special.i1, (t(0.0),), [0.5]),
    ("i1e at 0", torch.special.i1e, (t(0.0),), [0.5]),
    ("entr at 0", torch.special.entr, (t(0.0),), [INF]),
    ("logit(eps) at the eps bounds", lambda a: torch.logit(a, 0.2), (t(0.2, 0.8, 0.1),), [[6.25, 6.25, 0.0]]),
    ("logit at 0", torch.logit, (t(0.0),), [INF]),
    ("nextafter at other", torch.nextafter, (t(1.0), t(1.0)), [0.0, 0.0]),
    ("nan_to_num at inf", torch.nan_to_num, (t(INF),), [0.0]),
    ("frac at a jump", torch.frac, (t(-2.0),), [1.0]),
    ("round at a tie", torch.round, (t(2.5),), [0.0]),
    ("angle at 0", torch.angle, (t(0.0),), [0.0]),
]


@pytest.mark.parametrize("case", SPECIAL_POINTS, ids=[c[0] for c in SPECIAL_POINTS])
def test_torch_convention_at_special_point_is_followed(case):
    _, fn, inputs, expected = case
    for got_torch, got_ours, want in zip(_torch_grads(fn, inputs), _our_grads(fn, inputs), expected):
        want = torch.as_tensor(want, dtype=F64).expand_as(got_torch)
        torch.testing.assert_close(got_torch, want, equal_nan=True)  # torch still behaves as documented
        torch.testing.assert_close(got_ours, want, equal_nan=True)


def test_torch_ldexp_gradient_is_wrong_for_negative_integer_exponents():
    """derivatives.yaml takes ldexp's gradient as grad * pow(2, other): in integer arithmetic for an integer
    exponent, so 2**-2 is 0 — a torch bug (torch 2.13) the check finds, at exactly those elements."""
    report = gs.check_function(lambda a: torch.ldexp(a, torch.tensor([1, -2, 3, -1])), X)
    (f,) = report.errors()
    assert f.kind == "mismatch" and f.count == 1
    assert {ex.quantity for ex in f.examples} == {"d out[1]/d a[1]", "d out[3]/d a[3]"}
    assert {(ex.autograd, ex.symbolic) for ex in f.examples} == {(0.0, 0.25), (0.0, 0.5)}


def _custom(forward, backward):
    class Fn(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return forward(x)

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return g * backward(x)

    return Fn.apply


@pytest.mark.parametrize("name,forward,backward,point", [
    ("hardtanh with clamp's convention", F.hardtanh, lambda x: ((x >= -1) & (x <= 1)).to(x.dtype), t(1.0)),
    ("leaky_relu with 1 at 0", lambda x: F.leaky_relu(x, 0.1), lambda x: torch.where(x >= 0, 1.0, 0.1), t(0.0)),
    ("relu6 with 1 at 6", F.relu6, lambda x: ((x > 0) & (x <= 6)).to(x.dtype), t(6.0)),
    ("copysign with 1 at 0", lambda x: torch.copysign(x, t(-1.0)), lambda x: -torch.ones_like(x), t(0.0)),
])
def test_a_backward_differing_at_a_kink_is_nondifferentiable_info(name, forward, backward, point):
    report = gs.check_function(_custom(forward, backward), point)
    assert report.ok, str(report)
    assert [f.kind for f in report.findings] == ["nondifferentiable"], str(report)


# ---------------------------------------------------------------- kernel forms: no false alarm, no blindness
def lin(a, b, n=1000):
    return torch.linspace(a, b, n, dtype=F64)


def near(x, gap=1e-3):
    """x, with the points closer than `gap` to an integer moved off it (poles, kinks)."""
    r = torch.round(x)
    return torch.where((x - r).abs() < gap, r + gap * torch.sign(x - r + 0.5), x)


# (id, function, points): where torch's backward evaluates a formula that cancels or overflows.
HARD = [
    ("sigmoid", torch.sigmoid, lin(-100, 100)),  # s*(1 - s)
    ("tanh", torch.tanh, lin(-20, 20)),  # 1 - y*y
    ("expm1 very negative", torch.expm1, lin(-60, 5)),  # result + 1
    ("acosh near 1", torch.acosh, 1 + torch.logspace(-7, 1, 1000, dtype=F64)),  # rsqrt(x*x - 1)
    ("asin near +-1", torch.asin, torch.cat([-1 + torch.logspace(-7, -0.3, 500, dtype=F64),
                                              1 - torch.logspace(-7, -0.3, 500, dtype=F64)])),
    ("atanh near +-1", torch.atanh, torch.cat([-1 + torch.logspace(-7, -0.3, 500, dtype=F64),
                                                1 - torch.logspace(-7, -0.3, 500, dtype=F64)])),
    ("silu", F.silu, lin(-80, 80)),  # s*(1 + x*(1 - s))
    ("logsigmoid", F.logsigmoid, lin(-100, 100)),
    ("softplus", F.softplus, lin(-60, 60)),
    ("mish", F.mish, lin(-60, 60)),
    ("gelu", F.gelu, lin(-40, 40)),
    ("gelu tanh", lambda a: F.gelu(a, approximate="tanh"), lin(-40, 40)),
    ("elu in place", lambda a: F.elu(a * 1, inplace=True), lin(-40, 5)),  # alpha + result
    ("tanhshrink near 0", F.tanhshrink, lin(-1, 1)),  # 1 - (1 - tanh**2)
    ("softsign", F.softsign, torch.cat([-torch.logspace(-3, 6, 500, dtype=F64),
                                        torch.logspace(-3, 6, 500, dtype=F64)])),
    ("lgamma", torch.lgamma, near(lin(-6.9, 20))),  # digamma: recurrence and reflection
    ("digamma", torch.digamma, near(lin(-6.9, 20))),  # trigamma
    ("polygamma(2)", lambda a: torch.polygamma(2, a), near(lin(-6.9, 20))),
    ("erfcx", torch.special.erfcx, lin(-3, 100)),  # 2x*erfcx(x) - 2/sqrt(pi)
    ("log_ndtr", torch.special.log_ndtr, lin(-40, 8)),
    ("ndtri", torch.special.ndtri, lin(1e-6, 1 - 1e-6)),
    ("i0e", torch.special.i0e, lin(-50, 50.5)),
    ("i1e", torch.special.i1e, lin(-50, 50.5)),
    ("sinc", torch.sinc, lin(-10.3, 10.1)),
    ("logit", torch.logit, lin(1e-6, 1 - 1e-6)),
    ("logaddexp far apart", lambda a: torch.logaddexp(a, -a), lin(-500, 500)),
]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("case", HARD, ids=[c[0] for c in HARD])
def test_no_false_alarm_where_torch_backward_rounds_badly(case, dtype):
    report = gs.check_function(case[1], case[2], dtype=dtype)
    assert report.ok, str(report)


def _wrong_backward(fn, rel):
    def wrapped(*xs):
        out = fn(*xs)
        out.register_hook(lambda g: g * (1 + rel))
        return out

    return wrapped


@pytest.mark.parametrize("case", HARD, ids=[c[0] for c in HARD])
def test_a_one_in_a_million_error_is_caught_in_float64(case):
    x = case[2][(case[2].abs() < 3) & (case[2] > 0.05)][::50]  # well-conditioned points
    report = gs.check_function(_wrong_backward(case[1], 1e-6), x)
    assert [f.kind for f in report.errors()] == ["mismatch"], str(report)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_an_injected_error_is_caught_for_every_rule(case):
    torch.manual_seed(0)
    auto = _torch_grads(case[1], case[2])
    if all(float(g.abs().max()) == 0 for g in auto):
        pytest.skip("torch's gradient is 0 here: scaling it changes nothing")
    report = gs.check_function(_wrong_backward(case[1], 1e-4), *case[2])
    assert "mismatch" in [f.kind for f in report.errors()], str(report)


# ---------------------------------------------------------------- the reference's own accuracy
@pytest.mark.parametrize("case", HARD, ids=[c[0] for c in HARD])
def test_float64_reference_partials_stay_within_their_own_allowance(case):
    """Each elementwise partial evaluated in float64 against the same expression in mpmath (60 digits): its
    error must lie within what the judge allows the reference (its rounding bound, in float64) — a form that
    overflows or cancels where torch's does not would be a false alarm."""
    x = case[2][::40]
    run = run_traced(lambda leaves: case[1](*leaves), [x], ["x"])
    u = 2.0**-53
    for eqn in run.program.eqns:
        fn = eqn.params.get("fn")
        if eqn.prim != "ew" or fn is None:
            continue
        args = [run.env[a.id] if hasattr(a, "id") else run.program.consts[a.index] for a in eqn.inputs]
        args = [torch.as_tensor(a, dtype=F64).expand(x.shape) for a in args]
        d = fn.partial(0)
        ours = d.torch(*args).expand(x.shape)
        with mpmath.workdps(60):  # mpmath's log1p is log(1 + x): digits to spare
            exact = torch.tensor([float(d.mp(*[mpmath.mpf(float(a[j])) for a in args])) for j in range(x.numel())],
                                 dtype=F64)
        bound = torch.as_tensor(d.rounding(*args), dtype=F64).nan_to_num(nan=0.0)  # NaN: inf * 0 past an overflow
        allowed = 8 * (u * bound + d.rel_err * exact.abs()) + 4 * u * exact.abs() + 1e-300
        ok = torch.isfinite(exact)
        assert bool(((ours - exact).abs() <= allowed)[ok].all()), (case[0], fn.name)
        assert bool(torch.isfinite(ours)[ok].all()), (case[0], fn.name)



def test_a_partial_that_is_one_of_the_arguments_is_taken_as_it_is():
    # d(a*b)/da = b is not evaluated in the sweep (one kernel fewer); a partial with a kernel, a formula
    # of torch's or a rounding of its own is.
    import sympy

    from gradcheck_sym.ops.ew import MUL, P, EwFn

    assert (MUL.partial(0).arg, MUL.partial(1).arg) == (1, 0)
    assert EwFn("sin", sympy.sin(P[0]), 1).partial(0).arg is None
    assert EwFn("f", P[1], 2, err_form=P[1] + P[0] - P[0] * 1.5).arg is None  # torch rounds its own formula
    assert EwFn("g", P[1], 2, rel_err=1e-7).arg is None
    assert EwFn("h", P[1], 2).arg == 1
    # the sweep's cotangents are then the arguments themselves: d(sum(a*b))/da = b, bit for bit
    a, b = torch.randn(7, dtype=F64), torch.randn(7, dtype=F64)
    run = run_traced(lambda leaves: (leaves[0] * leaves[1]).sum(), [a, b], ["a", "b"])
    prog = run.program
    res = sweep(prog, run.env, {v.id: torch.ones(v.shape, dtype=F64) for v in prog.outputs if hasattr(v, "id")})
    da, db = (res.cts[v.id] for v in prog.inputs)
    assert torch.equal(da, b) and torch.equal(db, a)


def test_every_elementwise_vjp_reads_only_the_inputs_it_declares():
    # `ScriptMemory.drop_unread` lets go of the values no vjp reads (`ops.core.vjp_reads`): a placeholder without
    # numbers (a meta tensor) in place of every input an elementwise function's vjp does not declare must give the
    # same cotangents, to the last bit — over every function the op table made.
    import gc

    import gradcheck_sym.ops.torch  # noqa: F401 - every op's functions
    from gradcheck_sym.ops.core import PRIMS, vjp_reads
    from gradcheck_sym.ops.ew import EwFn
    from gradcheck_sym.ops.prims import _ew_vjp

    import warnings

    with warnings.catch_warnings():  # (isinstance on every object touches torch's deprecated lazy aliases)
        warnings.simplefilter("ignore")
        fns = {id(o): o for o in gc.get_objects() if isinstance(o, EwFn)}
    assert len(fns) >= 60
    for fn in fns.values():
        torch.manual_seed(0)
        real = [torch.rand(4, dtype=torch.float64) * 0.5 + 0.1 for _ in range(fn.nargs)]
        g = torch.rand(4, dtype=torch.float64)
        whole = _ew_vjp([g], real, [None], fn=fn)
        read = vjp_reads(PRIMS["ew"], fn.nargs, {"fn": fn})
        ins = [x if i in read else torch.empty(4, dtype=torch.float64, device="meta") for i, x in enumerate(real)]
        got = _ew_vjp([g], ins, [torch.empty(4, dtype=torch.float64, device="meta")], fn=fn)
        for a, b in zip(whole, got):
            assert (a is None) == (b is None), fn.name
            if a is not None:
                assert not b.is_meta and torch.allclose(a, b, rtol=0, atol=0, equal_nan=True), fn.name
    # (a difference, a negation: nothing read; a product: the other factor)
    from gradcheck_sym.ops.ew import MUL, NEG, SUB

    assert vjp_reads(PRIMS["ew"], 2, {"fn": SUB}) == frozenset() == vjp_reads(PRIMS["ew"], 1, {"fn": NEG})
    assert vjp_reads(PRIMS["ew"], 2, {"fn": MUL}) == {0, 1}


def test_what_the_other_primitives_vjps_read():
    from gradcheck_sym.ops.conv_prims import _conv_vjp
    from gradcheck_sym.ops.core import PRIMS, vjp_reads

    assert vjp_reads(PRIMS["sum"], 1, {}) == frozenset() == vjp_reads(PRIMS["reshape"], 1, {})  # linear: shapes only
    assert vjp_reads(PRIMS["conv"], 2, {}) == {0, 1} == vjp_reads(PRIMS["matmul"], 2, {})
    assert vjp_reads(PRIMS["opaque"], 1, {}) is None  # (undeclared: everything is kept)
    x, w = torch.rand(2, 3, 6, 6, dtype=torch.float64), torch.rand(4, 3, 3, 3, dtype=torch.float64)
    g = torch.rand(2, 4, 4, 4, dtype=torch.float64)
    p = {"stride": (1, 1), "padding": (0, 0), "dilation": (1, 1), "groups": 1}
    whole = _conv_vjp([g], [x, w], [torch.rand(2, 4, 4, 4, dtype=torch.float64)], **p)
    got = _conv_vjp([g], [x, w], [torch.empty(2, 4, 4, 4, dtype=torch.float64, device="meta")], **p)
    assert all(torch.equal(a, b) for a, b in zip(whole, got))  # its own result is never read
