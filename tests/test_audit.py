"""Audits: torch's OpInfo entries (a fixed CI slice of the sweep), a package's Functions, records and reports."""

import json
import sys
from pathlib import Path

import pytest
import torch

import gradcheck_sym as gs
from gradcheck_sym.audit.marks import audited
from gradcheck_sym.audit.package import NO_SAMPLES
from gradcheck_sym.audit.records import Gradcheck, SampleAudit, Worst, entry_dict, entry_from_dict, strip_times
from gradcheck_sym.audit.sample import check_sample, reason_of
from gradcheck_sym.cli import main
from gradcheck_sym.errors import InputError, UnsupportedError
from gradcheck_sym.report import Finding, Report
from gradcheck_sym.scale import SerialExecutor

ROOT = Path(__file__).parent.parent
PACKAGE = ROOT / "examples" / "audit_package" / "mini_ops"
# The CI slice of the OpInfo sweep: a traced elementwise op, a reduction whose backward depends on
# ties (the amax blind spot of issue 9) and an op the tracer does not know today.
SLICE = "add,amax,nn.functional.conv2d"


@pytest.fixture(scope="module", autouse=True)
def forkserver_with_op_db():
    """The pool's forkserver imports torch's OpInfo database while this process imports it too (2 cores)."""
    from gradcheck_sym.scale.pool import warm_up

    warm_up(["torch.testing._internal.common_methods_invocations"])


@pytest.fixture(scope="module")
def opinfo_slice():
    return gs.audit_torch(SLICE, samples_per_op=2, sources=("sample",), inject=(1e-4,), executor=SerialExecutor())


# -- audit torch --------------------------------------------------------------------------------------------------


def test_the_ci_slice_is_classified_and_compared_with_gradcheck(opinfo_slice):
    add, amax, conv = opinfo_slice.entries
    assert [e.name for e in opinfo_slice.entries] == ["add", "amax", "nn.functional.conv2d"]
    assert [(s.label, s.inputs, s.status, s.gradcheck.verdict) for s in add.samples] == [
        ("sample 0", "input (), arg1 ()", "verified", "pass"), ("sample 1", "input (5,), arg1 ()", "verified", "pass")]
    assert add.status == "verified" and add.worst[1].rel_err < 1e-15
    assert amax.status == "verified" and amax.count("verified") == 2
    assert conv.status == "verified" and conv.count("verified") == 2  # the tensor engine's convolution rule
    assert all(s.gradcheck.verdict == "pass" and s.gradcheck.seconds > 0 for e in opinfo_slice.entries
               for s in e.samples)
    assert opinfo_slice.ok


def test_error_injection_is_caught_by_gradcheck_sym_and_not_by_gradcheck(opinfo_slice):
    add, amax, conv = opinfo_slice.entries
    (inj,) = add.injections
    assert (inj.eps, inj.sample, inj.ops, inj.caught, inj.gradcheck_caught) == (1e-4, "sample 0", ("add",), (True,),
                                                                               (False,))
    (inj,) = amax.injections
    assert (inj.ops, inj.caught) == (("amax",), (True,))  # issue 9's blind spot: amax's error is caught now
    (inj,) = conv.injections
    assert inj.caught and all(inj.caught)
    summary = opinfo_slice.summary()
    assert summary["injection"]["0.0001"]["entries"] == 3
    assert summary["injection"]["0.0001"]["gradcheck_caught"] == 0


def test_a_float32_audit_rounds_the_samples_other_tensors_too():
    # batch norm's running statistics and prelu's weight are not inputs of the check: left in float64 beside
    # float32 inputs, torch raised ("expected scalar type Float but found Double") and the entries were tool
    # errors.  An injected error in float32 is still caught.
    result = gs.audit_torch("nn.functional.batch_norm,nn.functional.prelu", dtypes="float32", samples_per_op=1,
                            sources=("sample",), inject=(1e-2,), executor=SerialExecutor())
    bn, prelu = result.entries
    for e in (bn, prelu):
        assert e.dtype == "float32" and e.status == "verified", [(s.status, s.reason) for s in e.samples]
        assert all(s.status == "verified" for s in e.samples)
    (inj,) = bn.injections
    assert inj.caught and all(inj.caught)


