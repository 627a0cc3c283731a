"""A function run in a forked copy of this process, with a time limit (`judge.replay` runs a custom Function's
backward again there): what the copy prints, counts, stores or draws stays in it, and every stream the process had
open is /dev/null in the copy.  See `replay`'s docstring for what it cannot hide and when no copy is made.
"""

from __future__ import annotations

import contextlib
import gc
import os
import pickle
import select
import signal
import sys
import time
import warnings
from typing import AbstractSet, Any

import torch

from ..front.allocator import as_by_default

__all__ = ["run_isolated", "NotRun", "child_pids"]


class NotRun(Exception):
    def __init__(self, message: str, timed_out: bool = False) -> None:
        super().__init__(message)
        self.timed_out = timed_out


def run_isolated(fn: Any, seconds: float, before: AbstractSet[int] = frozenset(), meanwhile: Any = None) -> Any:
    """`fn()` in a forked copy of this process, its output thrown away: its result (pickled back), or `NotRun`.
    `before`: the children the process had before the script started (not the script's: a test runner's).
    `meanwhile()` runs here while the copy runs (its time is not the copy's: the limit starts after it).

    The copy has one thread (ours): its torch runs single-threaded, as an OpenMP pool does not survive a fork.
    """
    if not hasattr(os, "fork"):
        raise NotRun("running it again needs os.fork, to keep what the Function does away from the script")
    if hasattr(signal, "SIGCHLD") and callable(signal.getsignal(signal.SIGCHLD)):
        # the copy's end would call the script's own handler (a process it never started)
        raise NotRun("the script handles SIGCHLD: a forked copy to run it again in would signal it")
    if child_pids() - before:
        # a wait() for any child (a thread of the script's reaping its own) could get the copy instead
        raise NotRun("the script has child processes of its own: one waiting for any child could get the forked "
                      "copy to run it again in")
    r, w = os.pipe()
    show = warnings.showwarning
    warnings.showwarning = _hide  # (Python 3.12 warns about forking a process with threads: not the script's)
    try:
        pid = os.fork()
    except Exception as exc:  # noqa: BLE001 - not forked: nothing decided
        os.close(r)
        os.close(w)
        raise NotRun(f"running it again failed to start ({type(exc).__name__}: {exc})") from None
    finally:
        warnings.showwarning = show
    if pid == 0:  # pragma: no cover - the copy (coverage does not follow it)
        out = b""
        try:
            # Nothing of the script's may be finalised here (a file object dropped flushes its buffer into the
            # real file, once per copy): the collector is off and the replaced streams stay referenced.  Every
            # descriptor it had open (its files, log handlers, sockets, stdin) is /dev/null in the copy.
            gc.disable()
            _KEPT.extend((sys.stdin, sys.stdout, sys.stderr))
            os.close(r)
            null = os.open(os.devnull, os.O_RDWR)
            for fd in _open_fds():
                if fd not in (w, null):
                    try:
                        os.dup2(null, fd)
                    except OSError:
                        pass
            sys.stdout = sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - the copy ends with os._exit
            torch.set_num_threads(1)
            as_by_default()
            with contextlib.suppress(OSError):
                # where memory runs out, the system's out-of-memory killer takes the copy, never the script
                with open("/proc/self/oom_score_adj", "w", encoding="ascii") as f:
                    f.write("1000")
            out = pickle.dumps(("done", fn()))
        except BaseException as exc:  # noqa: BLE001 - said to the parent
            out = pickle.dumps(("failed", f"{type(exc).__name__}: {exc}"))
        finally:
            try:
                view = memoryview(out)
                while view:
                    view = view[os.write(w, view):]
            finally:
                os._exit(0)
    os.close(w)
    chunks: list[bytes] = []
    try:
        if meanwhile is not None:
            try:
                meanwhile()
            except BaseException:
                with contextlib.suppress(ProcessLookupError):  # (already reaped where SIGCHLD is ignored)
                    os.kill(pid, signal.SIGKILL)  # its result is not wanted
                raise
        deadline = time.monotonic() + seconds
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([r], [], [], left)[0]:
                os.kill(pid, signal.SIGKILL)
                raise NotRun(f"running it again in float64 took longer than {seconds:.0f} s (a forward waiting on "
                              "another thread cannot run in the copy that runs it)", timed_out=True)
            chunk = os.read(r, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(r)
        ended = 0
        try:
            ended = os.waitpid(pid, 0)[1]
        except ChildProcessError:  # reaped already (SIGCHLD ignored, or the script waits for any child)
            pass
    try:
        status, value = pickle.loads(b"".join(chunks))
    except Exception:  # noqa: BLE001 - the copy died before it said anything
        if os.WIFSIGNALED(ended) and os.WTERMSIG(ended) == signal.SIGKILL:
            # (not by us: ours are said above) the system's out-of-memory killer, nearly always
            raise NotRun("running it again in float64 was stopped by the system (out of memory, most likely)") from None
        raise NotRun("running it again in float64 ended without a result") from None
    if status != "done":
        raise NotRun(f"running it again in float64 failed ({value})")
    return value


def _hide(*_args: Any, **_kwargs: Any) -> None:
    return None


_KEPT: list[Any] = []  # (in a forked copy: the script's streams, never finalised there)


def _open_fds() -> list[int]:
    """The open file descriptors of this process."""
    try:
        return [int(n) for n in os.listdir("/proc/self/fd")]
    except OSError:
        return list(range(3))


def child_pids() -> set[int]:
    """The process ids of this process's children (Linux: /proc; elsewhere none are known)."""
    found: set[int] = set()
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return found
    for task in tasks:
        try:
            with open(f"/proc/self/task/{task}/children", encoding="ascii") as f:
                found.update(int(p) for p in f.read().split())
        except OSError:
            return _children_by_scan(str(os.getpid()))
    return found


def _children_by_scan(me: str) -> set[int]:
    found = set()
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
                    if f.read().rsplit(")", 1)[1].split()[1] == me:
                        found.add(int(pid))
            except (OSError, IndexError):
                continue
    return found
