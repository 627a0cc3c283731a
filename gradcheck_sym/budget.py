"""Time budgets: work that cannot finish in time ends in a clear error or a noted skip, never a hang.

Two mechanisms, for two kinds of work:

* `Deadline` is a check's whole time budget (``timeout=`` in Python, ``--timeout`` on the
  command line).  Long loops — parsing, the derivation's sweep, compiling, every step of the
  reference program, chunks of points, the high-precision points — call
  ``deadline.check(stage)``, which raises `TimeLimitError` once the time is spent.  It is
  cooperative (one clock read), so it works in any thread and costs nothing measurable.
* `run_bounded` runs one call that cannot look at a clock itself (sympy's `diff` of a whole
  expression, an mpmath special function at an awkward argument) in a worker thread with its
  own large stack.  When its time is up the worker is interrupted by an asynchronous
  exception (``PyThreadState_SetAsyncExc``), which Python delivers at the worker's next
  bytecode; sympy and mpmath are pure Python, so they stop promptly, and the caller gets
  `BudgetExceeded` and decides: skip with a note in the report, or raise `TimeLimitError`.

Why not signals or processes: ``SIGALRM`` works only in the main thread (the API must work
from any thread), and a process would have to import torch and pickle sympy objects.  The
limit of this choice: one C call that never returns to Python (a power of a huge integer)
cannot be interrupted; such inputs are refused by size limits before any work starts
(`front.parse.Limits.max_int_digits`).

Nothing here changes process-wide state: no recursion limit, no signal handler, no global
precision.  (``threading.stack_size`` is set only for the moment a worker starts, under a lock.)
"""

from __future__ import annotations

import ctypes
import math
import numbers
import threading
import time
from typing import Any, Callable, TypeVar

from .errors import InputError, TimeLimitError

__all__ = ["Deadline", "TimeLimitError", "BudgetExceeded", "run_bounded", "STACK_BYTES"]

T = TypeVar("T")

# A worker's C stack: deep enough for Python's parser and sympy on graphs of 100,000 levels.
STACK_BYTES = 512 * 1024 * 1024
_STACK_LOCK = threading.Lock()
# After an interruption, how long to wait for the worker to unwind before leaving it behind.
_GRACE_SECONDS = 2.0


class BudgetExceeded(Exception):
    """A `run_bounded` call ran out of its time (internal: the caller turns it into a note or an error)."""


class _Interrupted(BaseException):
    """Delivered into a worker thread to stop it (BaseException: `except Exception` in sympy cannot swallow it)."""


class Deadline:
    """The time budget of one check.

    Args:
        seconds: the budget in seconds (a positive number), or None for no limit.
        what: what is timed, for the error message ("the check").

    Raises:
        InputError: `seconds` is not None or a positive finite number.

    Example:
        >>> d = Deadline(60)
        >>> d.check("deriving")        # raises TimeLimitError once 60 s have passed
        >>> Deadline(None).remaining()
        inf
    """

    def __init__(self, seconds: float | None = None, *, what: str = "the check") -> None:
        if seconds is not None:
            if isinstance(seconds, bool) or not isinstance(seconds, numbers.Real) or not (
                    math.isfinite(seconds) and seconds > 0):
                raise InputError(f"timeout must be a positive number of seconds, not {seconds!r}")
            seconds = float(seconds)
        self.seconds = seconds
        self.what = what
        self.started = time.monotonic()
        self._end = math.inf if seconds is None else self.started + seconds

    def remaining(self) -> float:
        """Seconds left (inf without a limit; 0 once spent)."""
        return max(0.0, self._end - time.monotonic())

    @property
    def expired(self) -> bool:
        return time.monotonic() >= self._end

    def check(self, stage: str = "") -> None:
        """Raise `TimeLimitError` if the time is spent; `stage` says what was running."""
        if time.monotonic() >= self._end:
            raise self.error(stage)

    def error(self, stage: str = "") -> TimeLimitError:
        """The `TimeLimitError` for this deadline (stopped while `stage`)."""
        where = f" (stopped while {stage})" if stage else ""
        return TimeLimitError(
            f"{self.what} did not finish within its time limit of {self.seconds:g} s{where}",
            seconds=self.seconds or 0.0, stage=stage)

    def within(self, seconds: float) -> float:
        """The smaller of `seconds` and the time left."""
        return min(seconds, self.remaining())


NO_DEADLINE = Deadline(None)


def run_bounded(fn: Callable[[], T], seconds: float | None, *, name: str = "gradcheck-sym-worker",
                stack_bytes: int = STACK_BYTES) -> T:
    """Run ``fn()`` in a worker thread with its own stack, for at most `seconds`.

    Args:
        fn: the work; its exceptions are re-raised in the caller.
        seconds: the time allowed (None or inf: no limit, but still on the big stack).
        name: the worker thread's name.
        stack_bytes: the worker's C stack size.

    Returns:
        What `fn` returned.

    Raises:
        BudgetExceeded: the time ran out; the worker was interrupted.
    """
    box: dict[str, Any] = {}
    lock = threading.Lock()  # `done` is set and read under it: no interruption lands after the work

    def target() -> None:
        while True:
            try:
                if not box.get("ran"):
                    box["ran"] = True
                    try:
                        box["value"] = fn()
                    except _Interrupted:
                        pass
                    except BaseException as exc:  # noqa: BLE001 - handed back to the caller's thread
                        box["error"] = exc
                with lock:
                    box["done"] = True
                if box.get("sent"):
                    consume_pending(_Interrupted)
                return
            except _Interrupted:  # landed outside `fn`: finish quietly
                continue

    with _STACK_LOCK:
        old = threading.stack_size()
        threading.stack_size(stack_bytes)
        try:
            worker = threading.Thread(target=target, name=name, daemon=True)
            worker.start()
        finally:
            threading.stack_size(old)
    limit = None if seconds is None or math.isinf(seconds) else max(0.0, seconds)
    worker.join(limit)
    if worker.is_alive():
        _interrupt(worker, box, lock)
    if "value" in box:
        return box["value"]
    if "error" in box:
        raise box["error"]
    raise BudgetExceeded(f"over {seconds:g} s")


def _set_async(ident: int, exc: type[BaseException]) -> None:
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), ctypes.py_object(exc))


def consume_pending(exc: type[BaseException]) -> None:
    """Let an asynchronous `exc` still pending for this thread land here, and drop it.

    Never cleared with ``PyThreadState_SetAsyncExc(id, NULL)``: in CPython 3.11 that leaves the
    interpreter's eval breaker flagged, and threads started later under a threading profile hook
    (what `run` installs to follow a script's threads) never reached their target.  A pending
    exception is delivered at the next backward jump, so a short loop takes it.
    """
    try:
        for _ in range(64):
            pass
    except exc:
        pass


def _interrupt(worker: threading.Thread, box: dict[str, Any], lock: threading.Lock) -> None:
    """Deliver `_Interrupted` into `worker` until its work ends (after the grace time it is left
    behind, a daemon thread: only a C call that never returns to Python can do that)."""
    give_up = time.monotonic() + _GRACE_SECONDS
    while worker.is_alive() and time.monotonic() < give_up:
        with lock:
            if box.get("done") or worker.ident is None:
                break
            box["sent"] = True
            _set_async(worker.ident, _Interrupted)
        worker.join(0.05)
    worker.join(0.5)
