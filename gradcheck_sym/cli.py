"""The command line: a thin layer over `gradcheck_sym.check`.

``main(argv) -> int`` is testable in-process.  Exit codes: 0 no error finding, 1 an error
finding, 2 bad input or a time limit (`GradcheckSymError`: one clear message, never a
traceback), 3 an internal error (a bug: "internal error, please report", the traceback only
with ``--debug`` or ``GRADCHECK_SYM_DEBUG=1``).  With ``--json`` errors are JSON on stdout
too.  Only argparse and the error classes are imported up front, so ``--help`` starts
without torch or sympy.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import re
import sys
import traceback
from typing import Any, Callable, NoReturn, Sequence

from .errors import GradcheckSymError, InputError, InternalError

__all__ = ["main", "EXAMPLE", "EXIT_OK", "EXIT_FINDINGS", "EXIT_ERROR", "EXIT_INTERNAL"]

EXAMPLE = "sin(x)*exp(y) + log(1 + x**2)/y"
EXIT_OK, EXIT_FINDINGS, EXIT_ERROR, EXIT_INTERNAL = 0, 1, 2, 3
_SCHEMA_VERSION = 1  # of the JSON error object; the same as the reports' (report.records.SCHEMA_VERSION)
_EPILOG = ("exit codes: 0 no error finding, 1 an error finding, 2 bad input or a time limit, "
           "3 internal error (please report)")


class _UsageError(InputError):
    """A command line argparse cannot read (argparse's own error, raised instead of exiting)."""

    def __init__(self, message: str, hint: str, usage: str) -> None:
        super().__init__(message, hint)
        self.usage = usage


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _UsageError(message, f"see `{self.prog} --help`", self.format_usage().rstrip())


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {value}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text}")
    return value


def _build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--timeout", type=_seconds, default=None, metavar="SECONDS",
                        help="stop with an error (exit 2) when the check takes longer")
    common.add_argument("--debug", action="store_true",
                        help="show the traceback of an internal error (also GRADCHECK_SYM_DEBUG=1)")
    parser = _Parser(prog="gradcheck-sym", description="Check torch autograd against exact symbolic derivatives "
                     "(sympy).", epilog=_EPILOG)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    check = sub.add_parser("check", help="check an expression", description="Check an expression's gradients. "
                           "An expression that starts with '-' is read as the expression, not as an option.",
                           parents=[common], epilog=_EPILOG)
    check.add_argument("expression", help='Python-syntax math, e.g. "sin(x)*exp(y)"')
    _check_options(check)
    function = sub.add_parser("function", help="check a PyTorch function from a Python file", parents=[common],
                              description="Check a PyTorch function, module or custom autograd.Function.apply "
                                          "defined in a Python file.", epilog=_EPILOG)
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
    run = sub.add_parser("run", help="run a script and verify every backward it does", parents=[common],
                         usage="gradcheck-sym run SCRIPT [--json] [--json-file FILE] [--graph FILE] [--full] "
                               "[--timeout S] [SCRIPT ARGS...]",
                         description="Run a Python script as `python SCRIPT args` would, then report what its "
                                     "autograd did, verified against the exact derivatives. Arguments after the "
                                     "script are the script's (after -- all of them are).", epilog=_EPILOG)
    run.add_argument("script", help="the script")
    run.add_argument("--json", action="store_true",
                     help="print only the report as JSON on stdout (the script's own output goes to stderr)")
    run.add_argument("--json-file", default=None, metavar="FILE", help="also write the report as JSON to FILE")
    run.add_argument("--graph", metavar="FILE", default=None, help="draw the graph (.dot, .svg, .png)")
    run.add_argument("--full", "--wide", action="store_true", dest="full",
                     help="every column and every row of the table, whatever the width")
    run.add_argument("--run-timeout", type=_seconds, default=None, dest="run_timeout", metavar="S",
                     help="the same as --timeout: stop verifying after S seconds (the script runs on)")
    example = sub.add_parser("example", help=f"check the built-in example {EXAMPLE!r}", parents=[common])
    example.add_argument("--json", action="store_true", help="print the report as JSON")
    ops = sub.add_parser("ops", help="list the functions and operators the checker knows", parents=[common])
    ops.add_argument("--json", action="store_true", help="print the list as JSON")
    _add_scale_commands(sub)
    return parser


_LIMIT_OPTIONS = [("max-chars", "longest expression text"), ("max-depth", "deepest nesting"),
                  ("max-nodes", "most graph nodes"), ("max-int-digits", "largest integer constant, in digits"),
                  ("max-points", "most points in one check")]


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
    for name, help_ in _LIMIT_OPTIONS:
        p.add_argument(f"--{name}", type=_positive_int, default=None, metavar="N", help=f"limit: {help_}")


