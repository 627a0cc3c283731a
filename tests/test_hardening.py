"""Issue 12: each input that used to crash, hang, raise a raw exception or raise a false alarm.

One test per site, each asserting the report (or the typed error) and its real numbers.
"""

import math
import resource
import subprocess
import sys
import time

import mpmath
import pytest

import gradcheck_sym as gs
from gradcheck_sym.judge import tolerance as tl
from gradcheck_sym.reference import opinion


def _rows(report):
    return {row.expression: row for row in report.nodes}


def _kinds(report):
    return [(f.kind, f.severity) for f in report.findings]


# ---------------------------------------------------------------- crashes
def test_a_long_chain_frees_its_graph_without_overflowing_the_stack():
    # x+x+...+x: torch freed the retained graph recursively (signal 11 at ~40,000 terms with the
    # usual 8 MB stack); with a 1 MB stack 8,000 terms were enough to crash.
    code = "import gradcheck_sym as gs; print(gs.check('+'.join(['x'] * 8000), at={'x': 1.0}).ok)"
    limit = lambda: resource.setrlimit(resource.RLIMIT_STACK, (1 << 20, 1 << 20))  # noqa: E731
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, preexec_fn=limit,
                         timeout=300)
    assert (out.returncode, out.stdout.strip()) == (0, "True")


# ---------------------------------------------------------------- hangs
@pytest.mark.parametrize("text,grad", [
    ("x*digamma(10**20)", float(mpmath.psi(0, 10**20))),   # ln(1e20) - 1/(2e20) - ... = 46.0517...
    ("x*digamma(100000000000000000000)", float(mpmath.psi(0, 10**20))),
    ("x*harmonic(10**20)", float(mpmath.harmonic(10**20))),  # ln(1e20) + Euler's gamma = 46.6289...
])
def test_special_functions_of_huge_integers_are_not_evaluated_exactly(text, grad):
    start = time.perf_counter()
    r = gs.check(text, at={"x": 1.0})
    assert time.perf_counter() - start < 5
    assert r.ok and _rows(r)["x"].symbolic_grad == pytest.approx(grad, rel=1e-15)


def test_a_slow_second_opinion_is_skipped_with_a_note(monkeypatch):
    monkeypatch.setattr(opinion, "WHOLE_SECONDS", 0.01)  # this one takes sympy ~0.5 s
    r = gs.check("max(max(max(max(max(max(max(max(x,y),z),x*y),y*z),x*z),x+y),y+z),x+z)",
                 at={"x": 0.3, "y": 0.2, "z": 0.1})
    assert r.ok
    assert "no second opinion (sympy.diff of the whole expression took more than 0.01 s)" in r.derivation


def test_the_high_precision_time_budget_falls_back_to_float64_with_a_note(monkeypatch):
    monkeypatch.setattr(tl, "MP_SECONDS", 0)
    r = gs.check("x*detach(tanh(x))", at={"x": 0.5})
    assert [f.kind for f in r.errors()] == ["untracked"]  # the verdict stands, from the float64 reference
    assert r.high_precision_points == 0
    assert ("the 50-digit reference was skipped at 1 point(s) (its time budget of 0 s was spent)"
            in r.derivation)
    assert "reference in float64 (high-precision budget spent: tolerance doubled)" in r.errors()[0].examples[0].why


