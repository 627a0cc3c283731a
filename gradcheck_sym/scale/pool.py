"""The default executor: a pool of worker processes that survives its workers.

``concurrent.futures.ProcessPoolExecutor`` cannot stop a task that runs too long,
and one dead worker breaks the whole pool (every pending future fails). This pool
gives each worker its own pipe and watches it:

- a worker that dies while running a task (killed, out of memory, a crash in C)
  loses only that task: it is re-run once on a fresh worker, and reported as
  ``crashed`` if it dies again;
- a task that runs past its deadline is stopped inside the worker first (see
  `guard.deadline`); a worker silent for longer than the deadline plus a grace
  period (a C call that never returns) is killed and its task reported as
  ``timeout``. The deadline counts from the task's last heartbeat (`beat`), so a
  task made of many checks (all the samples of one OpInfo entry) has one deadline
  per check;
- workers are forked from a *forkserver* that has imported torch and sympy once
  (``spawn`` where there is no forkserver), so starting or replacing one is cheap
  and never forks a process that has run torch;
- a worker's stdout goes to stderr (the parent may be writing JSON lines to stdout)
  and it ignores Ctrl-C (the parent stops the workers and says what was written);
- a worker exits within a second once the process that started the pool is gone, even
  in the middle of a task (no orphan keeps a core busy).
"""

from __future__ import annotations

import collections
import importlib
import multiprocessing
import os
import signal
import time
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any, Callable, Iterator, Literal, Sequence

from ..errors import GradcheckSymError
from . import guard

__all__ = ["TaskFailure", "ProcessPool", "PoolError", "beat", "default_workers", "warm_up"]

# How long a silent worker gets beyond the task's own deadline before it is killed.
GRACE_SECONDS = 10.0
# A task whose worker dies this many times is reported instead of re-run.
MAX_ATTEMPTS = 2
# Workers that die before running anything, in a row, before the pool gives up.
MAX_START_FAILURES = 3

_BEAT: list[Callable[[], None]] = []


@dataclass(frozen=True)
class TaskFailure:
    """A task that produced no result of its own.

    Attributes:
        kind: "timeout" (past its deadline), "crashed" (its worker died, twice in
            the process pool) or "internal-error" (an exception escaped the task
            function: a bug in gradcheck-sym).
        message: what happened, in words.
    """

    kind: Literal["timeout", "crashed", "internal-error"]
    message: str


class PoolError(GradcheckSymError):
    """The worker processes cannot run at all (they die as they start)."""


