"""``gs.audit_torch`` and ``gs.audit_package``: entries → tasks → executor → `AuditResult`.

With `output`, the records stream to a JSON Lines file as they finish, in entry
order: a header line (the target, torch's version and the settings), then one line
per entry. ``resume=True`` continues such a file: it must have been written with
the same settings; the entries already in it are read back, not re-run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Sequence

from ..errors import InputError
from ..scale.pool import TaskFailure
from .records import AUDIT_VERSION, AuditResult, EntryAudit, entry_dict, entry_from_dict

__all__ = ["audit_torch", "audit_package"]

_OPINFO_MODULE = "torch.testing._internal.common_methods_invocations"


def _header(target: str, settings: dict[str, Any]) -> dict[str, Any]:
    import torch

    return {"version": AUDIT_VERSION, "kind": "gradcheck-sym audit", "target": target, "torch": torch.__version__,
            "settings": settings}


class _Output:
    """The JSON Lines file of an audit: a header line, then one line per entry in entry order; resumable."""

    def __init__(self, target: str, settings: dict[str, Any], keys: Sequence[str],
                 entry_key: Callable[[EntryAudit], str], output: str | Path | None, resume: bool) -> None:
        import torch

        from ..scale.output import OrderedWriter, read_done

        self.entries: list[EntryAudit | None] = [None] * len(keys)
        self.output = output
        done: set[int] = set()
        if resume:
            if output is None:
                raise InputError("resume needs an output file (--json FILE): the entries already in it are skipped")
            lines, _ = read_done(output, lambda d: d.get("name") or ("header" if d.get("kind") == "gradcheck-sym audit"
                                                                      else None), what="gradcheck-sym audit")
            if lines:
                first = json.loads(lines[0])
                if first.get("kind") != "gradcheck-sym audit" or first.get("target") != target:
                    raise InputError(f"{output} is not the output of this audit ({target})",
                                     "give --json a new file, or run the same audit")
                if first.get("settings") != settings or first.get("torch") != torch.__version__:
                    raise InputError(f"{output} was written with other settings or another torch: "
                                     f"{json.dumps(first.get('settings'))} (torch {first.get('torch')})",
                                     "run with the same options to resume it, or give --json a new file")
                index = {k: i for i, k in enumerate(keys)}
                for line in lines[1:]:
                    e = entry_from_dict(json.loads(line))
                    if entry_key(e) in index:
                        self.entries[index[entry_key(e)]] = e
                        done.add(index[entry_key(e)])
        self.done = done
        self.stream = None
        if output is not None:
            fresh = not resume or not Path(output).exists() or Path(output).stat().st_size == 0
            self.stream = open(output, "w" if not resume else "a", encoding="utf-8")
            if fresh:
                self.stream.write(json.dumps(_header(target, settings), allow_nan=False) + "\n")
                self.stream.flush()
        self.writer = OrderedWriter(self.stream, done) if self.stream is not None else None

    def add(self, i: int, entry: EntryAudit) -> None:
        self.entries[i] = entry
        if self.writer is not None:
            self.writer.add(i, json.dumps(entry_dict(entry), allow_nan=False) + "\n")

    def interrupted(self) -> KeyboardInterrupt:
        from ..scale.batch import Interrupted

        written = self.writer.written + len(self.done) if self.writer is not None else 0
        return Interrupted(written, len(self.entries), str(self.output) if self.output else None)

    def close(self) -> None:
        if self.stream is not None:
            self.stream.close()

    def result(self, target: str, settings: dict[str, Any]) -> AuditResult:
        import torch

        return AuditResult(target, torch.__version__, settings, tuple(e for e in self.entries if e is not None))


def _run(target: str, settings: dict[str, Any], tasks: Sequence[Any], fn: Callable[[Any], EntryAudit],
         keys: Sequence[str], entry_key: Callable[[EntryAudit], str], failed: Callable[[Any, TaskFailure], EntryAudit],
         *, executor: Any, workers: int | None, timeout: float | None, chunksize: int, output: str | Path | None,
         resume: bool, progress: bool | None, preload: Sequence[str]) -> AuditResult:
    """One task per entry (a package's items)."""
    from ..scale.execute import run_tasks

    out = _Output(target, settings, keys, entry_key, output, resume)
    todo = [i for i in range(len(tasks)) if i not in out.done]
    try:
        for j, outcome in run_tasks(fn, [tasks[i] for i in todo], executor=executor, workers=workers,
                                    timeout=timeout, chunksize=chunksize, preload=preload, progress=progress,
                                    label="auditing"):
            i = todo[j]
            out.add(i, failed(tasks[i], outcome) if isinstance(outcome, TaskFailure) else outcome)
    except KeyboardInterrupt:
        raise out.interrupted() from None
    finally:
        out.close()
    return out.result(target, settings)


def _run_torch(settings: dict[str, Any], tasks: Sequence[Any], *, samples_per_task: int, executor: Any,
               workers: int | None, timeout: float | None, chunksize: int, output: str | Path | None, resume: bool,
               progress: bool | None) -> AuditResult:
    """OpInfo entries in parts, so that one entry with many samples does not hold up the run.

    1. each entry's distinct samples are counted (one task per entry, quick);
    2. the samples are checked `samples_per_task` at a time, each part a task; an entry is
       complete (and written, in entry order) when all its parts are in; the part at position 0
       also runs the error injection on its first verified sample;
    3. for an entry whose first verified sample lies in a later part, the injection runs last.
    A part's samples are drawn exactly as a whole entry's are, so the result is the same as with
    one task per entry (`run_op` with part="entry").
    """
    from dataclasses import replace

    from ..scale.execute import run_tasks
    from .opinfo import SampleCount, _by_name, finish_entry, run_op
    from .records import SampleAudit

    keys = [f"{t.name}|{t.dtype}|{t.order}" for t in tasks]
    out = _Output("torch", settings, keys, lambda e: e.key, output, resume)
    options = dict(executor=executor, workers=workers, timeout=timeout, chunksize=chunksize,
                   preload=[_OPINFO_MODULE], progress=progress)
    counts: dict[int, SampleCount] = {}
    parts: dict[int, list[tuple[int, EntryAudit]]] = {}
    expected: dict[int, int] = {}
    late_injection: dict[int, int] = {}

    def finish(i: int, injections: tuple = ()) -> None:
        got = sorted(parts.pop(i, []), key=lambda p: p[0])
        samples = [s for _, e in got for s in e.samples]
        injections = injections or next((e.injections for start, e in got if start == 0 and e.injections), ())
        c = counts[i]
        note = c.note or next((e.note for _, e in got if e.note), "")
        out.add(i, finish_entry(_by_name()[tasks[i].name], tasks[i], samples, c.duplicates, note, injections))

    try:
        todo = [i for i in range(len(tasks)) if i not in out.done]
        count_tasks = [replace(tasks[i], part="count") for i in todo]
        for j, c in run_tasks(run_op, count_tasks, label="counting samples", **options):
            i = todo[j]
            if isinstance(c, TaskFailure):
                out.add(i, _failed_entry(tasks[i].name, "opinfo", tasks[i].dtype, tasks[i].order, c))
            elif c.skipped is not None:
                out.add(i, c.skipped)
            else:
                counts[i] = c
        sample_tasks: list[tuple[int, Any]] = []
        for i, c in counts.items():
            expected[i] = 0
            for start in range(0, c.n, samples_per_task):
                sample_tasks.append((i, replace(tasks[i], part="samples", span=(start, min(start + samples_per_task,
                                                                                          c.n)))))
                expected[i] += 1
            if c.n == 0:
                finish(i)
        for j, entry in run_tasks(run_op, [t for _, t in sample_tasks], label="auditing", **options):
            i, task = sample_tasks[j]
            start, stop = task.span
            if isinstance(entry, TaskFailure):
                status = "tool-error" if entry.kind == "internal-error" else entry.kind
                reason = entry.message.strip().splitlines()[-1] if entry.message.strip() else entry.kind
                entry = EntryAudit(task.name, "opinfo", task.dtype, task.order, status, samples=tuple(
                    SampleAudit("position", k, "", status, reason=reason, detail=entry.message)
                    for k in range(start, stop)))  # type: ignore[arg-type]
            parts.setdefault(i, []).append((start, entry))
            if len(parts[i]) == expected[i]:
                got = sorted(parts[i], key=lambda p: p[0])
                first = next((start + k for start, e in got for k, s in enumerate(e.samples)
                              if s.status == "verified"), None)
                if tasks[i].inject and first is not None and not any(e.injections for _, e in got):
                    late_injection[i] = first  # the part at position 0 had no verified sample
                else:
                    finish(i)
        inject_tasks = [(i, replace(tasks[i], part="inject", inject_at=k)) for i, k in late_injection.items()]
        for j, entry in run_tasks(run_op, [t for _, t in inject_tasks], label="injecting errors", **options):
            i = inject_tasks[j][0]
            finish(i, () if isinstance(entry, TaskFailure) else entry.injections)
    except KeyboardInterrupt:
        raise out.interrupted() from None
    finally:
        out.close()
    return out.result("torch", settings)


def _failed_entry(name: str, kind: str, dtype: str, order: int, failure: TaskFailure) -> EntryAudit:
    from .records import SampleAudit

    message = failure.message.strip().splitlines()[-1] if failure.message.strip() else failure.kind
    status = "tool-error" if failure.kind == "internal-error" else failure.kind
    sample = SampleAudit("entry", 0, "", status, reason=message, detail=failure.message)  # type: ignore[arg-type]
    return EntryAudit(name, kind, dtype, order, status, f"{failure.kind}: {message}", (sample,))  # type: ignore


def _positive(name: str, value: Any, minimum: int) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < minimum):
        raise InputError(f"{name} must be an integer >= {minimum}, not {value!r}")


