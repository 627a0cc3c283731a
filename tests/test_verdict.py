"""verdict.classify: one test per rung of the ladder, with real numbers."""

import math

import pytest

from gradcheck_sym.judge.verdict import classify

U = 2.0**-53


def test_a_kink_comes_first():
    assert classify(0.0, 0.5, 1e-15, u=U, kinked=True).kind == "kink"


@pytest.mark.parametrize("a,r,severity", [
    (math.nan, math.nan, "info"), (math.inf, math.inf, "info"), (math.nan, 0.0, "error"), (1.0, math.inf, "error"),
])
def test_non_finite_values(a, r, severity):
    v = classify(a, r, 1e-15, u=U)
    assert (v.kind, v.severity) == ("nonfinite", severity)


def test_non_finite_autograd_blamed_on_the_range_is_a_warning():
    v = classify(math.inf, 1e300, 1e-15, u=U, range_issue=lambda: "exp(x) overflows float32")
    assert (v.kind, v.severity, v.why) == ("nonfinite", "warning", "exp(x) overflows float32")


def test_within_tolerance_is_ok_and_equal_is_ok_even_with_a_nan_tolerance():
    assert classify(1.0, 1.0 + 1e-16, 1e-15, u=U).kind == "ok"
    assert classify(1e300, 1e300, math.nan, u=U).kind == "ok"
    assert classify(1.0, 1.5, math.nan, u=U).kind == "ok"  # unknown bound: never a mismatch


def test_explained_by_the_cut_is_untracked():
    v = classify(0.462117, 0.855341, 3e-15, u=U, cut=0.462117)
    assert (v.kind, v.severity) == ("untracked", "error")
    assert v.score == pytest.approx(0.393224 / 3e-15, rel=1e-5)


def test_explained_by_the_range_is_a_warning_else_a_mismatch():
    assert classify(0.0, 1e-40, 1e-50, u=2.0**-24, range_issue=lambda: "underflow").kind == "range"
    v = classify(1.0, 1.1, 1e-15, u=U)
    assert (v.kind, v.severity) == ("mismatch", "error")
    assert classify(1.0, 1.1, 1e-15, u=U, stale=True).kind == "stale-graph"