# ---------------------------------------------------------------- raw exceptions on valid input
@pytest.mark.parametrize("text,at,expected", [
    ("x*(-2)**0.5", {"x": 1.0}, [("outside-domain", "info")]),            # I in sympy, NaN in torch
    ("x*sin(1e400)", {"x": 1.0}, [("outside-domain", "info")]),           # AccumBounds(-1, 1)
    ("max(x, 1/0)", {"x": 1.0}, [("outside-domain", "info")]),            # zoo is not comparable
    ("x*1" + "0" * 320, {"x": 1.0}, [("outside-domain", "info")]),        # int too big for torch
    ("x + erfc(1e308)", {"x": 1.0}, []),                                   # mpmath OverflowError
    ("atan2(x, pow(z, e**1e16))", {"x": 1.0, "z": 2.0}, [("nonfinite", "info"), ("nonfinite", "info")]),
    ("sigmoid(atanh(x))", {"x": 1.0}, [("nonfinite", "info")]),           # ZeroDivisionError in mpmath
    ("x*digamma(-1e300)", {"x": 1.0}, [("outside-domain", "info")]),      # a pole: -1e300 is an integer
])
def test_valid_expressions_at_hostile_values_give_reports(text, at, expected):
    r = gs.check(text, at=at)
    assert r.ok and _kinds(r) == expected


def test_atan2_at_the_origin_is_a_kink_not_an_exception():
    r = gs.check("atan2(x, y)", at={"x": 0.0, "y": 0.0})
    assert r.ok and _kinds(r) == [("nondifferentiable", "info")]
    assert "torch defines both partial derivatives as 0" in r.findings[0].message


def test_a_comparison_of_a_piecewise_value_is_evaluated():
    r = gs.check("where(where(x>0,x,-x)>0.5,x,0)", at={"x": [0.7, 0.3, -0.7]})
    assert r.ok and r.findings == ()
    assert _rows(r)["x"].symbolic_grad == 1.0


def test_remainder_with_a_number_first_is_differentiated():
    r = gs.check("2 % x", at={"x": 0.7})
    assert r.ok and _rows(r)["x"].autograd_grad == -2.0 == _rows(r)["x"].symbolic_grad  # -floor(2/0.7)


def test_no_grad_checked_to_second_order_is_untracked_not_an_assertion():
    r = gs.check("no_grad(x/y)", at={"x": 1.0, "y": 2.0}, order=2)
    (f,) = r.errors()
    assert f.kind == "untracked" and f.node == "no_grad(x/y)"
    assert "with the cuts treated as constants the exact derivatives match autograd" in f.message


def test_a_cut_explains_the_hessian_too():
    r = gs.check("x*detach(x)", at={"x": 1.5}, order=2)
    assert [(f.kind, f.node) for f in r.errors()] == [("untracked", "detach(x)")]
    hess = [ex for ex in r.errors()[0].examples if ex.quantity == "d2 out/dx dx"]
    assert (hess[0].autograd, hess[0].symbolic) == (0.0, 2.0)


def test_more_than_ten_thousand_points_with_a_constant_first():
    r = gs.check("1 + x", domain={"x": (0, 1)}, samples=10_001, seed=0)
    assert r.ok and r.n_points == 10_001 and r.checked == 10_001 + 10_000  # x everywhere, 1 + x on 10,000


# ---------------------------------------------------------------- false alarms
@pytest.mark.parametrize("options", [
    {"domain": {"x": (-100, 100)}, "samples": 1000, "seed": 0},
    {"domain": {"x": (-100, 100)}, "samples": 1000, "seed": 0, "dtype": "float32"},
    {"at": {"x": [1e16, 30.0, -1.0]}, "dtype": "float32", "order": 2},
])
def test_sigmoid_where_its_output_rounds_to_one_is_no_false_alarm(options):
    # torch's backward is out*(1 - out): 0 once out rounds to 1, against exp(-x) ~ 1e-33 exactly.
    r = gs.check("sigmoid(x)", **options)
    assert r.ok and r.findings == ()


def test_a_where_with_constant_branches_has_no_gradient_on_either_side():
    r = gs.check("x * where(x > 0, 2, 3)", at={"x": [0.5, -0.5]})
    assert r.ok and r.findings == ()
    row = _rows(r)["where(x > 0, 2, 3)"]
    assert (row.requires_grad, row.autograd_grad, row.status) == (False, None, "constant")
    assert _rows(r)["x"].symbolic_grad == 2.0


