"""Run many tasks on an executor: the process pool by default, any ``concurrent.futures.Executor``, or Dask.

One function, `run_tasks`, hides which executor runs the work. The results are
the same whichever runs it (each task seeds and configures itself, see `guard`);
only the order in which they arrive differs, and the callers put them back in
input order.

- default: `ProcessPool` (crash and timeout handling of its own);
- a ``concurrent.futures.Executor`` (``ThreadPoolExecutor``, ``ProcessPoolExecutor``,
  `SerialExecutor`, ...): tasks are sent in chunks of `chunksize`; an exception
  from the executor (e.g. a broken process pool) is reported for the tasks of
  that chunk as ``crashed``;
- a ``distributed.Client`` (Dask): used through ``client.get_executor()``, so it
  is the case above; Dask re-runs the tasks of a worker that dies (up to its
  ``allowed-failures``) and then raises, which is reported as ``crashed``.
"""

from __future__ import annotations

import concurrent.futures as cf
import sys
from typing import Any, Callable, Iterator, Sequence

from .guard import TaskTimeout
from .pool import ProcessPool, TaskFailure

__all__ = ["SerialExecutor", "run_tasks", "as_executor", "connect"]

CONNECT_TIMEOUT = 10.0  # seconds to reach a Dask scheduler


class SerialExecutor(cf.Executor):
    """An executor that runs each task at once, in this thread (no process, no pickling).

    For small jobs, debugging and tests: ``gs.check_many(rows, executor=SerialExecutor())``.
    """

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> cf.Future:  # type: ignore[override]
        future: cf.Future = cf.Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller through the future
            future.set_exception(exc)
        return future


def as_executor(executor: Any) -> cf.Executor:
    """An `Executor` from an executor or a Dask ``distributed.Client``."""
    if isinstance(executor, cf.Executor):
        return executor
    if hasattr(executor, "get_executor") and hasattr(executor, "scheduler"):
        return executor.get_executor(pure=False)
    from ..errors import InputError

    raise InputError(f"executor must be a concurrent.futures.Executor or a distributed.Client, "
                     f"not {type(executor).__name__}")


def connect(address: str) -> Any:
    """A Dask ``distributed.Client`` for a scheduler address (the ``--scheduler`` option)."""
    from ..errors import InputError, UnsupportedError

    try:
        from distributed import Client
    except ImportError:
        raise UnsupportedError("--scheduler needs Dask distributed",
                               "pip install 'gradcheck-sym[dask]' (or: pip install distributed)") from None
    try:
        return Client(address, timeout=CONNECT_TIMEOUT)
    except (OSError, TimeoutError, ValueError) as exc:
        raise InputError(f"cannot reach the Dask scheduler at {address!r}: {exc}",
                         "start one (dask scheduler; dask worker ADDRESS) or give its address as tcp://HOST:PORT")


def _run_chunk(fn: Callable[[Any], Any], chunk: Sequence[Any]) -> list[Any]:
    out = []
    for task in chunk:
        try:
            out.append(fn(task))
        except TaskTimeout:
            out.append(TaskFailure("timeout", "the task ran past its deadline"))
        except Exception:  # noqa: BLE001 - a bug of ours, reported for this task only
            import traceback

            out.append(TaskFailure("internal-error", traceback.format_exc()))
    return out


def run_tasks(fn: Callable[[Any], Any], tasks: Sequence[Any], *, executor: Any = None, workers: int | None = None,
              timeout: float | None = None, chunksize: int = 1, preload: Sequence[str] = (),
              progress: bool | None = None, label: str = "checking") -> Iterator[tuple[int, Any]]:
    """Yield ``(index, result)`` for every task as it finishes (in no particular order).

    Args:
        fn: a module-level function of one task (it must be importable in the workers).
        tasks: picklable task records.
        executor: None for the process pool, or an Executor / distributed.Client.
        workers: the process pool's size (default: all cores); only without `executor`.
        timeout: the pool's kill deadline per check (tasks enforce it themselves first).
        chunksize: tasks per submission to an executor (the pool sends one at a time).
        preload: modules the pool's workers import up front.
        progress: show a progress bar (default: when stderr is a terminal).
        label: the progress bar's label.
    """
    from .progress import ProgressBar

    if chunksize < 1 or isinstance(chunksize, bool):
        from ..errors import InputError

        raise InputError(f"chunksize must be a positive integer, not {chunksize!r}")
    show = sys.stderr.isatty() if progress is None else progress
    with ProgressBar(len(tasks), label, show) as bar:
        if executor is None:
            with ProcessPool(workers, timeout=timeout, preload=preload) as pool:
                for item in pool.run(fn, tasks):
                    bar.advance()
                    yield item
            return
        ex = as_executor(executor)
        futures = {}
        for start in range(0, len(tasks), chunksize):
            chunk = list(range(start, min(start + chunksize, len(tasks))))
            futures[ex.submit(_run_chunk, fn, [tasks[i] for i in chunk])] = chunk
        try:
            for future in cf.as_completed(futures):
                chunk = futures[future]
                try:
                    results = future.result()
                except Exception as exc:  # noqa: BLE001 - the executor lost the chunk (a dead worker)
                    results = [TaskFailure("crashed", f"the executor failed the task: {type(exc).__name__}: {exc}")
                               ] * len(chunk)
                for index, result in zip(chunk, results):
                    bar.advance()
                    yield index, result
        finally:
            for future in futures:
                future.cancel()
