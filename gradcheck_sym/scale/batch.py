"""Many expressions at once: rows in, one result per row out, in input order.

A row is a dict (a JSON line, or a CSV record)::

    {"id": "nguyen-1", "expr": "x**3 + x**2 + x", "domain": {"x": [-1, 1]}, "samples": 100, "seed": 0,
     "dtype": "float64", "order": 1}

- ``id`` (string or integer, unique) and ``expr`` are required;
- the points: ``at`` ({name: value or list of values}) and/or ``domain``
  ({name: [low, high]}); ``vars`` is read as ``domain`` *and* declares those
  variables (the corpora's convention: a declared variable the expression does
  not use gets gradient 0); ``variables`` declares them explicitly;
- ``samples``, ``seed``, ``dtype``, ``order``: as in `gradcheck_sym.check`; the
  defaults come from the caller (the command line's options);
- other fields are ignored, so corpus files with metadata can be used as they are.

A row that samples points and gives no seed (and no default seed) is seeded from
its id, so every run of the same file gives the same bytes.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Iterable, Iterator, Literal, Mapping, Sequence

from ..errors import GradcheckSymError, InputError
from .guard import TaskTimeout, deadline, stable_seed, task_conditions
from .pool import TaskFailure, beat

__all__ = ["ExpressionTask", "CheckResult", "read_rows", "make_tasks", "run_expression", "check_many",
           "result_line", "Status"]

RESULT_VERSION = 1
Status = Literal["ok", "failed", "error", "timeout", "crashed", "internal-error"]
_ROW_FIELDS = ("id", "expr", "at", "domain", "vars", "variables", "samples", "seed", "dtype", "order")
_DTYPES = ("float64", "float32", "float16", "bfloat16")


@dataclass(frozen=True)
class ExpressionTask:
    """One row, validated: what a worker needs to run `gradcheck_sym.check` on it."""

    id: str | int
    expr: str
    at: dict[str, Any] | None = None
    domain: dict[str, tuple[float, float]] | None = None
    variables: tuple[str, ...] | None = None
    samples: int | None = None
    seed: int | None = None
    dtype: str = "float64"
    order: int = 1
    timeout: float | None = None
    full: bool = False


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


# -- reading rows -------------------------------------------------------------------------------------------------


def read_rows(path: str | Path, fmt: Literal["jsonl", "csv"] | None = None) -> list[tuple[str, dict[str, Any]]]:
    """The rows of a JSONL or CSV file, each with its location ("file:line") for error messages.

    Raises:
        InputError: the file is missing or a line is not a JSON object / the CSV has no id and expr columns.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{str(path)!r}: no such file")
    fmt = fmt or ("csv" if path.suffix.lower() == ".csv" else "jsonl")
    text = path.read_text(encoding="utf-8")
    rows: list[tuple[str, dict[str, Any]]] = []
    if fmt == "csv":
        reader = csv.DictReader(io.StringIO(text))
        missing = [c for c in ("id", "expr") if c not in (reader.fieldnames or [])]
        if missing:
            raise InputError(f"{path}: the CSV header has no {' or '.join(missing)} column",
                             "the first line names the columns, e.g. id,expr,domain,samples")
        for record in reader:
            rows.append((f"{path}:{reader.line_num}", {k: v for k, v in record.items() if k and v not in (None, "")}))
        return rows
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}:{n}: not valid JSON ({exc.msg} at column {exc.colno})",
                             "each line is one JSON object, e.g. {\"id\": \"a\", \"expr\": \"sin(x)\", \"at\": {\"x\": 0.5}}"
                             ) from None
        if not isinstance(row, dict):
            raise InputError(f"{path}:{n}: a line must be a JSON object, not {type(row).__name__}")
        rows.append((f"{path}:{n}", row))
    return rows


def make_tasks(rows: Iterable[Mapping[str, Any] | tuple[str, Mapping[str, Any]]], *, samples: int | None = None,
               seed: int | None = None, dtype: str = "float64", order: int = 1, timeout: float | None = None,
               full: bool = False) -> list[ExpressionTask]:
    """Validate rows (dicts, or (location, dict) pairs from `read_rows`) into tasks; the keywords are defaults.

    Raises:
        InputError: a row without id or expr, a duplicate id, a field of the wrong type; the message
            names the row (its file:line, or its position).
    """
    tasks: list[ExpressionTask] = []
    seen: dict[str, str] = {}
    for n, item in enumerate(rows, 1):
        where, row = item if isinstance(item, tuple) else (f"row {n}", item)
        if not isinstance(row, Mapping):
            raise InputError(f"{where}: a row must be a dict, not {type(row).__name__}")
        task = _task(where, row, samples=samples, seed=seed, dtype=dtype, order=order, timeout=timeout, full=full)
        key = json.dumps(task.id)
        if key in seen:
            raise InputError(f"{where}: the id {task.id!r} is used twice (first at {seen[key]})",
                             "ids must be unique: the output and --resume find rows by id")
        seen[key] = where
        tasks.append(task)
    return tasks