# Options of `check` that take a value (the expression is the one positional argument).
_CHECK_VALUED = {"--at", "--domain", "--samples", "--seed", "--dtype", "--order", "--graph", "--timeout",
                 *(f"--{name}" for name, _ in _LIMIT_OPTIONS)}
_CHECK_FLAGS = {"--json", "--debug", "-h", "--help"}
_LONG_OPTION = re.compile(r"--[A-Za-z][A-Za-z0-9-]*(=.*)?")


def _protect_expression(argv: list[str]) -> list[str]:
    """`check -x*y ...`: the expression starts with '-'; give it to argparse as a positional.

    The first argument after ``check`` that starts with '-' and is neither an option of
    `check` nor shaped like a long option (``--name``) is the expression; a leading space
    makes argparse read it as one (the expression's spaces are stripped when it is parsed).
    """
    if argv[:1] != ["check"]:
        return argv
    out, i = ["check"], 1
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            return out + argv[i:]
        if arg.split("=", 1)[0] in _CHECK_VALUED:
            step = 1 if "=" in arg else 2
            out += argv[i : i + step]
            i += step
            continue
        if arg.startswith("-") and arg not in _CHECK_FLAGS and not _LONG_OPTION.fullmatch(arg):
            out += [" " + arg] + argv[i + 1 :]
            return out
        if not arg.startswith("-"):  # the expression is given: the rest is options
            return out + argv[i:]
        out.append(arg)
        i += 1
    return out


def _parse_at(items: list[str]) -> dict[str, list[float]]:
    values: dict[str, list[float]] = {}
    for n, item in enumerate(items):
        point: dict[str, float] = {}
        for part in item.split(","):
            name, eq, text = part.partition("=")
            name = name.strip()
            if not eq or not name:
                raise InputError(f"--at {item!r}: write name=value pairs separated by commas, e.g. --at x=0.7,y=1.3")
            if name in point:
                raise InputError(f"--at {item!r}: {name} is given twice", "give each variable once per --at")
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
    given: dict[str, str] = {}
    for item in items:
        name, eq, text = item.partition("=")
        lo, colon, hi = text.partition(":")
        name = name.strip()
        if not eq or not colon or not name:
            raise InputError(f"--domain {item!r}: write name=low:high, e.g. --domain x=-1:1")
        if name in given:
            raise InputError(f"--domain {item!r}: {name} already has --domain {given[name]!r}",
                             "give one --domain per variable")
        try:
            out[name] = (float(lo), float(hi))
        except ValueError:
            raise InputError(f"--domain {item!r}: low and high must be numbers") from None
        given[name] = item
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


def _debug(argv: Sequence[str]) -> bool:
    return "--debug" in argv or os.environ.get("GRADCHECK_SYM_DEBUG", "") not in ("", "0")


def _wants_json(argv: Sequence[str]) -> bool:
    own = list(argv[: argv.index("--")]) if "--" in argv else list(argv)
    return "--json" in own


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code (see the module docstring)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        try:
            return _main(argv)
        except GradcheckSymError:
            raise
        except KeyboardInterrupt:
            print("gradcheck-sym: interrupted", file=sys.stderr)
            return 130
        except BrokenPipeError:
            raise
        except Exception as exc:  # noqa: BLE001 - the last line of defence: a bug, reported as one
            raise InternalError(exc) from exc
    except BrokenPipeError:
        return _broken_pipe()
    except GradcheckSymError as exc:
        try:
            return _report_error(exc, argv)
        except BrokenPipeError:
            return _broken_pipe()