def test_order_2_against_gradgradcheck_and_entries_without_gradgrad():
    result = gs.audit_torch("add,nn.functional.hardsigmoid", order=2, samples_per_op=1, sources=("sample",),
                            executor=SerialExecutor())
    add, hardsigmoid = result.entries
    assert (add.order, add.status, add.samples[0].gradcheck.verdict) == (2, "verified", "pass")
    assert (hardsigmoid.status, hardsigmoid.note) == ("skipped",
                                                      "the entry does not support gradgrad (supports_gradgrad=False)")


def test_the_report_lists_every_section(opinfo_slice):
    text = str(opinfo_slice)
    assert text.startswith("gradcheck-sym audit of torch's OpInfo entries (torch " + torch.__version__ +
                           ", float64, order 1, at most 2 samples per source)\n\nentries: 3: ")
    assert "\ndisagreements with gradcheck (0):\n  none\n" in text
    assert "add eps=0.0001 (sample 0, 1 ops): all caught; gradcheck caught 0 of 1" in text
    md = opinfo_slice.to_markdown()
    assert "| entry | dtype | samples | traced | verdict | worst error (where) | gradcheck | ours (median) |" in md
    assert "\n| amax | float64 | 2 | 2/2 | verified | " in md
    page = opinfo_slice.to_html()
    assert page.startswith("<!DOCTYPE html>") and "<td class='verified'>verified</td>" in page
    assert text.rstrip().splitlines()[-1].startswith("OK: ")


def test_records_survive_json(opinfo_slice):
    for e in opinfo_slice.entries:
        assert entry_from_dict(json.loads(json.dumps(entry_dict(e)))) == e
    d = opinfo_slice.to_dict(times=False)
    assert "seconds" not in json.dumps(d) and d["version"] == 1


def test_resume_continues_the_file_and_refuses_other_settings(tmp_path, capsys):
    out = tmp_path / "audit.jsonl"
    options = dict(samples_per_op=1, sources=("sample",), executor=SerialExecutor(), output=out)
    full = gs.audit_torch("amax,add,sub", **options)
    text = out.read_text().splitlines(keepends=True)
    assert len(text) == 4 and json.loads(text[0])["kind"] == "gradcheck-sym audit"
    out.write_text("".join(text[:2]) + text[2][:30])
    resumed = gs.audit_torch("amax,add,sub", resume=True, **options)
    assert strip_times(resumed.to_dict()) == strip_times(full.to_dict())
    assert [strip_times(json.loads(x)) for x in out.read_text().splitlines()] == \
        [strip_times(json.loads(x)) for x in text]
    with pytest.raises(InputError) as err:
        gs.audit_torch("amax,add,sub", resume=True, **{**options, "samples_per_op": 2})
    assert str(err.value).startswith(f"{out} was written with other settings or another torch: ")


# -- how a sample is classified (the contract with the engine) ------------------------------------------------------


def _sample(monkeypatch, outcome):
    def fake(*args, **kwargs):
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    monkeypatch.setattr(gs, "check_function", fake)
    return check_sample(torch.sin, [torch.tensor([0.5], dtype=torch.float64)], ["x"], source="sample", index=0)


def _report(*findings, checked=1):
    return Report("f", ("x",), "float64", 1, 1, None, "", "", tuple(findings), (), checked=checked)


def test_classification_of_refusals_findings_and_our_own_errors(monkeypatch):
    from gradcheck_sym.autograd.user import FunctionError

    s = _sample(monkeypatch, UnsupportedError("m.py:3: the tracer does not know torch op 'foo' (in `y = foo(x)`)"))
    assert (s.status, s.reason, s.gradcheck.verdict) == ("not-traced", "the tracer does not know torch op 'foo'",
                                                         "pass")
    s = _sample(monkeypatch, _report(Finding("not-verified", "warning", "foo", "op 'foo' at m.py:3 was not "
                                                                               "verified. The rest was.")))
    assert (s.status, s.reason) == ("not-traced", "op 'foo' at m.py:3 was not verified")
    s = _sample(monkeypatch, _report(Finding("mismatch", "error", "x", "autograd differs. More.")))
    assert (s.status, s.reason) == ("failed", "mismatch x: autograd differs")
    s = _sample(monkeypatch, RuntimeError("boom"))
    assert s.status == "tool-error" and s.reason.startswith("RuntimeError: boom (at ")
    s = _sample(monkeypatch, FunctionError(ZeroDivisionError("division by zero")))
    assert (s.status, s.reason) == ("tool-error", "the function raised under the checker but runs in plain torch: "
                                                  "ZeroDivisionError: division by zero")
    s = _sample(monkeypatch, _report())
    assert s.status == "verified"
    s = _sample(monkeypatch, _report(Finding("outside-domain", "info", "", "the output is NaN."), checked=0))
    assert (s.status, s.reason) == ("not-traced", "nothing was compared: an output is NaN or infinite at every point "
                                                  "(outside-domain)")


