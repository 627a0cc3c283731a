"""check_function: traced PyTorch code, custom autograd.Functions and every kind of cut, in float64 and float32."""

import pytest
import torch

import gradcheck_sym as gs
from gradcheck_sym.autograd.user import FunctionError

from . import catalogue, functions_catalogue

IDS = [c[0] for c in catalogue.CASES]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("case", catalogue.CASES, ids=IDS)
def test_each_case_gets_its_verdict(case, dtype):
    torch.manual_seed(0)
    name, fn, inputs, options, kinds = case
    report = gs.check_function(fn, *inputs, dtype=dtype, **options)
    assert sorted(f.kind for f in report.errors()) == sorted(kinds), str(report)
    assert report.ok == (not kinds)


@pytest.mark.parametrize("case", [c for c in catalogue.CASES if not c[4]][:12], ids=lambda c: c[0])
def test_correct_code_passes_at_random_points_in_float32(case):
    name, fn, inputs, options, _ = case
    report = gs.check_function(fn, *inputs, samples=20, seed=0, dtype="float32", **options)
    assert report.ok, str(report)
    assert report.n_points == 21


def test_softplus_mismatch_names_the_input_the_worst_element_and_both_values():
    report = gs.check_function(catalogue._fn(lambda x: torch.log1p(torch.exp(x)), lambda x, g: g * torch.exp(x)),
                               catalogue.MIXED)
    (f,) = report.errors()
    assert (f.kind, f.node) == ("mismatch", "x")
    ex = f.examples[0]
    assert ex.quantity == "d out[2]/d x[2]"  # exp(2) vs sigmoid(2): the largest error
    assert ex.autograd == pytest.approx(torch.exp(torch.tensor(2.0, dtype=torch.float64)).item(), rel=1e-14)
    assert ex.symbolic == pytest.approx(torch.sigmoid(torch.tensor(2.0, dtype=torch.float64)).item(), rel=1e-14)


def test_untracked_region_has_file_line_source_and_size():
    report = gs.check_function(catalogue.no_grad_norm, catalogue.X23, catalogue.W32)
    (f,) = report.errors()
    assert f.kind == "untracked" and f.node == "no_grad block"
    assert "catalogue.py:" in f.message and "`scale = h.norm()`" in f.message
    assert "dropping the gradient" in f.message


def test_harmless_cut_is_reported_as_info():
    report = gs.check_function(catalogue.harmless_logsumexp, catalogue.MIXED)
    assert report.ok
    (f,) = report.findings
    assert (f.kind, f.severity, f.node) == ("cut", "info", "detach")


def test_custom_function_forward_is_not_a_cut():
    report = gs.check_function(catalogue.good_softplus, catalogue.MIXED)
    assert report.findings == ()
    assert "custom autograd.Function Fn" in report.derivation


def test_module_parameters_are_inputs_by_name():
    module = torch.nn.Linear(2, 1).double()
    report = gs.check_function(module, torch.tensor([0.5, -1.0], dtype=torch.float64))
    assert report.ok
    assert report.variables == ("input", "weight", "bias")
    rows = {r.expression: r for r in report.nodes}
    assert rows["weight[0,1]"].symbolic_grad == pytest.approx(-1.0)


def test_an_op_outside_the_table_is_not_verified_never_ok():
    def g(x):
        return torch.special.bessel_j0(x) * 0 + torch.sin(x) ** 2  # bessel_j0 has no derivative rule here

    x = torch.tensor([0.1, 0.5, 2.0], dtype=torch.float64)
    report = gs.check_function(g, x)
    (f,) = report.errors()
    assert f.kind == "not-verified" and not report.ok
    assert "torch op 'special_bessel_j0' is not in the op table (test_function.py:" in f.message
    partly = gs.check_function(lambda x, y: (torch.special.bessel_j0(x) + y.sin()).sum(), x, x.clone())
    assert partly.ok and [(f.kind, f.severity, f.node) for f in partly.findings] == [("not-verified", "warning", "x")]


def test_expected_expression_instead_of_the_trace():
    def g(x):
        return torch.special.bessel_j0(x) * 0 + torch.sin(x) ** 2

    x = torch.tensor([0.1, 0.5, 2.0], dtype=torch.float64)
    report = gs.check_function(g, x, expected="sin(x)**2")
    assert report.ok and "expected expression" in report.derivation
    assert not gs.check_function(g, x, expected="sin(x)**2 + 0.001*x").ok


