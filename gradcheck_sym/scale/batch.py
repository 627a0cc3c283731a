"""Many expressions at once: rows in, one result per row out, in input order.

The rows (JSON lines or CSV records: their format is in `rows`) are validated into `ExpressionTask`s and run by a
pool of workers (`pool`); every outcome of a row, a failure of its worker included, is a `CheckResult`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import IO, Any, Iterable, Iterator, Literal, Mapping, Sequence

from ..errors import GradcheckSymError, InputError
from .guard import TaskTimeout, deadline, stable_seed, task_conditions
from .pool import TaskFailure, beat
from .rows import ExpressionTask, make_tasks, read_rows

__all__ = ["ExpressionTask", "CheckResult", "read_rows", "make_tasks", "run_expression", "check_many",
           "result_line", "Status"]

RESULT_VERSION = 1
Status = Literal["ok", "failed", "error", "timeout", "crashed", "internal-error"]


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one row.

    Attributes:
        id: the row's id.
        status: "ok" (no error finding), "failed" (an error finding), "error" (the row could not be
            checked: a bad expression or option, with `error`), "timeout", "crashed" (its worker
            died twice) or "internal-error" (a bug in gradcheck-sym: please report it).
        report: the `Report` (for "ok" and "failed").
        error_type: the error's class name ("ParseError", ...), for the other statuses.
        error: the error's message.
        seed: the sampling seed used (None for explicit points only).
    """

    id: str | int
    status: Status
    report: Any = None
    error_type: str | None = None
    error: str | None = None
    seed: int | None = None
    full: bool = field(default=False, repr=False)

    @property
    def ok(self) -> bool | None:
        """True/False for a checked row, None when it could not be checked."""
        return None if self.report is None else bool(self.report.ok)

    def to_dict(self, full: bool | None = None) -> dict[str, Any]:
        """The JSON line's content; `full` adds the whole report (default: as the task asked)."""
        full = self.full if full is None else full
        d: dict[str, Any] = {"version": RESULT_VERSION, "id": self.id, "status": self.status, "ok": self.ok,
                             "seed": self.seed}
        if self.report is not None:
            rd = self.report.to_dict()
            d.update(dtype=rd["dtype"], order=rd["order"], points=rd["n_points"], checked=rd["checked"])
            d["findings"] = [{k: f[k] for k in ("kind", "severity", "node", "quantity", "count", "message")}
                             for f in rd["findings"]]
            if full:
                d["report"] = rd
        d["error"] = None if self.error is None else {"type": self.error_type, "message": self.error}
        return d


def result_line(result: CheckResult) -> str:
    """One line of the JSONL output (compact, no NaN: the same bytes for the same result)."""
    return json.dumps(result.to_dict(), separators=(", ", ": "), allow_nan=False) + "\n"


# -- running one row (in a worker) ------------------------------------------------------------------------------


def run_expression(task: ExpressionTask) -> CheckResult:
    """Check one row; never raises (every outcome is a `CheckResult`)."""
    from ..api import check

    beat()
    result: CheckResult
    with task_conditions(stable_seed("gradcheck-sym batch torch", json.dumps(task.id))):
        try:
            with deadline(task.timeout):
                report = check(task.expr, at=task.at, domain=task.domain, samples=task.samples, seed=task.seed,
                               dtype=task.dtype, order=task.order, variables=task.variables, progress=False)
            result = CheckResult(task.id, "ok" if report.ok else "failed", report, seed=task.seed, full=task.full)
        except TaskTimeout:
            result = CheckResult(task.id, "timeout", None, "TaskTimeout",
                                 f"the check ran past the {task.timeout:g} s timeout", task.seed, task.full)
        except GradcheckSymError as exc:
            result = CheckResult(task.id, "error", None, type(exc).__name__, str(exc), task.seed, task.full)
        except Exception as exc:  # noqa: BLE001 - our bug: counted and shown, never hidden
            result = CheckResult(task.id, "internal-error", None, type(exc).__name__,
                                 f"internal error, please report: {type(exc).__name__}: {exc}", task.seed, task.full)
    return result


def failure_result(task: ExpressionTask, failure: TaskFailure) -> CheckResult:
    """The result of a row whose task produced none (see `TaskFailure`)."""
    message = failure.message
    if failure.kind == "internal-error":
        message = "internal error, please report: " + message.strip().splitlines()[-1]
    return CheckResult(task.id, failure.kind, None, "TaskFailure", message, task.seed, task.full)


def run_rows(tasks: Sequence[ExpressionTask], *, executor: Any = None, workers: int | None = None,
             timeout: float | None = None, chunksize: int = 1,
             progress: bool | None = None) -> Iterator[tuple[int, CheckResult]]:
    """``(index, result)`` for each task as it finishes."""
    from .execute import run_tasks

    for index, outcome in run_tasks(run_expression, tasks, executor=executor, workers=workers, timeout=timeout,
                                    chunksize=chunksize, progress=progress, label="checking rows"):
        yield index, failure_result(tasks[index], outcome) if isinstance(outcome, TaskFailure) else outcome


