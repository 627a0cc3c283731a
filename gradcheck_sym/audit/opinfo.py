"""torch's own op formulas, from its OpInfo database, built the way torch's gradient tests build them.

``torch.testing._internal.common_methods_invocations.op_db`` lists the entries torch
tests its gradients with. For each entry that supports autograd and the dtype on
the device, each ``SampleInput`` of ``sample_inputs`` and ``reference_inputs``
(requires_grad=True) becomes a function of its differentiable inputs — the floating
tensors that require grad among ``input``, ``args`` and ``kwargs`` (lists of tensors
included) — that puts them back in place and returns
``output_process_fn_grad(gradcheck_wrapper(op, *args, **kwargs))``, as
``test/test_ops_gradients.py`` (``TestGradients._check_helper``) does.

Samples are drawn in float64 (a float32 or bfloat16 audit rounds them, so every
dtype is judged at the same points) with torch's RNG seeded per entry; a reference
input equal to a sample input is checked once.
"""

from __future__ import annotations

import fnmatch
import hashlib
from dataclasses import dataclass
from typing import Any, Iterator, Literal, Sequence

from ..errors import InputError, UnsupportedError
from ..scale.guard import TaskTimeout, stable_seed, task_conditions
from ..scale.pool import beat
from .records import EntryAudit, SampleAudit, entry_status

__all__ = ["OpTask", "SampleCount", "load_op_db", "select_ops", "run_op", "sample_call", "torch_expectation",
           "DTYPES"]

DTYPES = ("float64", "float32", "float16", "bfloat16")

_OPS: dict[str, Any] = {}


def load_op_db() -> list[Any]:
    """The installed torch's OpInfo entries.

    Raises:
        UnsupportedError: expecttest is missing, or this torch has no OpInfo database.
    """
    import torch

    try:
        import expecttest  # noqa: F401 - torch's test helpers import it; say so before they fail
    except ImportError:
        raise UnsupportedError("`gradcheck-sym audit torch` needs the package expecttest (torch's test helpers "
                               "import it)", "pip install expecttest (it is in gradcheck-sym[test])") from None
    try:
        from torch.testing._internal.common_methods_invocations import op_db
    except ImportError as exc:
        raise UnsupportedError(f"this torch ({torch.__version__}) has no OpInfo database "
                               f"(torch.testing._internal.common_methods_invocations: {exc})",
                               "install a torch that ships torch.testing._internal, e.g. pip install "
                               "torch==2.13.0") from None
    return list(op_db)


def _by_name() -> dict[str, Any]:
    if not _OPS:
        for op in load_op_db():
            _OPS.setdefault(op.full_name, op)
    return _OPS


def _dtype(name: str) -> Any:
    import torch

    if name not in DTYPES:
        raise InputError(f"unknown dtype {name!r}: use one of {', '.join(DTYPES)}")
    return getattr(torch, name)


def auditable(op: Any, dtype: str = "float64", device: str = "cpu") -> bool:
    """Supports autograd, and the dtype (and float64, where the samples are drawn) on the device."""
    import torch

    kind = torch.device(device).type
    return bool(op.supports_autograd and op.supports_dtype(torch.float64, kind)
                and op.supports_dtype(_dtype(dtype), kind))


def select_ops(ops: str | Sequence[str] | None = None, device: str = "cpu") -> list[Any]:
    """The auditable entries (autograd, float64 on `device`), optionally by names or globs.

    A name matches an entry's full name ("nn.functional.pad.circular") or its name (every
    variant). Names and globs are comma-separated in a string.

    Raises:
        InputError: a name or glob that matches no auditable entry (with the nearest names).
    """
    import difflib

    entries = [op for op in load_op_db() if auditable(op, "float64", device)]
    if ops is None:
        return entries
    patterns = [p.strip() for p in (ops.split(",") if isinstance(ops, str) else ops) if p.strip()]
    if not patterns:
        raise InputError("--ops is empty: give op names or globs, e.g. --ops 'sin,nn.functional.*'")
    chosen: list[Any] = []
    for pattern in patterns:
        hits = [op for op in entries if fnmatch.fnmatchcase(op.full_name, pattern)
                or fnmatch.fnmatchcase(op.name, pattern)]
        if not hits:
            names = sorted({op.full_name for op in entries} | {op.name for op in entries})
            near = difflib.get_close_matches(pattern, names, n=3)
            hint = ("did you mean " + " or ".join(repr(n) for n in near) + "?") if near else \
                "see the OpInfo names with: python -c \"from torch.testing._internal.common_methods_invocations " \
                "import op_db; print(sorted(o.full_name for o in op_db))\""
            raise InputError(f"no OpInfo entry with autograd and float64 matches {pattern!r}", hint)
        chosen.extend(op for op in hits if op not in chosen)
    return chosen


