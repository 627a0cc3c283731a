"""The commands that check one thing: check, example, function, run and ops.

Each turns parsed arguments into a call of the library (imported when the command runs, so
``--help`` starts without torch or sympy), prints the report as text or JSON, draws its
picture if asked, and returns the exit code.  The exit codes live here, where they are
returned; `cli` re-exports them.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
from typing import Any, Callable

from .errors import InputError

__all__ = ["EXIT_OK", "EXIT_FINDINGS", "EXIT_ERROR", "EXIT_INTERNAL"]

EXIT_OK, EXIT_FINDINGS, EXIT_ERROR, EXIT_INTERNAL = 0, 1, 2, 3
_SCHEMA_VERSION = 1  # of the JSON error object; the same as the reports' (report.records.SCHEMA_VERSION)


def _with_timeout(fn: Callable[..., Any], options: dict[str, Any], timeout: float | None) -> dict[str, Any]:
    """`options` plus ``timeout=`` when `fn` takes it (the function and script paths are growing it)."""
    if timeout is not None:
        try:
            takes = "timeout" in inspect.signature(fn).parameters
        except (TypeError, ValueError):
            takes = False
        if takes:
            return {**options, "timeout": timeout}
    return options


def _check(expression: str, options: dict, *, as_json: bool, graph: str | None = None) -> int:
    from .api import check

    return _print(check(expression, **options), as_json, graph)


def _intended(items: list[str]) -> dict[str, str]:
    """--intended WHAT=BEHAVIOUR, repeated."""
    intended = {}
    for item in items:
        key, eq, behaviour = item.rpartition("=")
        if not eq or not key.strip():
            raise InputError(f"--intended {item!r}: write NAME=BEHAVIOUR, e.g. --intended STESign=straight-through "
                             "or --intended model.py:12=cut")
        intended[key.strip()] = behaviour.strip()
    return intended


def _run(args: argparse.Namespace) -> int:
    import contextlib

    from .front.allocator import keep_freed_memory
    from .front.script import run_script

    sys.stdout.flush()
    to_stdout = args.json
    # With the JSON on stdout, the script's own output goes to stderr: stdout stays one JSON document.
    redirect = contextlib.redirect_stdout(sys.stderr) if to_stdout else contextlib.nullcontext()
    timeout = args.run_timeout or args.timeout  # under run, a time limit stops the verifying, not the script
    # (this process is ours and ends with the run: glibc's malloc keeps freed memory while the script runs)
    with redirect, keep_freed_memory():
        report = run_script(args.script, args.script_args, timeout=timeout, replay=args.replay,
                            intended=_intended(args.intended) or None)
    sys.stdout.flush()
    if args.json_file:
        with open(args.json_file, "w", encoding="utf-8") as f:
            f.write(report.to_json())
    if to_stdout:
        print(report.to_json())
    else:
        from .report.run_render import render_run_text

        print(file=sys.stdout)
        sys.stdout.write(render_run_text(report, width=_width(), color=_color(), full=args.full))
    if args.graph:
        from .report.run_picture import run_picture

        _draw(run_picture(report), args.graph)
    if report.exit_code:
        return report.exit_code
    return 0 if report.ok else 1


def _draw(picture: object, path: str) -> None:
    """Write the picture; without Graphviz's `dot`, say so (the report's exit code stands)."""
    from .errors import UnsupportedError
    from .report.picture import write_picture

    try:
        print(write_picture(picture, path), file=sys.stderr)  # type: ignore[arg-type]
    except UnsupportedError as exc:
        print(f"gradcheck-sym: warning: {exc}", file=sys.stderr)


def _width() -> int:
    return max(60, os.get_terminal_size().columns) if sys.stdout.isatty() else 100


def _color() -> bool:
    return sys.stdout.isatty() and "NO_COLOR" not in os.environ


def _function(args: argparse.Namespace) -> int:
    import torch

    from .api import check_function

    fn = _load(args.target)
    names, inputs = [], []
    for item in args.input:
        name, eq, text = item.partition("=")
        if not eq or not name.strip().isidentifier():
            raise InputError(f"--input {item!r}: write name=value, e.g. --input 'x=[0.3, -1.2, 2.0]'")
        try:
            value = json.loads(text)
            tensor = torch.tensor(value, dtype=torch.float64)
        except (ValueError, TypeError, RuntimeError):
            raise InputError(f"--input {item!r}: {text.strip()!r} is not a number or a nested list of numbers") from None
        names.append(name.strip())
        inputs.append(tensor)
    if not inputs:
        raise InputError("give the function's inputs with --input, e.g. --input 'x=[0.3, -1.2, 2.0]'")
    intended = _intended(args.intended)
    options = dict(names=names, expected=args.expect, samples=args.samples, seed=args.seed, dtype=args.dtype,
                   order=args.order, rtol=args.rtol, atol=args.atol, intended=intended or None)
    report = check_function(fn, *inputs, **_with_timeout(check_function, options, args.timeout))
    return _print(report, args.json, args.graph)


def _load(target: str) -> object:
    """The object NAME (dotted) from FILE.py, the file run as a module named after it."""
    import importlib.util

    path, colon, name = target.rpartition(":")
    if not colon or not path or not name:
        raise InputError(f"{target!r}: write FILE.py:NAME, e.g. model.py:f")
    if not os.path.isfile(path):
        raise InputError(f"{path!r}: no such file")
    module_name = os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise InputError(f"{path!r} cannot be loaded as Python")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    sys.path.insert(0, os.path.dirname(os.path.abspath(path)))
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 - the user's file failed: show its own traceback
        from .autograd.user import FunctionError

        raise FunctionError(exc, f"loading {path}") from None
    obj: object = module
    for part in name.split("."):
        if not hasattr(obj, part):
            raise InputError(f"{path} has no {name!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise InputError(f"{name!r} in {path} is not callable")
    return obj


def _print(report: object, as_json: bool, graph: str | None = None) -> int:
    from .report.render import render_text

    if as_json:
        print(report.to_json())  # type: ignore[attr-defined]
    else:
        sys.stdout.write(render_text(report, width=_width(), color=_color()))  # type: ignore[arg-type]
    if graph:
        from .report.picture import report_picture

        _draw(report_picture(report), graph)
    return EXIT_OK if report.ok else EXIT_FINDINGS  # type: ignore[attr-defined]


def _ops(as_json: bool = False) -> int:
    from .ops import BINOPS, FUNCTIONS, UNARYOPS

    if as_json:
        print(json.dumps({"version": _SCHEMA_VERSION, "functions": [
            {"name": name, "arity": list(op.arity), "doc": op.doc, "convention": op.convention}
            for name, op in sorted(FUNCTIONS.items())],
            "operators": [op.symbol for op in [*BINOPS.values(), *UNARYOPS.values()]],
            "comparisons": ["<", "<=", ">", ">=", "==", "!="], "constants": ["pi", "e"]}, indent=2))
        return EXIT_OK
    print("functions:")
    for name, op in sorted(FUNCTIONS.items()):
        lo, hi = op.arity
        arity = str(lo) if lo == hi else f"{lo}-{hi}"
        print(f"  {name:<10} {arity:<4} {op.doc}")
    print("operators: " + " ".join(op.symbol for op in [*BINOPS.values(), *UNARYOPS.values()])
          + "  (comparisons < <= > >= == != inside where)")
    print("constants: pi, e (a name you give a value for is a variable instead)")
    return 0
