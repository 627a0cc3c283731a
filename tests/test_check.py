"""check: verdicts per node and point, against exact values."""

import json
import math

import pytest
import torch

import gradcheck_sym as gs
from gradcheck_sym import InputError
from gradcheck_sym.ops import OPS


def test_correct_expression_is_ok_and_values_are_exact():
    r = gs.check("sin(x)*exp(y) + log(1 + x**2)/y", at={"x": 0.7, "y": 1.3})
    assert r.ok and r.findings == ()
    rows = {row.expression: row for row in r.nodes}
    assert rows["x"].symbolic_grad == pytest.approx(math.cos(0.7) * math.exp(1.3) + 2 * 0.7 / (1.3 * 1.49), rel=1e-15)
    assert rows["y"].autograd_grad == pytest.approx(math.sin(0.7) * math.exp(1.3) - math.log(1.49) / 1.3**2, rel=1e-14)
    assert rows["sin(x)*exp(y)"].grad_fn == "MulBackward0" and not rows["sin(x)*exp(y)"].is_leaf
    assert rows["log(1 + x**2)/y"].grad_fn == "DivBackward0"
    assert rows["x"].is_leaf and rows["x"].requires_grad


def test_where_sqrt_nan_trap_is_a_nonfinite_error():
    r = gs.check("where(x > 0, sqrt(x), 0)", domain={"x": (-1, 1)}, samples=200, seed=0)
    assert not r.ok
    (f,) = r.errors()
    assert f.kind == "nonfinite" and f.node == "x"
    ex = f.examples[0]
    assert ex.point["x"] <= 0 and math.isnan(ex.autograd) and ex.symbolic == 0
    assert 80 < f.count < 120


def test_detach_region_that_matters_is_untracked():
    r = gs.check("x*detach(tanh(x))", at={"x": 0.5})
    (f,) = r.errors()
    assert f.kind == "untracked" and f.node == "detach(tanh(x))"
    ex = f.examples[0]
    assert ex.autograd == pytest.approx(math.tanh(0.5), rel=1e-15)
    assert ex.symbolic == pytest.approx(math.tanh(0.5) + 0.5 * (1 - math.tanh(0.5) ** 2), rel=1e-15)


def test_no_grad_region_is_untracked_and_harmless_cut_is_info():
    r = gs.check("x*x + no_grad(3*x)", at={"x": 2.0})
    assert [f.kind for f in r.errors()] == ["untracked"]
    assert r.errors()[0].node == "no_grad(3*x)"
    r2 = gs.check("x + 0*detach(x)", at={"x": 2.0})
    assert r2.ok and [f.kind for f in r2.findings] == ["cut"]


def test_ill_conditioned_expression_is_no_false_alarm():
    for x in (1e-3, 1e-4, 3e-5):
        assert gs.check("(1 - cos(x))/x**2", at={"x": x}).ok


def test_kinks_are_nondifferentiable_info_with_the_convention():
    r = gs.check("relu(x) + abs(y)", at={"x": 0.0, "y": 0.0})
    assert r.ok
    kinds = {f.node: f for f in r.findings}
    assert kinds["relu(x)"].kind == "nondifferentiable"
    assert "torch returns 0" in kinds["relu(x)"].convention
    ex = kinds["relu(x)"].examples[0]
    assert (ex.autograd, ex.symbolic) == (0.0, 0.5)  # torch's left derivative vs sympy's Heaviside(0)


def test_outside_domain_points_are_counted_not_compared():
    r = gs.check("sqrt(x)", domain={"x": (-1, 1)}, samples=100, seed=3)
    assert r.ok
    (f,) = r.by_kind("outside-domain")
    assert f.severity == "info" and 30 < f.count < 70
    assert all(ex.point["x"] < 0 for ex in f.examples)


def test_hessian_matches_double_backward():
    r = gs.check("log(1+x**2)/y", domain={"x": (-3, 3), "y": (0.5, 2)}, samples=1000, seed=0, dtype="float32", order=2)
    assert r.ok and r.order == 2