def check_many(rows: Iterable[Mapping[str, Any]], *, executor: Any = None, workers: int | None = None,
               timeout: float | None = None, chunksize: int = 1, samples: int | None = None,
               seed: int | None = None, dtype: str = "float64", order: int = 1,
               progress: bool | None = None) -> list[CheckResult]:
    """Check many expressions in parallel; one `CheckResult` per row, in input order.

    Args:
        rows: dicts with ``id``, ``expr`` and optionally ``at``, ``domain``, ``vars``, ``variables``,
            ``samples``, ``seed``, ``dtype``, ``order`` (see this module's docstring).
        executor: None for a process pool of `workers` processes; or any
            ``concurrent.futures.Executor`` (e.g. `SerialExecutor()` to run here), or a Dask
            ``distributed.Client``.
        workers: the pool's size (default: all cores).
        timeout: seconds per row; a row over it gets status "timeout".
        chunksize: rows per submission to an executor.
        samples, seed, dtype, order: defaults for rows that do not give them.
        progress: show a progress bar (default: on a terminal).

    Returns:
        The results in the order of `rows`; the same whatever the executor, workers or chunking.

    Raises:
        InputError: a malformed row (no id or expr, a duplicate id, a field of the wrong type).

    Example:
        >>> rows = [{"id": 1, "expr": "sin(x)", "at": {"x": 0.5}}]
        >>> [r.status for r in check_many(rows, executor=SerialExecutor())]   # doctest: +SKIP
        ['ok']
    """
    tasks = make_tasks(rows, samples=samples, seed=seed, dtype=dtype, order=order, timeout=timeout)
    out: list[CheckResult | None] = [None] * len(tasks)
    for index, result in run_rows(tasks, executor=executor, workers=workers, timeout=timeout, chunksize=chunksize,
                                  progress=progress):
        out[index] = result
    return out  # type: ignore[return-value]


# -- a whole file (the `gradcheck-sym batch` command) ------------------------------------------------------------


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a batch run; carries how far the output got."""

    def __init__(self, written: int, total: int, output: str | None) -> None:
        super().__init__()
        self.written, self.total, self.output = written, total, output


@dataclass
class BatchSummary:
    """Counts of a batch run, for the summary and the exit code."""

    total: int = 0
    skipped: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    problems: list[tuple[str | int, str, str]] = field(default_factory=list)  # (id, status, first line)
    seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        """3 an internal error, 2 a row that could not be checked, 1 a failed/timed-out/crashed row, 0 all ok."""
        c = self.counts
        if c.get("internal-error"):
            return 3
        if c.get("error"):
            return 2
        return 1 if c.get("failed") or c.get("timeout") or c.get("crashed") else 0

    def text(self, where: str) -> str:
        done = self.total - self.skipped
        parts = [f"{self.counts.get(s, 0)} {s}" for s in ("ok", "failed", "error", "timeout", "crashed",
                                                            "internal-error") if self.counts.get(s) or s == "ok"]
        head = f"gradcheck-sym batch: {done} rows checked in {self.seconds:.1f} s: " + ", ".join(parts)
        if self.skipped:
            head += f" ({self.skipped} already in {where}, skipped)"
        lines = [head + f"; results in {where}"]
        for rid, status, message in self.problems[:20]:
            lines.append(f"  {status:<8} {rid}: {message}")
        if len(self.problems) > 20:
            lines.append(f"  ... and {len(self.problems) - 20} more (see {where})")
        return "\n".join(lines) + "\n"


def _first_line(result: CheckResult) -> str:
    """The first sentence of what went wrong, at most 160 characters (the whole message is in the output)."""
    if result.report is not None:
        errors = result.report.errors()
        text = f"{errors[0].kind}: {errors[0].message}" if errors else ""
    else:
        text = f"{result.error_type}: {result.error or ''}"
    text = text.splitlines()[0] if text else ""
    cut = text.find(": ", text.find(": ") + 2) if result.report is not None else -1
    text = text if cut < 0 else text[:cut]
    return text if len(text) <= 160 else text[:157] + "..."


def batch_file(path: str, output: str | None, *, stdout: IO[str], fmt: Literal["jsonl", "csv"] | None = None,
               resume: bool = False, samples: int | None = None, seed: int | None = None, dtype: str = "float64",
               order: int = 1, full: bool = False, executor: Any = None, workers: int | None = None,
               timeout: float | None = None, chunksize: int = 1, progress: bool | None = None) -> BatchSummary:
    """Check every row of a JSONL/CSV file; write one JSON line per row (input order) to `output` or `stdout`.

    Raises:
        InputError: a bad file or row (before anything runs), --resume without an output file.
        Interrupted: Ctrl-C; the lines written so far are complete.
    """
    import time

    from .output import OrderedWriter, read_done

    if resume and not output:
        raise InputError("--resume needs --output FILE: the rows already in FILE are skipped")
    tasks = make_tasks(read_rows(path, fmt), samples=samples, seed=seed, dtype=dtype, order=order,
                       timeout=timeout, full=full)
    done_keys: set[str] = set()
    if output and resume:
        _, done_keys = read_done(output, lambda d: json.dumps(d["id"]) if "status" in d else None,
                                 what="gradcheck-sym batch")
    done = {i for i, t in enumerate(tasks) if json.dumps(t.id) in done_keys}
    todo = [i for i in range(len(tasks)) if i not in done]
    summary = BatchSummary(total=len(tasks), skipped=len(done))
    started = time.perf_counter()
    stream = open(output, "a" if resume else "w", encoding="utf-8") if output else stdout
    writer = OrderedWriter(stream, done)
    try:
        for j, result in run_rows([tasks[i] for i in todo], executor=executor, workers=workers, timeout=timeout,
                                  chunksize=chunksize, progress=progress):
            summary.counts[result.status] = summary.counts.get(result.status, 0) + 1
            if result.status != "ok":
                summary.problems.append((result.id, result.status, _first_line(result)))
            writer.add(todo[j], result_line(result))
    except KeyboardInterrupt:
        raise Interrupted(writer.written + len(done), len(tasks), output) from None
    finally:
        if output:
            stream.close()
    order_of = {json.dumps(t.id): i for i, t in enumerate(tasks)}
    summary.problems.sort(key=lambda p: order_of[json.dumps(p[0])])
    summary.seconds = time.perf_counter() - started
    return summary