def audit_torch(ops: str | Sequence[str] | None = None, *, dtypes: str | Sequence[str] = ("float64",),
                device: str = "cpu", order: int = 1, samples_per_op: int | None = None, random_points: int = 0,
                inject: Sequence[float] = (), sources: Sequence[str] = ("sample", "reference"),
                executor: Any = None, workers: int | None = None, timeout: float | None = None,
                chunksize: int = 1, output: str | Path | None = None, resume: bool = False,
                progress: bool | None = None, samples_per_task: int = 2) -> AuditResult:
    """Audit torch's own gradient formulas: every OpInfo entry's samples, exact vs autograd vs gradcheck.

    Args:
        ops: entry names or globs ("sin", "nn.functional.*"; a comma-separated string or a list);
            None for every entry with autograd and float64 on `device`.
        dtypes: dtypes of the checks ("float64", "float32", "float16", "bfloat16"); the samples are
            drawn in float64 and rounded; gradcheck runs in float64 only.
        device: where the samples live ("cpu").
        order: 1, or 2 for second order (entries with supports_gradgrad; against gradgradcheck).
        samples_per_op: at most this many sample inputs and reference inputs per entry.
        random_points: also check this many random points near each sample.
        inject: relative gradient errors to inject after each op of one verified sample per entry.
        sources: "sample" (sample_inputs) and/or "reference" (reference_inputs).
        executor: None for a process pool; or a ``concurrent.futures.Executor`` / Dask client.
        workers: the pool's size (default: all cores; with a device other than the CPU the entries run in
            this process, one after another: a forked worker cannot use CUDA again).
        timeout: seconds per check (and per gradcheck) before it is reported as a timeout.
        chunksize: entries per submission to an executor.
        output: stream the records to this JSON Lines file.
        resume: continue `output`, skipping the entries already in it.
        progress: show a progress bar (default: on a terminal).
        samples_per_task: samples checked per task: an entry is split into parts so that its many
            samples spread over the workers (the result does not depend on it).

    Returns:
        An `AuditResult`: ``print(result)`` for the table, ``result.to_markdown()``, ``result.summary()``.

    Raises:
        UnsupportedError: this torch has no OpInfo database, or expecttest is missing.
        InputError: an unknown op name, dtype or device; bad options.

    Example:
        >>> result = audit_torch("sin,cos", samples_per_op=2, workers=2)     # doctest: +SKIP
        >>> result.summary()["traced_some_sample"]                            # doctest: +SKIP
    """
    import torch

    from ..scale.pool import warm_up
    from .opinfo import DTYPES, OpTask, auditable, select_ops

    dtype_list = [d.strip() for d in (dtypes.split(",") if isinstance(dtypes, str) else dtypes) if d.strip()]
    for d in dtype_list:
        if d not in DTYPES:
            raise InputError(f"unknown dtype {d!r}: use one of {', '.join(DTYPES)}")
    if not dtype_list:
        raise InputError("give at least one dtype, e.g. float64")
    if order not in (1, 2) or isinstance(order, bool):
        raise InputError(f"order must be 1 or 2, not {order!r}")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise InputError(f"unknown device {device!r}: e.g. cpu or cuda") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device!r}: this torch sees no CUDA device")
    _positive("samples_per_op", samples_per_op, 1)
    _positive("samples_per_task", samples_per_task, 1)
    _positive("random_points", random_points, 0)
    inject = tuple(float(e) for e in inject)
    if any(not (0 < e < 1) for e in inject):
        raise InputError(f"inject: each relative error must be between 0 and 1, not {inject}")
    bad_sources = set(sources) - {"sample", "reference"}
    if bad_sources or not sources:
        raise InputError(f"sources must be 'sample' and/or 'reference', not {list(sources)}")
    if executor is None and dev.type != "cpu":
        # Importing op_db initialises CUDA, which a forked worker cannot use again: one process, in order.
        from ..scale.execute import SerialExecutor

        executor = SerialExecutor()
    if executor is None:
        warm_up([_OPINFO_MODULE])  # the forkserver imports op_db while this process does the same
    selected = select_ops(ops, device)
    tasks = [OpTask(op.full_name, d, order, device, samples_per_op, random_points, inject, timeout, tuple(sources))
             for op in selected for d in dtype_list if auditable(op, d, device)]
    settings = {"ops": ops if ops is None or isinstance(ops, str) else ",".join(ops), "dtypes": dtype_list,
                "device": device, "order": order, "samples_per_op": samples_per_op, "random_points": random_points,
                "inject": list(inject), "sources": list(sources)}
    return _run_torch(settings, tasks, samples_per_task=samples_per_task, executor=executor, workers=workers,
                      timeout=timeout, chunksize=chunksize, output=output, resume=resume, progress=progress)


