"""Published teaching material (our own versions of tutorials, a textbook chapter and a lecture) under `run`:
each finishes as it does under python, every backward is verified, exactly the genuine findings appear."""

from pathlib import Path

import pytest

import torch

import gradcheck_sym as gs
from gradcheck_sym.report.run_render import render_run_text

ROOT = Path(__file__).parent
TEACHING = sorted((ROOT / "scripts" / "teaching").glob("*.py"))
# The genuine findings of each script (the textbook's detach demo is meant, and named).
EXPECTED = {
    "batchnorm_mlp.py": [], "conv_bn_function.py": [], "d2l_autograd.py": ["untracked"], "gentle_intro.py": [],
    "legendre.py": [], "micro_mlp.py": [], "nn_rmsprop.py": [], "mnist_bn_mlp.py": [], "fused_conv_bn.py": [],
    "conv_bias_bn.py": [], "convbn_tutorial.py": [], "backprop_by_hand.py": [],
}


def test_every_script_has_an_expected_verdict():
    assert sorted(p.name for p in TEACHING) == sorted(EXPECTED)


@pytest.mark.parametrize("path", TEACHING, ids=[p.name for p in TEACHING])
def test_teaching_scripts(path, capsys):
    report = gs.run_script(str(path))
    assert report.exit_code == 0 and report.error is None
    assert report.summary["not_verified"] == 0 and report.summary["verified"] == report.summary["backward_calls"] > 0
    assert [f.kind for f in report.findings if f.severity != "info"] == EXPECTED[path.name], str(report)


def test_the_textbook_detach_demo_names_its_line(capsys):
    report = gs.run_script(str(ROOT / "scripts" / "teaching" / "d2l_autograd.py"))
    (f,) = [f for f in report.findings if f.kind == "untracked"]
    assert (f.line, f.tensor) == (24, "x")
    assert f.message.endswith("the difference is what detach at line 22 hides from autograd")


def test_golden_compact_report_at_100_columns(capsys):
    report = gs.run_script(str(ROOT / "scripts" / "teaching" / "legendre.py"))
    text = render_run_text(report, width=100)
    golden = ROOT / "golden" / "run_legendre.txt"
    assert text == golden.read_text(encoding="utf-8")
    assert max(len(line) for line in text.splitlines()) <= 100


def test_a_hand_written_batch_norm_backward_off_by_1e_4_is_not_passed_in_float32_and_found_in_float64(tmp_path):
    # The float32 fused conv + batch norm net verifies (above) only because a measured rounding noise replaces the
    # worst-case bound there.  That noise is a sample of our formulas' rounding, not of the custom backward's own
    # formula (a published tutorial's at batch 256 rounds 100x ours under cancellation: a correct backward was a
    # false mismatch).  So a backward 1e-4 off, beyond the measured noise but inside the worst-case bound, is not
    # verified in float32 (with the advice to check in float64), and in float64 it is found.
    text = (ROOT / "scripts" / "teaching" / "fused_conv_bn.py").read_text(encoding="utf-8")
    assert "\nSCALE = 1.0  #" in text and text.count("import torch\n") == 1
    wrong = text.replace("\nSCALE = 1.0  #", "\nSCALE = 1.0001  #")
    script = tmp_path / "fused_conv_bn_wrong.py"
    script.write_text(wrong, encoding="utf-8")
    report = gs.run_script(str(script))
    assert report.exit_code == 0 and report.summary["not_verified"] == 3 and report.summary["errors"] == 0
    (b,) = report.backwards
    assert b.reasons and all("net.w1" in r and "custom Function's backward" in r and "check that part in float64" in r
                             for r in b.reasons), b.reasons
    script.write_text(wrong.replace("import torch\n", "import torch\ntorch.set_default_dtype(torch.float64)\n"),
                      encoding="utf-8")
    try:
        report = gs.run_script(str(script))  # (in this process: the script's default dtype is put back below)
    finally:
        torch.set_default_dtype(torch.float32)
    assert report.exit_code == 0 and report.summary["not_verified"] == 0
    found = sorted((f.kind, f.tensor, f.count) for f in report.findings if f.severity == "error")
    assert found == [("mismatch", "net.w1", 3), ("mismatch", "net.w2", 3)], str(report)


def test_without_a_measured_noise_the_deep_batch_norm_mlp_is_not_verified_and_names_its_parameters(monkeypatch):
    # the worst-case bound alone says nothing there: each backward is not verified, the reason names the
    # parameter by its attribute path, and the warning's count and lines are the backward's
    from gradcheck_sym.judge import backward

    monkeypatch.setattr(backward, "rounded_sweep", lambda program, values, seeds: {})
    report = gs.run_script(str(ROOT / "scripts" / "teaching" / "mnist_bn_mlp.py"))
    assert report.exit_code == 0 and report.summary["verified"] == 0 and report.summary["not_verified"] == 3
    (warning,) = [f for f in report.findings if f.kind == "not-verified" and f.severity == "warning"]
    assert (warning.line, warning.count, warning.last_line) == (17, 3, 17)
    assert "exceeds the largest gradient entry of this backward at" in warning.message
    assert " entries of net.0.weight (a long chain" in warning.message