def test_data_dependent_control_flow_is_traced_at_each_point():
    calls = []

    def f(x):
        calls.append(bool(x.sum() > 0))
        return (x * x).sum() if x.sum() > 0 else (x * x * x).sum()

    report = gs.check_function(f, torch.tensor([0.05, -0.05], dtype=torch.float64), samples=30, seed=0)
    assert report.ok and not report.by_kind("trace") and report.n_points == 31
    assert True in calls and False in calls  # both branches were checked


def test_samples_and_domain():
    report = gs.check_function(catalogue.good_softplus, catalogue.MIXED, samples=10, seed=3, domain={"x": (-5, 5)})
    assert report.ok and report.n_points == 11 and report.seed == 3
    assert report.first_point == {"x[0]": 0.3, "x[1]": -1.2, "x[2]": 2.0}


@pytest.mark.parametrize("fn,message", [
    (lambda x: 3.0, "output 0 is a float, not a tensor\nreturn a tensor or a tuple of tensors"),
    (lambda x: (x > 0).long(), "output 0 has dtype int64, which has no gradient\nreturn a floating-point tensor (a "
                               "comparison's result is not differentiable; compute with the values it selects)"),
    (lambda x: x.to(torch.complex128), "output 0 is complex (torch.complex128); the checker works with real numbers\n"
                                       "return the real and imaginary parts as two real outputs"),
])
def test_bad_outputs_are_typed_errors(fn, message):
    with pytest.raises(gs.UnsupportedError) as info:
        gs.check_function(fn, catalogue.MIXED)
    assert str(info.value) == message


def test_no_differentiable_input_is_an_input_error():
    with pytest.raises(gs.InputError) as info:
        gs.check_function(lambda n: torch.ones(3) * n, torch.tensor([1, 2, 3]))
    assert str(info.value) == ("no input needs a gradient: give at least one floating-point tensor (integer tensors "
                               "and other arguments are passed through as constants)")


def test_exception_in_the_function_shows_the_users_traceback():
    def broken(x):
        return x / undefined_name  # noqa: F821

    with pytest.raises(FunctionError) as info:
        gs.check_function(broken, catalogue.MIXED)
    text = str(info.value)
    assert text.startswith("the function raised NameError: name 'undefined_name' is not defined")
    assert "test_function.py" in text and "in broken" in text
    assert "gradcheck_sym" not in text.replace("test_function", "")


def test_a_float32_module_met_with_float64_inputs_says_which_dtype_to_pass():
    net = torch.nn.Linear(3, 2)  # float32 parameters; the check's default dtype is float64
    with pytest.raises(FunctionError) as info:
        gs.check_function(lambda x: net(x).sum(), torch.randn(4, 3))
    first = str(info.value).splitlines()[0]
    assert first.startswith("the function raised RuntimeError: mat1 and mat2 must have the same dtype")
    assert first.endswith('(the inputs were float64, the check\'s default dtype; for a float32 model pass '
                          'dtype="float32", or --dtype float32)')
    assert gs.check_function(lambda x: net(x).sum(), torch.randn(4, 3), dtype="float32").ok


def test_no_element_cap_a_vector_output_is_projected():
    x = torch.linspace(-2, 2, 20_000, dtype=torch.float64)
    report = gs.check_function(torch.tanh, x)
    assert report.ok and "3 random projections" in report.derivation
    assert report.checked == 3 * 20_000


def test_assert_gradients_raises_with_the_report():
    gs.assert_gradients(catalogue.good_softplus, catalogue.MIXED)
    with pytest.raises(AssertionError) as info:
        gs.assert_gradients(catalogue.sign_error, catalogue.MIXED)
    assert "gradcheck-sym found errors" in str(info.value) and "[error] mismatch x" in str(info.value)


def test_pytest_fixture(gradcheck_sym):
    gradcheck_sym(catalogue.good_softplus, catalogue.MIXED)
    with pytest.raises(pytest.fail.Exception) as info:
        gradcheck_sym(catalogue.missing_factor, catalogue.MIXED)
    assert "[error] mismatch x" in str(info.value)