def _broken_pipe() -> int:
    """The reader went away (`| head`): stop writing, quietly (Python's own advice)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # stdout without a file descriptor (tests)
        pass
    return 141  # 128 + SIGPIPE, as a shell reports a command killed by it


def _report_error(exc: GradcheckSymError, argv: Sequence[str]) -> int:
    internal = isinstance(exc, InternalError)
    code = EXIT_INTERNAL if internal else EXIT_ERROR
    if _wants_json(argv):
        error: dict[str, Any] = {"type": type(exc).__name__, "exit_code": code, "message": exc.message,
                                 "hint": exc.hint, "text": str(exc)}
        for attr in ("line", "col", "limit", "value", "maximum", "seconds", "stage"):
            if hasattr(exc, attr):
                error["column" if attr == "col" else attr] = getattr(exc, attr)
        if internal:
            cause = exc.cause  # type: ignore[attr-defined]
            error["cause"] = f"{type(cause).__name__}: {cause}"
            if _debug(argv):
                error["traceback"] = "".join(traceback.format_exception(cause))
        print(json.dumps({"version": _SCHEMA_VERSION, "ok": False, "error": error}, indent=2, default=str))
    else:
        if isinstance(exc, _UsageError):
            print(exc.usage, file=sys.stderr)
        print(f"gradcheck-sym: error: {exc}", file=sys.stderr)
    if internal and _debug(argv):
        traceback.print_exception(exc.cause, file=sys.stderr)  # type: ignore[attr-defined]
    return code


def _main(argv: list[str]) -> int:
    parser = _build_parser()
    script_args: list[str] = []
    if argv[:1] == ["run"]:
        argv, script_args = _split_run_args(argv)
    try:
        args = parser.parse_args(_protect_expression(argv))
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else EXIT_OK
    args.script_args = script_args
    if args.command is None:
        parser.print_help()
        return EXIT_ERROR
    if getattr(args, "graph", None):
        from .report.picture import check_picture_path

        check_picture_path(args.graph)
    if args.command in SCALE_COMMANDS:
        return _scale_main(args)
    if args.command == "ops":
        return _ops(args.json)
    if args.command == "function":
        return _function(args)
    if args.command == "run":
        return _run(args)
    if args.command == "example":
        return _check(EXAMPLE, {"at": {"x": [0.7], "y": [1.3]}, "timeout": args.timeout}, as_json=args.json)
    at = _parse_at(args.at)
    domain = _parse_domain(args.domain)
    from .front.parse import Limits

    limits = Limits(**{k: v for k, v in {
        "max_chars": args.max_chars, "max_depth": args.max_depth, "max_nodes": args.max_nodes,
        "max_int_digits": args.max_int_digits, "max_points": args.max_points}.items() if v is not None})
    options = dict(at=at or None, domain=domain or None, samples=args.samples, seed=args.seed,
                   dtype=args.dtype, order=args.order, limits=limits, timeout=args.timeout)
    return _check(args.expression, options, as_json=args.json, graph=args.graph)


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


def _run(args: argparse.Namespace) -> int:
    import contextlib

    from .front.script import run_script

    sys.stdout.flush()
    to_stdout = args.json
    # With the JSON on stdout, the script's own output goes to stderr: stdout stays one JSON document.
    redirect = contextlib.redirect_stdout(sys.stderr) if to_stdout else contextlib.nullcontext()
    timeout = args.run_timeout or args.timeout  # under run, a time limit stops the verifying, not the script
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


# -- audit and batch: many checks on all cores or a Dask cluster (gradcheck_sym.scale, gradcheck_sym.audit) -------

SCALE_COMMANDS = ("batch", "audit")


def _add_scale_commands(sub: argparse._SubParsersAction) -> None:
    batch = sub.add_parser(
        "batch", help="check every expression of a JSONL or CSV file, on all cores or a Dask cluster",
        description="Check every row of a JSONL or CSV file (fields id, expr, and at / domain / vars / samples / "
                    "seed / dtype / order per row) and write one JSON line per row, in input order.",
        epilog="exit codes: 0 every row ok, 1 a row failed (or timed out, or its worker crashed), 2 bad input "
               "(a bad file, or a row that could not be checked), 3 internal error")
    batch.add_argument("file", help="rows as JSON Lines (.jsonl) or CSV (.csv)")
    batch.add_argument("-o", "--output", metavar="FILE", default=None, help="write the results here (default stdout)")
    batch.add_argument("--resume", action="store_true", help="skip the rows already in --output and append the rest")
    batch.add_argument("--format", choices=["jsonl", "csv"], default=None, help="the file's format (default: by suffix)")
    batch.add_argument("--samples", type=int, default=None, help="default points to sample per row")
    batch.add_argument("--seed", type=int, default=None, help="default seed (default: from each row's id)")
    batch.add_argument("--dtype", default="float64", choices=["float64", "float32", "float16", "bfloat16"])
    batch.add_argument("--order", type=int, default=1, choices=[1, 2])
    batch.add_argument("--full", action="store_true", help="put each row's whole report in its line")
    _executor_options(batch)
    audit = sub.add_parser(
        "audit", help="audit torch's own op formulas (audit torch) or a package's custom Functions (audit PACKAGE)",
        description="`audit torch`: every OpInfo entry of the installed torch (sample and reference inputs) checked "
                    "against the exact derivatives and compared with torch.autograd.gradcheck. `audit PACKAGE`: the "
                    "torch.autograd.Function subclasses and @gradcheck_sym.audited functions of an importable "
                    "package, with inputs from their sample_inputs() hooks.",
        epilog="exit codes: 0 nothing failed, 1 a check failed (audit PACKAGE: or could not be run), 2 bad input, "
               "3 internal error")
    audit.add_argument("target", metavar="torch|PACKAGE", help="`torch`, or an importable package (or its directory)")
    audit.add_argument("--ops", default=None, metavar="NAMES", help="torch: op names or globs, comma-separated "
                                                                    "(e.g. 'sin,nn.functional.*')")
    audit.add_argument("--dtype", default="float64", metavar="DTYPES",
                       help="torch: comma-separated dtypes (float64, float32, float16, bfloat16)")
    audit.add_argument("--device", default="cpu", help="torch: where the samples live (default cpu)")
    audit.add_argument("--order", type=int, default=1, choices=[1, 2],
                       help="2: second order (entries that support gradgrad; compared with gradgradcheck)")
    audit.add_argument("--samples-per-op", type=int, default=None, metavar="N",
                       help="torch: at most N sample inputs and N reference inputs per entry")
    audit.add_argument("--random-points", type=int, default=0, metavar="K",
                       help="also check K random points near each sample")
    audit.add_argument("--inject", default=None, metavar="EPS[,EPS]",
                       help="torch: also inject these relative gradient errors after each op of a verified sample "
                            "(each must be caught)")
    audit.add_argument("--config", default=None, metavar="PYPROJECT",
                       help="PACKAGE: the pyproject.toml with [tool.gradcheck-sym] (default: found above the package)")
    audit.add_argument("--json", default=None, metavar="FILE",
                       help="write the records as JSON Lines (a header line, then one line per entry)")
    audit.add_argument("--markdown", default=None, metavar="FILE", help="write a markdown report")
    audit.add_argument("--html", default=None, metavar="FILE", help="write an HTML report")
    audit.add_argument("--resume", action="store_true", help="skip the entries already in --json FILE")
    _executor_options(audit)


def _executor_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=int, default=None, metavar="N", help="worker processes (default: all cores)")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="run on a Dask cluster (e.g. tcp://10.0.0.5:8786; needs gradcheck-sym[dask])")
    p.add_argument("--timeout", type=float, default=600.0, metavar="S",
                   help="seconds per check before it is stopped and reported as timeout (default 600; 0: none)")
    p.add_argument("--chunksize", type=int, default=1, metavar="N", help="tasks per submission to a Dask cluster")


def _scale_main(args: argparse.Namespace) -> int:
    """`batch` and `audit`: typed errors exit 2, Ctrl-C says how far the output got, our bugs exit 3."""
    client = None
    try:
        if args.workers is not None and args.workers < 1:
            raise InputError(f"--workers must be at least 1, not {args.workers}")
        if args.timeout < 0:
            raise InputError(f"--timeout must be >= 0 seconds, not {args.timeout:g}")
        if args.scheduler:
            from .scale.execute import connect

            client = connect(args.scheduler)
        if args.command == "batch":
            return _batch(args, client)
        from .audit.command import audit_command

        return audit_command(args, client, stdout=sys.stdout, width=_width(), color=_color())
    except GradcheckSymError as exc:
        print(f"gradcheck-sym: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        written, total, output = (getattr(exc, k, None) for k in ("written", "total", "output"))
        where = f"{written} of {total} written to {output}; run the same command with --resume to finish" \
            if output else "the output is incomplete"
        print(f"gradcheck-sym: interrupted: {where}", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - our bug: one line, never a traceback
        import traceback

        frame = traceback.extract_tb(exc.__traceback__)[-1]
        print(f"gradcheck-sym: internal error, please report: {type(exc).__name__}: {exc} "
              f"(at {os.path.basename(frame.filename)}:{frame.lineno})", file=sys.stderr)
        return 3
    finally:
        if client is not None:
            client.close()


def _batch(args: argparse.Namespace, client: object) -> int:
    from .scale.batch import batch_file

    summary = batch_file(args.file, args.output, stdout=sys.stdout, fmt=args.format, resume=args.resume,
                         samples=args.samples, seed=args.seed, dtype=args.dtype, order=args.order, full=args.full,
                         executor=client, workers=args.workers, timeout=args.timeout or None,
                         chunksize=args.chunksize)
    out = sys.stdout if args.output else sys.stderr
    out.write(summary.text(args.output or "stdout"))
    return summary.exit_code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