def audit_package(package: str, *, config: str | None = None, random_points: int = 0, executor: Any = None,
                  workers: int | None = None, timeout: float | None = None, chunksize: int = 1,
                  output: str | Path | None = None, resume: bool = False,
                  progress: bool | None = None) -> AuditResult:
    """Audit a package's ``autograd.Function`` subclasses and marked functions with their sample inputs.

    See `gradcheck_sym.audit.marks` for the convention (``sample_inputs()`` next to the Function,
    ``@gradcheck_sym.audited``, or ``[tool.gradcheck-sym] audit`` in pyproject.toml).

    Args:
        package: an importable package name, or its directory.
        config: the pyproject.toml to read (default: the first one above the package with the table).
        random_points: also check this many random points near each sample (an item's own
            ``samples`` option wins).
        executor, workers, timeout, chunksize, output, resume, progress: as in `audit_torch`.

    Returns:
        An `AuditResult`; an item without samples is listed with status "skipped" and what to add.

    Raises:
        InputError: the package cannot be imported, or the config is malformed.
    """
    from .package import ItemTask, discover, run_item

    _positive("random_points", random_points, 0)
    name, tasks = discover(package, config=config, random_points=random_points, timeout=timeout)
    settings = {"package": name, "random_points": random_points}

    def failed(t: ItemTask, f: TaskFailure) -> EntryAudit:
        return _failed_entry(t.target, t.kind, t.dtype or "float64", t.order or 1, f)

    keys = [t.target for t in tasks]
    result = _run(name, settings, tasks, run_item, keys, lambda e: e.name, failed, executor=executor, workers=workers,
                  timeout=timeout, chunksize=chunksize, output=output, resume=resume, progress=progress,
                  preload=[])
    return result
