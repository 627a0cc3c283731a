"""A package's own gradients: its ``autograd.Function`` subclasses and marked functions.

What is audited (see `marks` for the sample-input convention):

- every ``torch.autograd.Function`` subclass defined in a module of the package (found by
  importing the package and each of its submodules; a class is counted in the module that
  defines it), except base classes without a ``forward`` of their own;
- every function or class marked with ``@gradcheck_sym.audited(...)``;
- every entry of ``audit = [...]`` under ``[tool.gradcheck-sym]`` in the project's
  pyproject.toml (``--config``, or the first pyproject.toml above the package that has
  that table)::

      [tool.gradcheck-sym]
      audit = [
          "mini_ops.extra:scaled_tanh",   # samples from mini_ops.extra:scaled_tanh_sample_inputs
          { target = "mini_ops.extra:cube", sample-inputs = "mini_ops.extra:cube_samples", order = 2 },
      ]

Nothing is guessed: an item without samples is listed as not checked, with what to add.
"""

from __future__ import annotations

import importlib
import inspect
import os
import pkgutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import GradcheckSymError, InputError
from ..scale.guard import TaskTimeout, stable_seed, task_conditions
from ..scale.pool import beat
from .marks import MARK, AuditSpec
from .records import EntryAudit, SampleAudit, entry_status

__all__ = ["ItemTask", "discover", "run_item", "find_config"]

NO_SAMPLES = ("no sample inputs: add a `sample_inputs()` staticmethod returning a list of argument tuples, or "
              "decorate it with @gradcheck_sym.audited(sample_inputs=...)")


@dataclass(frozen=True)
class ItemTask:
    """One item of a package to audit, by name (so a worker can import it)."""

    target: str  # "package.module:Qualname"
    kind: str  # "autograd.Function" or "function"
    hook: str | None = None  # "package.module:name" of the sample-input hook (config entries)
    order: int | None = None
    samples: int | None = None
    dtype: str | None = None
    random_points: int = 0
    timeout: float | None = None
    path: tuple[str, ...] = ()  # sys.path entries the worker needs
    note: str = ""  # set for items that cannot be audited (an import failure)


def _resolve(target: str) -> Any:
    module_name, colon, qualname = target.partition(":")
    if not colon or not module_name or not qualname:
        raise InputError(f"{target!r}: write module:name, e.g. mini_ops.extra:scaled_tanh")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise InputError(f"{target!r}: cannot import {module_name!r} ({exc})") from None
    for part in qualname.split("."):
        if not hasattr(obj, part):
            raise InputError(f"{target!r}: {module_name} has no {qualname!r}")
        obj = getattr(obj, part)
    return obj


def import_package(package: str) -> tuple[Any, tuple[str, ...]]:
    """The package module and the sys.path entries it needs (the current directory, a given directory's parent).

    Raises:
        InputError: it cannot be imported.
    """
    path: list[str] = [os.getcwd()]
    name = package
    if os.path.isdir(package):
        directory = Path(package).resolve()
        if not (directory / "__init__.py").exists():
            raise InputError(f"{package!r} is a directory without __init__.py, not a package",
                             "give the package's directory (the one with __init__.py) or its import name")
        path.insert(0, str(directory.parent))
        name = directory.name
    for p in reversed(path):
        if p not in sys.path:
            sys.path.insert(0, p)
    try:
        return importlib.import_module(name), tuple(path)
    except ImportError as exc:
        raise InputError(f"cannot import the package {name!r}: {exc}",
                         "run from the directory that contains it, install it (pip install -e .), or give its "
                         "directory") from None
    except Exception as exc:  # noqa: BLE001 - the package's own code failed on import: its error, in one line
        raise InputError(f"importing the package {name!r} raised {type(exc).__name__}: {exc}",
                         "fix the error in the package (python -c 'import NAME' shows its traceback)") from None


