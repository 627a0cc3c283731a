"""budget: deadlines end a check with a typed error; bounded work is interrupted, from any thread."""

import threading
import time

import pytest

import gradcheck_sym as gs
from gradcheck_sym.budget import BudgetExceeded, Deadline, run_bounded
from gradcheck_sym.errors import InputError, TimeLimitError


def test_a_spent_deadline_raises_a_typed_error_naming_the_stage():
    d = Deadline(0.01)
    time.sleep(0.02)
    with pytest.raises(TimeLimitError) as info:
        d.check("parsing")
    assert str(info.value) == (
        "the check did not finish within its time limit of 0.01 s (stopped while parsing)\n"
        "raise the limit with timeout=... (--timeout on the command line), or check fewer points or a smaller "
        "expression")
    assert info.value.seconds == 0.01 and info.value.stage == "parsing"


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf"), "5", True])
def test_a_timeout_must_be_a_positive_number(bad):
    with pytest.raises(InputError, match="timeout must be a positive number of seconds"):
        Deadline(bad)


def test_no_deadline_never_expires():
    assert Deadline(None).remaining() == float("inf")
    Deadline(None).check("anything")


def test_run_bounded_returns_values_and_reraises_errors():
    assert run_bounded(lambda: 6 * 7, 5) == 42
    with pytest.raises(ZeroDivisionError):
        run_bounded(lambda: 1 / 0, 5)


def test_run_bounded_interrupts_pure_python_work_and_leaves_no_thread():
    def spin():
        while True:
            sum(range(100))

    start = time.perf_counter()
    with pytest.raises(BudgetExceeded):
        run_bounded(spin, 0.2, name="budget-test-worker")
    assert time.perf_counter() - start < 2
    time.sleep(0.1)
    assert not [t for t in threading.enumerate() if t.name == "budget-test-worker"]


def test_run_bounded_work_that_swallows_exceptions_is_still_stopped():
    def stubborn():
        while True:
            try:
                sum(range(100))
            except Exception:  # noqa: BLE001 - what sympy sometimes does
                pass

    with pytest.raises(BudgetExceeded):
        run_bounded(stubborn, 0.2)


def test_a_check_over_its_timeout_is_a_time_limit_error():
    text = " + ".join(f"sin(x*{i})" for i in range(1, 3000))
    start = time.perf_counter()
    with pytest.raises(TimeLimitError, match=r"within its time limit of 0.3 s \(stopped while"):
        gs.check(text, at={"x": 0.5}, timeout=0.3)
    assert time.perf_counter() - start < 3


def test_a_check_within_its_timeout_is_unchanged():
    assert gs.check("sin(x)*exp(y)", at={"x": 0.7, "y": 1.3}, timeout=60).ok


def test_a_finished_bounded_run_leaves_no_pending_interruption_behind():
    # Once, every run ended by clearing its thread's async exception (a NULL PyThreadState_SetAsyncExc),
    # which flags the interpreter's eval breaker; a thread started later under a threading profile hook
    # (what `run` installs to follow a script's threads) then never reached its target.
    import sys
    import threading

    from gradcheck_sym.budget import run_bounded

    assert run_bounded(lambda: 41 + 1, 5.0) == 42
    ran = threading.Event()

    def hook(frame, event, arg):
        sys.setprofile(None)

    threading.setprofile(hook)
    try:
        t = threading.Thread(target=ran.set, daemon=True)
        t.start()
        t.join(10)
    finally:
        threading.setprofile(None)
    assert ran.is_set()