@dataclass(frozen=True)
class OpTask:
    """One entry at one dtype and order, or a part of it: what a worker needs to audit it.

    Attributes:
        part: "entry" (every sample, then the injection), "count" (how many distinct samples:
            a `SampleCount`), "samples" (the samples at positions `span`, and the injection if the
            span starts at 0 and one of them is verified) or "inject" (the injection only, into the
            sample at position `inject_at`). Positions count the distinct samples in order, sample
            inputs first; the samples are drawn the same way in every part, so the parts of an
            entry checked on different workers are the entry checked in one piece.
    """

    name: str
    dtype: str = "float64"
    order: int = 1
    device: str = "cpu"
    samples_per_op: int | None = None
    random_points: int = 0
    inject: tuple[float, ...] = ()
    timeout: float | None = None
    sources: tuple[str, ...] = ("sample", "reference")
    part: Literal["entry", "count", "samples", "inject"] = "entry"
    span: tuple[int, int] | None = None
    inject_at: int | None = None


@dataclass(frozen=True)
class SampleCount:
    """The answer to a "count" part: distinct samples, duplicates skipped, a note; or the entry, skipped."""

    n: int
    duplicates: int = 0
    note: str = ""
    skipped: EntryAudit | None = None


def sample_call(op: Any, sample: Any, dtype: str = "float64") -> tuple[Any, list[Any], list[str]]:
    """The function of a sample's differentiable inputs, those inputs and their names.

    Mirrors ``_check_helper`` of torch's test_ops_gradients.py, with lists of tensors in
    args and kwargs handled like the input's.  The sample's other floating tensors (batch norm's
    running statistics, a weight that needs no gradient) are rounded to `dtype` here, once: the check
    rounds the inputs to it, and torch's kernels want one dtype (a float32 input beside float64
    running statistics raises).
    """
    import torch

    target = _dtype(dtype)
    rounded: dict[int, Any] = {}

    def fixed(x: Any) -> Any:
        """A captured floating tensor in the audit's dtype."""
        if target is torch.float64 or not x.is_floating_point() or x.dtype == target:
            return x
        if id(x) not in rounded:
            rounded[id(x)] = x.detach().to(target)
        return rounded[id(x)]

    leaves: list[Any] = []
    names: list[str] = []
    marked: set[int] = set()

    def collect(x: Any, name: str) -> None:
        if isinstance(x, torch.Tensor):
            if x.requires_grad and x.is_floating_point():
                leaves.append(x)
                names.append(name)
                marked.add(id(x))
        elif isinstance(x, (list, tuple)):
            for j, e in enumerate(x):
                if isinstance(e, torch.Tensor):
                    collect(e, f"{name}_{j}")

    collect(sample.input, "input")
    for i, a in enumerate(sample.args):
        collect(a, f"arg{i + 1}")
    for k, v in sample.kwargs.items():
        collect(v, k if k.isidentifier() else f"kw_{len(names)}")

    def fn(*inputs: Any) -> Any:
        it = iter(inputs)

        def put(x: Any) -> Any:
            if isinstance(x, torch.Tensor):
                return next(it) if id(x) in marked else fixed(x)
            if isinstance(x, (list, tuple)) and any(isinstance(e, torch.Tensor) for e in x):
                items = [put(e) for e in x]
                if all(n is o for n, o in zip(items, x)):
                    return x  # nothing replaced: the sample's own object (a namedtuple stays one)
                return type(x)(*items) if hasattr(x, "_fields") else type(x)(items)
            return x

        args = [put(sample.input)] + [put(a) for a in sample.args]
        kwargs = {k: put(v) for k, v in sample.kwargs.items()}
        out = op.gradcheck_wrapper(op.get_op(), *args, **kwargs)
        return sample.output_process_fn_grad(out)

    fn.__name__ = op.full_name.replace(".", "_")
    return fn, leaves, names