def find_config(package_module: Any, config: str | None) -> tuple[Path | None, list[Any]]:
    """The ``[tool.gradcheck-sym] audit`` list and the file it came from."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ImportError:
            tomllib = None  # type: ignore[assignment]
    candidates: list[Path] = []
    if config:
        candidates = [Path(config)]
        if not candidates[0].is_file():
            raise InputError(f"{config!r}: no such file")
    else:
        start = Path(getattr(package_module, "__file__", "") or ".").resolve().parent
        candidates = [d / "pyproject.toml" for d in [start, *start.parents][:6] if (d / "pyproject.toml").is_file()]
    for path in candidates:
        if tomllib is None:
            if "[tool.gradcheck-sym]" in path.read_text(encoding="utf-8"):
                raise InputError(f"{path}: reading [tool.gradcheck-sym] on Python 3.10 needs tomli",
                                 "pip install tomli")
            continue
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise InputError(f"{path}: not valid TOML: {exc}") from None
        table = data.get("tool", {}).get("gradcheck-sym")
        if table is None:
            if config:
                raise InputError(f"{path} has no [tool.gradcheck-sym] table")
            continue
        items = table.get("audit", [])
        if not isinstance(items, list):
            raise InputError(f"{path}: [tool.gradcheck-sym] audit must be a list of \"module:name\" strings or "
                             f"tables, not {type(items).__name__}")
        return path, items
    return None, []


def _config_task(path: Path, item: Any, base: dict[str, Any]) -> ItemTask:
    def bad(message: str) -> InputError:
        return InputError(f"{path}: [tool.gradcheck-sym] audit: {message}",
                          'each entry is "module:name" or { target = "module:name", sample-inputs = "module:hook", '
                          'order = 2, samples = 5 }')

    if isinstance(item, str):
        item = {"target": item}
    if not isinstance(item, dict) or not isinstance(item.get("target"), str):
        raise bad(f"{item!r} has no target")
    unknown = set(item) - {"target", "sample-inputs", "order", "samples", "dtype"}
    if unknown:
        raise bad(f"unknown key {sorted(unknown)[0]!r} in the entry for {item['target']!r}")
    target = item["target"]
    module, _, name = target.partition(":")
    hook = item.get("sample-inputs", f"{module}:{name.split('.')[-1]}_sample_inputs")
    order = item.get("order")
    if order not in (None, 1, 2):
        raise bad(f"order must be 1 or 2 in the entry for {target!r}")
    return ItemTask(target, "function", hook, order, item.get("samples"), item.get("dtype"), **base)


def discover(package: str, *, config: str | None = None, random_points: int = 0,
             timeout: float | None = None) -> tuple[str, list[ItemTask]]:
    """The package's name and its items to audit, in a stable order (module walk order, then definition order).

    Raises:
        InputError: the package cannot be imported, or the config is malformed.
    """
    import torch

    root, path = import_package(package)
    base = dict(random_points=random_points, timeout=timeout, path=path)
    modules: list[Any] = [root]
    if hasattr(root, "__path__"):
        for info in pkgutil.walk_packages(root.__path__, root.__name__ + ".", onerror=lambda name: None):
            try:
                modules.append(importlib.import_module(info.name))
            except Exception as exc:  # noqa: BLE001 - listed as an item that could not be audited
                modules.append(ItemTask(f"{info.name}:*", "module", note=f"the module could not be imported: "
                                                                         f"{type(exc).__name__}: {exc}", **base))
    tasks: dict[str, ItemTask] = {}
    for module in modules:
        if isinstance(module, ItemTask):
            tasks[module.target] = module
            continue
        for name, obj in vars(module).items():
            if getattr(obj, "__module__", None) != module.__name__ or name.startswith("__"):
                continue
            target = f"{module.__name__}:{getattr(obj, '__qualname__', name)}"
            spec = getattr(obj, MARK, None)
            if inspect.isclass(obj) and issubclass(obj, torch.autograd.Function) and obj is not torch.autograd.Function:
                if "forward" not in vars(obj) and not any("forward" in vars(b) for b in obj.__mro__[1:]
                                                        if b.__module__.split(".")[0] != "torch"):
                    continue  # a base class without a forward: nothing to call
                tasks[target] = ItemTask(target, "autograd.Function", **base)
            elif spec is not None and callable(obj):
                tasks[target] = ItemTask(target, "function", **base)
    cfg_path, items = find_config(root, config)
    for item in items:
        task = _config_task(cfg_path, item, base)  # type: ignore[arg-type]
        tasks[task.target] = task
    return root.__name__, list(tasks.values())


def _names(fn: Any, n: int) -> list[str]:
    try:
        params = [p.name for p in inspect.signature(fn).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        params = []
    return params[:n] if len(params) >= n else [f"x{i}" for i in range(n)]


def run_item(task: ItemTask) -> EntryAudit:
    """Audit one item: every sample of its hook; never raises."""
    import torch

    from .sample import check_sample

    beat()
    order = task.order or 1
    dtype = task.dtype or "float64"

    def entry(status: str, note: str = "", samples: tuple[SampleAudit, ...] = ()) -> EntryAudit:
        return EntryAudit(task.target, task.kind, dtype, order, status, note, samples)  # type: ignore[arg-type]

    if task.note:
        return entry("skipped", task.note)
    for p in reversed(task.path):
        if p not in sys.path:
            sys.path.insert(0, p)
    try:
        obj = _resolve(task.target)
        spec: AuditSpec = getattr(obj, MARK, None) or AuditSpec()
        order = task.order or spec.order
        dtype = task.dtype or spec.dtype
        random_points = task.samples if task.samples is not None else (spec.samples or task.random_points)
        hook: Any = _resolve(task.hook) if task.hook else spec.sample_inputs
    except InputError as exc:
        if task.hook and "has no" in str(exc):
            return entry("skipped", f"no sample inputs: {exc.message}")
        return entry("skipped", exc.message)
    is_function = inspect.isclass(obj) and issubclass(obj, torch.autograd.Function)
    if hook is None and is_function:
        hook = getattr(obj, "sample_inputs", None)
    if hook is None:
        return entry("skipped", NO_SAMPLES)
    fn = obj.apply if is_function else obj
    forward = obj.forward if is_function else obj
    samples: list[SampleAudit] = []
    with task_conditions(stable_seed("gradcheck-sym audit", task.target)):
        try:
            drawn = list(hook() if callable(hook) else hook)
        except TaskTimeout:
            return entry("skipped", "its sample_inputs() ran past the timeout")
        except Exception as exc:  # noqa: BLE001 - the author's hook failed: say so, with the error
            return entry("skipped", f"its sample_inputs() raised {type(exc).__name__}: {exc}")
        if not drawn:
            return entry("skipped", "its sample_inputs() gave no samples")
        for index, sample in enumerate(drawn):
            beat()
            args = list(sample) if isinstance(sample, (tuple, list)) else [sample]
            names = _names(forward, len(args) + (1 if is_function else 0))[(1 if is_function else 0):]
            if len(names) != len(args):
                names = [f"x{i}" for i in range(len(args))]
            try:
                result = check_sample(fn, args, names, source="hook", index=index, dtype=dtype, order=order,
                                      random_points=random_points or 0,
                                      seed=stable_seed(task.target, dtype, order, index), timeout=task.timeout)
            except GradcheckSymError as exc:  # pragma: no cover - check_sample classifies every typed error
                result = SampleAudit("hook", index, "", "not-traced", reason=str(exc))
            samples.append(result)
    return entry(entry_status(samples), "", tuple(samples))