@pytest.mark.parametrize("mode", ["f64", "f32", "o2"])
@pytest.mark.parametrize("case", functions_catalogue.CASES, ids=[c[0] for c in functions_catalogue.CASES])
def test_functions_catalogue(case, mode):
    name, fn, inputs, options, expect = case
    options = dict(options)
    if mode == "f32":
        options["dtype"] = "float32"
    if mode == "o2":
        options["order"] = 2
    report = gs.check_function(fn, *inputs, **options)
    assert sorted({f.kind for f in report.errors()}) == expect[mode], str(report)


def test_a_declared_straight_through_estimator_is_intended_info():
    f = functions_catalogue.CASES[1][1]
    report = gs.check_function(f, functions_catalogue.X, intended={"STESign": "straight-through"})
    (finding,) = report.findings
    assert (finding.kind, finding.severity) == ("intended", "info")
    assert finding.message.startswith("the gradient for x deviates from the exact derivative at 1 of 1 point (3 "
                                      "entries) as declared (STESign: straight-through);")
    undeclared = gs.check_function(f, functions_catalogue.X)
    assert undeclared.errors()[0].message.endswith(
        "Autograd passes the gradient through STESign unchanged: a straight-through estimator? If that is meant, "
        "declare it: check_function(..., intended={'STESign': 'straight-through'}) (or --intended "
        "STESign=straight-through).")


def test_declarations_are_validated():
    with pytest.raises(gs.InputError) as info:
        gs.check_function(torch.sin, catalogue.MIXED, intended={"Fn": "sideways"})
    assert str(info.value) == ("intended['Fn'] = 'sideways': unknown behaviour\nbehaviours: straight-through, "
                               "scale:F, reverse[:F], surrogate:EXPR (for a Function) or cut (for a cut)")


def test_a_declared_cut_is_intended():
    def f(x):
        return (x + (x.clamp(-0.5, 0.5) - x).detach()).exp().sum()

    report = gs.check_function(f, catalogue.MIXED)
    (u,) = report.errors()
    assert u.kind == "untracked" and u.cuts[0].kind == "detach" and u.line == u.cuts[0].line > 0
    assert u.cuts[0].source == "return (x + (x.clamp(-0.5, 0.5) - x).detach()).exp().sum()"
    assert u.cuts[0].dropped > 0
    ok = gs.check_function(f, catalogue.MIXED, intended={f"test_function.py:{u.line}": "cut"})
    assert ok.ok and [x.kind for x in ok.findings] == ["intended"]


def test_user_tolerance_accepts_a_deliberate_epsilon():
    f = functions_catalogue.CASES[10][1]  # sqrt(x + 1e-6) with the derivative of sqrt(x)
    assert not gs.check_function(f, functions_catalogue.XP).ok
    report = gs.check_function(f, functions_catalogue.XP, rtol=1e-5)
    assert report.ok and "user tolerance rtol=1e-05" in report.tolerance


def test_check_inside_no_grad_still_checks_and_restores_the_mode():
    with torch.no_grad():
        report = gs.check_function(catalogue.good_softplus, catalogue.MIXED)
        assert not torch.is_grad_enabled()
    assert report.ok


def test_sampling_near_the_inputs_stays_in_the_domain():
    x = torch.tensor([0.01, 0.02], dtype=torch.float64)
    report = gs.check_function(lambda x: torch.sqrt(x).sum(), x, samples=20, seed=0)
    assert report.ok and not report.by_kind("outside-domain") and report.n_points == 21


def test_non_finite_output_elements_do_not_hide_the_others():
    # pow(-2, 0.5) is NaN in torch and in the exact value: that element is left out, pow(-2, 2) is compared
    report = gs.check_function(lambda b: torch.pow(-2.0, b), torch.tensor([0.5, 2.0], dtype=torch.float64))
    assert report.ok and report.checked == 1
    assert [f.kind for f in report.findings if f.kind == "nonfinite-output"] == ["nonfinite-output"]
    entr = gs.check_function(torch.special.entr, torch.tensor([-0.5, 0.3, 2.0], dtype=torch.float64))
    assert entr.ok and entr.checked == 4, str(entr)  # 2 finite rows x 3 inputs, less the 2 NaN entries
    # a wrong gradient on a finite element is still caught beside a NaN one
    wrong = gs.check_function(_WrongLog.apply, torch.tensor([-1.0, 2.0], dtype=torch.float64))
    assert not wrong.ok and {f.kind for f in wrong.errors()} == {"mismatch"}, str(wrong)


