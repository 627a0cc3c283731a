"""The command line: a thin layer over `gradcheck_sym.check`.

``main(argv) -> int`` is testable in-process.  Exit codes: 0 no error finding, 1 an error
finding, 2 bad input or a time limit (`GradcheckSymError`: one clear message, never a
traceback), 3 an internal error (a bug: "internal error, please report", the traceback only
with ``--debug`` or ``GRADCHECK_SYM_DEBUG=1``).  With ``--json`` errors are JSON on stdout
too.  Only argparse and the error classes are imported up front, so ``--help`` starts
without torch or sympy.

The commands' handlers live in `cli_commands` (check, example, function, run, ops) and
`cli_scale` (batch, audit); this module reads the command line and reports errors.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import traceback
from typing import Any, NoReturn, Sequence

from .cli_commands import (EXIT_ERROR, EXIT_FINDINGS, EXIT_INTERNAL, EXIT_OK, _SCHEMA_VERSION, _check, _function, _ops,
                           _run)
from .cli_scale import SCALE_COMMANDS, _add_scale_commands, _scale_main
from .errors import GradcheckSymError, InputError, InternalError

__all__ = ["main", "EXAMPLE", "EXIT_OK", "EXIT_FINDINGS", "EXIT_ERROR", "EXIT_INTERNAL"]

EXAMPLE = "sin(x)*exp(y) + log(1 + x**2)/y"
_EPILOG = ("exit codes: 0 no error finding, 1 an error finding, 2 bad input or a time limit, "
           "3 internal error (please report)")
_RUN_EPILOG = ("exit codes: the script's own; if it ends with 0, 1 when the report has an error finding; 2 bad input "
               "(no such script); 3 internal error (please report). --timeout stops the verifying, not the script")


class UsageError(InputError):
    """A command line argparse cannot read (argparse's own error, raised instead of exiting)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message, f"see `{self.prog} --help`")


_COMMANDS = ("check", "function", "run", "example", "ops", "batch", "audit")


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


def _common(timeout_help: str) -> argparse.ArgumentParser:
    """The options every command takes (`timeout_help`: what its time budget does)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--timeout", type=_seconds, default=None, metavar="SECONDS", help=timeout_help)
    common.add_argument("--debug", action="store_true",
                        help="show the traceback of an internal error (also GRADCHECK_SYM_DEBUG=1)")
    return common


def _build_parser() -> argparse.ArgumentParser:
    common = _common("stop with an error (exit 2) when the check takes longer")
    # (run's time budget stops the verifying, never the script: its exit code stays the script's)
    run_common = _common("stop verifying after SECONDS: the script runs on, and the backwards after it are reported "
                         "not verified (a warning)")
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
    run = sub.add_parser("run", help="run a script and verify every backward it does", parents=[run_common],
                         usage="gradcheck-sym run SCRIPT [--json] [--json-file FILE] [--graph FILE] [--full] "
                               "[--intended WHAT=BEHAVIOUR] [--no-replay] [--timeout S] [SCRIPT ARGS...]",
                         description="Run a Python script as `python SCRIPT args` would, then report what its "
                                     "autograd did, verified against the exact derivatives. Arguments after the "
                                     "script are the script's (after -- all of them are).", epilog=_RUN_EPILOG)
    run.add_argument("script", help="the script")
    run.add_argument("--json", action="store_true",
                     help="print only the report as JSON on stdout (the script's own output goes to stderr)")
    run.add_argument("--json-file", default=None, metavar="FILE", help="also write the report as JSON to FILE")
    run.add_argument("--graph", metavar="FILE", default=None, help="draw the graph (.dot, .svg, .png)")
    run.add_argument("--full", "--wide", action="store_true", dest="full",
                     help="every column and every row of the table, whatever the width")
    run.add_argument("--intended", action="append", default=[], metavar="WHAT=BEHAVIOUR",
                     help="a deviation that is meant: a cut (gan.py:41=cut, the discriminator's fake.detach()) or a "
                          "custom Function (STESign=straight-through, Rev=reverse:0.1); shown as intended (info)")
    run.add_argument("--no-replay", action="store_false", dest="replay",
                     help="never run a custom Function again in float64 (in a forked copy) to tell its rounding from a "
                          "wrong formula: for a Function whose own code writes files")
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
    for item in [part for given_item in items for part in given_item.split(",") if part.strip()]:
        name, eq, text = item.partition("=")
        lo, colon, hi = text.partition(":")
        name = name.strip()
        if not eq or not colon or not name:
            raise InputError(f"--domain {item!r}: write name=low:high, e.g. --domain x=-1:1,y=0:2")
        if name in given:
            raise InputError(f"--domain {item!r}: {name} already has --domain {given[name]!r}",
                             "give one --domain per variable")
        try:
            out[name] = (float(lo), float(hi))
        except ValueError:
            raise InputError(f"--domain {item!r}: low and high must be numbers") from None
        given[name] = item
    return out


_RUN_FLAGS = {"--json", "--full", "--wide", "--no-replay", "--debug", "-h", "--help"}
_RUN_VALUED = {"--json-file", "--graph", "--run-timeout", "--timeout", "--intended"}


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
    except UsageError as exc:
        if argv and argv[0] in _COMMANDS and "`gradcheck-sym --help`" in exc.hint:
            raise UsageError(exc.message, f"see `gradcheck-sym {argv[0]} --help`") from None
        raise
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