def test_mpmath_precision_is_never_changed_globally():
    before = (mpmath.mp.dps, mpmath.mp.prec)
    gs.check("x*detach(tanh(x))", at={"x": 0.5})
    assert (mpmath.mp.dps, mpmath.mp.prec) == before


def test_non_real_whole_expression_skips_the_second_opinion():
    r = gs.check("(-8)**x", at={"x": 2.0})  # d/dx = (-8)**x * log(-8): log(8) + I*pi in sympy, NaN in torch
    assert "no second opinion (the whole expression involves non-real values)" in r.derivation
    assert r.ok and _kinds(r) == [("nonfinite", "info")] and math.isnan(_rows(r)["x"].symbolic_grad)


# ---------------------------------------------------------------- bad arguments of the API are typed errors
@pytest.mark.parametrize("call,message", [
    (lambda: gs.check("x", at={"x": 1}, chunk_size="a"), "chunk_size must be a positive integer, not 'a'"),
    (lambda: gs.check("x", at={"x": 1}, limits=5), "limits must be a gradcheck_sym.Limits, not int"),
    (lambda: gs.check("x", at=[1]), "at must be a mapping of variable names to values, not list"),
    (lambda: gs.check("x", at={"x": 1}, variables=5), "variables must be a list of names, not 5"),
    (lambda: gs.check_graph("x"), "check_graph takes a gradcheck_sym.Graph, not str: use gs.check for expression text"),
    (lambda: gs.check_graph(gs.Graph((), 0, ("x",))), "the graph is not valid: output is not a node"),
    (lambda: gs.Limits(max_points=0), "Limits(max_points=0): a limit must be a positive integer"),
    (lambda: gs.check("x", at={"x": 1}, timeout=-1), "timeout must be a positive number of seconds, not -1"),
])
def test_bad_arguments_are_input_errors(call, message):
    with pytest.raises(gs.InputError) as info:
        call()
    assert str(info.value).splitlines()[0] == message


def test_a_box_wider_than_the_largest_float_is_sampled_inside_it():
    r = gs.check("x*x", domain={"x": (-1e308, 1e308)}, samples=50, seed=0)
    assert r.n_points == 50 and -1e308 <= r.first_point["x"] <= 1e308 and not math.isnan(r.first_point["x"])


@pytest.mark.parametrize("text,options", [
    # 0*y is -0.0 for negative y in torch, and (x - y)/(0*y) then -inf: sympy's fold to 0 lost the sign
    ("pow(x, exp((((x) - (y)) / ((0) * (y))) / ((where(z != y, z, 7)) + (z))))",
     {"domain": {"x": (1e-300, 1e-290), "y": (-100.0, 100.0), "z": (0.0, 1.0)}, "samples": 10, "seed": 574}),
    # log2(0) is -inf in torch, zoo (no sign) in sympy
    ("((-(y)) / (x)) / (min(-2, (min(cos(0), z, asinh(z))) - ((log2(0)) / ((y) % (1e308))), gelu(detach(x))))",
     {"domain": {"y": (-3.0, 3.0), "x": (-1e300, 1e300), "z": (700.0, 720.0)}, "samples": 10, "seed": 190}),
])
def test_constant_folds_keep_what_ieee_arithmetic_keeps(text, options):
    r = gs.check(text, **options)
    assert not r.by_kind("mismatch")  # the fuzz found these two as false alarms


def test_a_constant_pole_that_floats_miss_is_undefined_not_a_number():
    # cot(pi) is a pole; in bfloat16 torch computes cot(3.140625) = -1032, in float64 -8.2e15
    r = gs.check("(z) ** (cot(pi))", domain={"z": (1.0, 1.0)}, samples=3, seed=787, dtype="bfloat16")
    assert r.ok and _kinds(r) == [("outside-domain", "info")]
    assert _kinds(gs.check("x*log2(0)", at={"x": 1.0})) == [("outside-domain", "info")]  # -inf, as in torch


