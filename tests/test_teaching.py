"""Published teaching material (our own versions of tutorials, a textbook chapter and a lecture) under `run`:
each finishes as it does under python, every backward is verified, exactly the genuine findings appear."""

from pathlib import Path

import pytest

import gradcheck_sym as gs
from gradcheck_sym.report.run_render import render_run_text

ROOT = Path(__file__).parent
TEACHING = sorted((ROOT / "scripts" / "teaching").glob("*.py"))
# The genuine findings of each script (the textbook's detach demo is meant, and named).
EXPECTED = {
    "batchnorm_mlp.py": [], "conv_bn_function.py": [], "d2l_autograd.py": ["untracked"], "gentle_intro.py": [],
    "legendre.py": [], "micro_mlp.py": [], "nn_rmsprop.py": [],
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