def test_an_entry_torch_itself_expects_to_fail_says_so():
    result = gs.audit_torch("float", samples_per_op=1, sources=("sample",), executor=SerialExecutor())
    (entry,) = result.entries
    assert entry.note == "torch's own TestBwdGradients.test_fn_grad expects this entry to fail"
    ((_, sample, text),) = result.disagreements()
    assert (sample.status, sample.gradcheck.verdict) == ("verified", "fail")
    assert text.endswith("Note: torch's own TestBwdGradients.test_fn_grad expects this entry to fail.")


def test_disagreements_are_explained():
    worst = Worst(2e-5, 2e-5, 1.00002, 1.0, "d out[0]/d x[0]")
    ours = SampleAudit("sample", 3, "x (2,)", "failed", reason="mismatch x: autograd differs", worst=worst,
                       gradcheck=Gradcheck("pass"))
    assert ours.disagreement() == (
        "gradcheck-sym: mismatch x: autograd differs; gradcheck passes. The worst is d out[0]/d x[0]: autograd 1.00002, "
        "exact 1 (relative error 2e-05). That is below what gradcheck can see (finite differences with eps 1e-6, "
        "atol 1e-5, rtol 1e-3): either torch's formula is inaccurate here, or the checker's rounding allowance for "
        "it is too tight; the finding's tolerance line says which reference was used.")
    theirs = SampleAudit("sample", 1, "x (2,)", "verified", findings=(("nondifferentiable", "info"),),
                         gradcheck=Gradcheck("fail", "Jacobian mismatch for output 0 with respect to input 0,\n..."))
    assert theirs.disagreement() == (
        "gradcheck fails (Jacobian mismatch for output 0 with respect to input 0,); gradcheck-sym verifies it: the "
        "point is at a kink: gradcheck's finite differences straddle it, while the exact check uses torch's "
        "documented convention there.")
    assert SampleAudit("sample", 0, "", "verified", gradcheck=Gradcheck("pass")).disagreement() is None


def test_reason_of():
    assert reason_of("f.py:12: the tracer does not know torch op 'conv2d' (in `y = conv2d(x)`)\nhint") == \
        "the tracer does not know torch op 'conv2d'"
    assert reason_of("75,000 entries to compare; the limit is 20,000. Raise it.") == \
        "75,000 entries to compare; the limit is 20,000"


# -- the command line: errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize("argv,message", [
    (["audit", "torch", "--ops", "sinn"], "no OpInfo entry with autograd and float64 matches 'sinn'\n"
                                          "did you mean 'sin' or 'sinh' or 'sinc'?"),
    (["audit", "torch", "--dtype", "float8"], "unknown dtype 'float8': use one of float64, float32, float16, bfloat16"),
    (["audit", "torch", "--config", "x.toml"], "--config is for `audit PACKAGE`; `audit torch` reads torch's OpInfo "
                                               "database"),
    (["audit", "no_such_package_xyz"], "cannot import the package 'no_such_package_xyz': No module named "
                                       "'no_such_package_xyz'\nrun from the directory that contains it, install it "
                                       "(pip install -e .), or give its directory"),
    (["audit", str(PACKAGE), "--order", "2"], "--order is for `audit torch`; for a package, put the options next to "
                                              "each Function: @gradcheck_sym.audited(order=2, dtype=..., samples=...)"),
    (["audit", "torch", "--json", "/no/such/dir/a.jsonl"], "'/no/such/dir/a.jsonl': the folder '/no/such/dir' does "
                                                           "not exist"),
])
def test_audit_bad_input_exits_2(argv, message, capsys):
    assert main(argv) == 2
    assert capsys.readouterr().err == f"gradcheck-sym: error: {message}\n"