def test_where_rounding_changes_the_value_itself_the_point_is_ill_conditioned_not_compared():
    # float16: x1**2 at x1 = -82.25 is off by 1, so sin(x1**2) is noise; the gradients are of another number
    r = gs.check("tan(sin(x1 ** 2) * cos(x1) - 0.75)", domain={"x1": (-100.0, 100.0)}, samples=50, seed=955,
                 dtype="float16")
    assert r.ok and _kinds(r) == [("ill-conditioned", "info")] and r.findings[0].count == 35
    assert "rounding changes the number itself; these points are not compared" in r.findings[0].message


@pytest.mark.parametrize("text,x,dtype", [("asinh(x)", 2e19, "bfloat16"), ("asinh(x)", 1e20, "float32"),
                                          ("asinh(((x) - (10**20)) / (3))", 1e16, "bfloat16")])
def test_an_overflow_inside_a_kernel_is_a_range_warning(text, x, dtype):
    r = gs.check(text, at={"x": x}, dtype=dtype)
    assert r.ok and {k for k, _ in _kinds(r)} == {"range"}
    assert "computes x**2 + 1 = " in r.findings[0].message and f"outside the range of {dtype}" in r.findings[0].message


def test_acosh_far_out_is_no_false_alarm():
    # torch computes (x*x - 1)**(-1/2), which overflows at 1e200 where sympy's form does not
    assert not gs.check("acosh(x)", at={"x": 1e200}).by_kind("mismatch")


def test_clamp_with_equal_bounds_is_a_tie_with_torchs_convention():
    r = gs.check("clamp(z, y, y)", at={"z": [1.0], "y": [710.0]}, dtype="float16")  # torch passes y no gradient
    assert r.ok and _kinds(r) == [("nondifferentiable", "info")]
    assert "where lo == hi it passes none to lo or hi" in r.findings[0].message


def test_a_subnormal_intermediate_is_a_range_warning_not_a_mismatch():
    # d out/d D underflows to 1.7e-315 (subnormal): its absolute rounding, times 2e307, is 1e-9 relative
    r = gs.check("x1/(pow(x4, 2)*(-0.25*x1*x3*x4+x2-8.43*x4*x5)*sin(x3+log(x2)))+x4*x5",
                 domain={"x1": (-1e300, 1e300), "x2": (-1e-8, 1e-8), "x3": (-3.0, 3.0), "x4": (700.0, 720.0),
                         "x5": (0.0, 0.0)}, samples=3, seed=201)
    assert r.ok and {k for k, _ in _kinds(r)} == {"range", "outside-domain"}
    message = r.by_kind("range")[0].message
    assert "is below the smallest normal number of float64" in message and "float64 gets it right" not in message


def test_a_removable_singularity_is_outside_the_domain():
    # harmonic(tan(0)) = 0 exactly, but not in float32 nor at 50 digits without cancellation to zero
    r = gs.check("(ceil(2)) + (((2) * (erf(y))) / (harmonic(tan(y))))", at={"y": 1e-300}, dtype="float32")
    assert r.ok and _kinds(r) == [("outside-domain", "info")]


def test_a_second_opinion_disagreement_is_reported_when_it_holds_in_high_precision():
    import dataclasses

    import torch

    from gradcheck_sym.judge.engine import Checker
    from gradcheck_sym.judge.expression import ExpressionSubject
    from gradcheck_sym.judge.points import make_points
    from gradcheck_sym.reference.symbolic import derive

    graph = gs.parse("sin(x)*y")
    d = derive(graph)
    wrong = dataclasses.replace(d, whole={"x": 2 * d.whole["x"], "y": d.whole["y"]})
    r = Checker(ExpressionSubject(graph, wrong), make_points(graph.variables, at={"x": [0.3], "y": [2.0]}),
                torch.float64, 1).run()
    (f,) = r.by_kind("second-opinion")
    assert f.node == "x" and f.examples[0].autograd == pytest.approx(2 * 2.0 * math.cos(0.3))