class _WrongLog(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.log(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g / x * 1.001


def test_torch_nan_at_a_kink_twice_is_its_convention():
    # the Hessian of the norm at 0: torch NaN, the subgradient convention 0 — a kink, not an error
    report = gs.check_function(lambda x: torch.linalg.vector_norm(x), torch.zeros(5, dtype=torch.float64), order=2)
    assert report.ok and [f.kind for f in report.findings] == ["nondifferentiable"], str(report)


def test_ops_in_another_thread_are_not_verified_and_show_no_exact_value():
    import threading

    def h(x):
        box = {}
        t = threading.Thread(target=lambda: box.setdefault("y", torch.tanh(x) * 2))
        t.start()
        t.join()
        return box["y"].sum()

    report = gs.check_function(h, torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64))
    assert not report.ok and [f.kind for f in report.errors()] == ["not-verified"]
    assert all(row.symbolic_grad is None and row.status == "not-verified" for row in report.nodes)


def test_integer_outputs_beside_floating_ones_are_left_out():
    x = torch.tensor([[[0.3, -1.2, 2.0, 0.7]]], dtype=torch.float64)
    report = gs.check_function(lambda x: torch.nn.functional.adaptive_max_pool1d(x, 2, return_indices=True), x)
    assert report.ok and report.checked > 0
    with pytest.raises(gs.UnsupportedError, match="output 0 has dtype int64, which has no gradient"):
        gs.check_function(lambda x: x.argmax(-1, keepdim=True), x)


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
def test_a_sparse_input_is_refused_by_name_not_a_tool_error():
    x = torch.tensor([[0.0, 1.5], [2.0, 0.0]], dtype=torch.float64).to_sparse_csr()
    with pytest.raises(gs.UnsupportedError, match="input 'x' is a sparse_csr tensor; the checker works with dense"):
        gs.check_function(lambda x: x.to_dense().sum(), x)


class _OnGPU(torch.Tensor):
    """A CPU tensor that says it is on a GPU: the device checks run on machines without one (tests/test_cuda.py
    runs the real thing where torch sees CUDA)."""

    @property
    def device(self):
        return torch.device("cuda", 0)


def test_tensors_on_a_gpu_are_refused_by_name():
    x = torch.randn(3, dtype=torch.float64).as_subclass(_OnGPU)
    with pytest.raises(gs.UnsupportedError) as info:
        gs.check_function(lambda x: x.sin().sum(), x)
    assert str(info.value).splitlines() == [
        "input 'x' is on cuda:0: the tensor engine's reference runs on the CPU, and gradients computed on cuda are "
        "not verified yet",
        "check on the CPU (move the inputs, and a module, there with .cpu()): the same math, though torch's CPU "
        "kernels are then what is checked"]


def test_a_function_that_computes_on_a_gpu_inside_is_refused_by_its_line(monkeypatch):
    import gradcheck_sym.front.tracer as tracer

    on_gpu = torch.ones(3, dtype=torch.float64)
    monkeypatch.setattr(tracer, "_off_cpu", lambda args, kwargs: "cuda:0" if any(
        a is on_gpu for a in tracer._walk((args, kwargs))) else "")
    with pytest.raises(gs.UnsupportedError, match=r"^test_function\.py:\d+: operations on cuda:0 tensors are not traced "
                                               r"\(the reference runs on the CPU\): gradients through them are not "
                                               r"verified\n"):
        gs.check_function(lambda x: (x * on_gpu).sum() + x.sum(), torch.randn(3, dtype=torch.float64))


def test_a_sparse_result_is_not_verified_not_a_false_mismatch():
    # Counting the recording's bytes asked a sparse tensor for its storage, which raised inside our recording: the
    # output was left unbound, a constant, and a mismatch (exact 0) was reported for correct code (the OpInfo sweep).
    x = torch.randn(5, 5, dtype=torch.float64)
    report = gs.check_function(lambda t: t.to_sparse().to_dense() * 2, x)
    assert [f.kind for f in report.findings] == ["not-verified"], report.findings
    assert "to_dense" in report.findings[0].message