def test_without_expecttest_the_audit_says_what_to_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "expecttest", None)
    assert main(["audit", "torch", "--ops", "sin"]) == 2
    assert capsys.readouterr().err == ("gradcheck-sym: error: `gradcheck-sym audit torch` needs the package expecttest "
                                       "(torch's test helpers import it)\npip install expecttest (it is in "
                                       "gradcheck-sym[test])\n")
    monkeypatch.setitem(sys.modules, "expecttest", sys.modules.get("expecttest_real", __import__("types")))
    monkeypatch.setitem(sys.modules, "torch.testing._internal.common_methods_invocations", None)
    with pytest.raises(UnsupportedError) as err:
        gs.audit_torch("sin")
    assert str(err.value).startswith(f"this torch ({torch.__version__}) has no OpInfo database")


def test_cli_audit_torch_on_the_process_pool(tmp_path, capsys):
    out, md, page = tmp_path / "a.jsonl", tmp_path / "a.md", tmp_path / "a.html"
    assert main(["audit", "torch", "--ops", "amax", "--samples-per-op", "1", "--workers", "1", "--json", str(out),
                 "--markdown", str(md), "--html", str(page)]) == 0
    text = capsys.readouterr().out
    row = next(line for line in text.splitlines() if line.startswith("amax "))
    assert row.split()[:5] == ["amax", "float64", "2", "2/2", "verified"]
    assert [json.loads(x).get("name") for x in out.read_text().splitlines()] == [None, "amax"]
    assert md.read_text().startswith("## gradcheck-sym audit of torch's OpInfo entries")
    assert "<h2>" in page.read_text()


# -- audit PACKAGE ------------------------------------------------------------------------------------------------


def test_the_example_package_is_audited_as_documented():
    result = gs.audit_package(str(PACKAGE), executor=SerialExecutor())
    got = [(e.name, e.kind, e.order, e.status, e.checkable) for e in result.entries]
    assert got == [
        ("mini_ops.activations:Softplus", "autograd.Function", 1, "verified", 2),
        ("mini_ops.activations:BadSoftplus", "autograd.Function", 1, "failed", 2),
        ("mini_ops.activations:SquarePlus", "autograd.Function", 2, "verified", 1),
        ("mini_ops.activations:ClampUnit", "autograd.Function", 1, "skipped", 0),
        ("mini_ops.extra:smooth_abs", "function", 1, "verified", 1),
        ("mini_ops.extra:scaled_tanh", "function", 1, "verified", 1),
        ("mini_ops.extra:cube", "function", 2, "verified", 1),
    ]
    bad = result.entries[1].samples[0]
    assert bad.reason.startswith("mismatch x: autograd's gradient for x differs from the exact derivative")
    assert (bad.gradcheck.verdict, round(bad.worst.rel_err, 2)) == ("fail", 7.39)
    assert result.entries[3].note == NO_SAMPLES
    assert result.entries[4].samples[0].points == 6  # the sample and 5 random points near it
    assert result.entries[5].samples[0].inputs == "x (2,), scale=2.0"


def test_cli_audit_package_exits_1_when_an_entry_fails_or_is_not_checked(capsys):
    assert main(["audit", str(PACKAGE), "--workers", "1"]) == 1
    text = capsys.readouterr().out
    assert text.startswith("gradcheck-sym audit of package mini_ops (torch ")
    assert "\nnot checked (1):\n  mini_ops.activations:ClampUnit float64: no sample inputs: add a `sample_inputs()` " \
           "staticmethod" in text
    assert text.endswith("FAILED: 2 samples with an error finding, 0 tool errors, 0 crashed\n")


def test_a_bad_config_is_a_clear_error(tmp_path, capsys):
    config = tmp_path / "pyproject.toml"
    config.write_text('[tool.gradcheck-sym]\naudit = [{ target = "mini_ops.extra:cube", order = 3 }]\n')
    assert main(["audit", str(PACKAGE), "--config", str(config)]) == 2
    assert capsys.readouterr().err == (
        f"gradcheck-sym: error: {config}: [tool.gradcheck-sym] audit: order must be 1 or 2 in the entry for "
        "'mini_ops.extra:cube'\neach entry is \"module:name\" or { target = \"module:name\", sample-inputs = "
        "\"module:hook\", order = 2, samples = 5 }\n")


