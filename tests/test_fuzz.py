"""Random text gives a report or our typed error, never anything else."""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gradcheck_sym as gs

ALPHABET = st.sampled_from(list("xy0123456789.+-*/%()<>=, e") + ["sin", "log", "sqrt", "where", "**", "pi", "abs",
                                                                  "max", "detach", "no_grad", "1e308", "__", "."])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(ALPHABET, max_size=25).map("".join))
def test_random_text_gives_report_or_typed_error(text):
    try:
        report = gs.check(text, domain={v: (-2, 2) for v in ("x", "y") if v in text}, samples=5, seed=0)
    except gs.GradcheckSymError:
        return
    assert isinstance(report.ok, bool)
    str(report)
    report.to_json()