def default_workers() -> int:
    """All the cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def beat() -> None:
    """Tell the pool this task is alive and starting a new check (restarts its deadline).

    Does nothing outside a pool worker, so task functions call it unconditionally.
    """
    if _BEAT:
        _BEAT[0]()


def _exit_when_gone(pid: int) -> None:
    """Exit this worker once the process that started the pool is gone.

    A worker busy in a long task does not read its pipe, so it would not notice; its parent
    is the forkserver, so ``PR_SET_PDEATHSIG`` would not help either.
    """
    while True:
        time.sleep(1.0)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            os._exit(1)
        except PermissionError:  # a new process has that id: ours is gone
            os._exit(1)


def memory_share(workers: int) -> int | None:
    """Bytes of memory a worker may write: its share of this machine's memory (None: unknown).

    A check whose peer runs away (torch's gradcheck in slow mode on a large Jacobian once took 19 GB
    and the kernel's OOM killer with it) then fails with MemoryError in its own worker, reported as
    that task's error, instead of taking the machine down. Never below 4 GiB (torch alone maps ~1.5).
    """
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None
    return max(4 << 30, int(total * 0.85 / max(workers, 1)))


def _cap_memory(limit: int | None) -> None:
    if limit is None:
        return
    try:
        import resource

        # RLIMIT_DATA (private writable memory), not RLIMIT_AS: a CUDA context reserves tens of GB of
        # address space it never writes, which an address-space cap would refuse
        soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        if soft == resource.RLIM_INFINITY or soft > limit:
            resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))
    except (ImportError, ValueError, OSError):  # not on this platform: no cap
        pass


def _worker_main(conn: Connection, preload: Sequence[str], owner: int, memory: int | None = None) -> None:
    import threading

    _cap_memory(memory)
    threading.Thread(target=_exit_when_gone, args=(owner,), daemon=True).start()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.dup2(2, 1)
    for name in preload:
        importlib.import_module(name)
    import torch

    torch.set_num_threads(1)
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):  # the parent has gone
            return
        if message is None:
            return
        index, fn, task = message
        _BEAT[:] = [lambda: conn.send(("beat", index, None))]
        fired = guard.timeouts_fired()
        try:
            reply = ("done", index, fn(task))
        except guard.TaskTimeout:
            reply = ("failed", index, TaskFailure("timeout", "the task ran past its deadline"))
        except BaseException:  # noqa: BLE001 - reported to the parent as our bug, with the traceback
            reply = ("failed", index, TaskFailure("internal-error", traceback.format_exc()))
        _BEAT[:] = []
        try:
            conn.send(reply)
        except Exception:  # noqa: BLE001 - e.g. a result that cannot be pickled
            conn.send(("failed", index, TaskFailure("internal-error", traceback.format_exc())))
        if guard.timeouts_fired() != fired:
            # An exception raised asynchronously may have left torch's global state
            # (grad mode, a mode stack) half unwound: start the next task on a fresh worker.
            return


def _context() -> Any:
    if "forkserver" in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("forkserver")
    return multiprocessing.get_context("spawn")


_BASE_PRELOAD = ["torch", "sympy", "gradcheck_sym.api", "gradcheck_sym.scale._warm"]


def warm_up(preload: Sequence[str] = ()) -> None:
    """Start the forkserver now, importing torch, sympy and `preload` in the background.

    It then imports them while this process does other work (e.g. reads torch's OpInfo
    database itself); workers started later fork from it at once. Does nothing where
    there is no forkserver, or once it runs.
    """
    ctx = _context()
    if ctx.get_start_method() != "forkserver":
        return
    ctx.set_forkserver_preload([*_BASE_PRELOAD, *preload])
    from multiprocessing import forkserver

    forkserver.ensure_running()


class _Worker:
    def __init__(self, ctx: Any, preload: Sequence[str], memory: int | None = None) -> None:
        self.conn, child = ctx.Pipe(duplex=True)
        self.process = ctx.Process(target=_worker_main, args=(child, tuple(preload), os.getpid(), memory),
                                   daemon=True)
        self.process.start()
        child.close()
        self.index: int | None = None  # the task it runs
        self.since = 0.0  # last heartbeat
        self.ran = False

    def stop(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join()
        self.conn.close()


class ProcessPool:
    """Worker processes that run tasks and survive their workers' deaths.

    Args:
        workers: number of processes (default: all cores).
        timeout: seconds a task may stay silent (between heartbeats) before its
            worker is killed, on top of `GRACE_SECONDS`; None: no limit.
        preload: modules each worker imports before its first task (imported once
            in the forkserver when it is started by this pool).
        grace: seconds a silent worker gets beyond `timeout` before it is killed.

    Example:
        >>> with ProcessPool(2) as pool:                               # doctest: +SKIP
        ...     results = dict(pool.run(math.sqrt, [1.0, 4.0]))
    """

    def __init__(self, workers: int | None = None, *, timeout: float | None = None,
                 preload: Sequence[str] = (), grace: float = GRACE_SECONDS) -> None:
        if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
            from ..errors import InputError

            raise InputError(f"workers must be a positive integer, not {workers!r}")
        self.n = workers or default_workers()
        self.memory = memory_share(self.n)
        self.timeout = timeout
        self.grace = grace
        self.preload = ("gradcheck_sym.scale.pool", *preload)
        self._ctx = _context()
        if self._ctx.get_start_method() == "forkserver":
            # Effective only if this process has not started its forkserver yet.
            self._ctx.set_forkserver_preload([*_BASE_PRELOAD, *preload])
        self._workers: list[_Worker] = []
        self.restarts = 0

    def __enter__(self) -> "ProcessPool":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def pids(self) -> list[int]:
        """The worker processes' ids (for tests and benchmarks that kill one)."""
        return [w.process.pid for w in self._workers if w.process.pid is not None]

    def busy_pids(self) -> list[int]:
        """The ids of the workers running a task now."""
        return [w.process.pid for w in self._workers if w.index is not None and w.process.pid is not None]

    def start(self) -> None:
        """Start the workers now (otherwise `run` starts them)."""
        while len(self._workers) < self.n:
            self._workers.append(_Worker(self._ctx, self.preload, self.memory))

    def close(self) -> None:
        """Stop every worker (a running task is abandoned)."""
        for w in self._workers:
            try:
                if w.index is None and w.process.is_alive():
                    w.conn.send(None)
            except OSError:
                pass
        deadline = time.monotonic() + 2.0
        for w in self._workers:
            w.process.join(max(0.0, deadline - time.monotonic()))
            w.stop()
        self._workers = []

    def run(self, fn: Callable[[Any], Any], tasks: Sequence[Any]) -> Iterator[tuple[int, Any]]:
        """Run ``fn(task)`` for every task; yield ``(index, result)`` as each finishes.

        `fn` must be importable by name (a module-level function) and the tasks and
        results picklable. A result is `fn`'s return value or a `TaskFailure`.
        """
        self.start()
        pending = collections.deque(range(len(tasks)))
        attempts = collections.Counter()
        start_failures = 0
        running = 0
        while pending or running:
            for w in self._workers:
                if w.index is None and pending and w.process.is_alive():
                    w.index = pending.popleft()
                    w.since = time.monotonic()
                    w.conn.send((w.index, fn, tasks[w.index]))
                    running += 1
            limit = None if self.timeout is None else self.timeout + self.grace
            wait_for = None
            if limit is not None:
                busy = [w.since + limit for w in self._workers if w.index is not None]
                wait_for = max(0.0, min(busy) - time.monotonic()) if busy else None
            ready = wait([w.conn for w in self._workers] + [w.process.sentinel for w in self._workers], wait_for)
            for w in list(self._workers):
                finished = None
                dead = False
                while w.conn in ready or w.conn.poll():
                    ready = [r for r in ready if r is not w.conn]
                    try:
                        kind, index, payload = w.conn.recv()
                    except (EOFError, OSError):
                        dead = True
                        break
                    if kind == "beat":
                        w.since = time.monotonic()
                    else:
                        finished = (index, payload)
                        w.ran = True
                        start_failures = 0
                        w.index = None
                        running -= 1
                        break
                if finished is not None:
                    yield finished
                if dead or not w.process.is_alive():
                    w.process.join()
                    if w.index is not None:
                        running -= 1
                        attempts[w.index] += 1
                        code = w.process.exitcode
                        how = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
                        if attempts[w.index] < MAX_ATTEMPTS:
                            pending.appendleft(w.index)
                        else:
                            yield w.index, TaskFailure(
                                "crashed", f"its worker process died ({how}) {MAX_ATTEMPTS} times while running it")
                        w.index = None
                    elif not w.ran:
                        start_failures += 1
                        if start_failures >= MAX_START_FAILURES:
                            raise PoolError(f"the worker processes die as they start (exit code "
                                            f"{w.process.exitcode})", "see the messages above on stderr")
                    self._replace(w)
                elif w.index is not None and limit is not None and time.monotonic() - w.since > limit:
                    index = w.index
                    running -= 1
                    w.index = None
                    w.stop()
                    self._replace(w)
                    yield index, TaskFailure("timeout", f"no answer within {self.timeout:g} s (+{self.grace:g} s "
                                                        f"grace): its worker was killed")

    def _replace(self, w: _Worker) -> None:
        w.stop()
        self.restarts += 1
        i = self._workers.index(w)
        new = _Worker(self._ctx, self.preload, self.memory)
        self._workers[i] = new