def test_audited_marks_without_changing_the_function():
    def f(x):
        return x

    assert audited(sample_inputs=[(1.0,)], order=2)(f) is f
    assert f.__gradcheck_sym_audit__.order == 2
    with pytest.raises(InputError):
        audited(order=3)


def test_an_entry_checked_in_parts_is_the_entry_checked_whole():
    options = dict(samples_per_op=3, inject=(1e-4,), executor=SerialExecutor())
    # where's samples 0.. include one that is not verified first, so its injection runs in the last phase
    whole = gs.audit_torch("where,clamp", samples_per_task=100, **options)
    parts = gs.audit_torch("where,clamp", samples_per_task=1, **options)
    assert strip_times(parts.to_dict()) == strip_times(whole.to_dict())
    assert all(e.injections for e in whole.entries if e.count("verified"))


def test_an_injection_that_changes_no_gradient_is_not_a_miss():
    # floor's gradient is 0: an error injected into the gradient flowing into it changes nothing autograd
    # computes, so there is nothing to catch (once, every such entry counted as "missed")
    result = gs.audit_torch("floor", samples_per_op=1, sources=("sample",), inject=(1e-4,), executor=SerialExecutor())
    (inj,) = result.entries[0].injections
    assert inj.caught == (None,) and not inj.effective and inj.missed == []
    assert result.summary()["injection"]["0.0001"] == {"entries": 0, "caught": 0, "gradcheck_caught": 0,
                                                       "no_effect": 1}
    assert "floor eps=0.0001 (sample 0, 1 ops): no effect" in str(result)


def test_a_partly_traced_entry_lists_its_reasons_and_nan_samples_are_explained():
    result = gs.audit_torch("sin", sources=("reference",), executor=SerialExecutor())
    text = str(result)
    assert "samples not traced in partly traced entries, by reason:" in text
    assert "x every differentiable input is empty: sin reference" in text
    dis = [t for _, _, t in result.disagreements()]
    assert dis and all("the sample holds NaN or infinite values" in t for t in dis)


class _OutEqualsInBackward(torch.autograd.Function):
    """Its backward writes with out=: fine once, and raising when differentiated again (torch's rule)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return torch.mul(g, 2 * x, out=torch.empty_like(x))


def test_a_second_backward_that_raises_in_plain_torch_is_torch_s_not_a_tool_error():
    x = [torch.tensor([0.5, 1.5], dtype=torch.float64)]
    first = check_sample(_OutEqualsInBackward.apply, x, ["x"], source="sample", index=0)
    assert first.status == "verified"
    second = check_sample(_OutEqualsInBackward.apply, x, ["x"], source="sample", index=0, order=2)
    assert second.status == "skipped"
    assert second.reason.startswith("torch's own second-order backward raises in plain torch: RuntimeError: mul(): "
                                    "functions with out=")
    assert second.gradcheck.verdict == "error"  # gradgradcheck raises the same way


def test_a_sample_s_captured_tensors_are_rounded_and_its_containers_kept():
    # In a float32 audit a captured tensor (not an input of the check) is rounded once; a namedtuple that holds
    # one stays a namedtuple, and a float64 audit passes the sample's own objects through.
    import collections
    from types import SimpleNamespace

    from gradcheck_sym.audit.opinfo import sample_call

    pair = collections.namedtuple("pair", "a b")
    x = torch.randn(3, dtype=torch.float64, requires_grad=True)
    c = torch.randn(3, dtype=torch.float64)
    seen = []

    class Op:
        full_name = "nn.functional.example"

        def get_op(self):
            return None

        def gradcheck_wrapper(self, op, inp, nt, lst):
            seen.append((type(nt).__name__, nt.a.dtype, lst[0].dtype, nt is sample.args[0]))
            return inp * nt.a.to(inp.dtype)

    sample = SimpleNamespace(input=x, args=(pair(c, 1), [c]), kwargs={}, output_process_fn_grad=lambda o: o)
    for dtype in ("float64", "float32"):
        fn, leaves, names = sample_call(Op(), sample, dtype)
        assert names == ["input"]
        fn(*[t.detach().to(getattr(torch, dtype)) for t in leaves])
    assert seen == [("pair", torch.float64, torch.float64, True), ("pair", torch.float32, torch.float32, False)]