def torch_expectation(op: Any, dtype: str, device: str, order: int) -> str:
    """What torch's own gradient test does with this entry ("" when it runs it and expects a pass).

    Read from the entry's DecorateInfo: TestBwdGradients (test_fn_grad, or test_fn_gradgrad at order 2)
    marked skip or expectedFailure for this dtype and device. A disagreement with gradcheck on such an
    entry is one torch already knows about.
    """
    import torch

    test = "test_fn_grad" if order == 1 else "test_fn_gradgrad"
    kind = torch.device(device).type
    for info in getattr(op, "decorators", ()) or ():
        if getattr(info, "cls_name", None) not in ("TestBwdGradients", "TestGradients"):
            continue
        if getattr(info, "test_name", None) not in (None, test):
            continue
        dtypes = getattr(info, "dtypes", None)
        if dtypes and _dtype(dtype) not in dtypes:
            continue
        if getattr(info, "device_type", None) not in (None, kind):
            continue
        if not getattr(info, "active_if", True):
            continue
        for deco in getattr(info, "decorators", ()):
            name = getattr(deco, "__qualname__", "") or getattr(deco, "__name__", "")
            if "expectedFailure" in name:
                return f"torch's own TestBwdGradients.{test} expects this entry to fail"
            if "skip" in name.lower():
                return f"torch's own TestBwdGradients.{test} skips this entry"
    return ""


def _fingerprint(sample: Any) -> str:
    """Equal for two SampleInputs with the same tensors (values, shapes, dtypes) and arguments.

    A tensor whose bytes cannot be read (sparse, nested) makes the sample unique: never a duplicate.
    """
    import torch

    h = hashlib.sha256()

    def add(x: Any) -> None:
        if isinstance(x, torch.Tensor):
            t = x.detach().cpu()
            h.update(f"T{tuple(t.shape)}{t.dtype}{t.layout}{t.requires_grad}".encode())
            try:
                h.update(t.to(torch.float64 if t.is_floating_point() else t.dtype).contiguous().view(-1)
                         .numpy().tobytes())
                h.update(str(tuple(t.stride())).encode())
            except Exception:  # noqa: BLE001 - unreadable bytes: this sample is its own
                h.update(f"id{id(x)}".encode())
        elif isinstance(x, (list, tuple)):
            h.update(f"{type(x).__name__}[".encode())
            for e in x:
                add(e)
            h.update(b"]")
        elif isinstance(x, dict):
            for k in sorted(x):
                h.update(f"{k}=".encode())
                add(x[k])
        else:
            h.update(repr(x).encode())

    add(sample.input)
    add(list(sample.args))
    add(dict(sample.kwargs))
    h.update(getattr(sample.output_process_fn_grad, "__qualname__", "").encode())
    return h.hexdigest()


def _samples(op: Any, task: OpTask, stop: int | None = None) -> Iterator[tuple[int, str, int, Any] | str]:
    """(position, source, index, SampleInput) for the distinct samples before position `stop`, in order; the
    string "duplicate" for each reference input equal to one already seen."""
    import torch

    seen: set[str] = set()
    position = 0
    for source in task.sources:
        maker = op.sample_inputs if source == "sample" else op.reference_inputs
        n = 0
        for index, sample in enumerate(maker(task.device, torch.float64, requires_grad=True)):
            if (task.samples_per_op is not None and n >= task.samples_per_op) or (stop is not None and
                                                                                  position >= stop):
                break
            fp = _fingerprint(sample)
            if fp in seen:
                yield "duplicate"
                continue
            seen.add(fp)
            n += 1
            yield position, source, index, sample
            position += 1


