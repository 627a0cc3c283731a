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
    function.add_argument("--json", action="store_true", help="print the report as JSON")
    function.add_argument("--graph", metavar="FILE", default=None, help="draw the graph (.dot, .svg, .png)")
    run = sub.add_parser("run", help="run a script and verify every backward it does",
                         usage="gradcheck-sym run SCRIPT [--json] [--graph FILE] [-- SCRIPT ARGS...]",
                         description="Run a Python script as `python SCRIPT args` would, then report what its "
                                     "autograd did, verified against the exact derivatives. The script's own "
                                     "arguments come after --.")
    run.add_argument("script", help="the script")
    run.add_argument("--json", action="store_true", help="print the report as JSON")
    run.add_argument("--graph", metavar="FILE", default=None, help="draw the graph (.dot, .svg, .png)")
    example = sub.add_parser("example", help=f"check the built-in example {EXAMPLE!r}")
    example.add_argument("--json", action="store_true", help="print the report as JSON")
    sub.add_parser("ops", help="list the functions and operators the checker knows")
    _add_scale_commands(sub)
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


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    parser = _build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    script_args: list[str] = []
    if argv[:1] == ["run"] and "--" in argv:  # everything after -- belongs to the script
        cut = argv.index("--")
        argv, script_args = argv[:cut], argv[cut + 1 :]
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
    if args.command in SCALE_COMMANDS:
        return _scale_main(args)
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
    from .front.script import run_script

    sys.stdout.flush()
    report = run_script(args.script, args.script_args)
    sys.stdout.flush()
    if args.json:
        print(report.to_json())
    else:
        from .report.render import render_run_text

        print(file=sys.stdout)
        sys.stdout.write(render_run_text(report, width=_width(), color=_color()))
    if args.graph:
        from .report.picture import run_picture

        _draw(run_picture(report), args.graph)
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
    report = check_function(fn, *inputs, names=names, expected=args.expect, samples=args.samples, seed=args.seed,
                            dtype=args.dtype, order=args.order)
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
        from .front.trace import FunctionError

        raise FunctionError(exc) from None
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