class _ScaledSin(torch.autograd.Function):
    """sin whose backward is off by a relative 1e-6: a real bug to catch."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.sin(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * torch.cos(x) * (1 + 1e-6)


def test_relative_error_of_1e_6_is_caught_in_float64(monkeypatch):
    import dataclasses

    import gradcheck_sym.ops as ops

    monkeypatch.setitem(ops.OPS, "sin", dataclasses.replace(OPS["sin"], torch=lambda t, x: _ScaledSin.apply(x)))
    r = gs.check("sin(x)*y", domain={"x": (-1, 1), "y": (1, 2)}, samples=50, seed=0)
    assert not r.ok
    kinds = {(f.kind, f.node) for f in r.errors()}
    assert ("mismatch", "x") in kinds and ("mismatch", "sin(x)") not in kinds
    worst = next(f for f in r.errors() if f.node == "x").examples[0]
    assert worst.rel_err == pytest.approx(1e-6, rel=1e-3)
    assert worst.tol < 1e-12


def test_sampling_is_reproducible_and_seed_is_reported():
    a = gs.check("x*y", domain={"x": (0, 1), "y": (2, 3)}, samples=10, seed=7)
    b = gs.check("x*y", domain={"x": (0, 1), "y": (2, 3)}, samples=10, seed=7, chunk_size=3)
    assert a.first_point == b.first_point and a.seed == 7
    c = gs.check("x*y", domain={"x": (0, 1), "y": (2, 3)}, samples=10)
    assert isinstance(c.seed, int)


def test_multiple_explicit_points_and_fixed_plus_sampled():
    r = gs.check("x*y", at={"x": [1, 2, 3], "y": [4, 5, 6]})
    assert r.n_points == 3 and r.ok
    r = gs.check("x*y", at={"y": 2.0}, domain={"x": (0, 1)}, samples=5, seed=0)
    assert r.n_points == 5 and r.first_point["y"] == 2.0


@pytest.mark.parametrize("kwargs,message", [
    ({"at": {"x": 1, "z": 2}}, "unknown variable 'z' in at: the expression uses x, y"),
    ({"at": {"x": 1}}, "no value for 'y': give it in at (e.g. --at y=0.5) or domain (e.g. --domain y=-1:1)"),
    ({"domain": {"x": (1, 0), "y": (0, 1)}}, "the domain of 'x' is empty: low 1.0 > high 0.0"),
    ({"at": {"x": "a", "y": 1}}, "the value of 'x' must be a number or a list of numbers, not 'a'"),
    ({"at": {"x": float("nan"), "y": 1}}, "the value of 'x' must be finite, not nan"),
    ({"at": {"x": 1, "y": 1}, "dtype": "float8"}, "unknown dtype 'float8': use one of float64, float32, float16, bfloat16"),
    ({"at": {"x": 1, "y": 1}, "order": 3}, "order must be 1 or 2, not 3"),
    ({"at": {"x": 1, "y": 1}, "samples": 5}, "samples needs a domain to draw from: give domain (e.g. --domain x=-1:1)"),
])
def test_bad_input_is_a_clear_input_error(kwargs, message):
    with pytest.raises(InputError) as info:
        gs.check("x*y", **kwargs)
    assert str(info.value) == message


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_narrow_dtypes_are_supported(dtype):
    r = gs.check("sin(x)*exp(y)", domain={"x": (-1, 1), "y": (-1, 1)}, samples=100, seed=0, dtype=dtype)
    assert r.ok and r.dtype == dtype


def test_float16_gradient_overflow_is_a_range_warning_not_an_error():
    # exp(10)/0.5 = 44052 fits float16; d/dy = -88106 does not
    r = gs.check("exp(x)/y", at={"x": 10.0, "y": 0.5}, dtype="float16")
    assert r.ok
    (f,) = r.findings
    assert (f.kind, f.severity, f.node) == ("nonfinite", "warning", "y")
    assert "the gradient of y (8.81e+04) is outside the range of float16" in f.message
    assert f.examples[0].autograd == -math.inf and f.examples[0].symbolic == pytest.approx(-2 * math.exp(10) / 0.25 / 2)


def test_float16_value_overflow_is_outside_the_domain():
    r = gs.check("exp(x)*y", at={"x": 11.5, "y": 2.0}, dtype="float16")
    assert r.ok and [f.kind for f in r.findings] == ["outside-domain"]


def test_no_variables_with_values_is_an_input_error():
    with pytest.raises(InputError) as info:
        gs.check("1 + 2", at={"x": 1})
    assert str(info.value) == "the expression has no variables: give no at/domain values"
    assert gs.check("1 + 2").ok


def test_torch_without_a_kernel_is_an_unsupported_error(monkeypatch):
    import dataclasses

    import gradcheck_sym.ops as ops

    def no_kernel(t, x):
        raise RuntimeError('"sin_cpu" not implemented for \'Half\'\nmore detail')

    monkeypatch.setitem(ops.OPS, "sin", dataclasses.replace(OPS["sin"], torch=no_kernel))
    with pytest.raises(gs.UnsupportedError) as info:
        gs.check("sin(x)", at={"x": 1.0}, dtype="float16")
    assert str(info.value) == ("torch cannot compute 'sin(x)' in torch.float16: \"sin_cpu\" not implemented for "
                               "'Half'\nuse --dtype float64 or float32")


def test_json_is_versioned_and_carries_the_findings():
    r = gs.check("x*detach(tanh(x))", at={"x": 0.5})
    d = json.loads(r.to_json())
    assert d["version"] == 1 and d["ok"] is False
    assert d["findings"][0]["kind"] == "untracked"
    assert {"expression", "grad_fn", "is_leaf", "autograd_grad", "symbolic_grad", "status"} <= set(d["nodes"][0])


def test_second_opinion_is_reported_in_the_derivation():
    r = gs.check("sin(x)*y", at={"x": 1, "y": 2})
    assert "reverse sweep" in r.derivation and "second opinion: sympy.diff" in r.derivation


def test_deep_composition_derives_without_swell():
    text = "x*y"
    for i in range(150):
        text = f"{'sin' if i % 2 else 'cos'}({text})"
    r = gs.check(text, domain={"x": (-1, 1), "y": (-1, 1)}, samples=1000, seed=0)
    assert r.ok and "reverse sweep" in r.derivation


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode", "set_grad_enabled"])
def test_a_check_under_the_callers_no_grad_is_unaffected_and_the_mode_comes_back(mode):
    ctx = {"no_grad": torch.no_grad, "inference_mode": torch.inference_mode,
           "set_grad_enabled": lambda: torch.set_grad_enabled(False)}[mode]
    with ctx():
        r = gs.check("x*tanh(x)", at={"x": 0.5})
        assert not torch.is_grad_enabled()
        assert torch.is_inference_mode_enabled() == (mode == "inference_mode")
    assert r.ok and r.findings == ()
    assert torch.is_grad_enabled()


def test_the_high_precision_reference_has_its_own_mpmath_context():
    import mpmath

    before = mpmath.mp.dps
    r = gs.check("x*detach(tanh(x))", at={"x": 0.5})  # its untracked verdict uses the 50-digit reference
    assert r.high_precision_points == 1 and [f.kind for f in r.findings] == ["untracked"]
    assert mpmath.mp.dps == before


def test_a_program_that_starts_with_another_s_steps_reuses_their_compilation():
    # the magnitude sweep's program starts with the forward's steps, compiled already with the reference
    import sympy
    import torch

    from gradcheck_sym.reference.evaluate import TORCH, compile_program
    from gradcheck_sym.reference.symbolic import Program

    x, a, b, c = (sympy.Symbol(n, real=True) for n in ("x", "a", "b", "c"))
    forward = [(a, sympy.sin(x) * x), (b, sympy.exp(a) + x)]
    main = compile_program(Program((x,), tuple(forward + [(c, b * b)])), TORCH)
    other = Program((x,), tuple(forward + [(c, b - a)]))
    shared = compile_program(other, TORCH, base=main)
    assert [fn for _, fn in shared.steps[:2]] == [fn for _, fn in main.steps[:2]]  # the same closures
    assert shared.steps[2][1] is not main.steps[2][1]
    point = {x: torch.tensor([0.3, -1.2], dtype=torch.float64)}
    fresh = compile_program(other, TORCH).run(dict(point))
    got = shared.run(dict(point))
    torch.testing.assert_close(got[c], fresh[c], rtol=0, atol=0)
    # the same length is not the same program: nothing past the common steps is taken from the base
    assert len(other.steps) == main.n_program and shared.source == other.steps


def test_a_program_checked_again_reuses_its_float64_compilation(monkeypatch):
    import gradcheck_sym.reference.evaluate as evaluate

    compiled = []
    real = evaluate._compile_program
    monkeypatch.setattr(evaluate, "_compile_program", lambda *a: compiled.append(a[0]) or real(*a))
    text = "sin(x)*exp(y) + log(1 + x**3)/y + z*z*z"  # an expression no other test compiles
    first = gs.check(text, at={"x": [0.3, 0.5], "y": [1.5, 2.0], "z": [0.1, 0.2]})
    n = len(compiled)
    again = gs.check(text, at={"x": [0.7], "y": [1.1], "z": [-0.4]})
    assert n > 0 and len(compiled) == n  # nothing compiled the second time
    assert first.ok and again.ok and again.checked > 0
    other = gs.check("sin(x)*exp(y) + log(1 + x**3)/y + z*z", at={"x": [0.7], "y": [1.1], "z": [-0.4]})
    assert other.ok and len(compiled) > n  # a different program is compiled