def _refusal(task: OpTask) -> EntryAudit | None:
    """The entry, skipped, when it cannot be audited at this dtype and order (None when it can)."""
    op = _by_name().get(task.name)

    def skipped(note: str) -> EntryAudit:
        return EntryAudit(task.name, "opinfo", task.dtype, task.order, "skipped", note=note)

    if op is None:
        return skipped(f"no OpInfo entry {task.name!r} in this torch")
    if not auditable(op, task.dtype, task.device):
        return skipped(f"no autograd support in {task.dtype} on {task.device}")
    if task.order == 2 and not op.supports_gradgrad:
        return skipped("the entry does not support gradgrad (supports_gradgrad=False)")
    return None


def run_op(task: OpTask) -> EntryAudit | SampleCount:
    """Audit one entry, or the part of it `task.part` says (see `OpTask`); never raises."""
    beat()
    refusal = _refusal(task)
    if refusal is not None:
        return SampleCount(0, skipped=refusal) if task.part == "count" else refusal
    op = _by_name()[task.name]
    from .inject import injection_test
    from .sample import check_sample

    start, stop = task.span if task.span is not None else (0, None)
    if task.part == "inject":
        start, stop = task.inject_at, task.inject_at + 1  # type: ignore[operator]
    samples: list[SampleAudit] = []
    calls: dict[str, tuple[Any, list[Any], list[str]]] = {}
    duplicates = distinct = 0
    note = ""
    with task_conditions(stable_seed("gradcheck-sym audit", task.name)):
        try:
            for item in _samples(op, task, stop):
                if item == "duplicate":
                    duplicates += 1
                    continue
                position, source, index, sample = item  # type: ignore[misc]
                distinct += 1
                if task.part == "count" or position < start:
                    continue
                beat()
                fn, leaves, names = sample_call(op, sample, task.dtype)
                if task.part == "inject":
                    calls[f"{source} {index}"] = (fn, leaves, names)
                    continue
                if not leaves:
                    samples.append(SampleAudit(source, index, "", "skipped", reason="no input requires grad"))
                    continue
                result = check_sample(
                    fn, leaves, names, source=source, index=index, dtype=task.dtype, order=task.order,
                    random_points=task.random_points, seed=stable_seed(task.name, task.dtype, source, index),
                    timeout=task.timeout, nondet_tol=op.gradcheck_nondet_tol,
                    fast_mode=bool(op.gradcheck_fast_mode))
                samples.append(result)
                if result.status == "verified" and task.inject and start == 0 and not calls:
                    calls[result.label] = (fn, leaves, names)
        except TaskTimeout:
            note = "sample generation ran past the timeout"
        except Exception as exc:  # noqa: BLE001 - torch's sample generator failed: not ours, said as such
            note = f"torch's sample inputs could not be generated: {type(exc).__name__}: {exc}"
        if task.part == "count":
            return SampleCount(distinct, duplicates, note)
        injections = []
        for eps in task.inject:
            for label, (fn, leaves, names) in calls.items():
                injections.append(injection_test(fn, leaves, names, eps, sample=label, dtype=task.dtype,
                                                 seed=stable_seed(task.name, "inject", eps), timeout=task.timeout))
    if task.part != "entry":
        return EntryAudit(task.name, "opinfo", task.dtype, task.order, entry_status(samples), note, tuple(samples),
                          duplicates, tuple(injections))
    return finish_entry(op, task, samples, duplicates, note, injections)


def finish_entry(op: Any, task: OpTask, samples: Sequence[SampleAudit], duplicates: int, note: str,
                 injections: Sequence[Any]) -> EntryAudit:
    """The entry from all its samples: status, notes (and what torch's own test expects)."""
    if not samples and not note:
        note = "no sample inputs"
    expectation = torch_expectation(op, task.dtype, task.device, task.order)
    note = "; ".join(x for x in (note, expectation) if x)
    return EntryAudit(task.name, "opinfo", task.dtype, task.order, entry_status(samples), note, tuple(samples),
                      duplicates, tuple(injections))
