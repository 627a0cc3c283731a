"""Fuzzing: random text and grammar-generated expressions at hostile values end in a report or a typed error.

Fixed seeds (derandomize), a time limit per check, quick: the larger nightly-style run is
`benchmarks/fuzz.py` (thousands of cases in worker processes, hangs and crashes counted).
"""

import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gradcheck_sym as gs

from .grammar import case

ALPHABET = st.sampled_from(list("xy0123456789.+-*/%()<>=, e") + ["sin", "log", "sqrt", "where", "**", "pi", "abs",
                                                                  "max", "detach", "no_grad", "1e308", "__", ".",
                                                                  "pow", "digamma", "1e400", "\uff58", "\\", "'"])
# A check that takes longer than this in the suite is a hang for the fuzz's purpose.
SECONDS = 30


@settings(max_examples=300, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(ALPHABET, max_size=25).map("".join))
def test_random_text_gives_report_or_typed_error(text):
    try:
        report = gs.check(text, domain={v: (-2, 2) for v in ("x", "y") if v in text}, samples=5, seed=0)
    except gs.InternalError:
        raise
    except gs.GradcheckSymError:
        return
    assert isinstance(report.ok, bool)
    str(report)
    report.to_json()


@settings(max_examples=120, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(st.randoms(use_true_random=False))
def test_grammar_expressions_at_hostile_values_end_in_a_report_or_a_typed_error(rng):
    c = case(rng, family=rng.choice(["grammar", "corpus"]))
    options = dict(c["options"])
    options["samples"] = min(options.get("samples") or 0, 50) or None if "domain" in options else None
    start = time.perf_counter()
    try:
        report = gs.check(c["expr"], **options, timeout=SECONDS)
    except gs.TimeLimitError:
        pytest.fail(f"a hang: {c['expr']!r} {options}")
    except gs.InternalError:
        raise
    except gs.GradcheckSymError as exc:
        assert str(exc)
        return
    assert time.perf_counter() - start < SECONDS
    text, data = str(report), report.to_json()
    assert text and data
    # Autograd is right for every op of the table: a mismatch here is a false alarm.
    assert not report.by_kind("mismatch"), (c["expr"], options, report.by_kind("mismatch")[0].message)
