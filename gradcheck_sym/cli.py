"""The command line: a thin layer over `gradcheck_sym.check`.

``main(argv) -> int`` is testable in-process.  Exit codes: 0 no error finding,
1 an error finding, 2 bad input (with a message, never a traceback).  Only
argparse and the error classes are imported up front, so ``--help`` starts
without torch or sympy.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from .errors import GradcheckSymError, InputError

__all__ = ["main", "EXAMPLE"]

EXAMPLE = "sin(x)*exp(y) + log(1 + x**2)/y"


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gradcheck-sym",
        description="Check torch autograd against exact symbolic derivatives (sympy).",
        epilog="exit codes: 0 no error finding, 1 an error finding, 2 bad input",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    check = sub.add_parser("check", help="check an expression", description="Check an expression's gradients.")
    check.add_argument("expression", help='Python-syntax math, e.g. "sin(x)*exp(y)"')
    _check_options(check)
    function = sub.add_parser("function", help="check a PyTorch function from a Python file",
                              description="Check a PyTorch function, module or custom autograd.Function.apply "
                                          "defined in a Python file.")
    function.add_argument("target", metavar="FILE.py:NAME", help="e.g. model.py:f or model.py:MySoftplus.apply")
    function.add_argument("--input", action="append", default=[], metavar="x=[0.3, -1.2]",
                          help="an input as name=number or name=nested list (repeat, in call order)")
    function.add_argument("--expect", default=None, metavar="EXPR", help="the math, elementwise, instead of the trace")
    function.add_argument("--samples", type=int, default=None, help="also check N random points near the inputs")
    function.add_argument("--seed", type=int, default=None)
    function.add_argument("--dtype", default="float64", choices=["float64", "float32", "float16", "bfloat16"])
    function.add_argument("--order", type=int, default=1, choices=[1, 2])
    function.add_argument("--intended", action="append", default=[], metavar="NAME=BEHAVIOUR",
                          help="a deviation that is meant: a custom Function (STESign=straight-through, "
                               "Rev=reverse:0.1, Grad=scale:0.5, Spike=surrogate:EXPR) or a cut (model.py:12=cut)")
    function.add_argument("--rtol", type=float, default=None, help="extra relative tolerance you accept")
    function.add_argument("--atol", type=float, default=None, help="extra absolute tolerance you accept")
    function.add_argument("--json", action="store_true", help="print the report as JSON")
    function.add_argument("--graph", metavar="FILE", default=None, help="draw the graph (.dot, .svg, .png)")
    run = sub.add_parser("run", help="run a script and verify every backward it does",
                         usage="gradcheck-sym run SCRIPT [--json] [--json-file FILE] [--graph FILE] [--full] "
                               "[--run-timeout S] [SCRIPT ARGS...]",
                         description="Run a Python script as `python SCRIPT args` would, then report what its "
                                     "autograd did, verified against the exact derivatives. Arguments after the "
                                     "script are the script's (after -- all of them are).")
    run.add_argument("script", help="the script")
    run.add_argument("--json", action="store_true",
                     help="print only the report as JSON on stdout (the script's own output goes to stderr)")
    run.add_argument("--json-file", default=None, metavar="FILE", help="also write the report as JSON to FILE")
    run.add_argument("--graph", metavar="FILE", default=None, help="draw the graph (.dot, .svg, .png)")
    run.add_argument("--full", "--wide", action="store_true", dest="full",
                     help="every column and every row of the table, whatever the width")
    run.add_argument("--run-timeout", type=float, default=None, dest="run_timeout", metavar="S",
                     help="stop verifying after S seconds (the script runs on)")
    example = sub.add_parser("example", help=f"check the built-in example {EXAMPLE!r}")
    example.add_argument("--json", action="store_true", help="print the report as JSON")
    sub.add_parser("ops", help="list the functions and operators the checker knows")
    return parser


def _check_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--at", action="append", default=[], metavar="x=0.7,y=1.3",
                   help="a point (repeat for more points)")
    p.add_argument("--domain", action="append", default=[], metavar="x=-1:1",
                   help="a sampling range for one variable (repeatable)")
    p.add_argument("--samples", type=int, default=None, help="points to sample from the domain (default 100)")
    p.add_argument("--seed", type=int, default=None, help="sampling seed (default: drawn and reported)")
    p.add_argument("--dtype", default="float64", choices=["float64", "float32", "float16", "bfloat16"])
    p.add_argument("--order", type=int, default=1, choices=[1, 2], help="2 also checks the Hessian")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--graph", metavar="FILE", default=None, help="draw the graph (.dot, .svg, .png)")
    for name, help_ in [("max-chars", "longest expression text"), ("max-depth", "deepest nesting"),
                        ("max-nodes", "most graph nodes"), ("max-int-digits", "largest constant power, in digits")]:
        p.add_argument(f"--{name}", type=int, default=None, help=f"limit: {help_}")


def _parse_at(items: list[str]) -> dict[str, list[float]]:
    values: dict[str, list[float]] = {}
    for n, item in enumerate(items):
        point: dict[str, float] = {}
        for part in item.split(","):
            name, eq, text = part.partition("=")
            name = name.strip()
            if not eq or not name:
                raise InputError(f"--at {item!r}: write name=value pairs separated by commas, e.g. --at x=0.7,y=1.3")
            try:
                point[name] = float(text)
            except ValueError:
                raise InputError(f"--at {item!r}: {text.strip()!r} is not a number (for {name})") from None
        if n and set(point) != set(values):
            raise InputError(f"--at {item!r}: every --at must give the same variables ({', '.join(values)})")
        for name, v in point.items():
            values.setdefault(name, []).append(v)
    return values


def _parse_domain(items: list[str]) -> dict[str, tuple[float, float]]:
    out: dict[str, tuple[float, float]] = {}
    for item in items:
        name, eq, text = item.partition("=")
        lo, colon, hi = text.partition(":")
        if not eq or not colon or not name.strip():
            raise InputError(f"--domain {item!r}: write name=low:high, e.g. --domain x=-1:1")
        try:
            out[name.strip()] = (float(lo), float(hi))
        except ValueError:
            raise InputError(f"--domain {item!r}: low and high must be numbers") from None
    return out


_RUN_FLAGS = {"--json", "--full", "--wide", "--debug", "-h", "--help"}
_RUN_VALUED = {"--json-file", "--graph", "--run-timeout", "--timeout"}


def _split_run_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """`run`'s own options and the script's arguments.

    As with ``python script.py args``, what follows the script is the script's — except our own
    options (``run script.py --json``); after ``--`` everything is the script's.
    """
    ours, theirs = ["run"], []
    script_seen = False
    i = 1
    while i < len(argv):
        token = argv[i]
        name = token.split("=", 1)[0]
        if token == "--":
            theirs.extend(argv[i + 1 :])
            break
        if name in _RUN_FLAGS or (name in _RUN_VALUED and "=" in token):
            ours.append(token)
        elif name in _RUN_VALUED:
            ours.extend(argv[i : i + 2])
            i += 1
        elif not script_seen:
            ours.append(token)
            script_seen = True
        else:
            theirs.append(token)
        i += 1
    return ours, theirs


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    parser = _build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    script_args: list[str] = []
    if argv[:1] == ["run"]:
        argv, script_args = _split_run_args(argv)
    args = parser.parse_args(argv)
    args.script_args = script_args
    if getattr(args, "graph", None):
        from .report.picture import check_picture_path

        try:
            check_picture_path(args.graph)
        except GradcheckSymError as exc:
            print(f"gradcheck-sym: error: {exc}", file=sys.stderr)
            return 2
    if args.command is None:
        parser.print_help()
        return 2
    try:
        if args.command == "ops":
            return _ops()
        if args.command == "function":
            return _function(args)
        if args.command == "run":
            return _run(args)
        if args.command == "example":
            return _check(EXAMPLE, {"at": {"x": [0.7], "y": [1.3]}}, as_json=args.json)
        at = _parse_at(args.at)
        domain = _parse_domain(args.domain)
        from .front.parse import Limits

        limits = Limits(**{k: v for k, v in {
            "max_chars": args.max_chars, "max_depth": args.max_depth, "max_nodes": args.max_nodes,
            "max_int_digits": args.max_int_digits}.items() if v is not None})
        options = dict(at=at or None, domain=domain or None, samples=args.samples, seed=args.seed,
                       dtype=args.dtype, order=args.order, limits=limits)
        return _check(args.expression, options, as_json=args.json, graph=args.graph)
    except GradcheckSymError as exc:
        print(f"gradcheck-sym: error: {exc}", file=sys.stderr)
        return 2


def _check(expression: str, options: dict, *, as_json: bool, graph: str | None = None) -> int:
    from .api import check

    return _print(check(expression, **options), as_json, graph)


def _run(args: argparse.Namespace) -> int:
    import contextlib

    from .front.script import run_script

    sys.stdout.flush()
    to_stdout = args.json
    # With the JSON on stdout, the script's own output goes to stderr: stdout stays one JSON document.
    redirect = contextlib.redirect_stdout(sys.stderr) if to_stdout else contextlib.nullcontext()
    timeout = getattr(args, "run_timeout", None) or getattr(args, "timeout", None)
    with redirect:
        report = run_script(args.script, args.script_args, timeout=timeout)
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
    import json

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
    intended = {}
    for item in args.intended:
        key, eq, behaviour = item.rpartition("=")
        if not eq or not key.strip():
            raise InputError(f"--intended {item!r}: write NAME=BEHAVIOUR, e.g. --intended STESign=straight-through "
                             "or --intended model.py:12=cut")
        intended[key.strip()] = behaviour.strip()
    report = check_function(fn, *inputs, names=names, expected=args.expect, samples=args.samples, seed=args.seed,
                            dtype=args.dtype, order=args.order, rtol=args.rtol, atol=args.atol,
                            intended=intended or None)
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
    return 0 if report.ok else 1  # type: ignore[attr-defined]


def _ops() -> int:
    from .ops import BINOPS, FUNCTIONS, UNARYOPS

    print("functions:")
    for name, op in sorted(FUNCTIONS.items()):
        lo, hi = op.arity
        arity = str(lo) if lo == hi else f"{lo}-{hi}"
        print(f"  {name:<10} {arity:<4} {op.doc}")
    print("operators: " + " ".join(op.symbol for op in [*BINOPS.values(), *UNARYOPS.values()])
          + "  (comparisons < <= > >= == != inside where)")
    print("constants: pi, e (a name you give a value for is a variable instead)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