def _task(where: str, row: Mapping[str, Any], **defaults: Any) -> ExpressionTask:
    def bad(message: str, hint: str = "") -> InputError:
        return InputError(f"{where}: {message}", hint)

    rid = row.get("id")
    if rid is None or isinstance(rid, bool) or not isinstance(rid, (str, int)) or rid == "":
        raise bad("every row needs an id (a string or an integer)", 'e.g. {"id": "row-1", "expr": "sin(x)", ...}')
    expr = row.get("expr")
    if not isinstance(expr, str) or not expr.strip():
        raise bad(f"row {rid!r} needs an expr (the expression as text)")
    at = _points(row.get("at"), bad) if "at" in row else None
    domain = _box(row.get("domain"), "domain", bad) if "domain" in row else None
    variables = None
    if "vars" in row:
        box = _box(row["vars"], "vars", bad)
        domain = {**box, **(domain or {})}
        variables = tuple(box)
    if "variables" in row:
        v = row["variables"]
        names = v.replace(",", " ").split() if isinstance(v, str) else v
        if not isinstance(names, (list, tuple)) or not all(isinstance(x, str) for x in names):
            raise bad(f"variables must be a list of names, not {v!r}")
        variables = tuple(names)
    samples = _int(row, "samples", defaults["samples"], bad, minimum=1)
    order = _int(row, "order", defaults["order"], bad)
    if order not in (1, 2):
        raise bad(f"order must be 1 or 2, not {order!r}")
    dtype = row.get("dtype", defaults["dtype"])
    if dtype not in _DTYPES:
        raise bad(f"unknown dtype {dtype!r}: use one of {', '.join(_DTYPES)}")
    seed = _int(row, "seed", defaults["seed"], bad, minimum=0)
    if seed is None and domain:
        seed = stable_seed("gradcheck-sym batch", json.dumps(rid))
    return ExpressionTask(rid, expr, at, domain, variables, samples, seed, dtype, order, defaults["timeout"],
                          defaults["full"])


def _int(row: Mapping[str, Any], key: str, default: int | None, bad: Any, minimum: int | None = None) -> int | None:
    value = row.get(key, default)
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = int(value)
        except ValueError:
            raise bad(f"{key} must be an integer, not {value!r}") from None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
        raise bad(f"{key} must be an integer{f' >= {minimum}' if minimum is not None else ''}, not {value!r}")
    return value


def _number(text: Any, bad: Any, what: str) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise bad(f"{what}: {text!r} is not a number") from None
    return value


def _points(value: Any, bad: Any) -> dict[str, Any]:
    """at: {name: number or list} (JSON) or "x=0.7,y=1.3;x=1,y=2" (CSV)."""
    if isinstance(value, str) and not value.lstrip().startswith("{"):
        out: dict[str, list[float]] = {}
        for point in value.split(";"):
            for part in point.split(","):
                name, eq, text = part.partition("=")
                if not eq or not name.strip():
                    raise bad(f"at {value!r}: write name=value pairs, e.g. x=0.7,y=1.3 (points separated by ;)")
                out.setdefault(name.strip(), []).append(_number(text, bad, f"at {value!r}"))
        return out
    value = _json_object(value, "at", "{name: value}", bad)
    for name, v in value.items():
        items = v if isinstance(v, list) else [v]
        for x in items:
            if isinstance(x, bool) or not isinstance(x, (int, float)):
                raise bad(f"at: the value of {name!r} must be a number or a list of numbers, not {v!r}")
    return dict(value)


def _json_object(value: Any, what: str, shape: str, bad: Any) -> dict[str, Any]:
    """`value` as a JSON object (given as one, or as its text)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise bad(f"{what} {value!r} is not valid JSON") from None
    if not isinstance(value, dict):
        raise bad(f"{what} must be an object {shape}, not {value!r}")
    return value


def _box(value: Any, key: str, bad: Any) -> dict[str, tuple[float, float]]:
    """domain: {name: [low, high]} (JSON) or "x=-1:1,y=0:2" (CSV)."""
    if isinstance(value, str) and not value.lstrip().startswith("{"):
        out = {}
        for part in value.split(","):
            name, eq, text = part.partition("=")
            lo, colon, hi = text.partition(":")
            if not eq or not colon or not name.strip():
                raise bad(f"{key} {value!r}: write name=low:high pairs, e.g. x=-1:1,y=0.5:2")
            out[name.strip()] = (_number(lo, bad, key), _number(hi, bad, key))
        return out
    value = _json_object(value, key, "{name: [low, high]}", bad)
    out = {}
    for name, v in value.items():
        if not isinstance(v, (list, tuple)) or len(v) != 2:
            raise bad(f"{key}: the range of {name!r} must be [low, high], not {v!r}")
        lo, hi = (_number(x, bad, key) for x in v)
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise bad(f"{key}: the range of {name!r} must be finite, not {v!r}")
        out[name] = (lo, hi)
    return out


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
