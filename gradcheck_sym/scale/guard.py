"""What every task runs under, wherever it runs: one thread, a seeded RNG, a deadline.

The same task gives the same bytes whatever the executor, the number of workers
or the chunking, because every task sets up its own conditions here instead of
inheriting them from the process it lands in:

- ``torch.set_num_threads(1)``: a reduction's rounding does not depend on how many
  threads split it, and N workers do not fight over N x N threads;
- torch's global RNG seeded from the task (the OpInfo samples and a user's
  sample-input hook draw from it);
- warnings silenced (a worker's warnings would interleave on the terminal; the
  reports carry what matters);
- a deadline: `TaskTimeout` is raised *inside* the running thread when the time
  is up (``PyThreadState_SetAsyncExc``: works on any thread, so also on a Dask
  worker's task threads). It is delivered between Python bytecodes, so a single
  long C call finishes first; the process pool (`pool.py`) kills a worker that
  stays silent past the deadline as a backstop.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import threading
import warnings
from typing import Iterator

__all__ = ["TaskTimeout", "deadline", "task_conditions", "stable_seed", "timeouts_fired"]

_FIRED = [0]  # deadlines that fired in this process (the pool recycles a worker after one)


class TaskTimeout(BaseException):
    """A task ran past its deadline.

    A BaseException (like KeyboardInterrupt) so that the checked code's own
    ``except Exception`` clauses cannot swallow it.
    """


def stable_seed(*parts: object) -> int:
    """A 32-bit seed from the parts' text: the same in every process (unlike ``hash``)."""
    text = "\x1f".join(str(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")


def timeouts_fired() -> int:
    """How many deadlines have fired in this process so far."""
    return _FIRED[0]


@contextlib.contextmanager
def deadline(seconds: float | None) -> Iterator[None]:
    """Raise `TaskTimeout` in this thread if the block runs longer than `seconds` (None: no limit)."""
    if not seconds:
        yield
        return
    tid = threading.get_ident()
    lock = threading.Lock()
    state = {"done": False, "fired": False}

    def fire() -> None:
        with lock:
            if not state["done"]:
                state["fired"] = True
                _FIRED[0] += 1
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(tid), ctypes.py_object(TaskTimeout))

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        with lock:
            state["done"] = True
        timer.cancel()
        if state["fired"]:
            # Fired just as the block ended: take the exception if it is still pending, so it
            # cannot surface later in code that has nothing to do with the task.
            from ..budget import consume_pending

            consume_pending(TaskTimeout)


@contextlib.contextmanager
def task_conditions(seed: int) -> Iterator[None]:
    """One torch thread, torch's RNG seeded with `seed`, warnings off; restored afterwards."""
    import torch

    threads = torch.get_num_threads()
    rng = torch.random.get_rng_state()
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        torch.set_num_threads(threads)
        torch.random.set_rng_state(rng)
