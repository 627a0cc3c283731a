"""The commands that run many checks: ``batch`` (a JSONL or CSV file of expressions) and ``audit``.

Their options, and their handling: on all cores or a Dask cluster (`gradcheck_sym.scale`,
`gradcheck_sym.audit`), with their own error exits (a typed error exits 2, Ctrl-C says how far
the output got, our bugs exit 3 in one line).
"""

from __future__ import annotations

import argparse
import os
import sys

from .cli_commands import _color, _width
from .errors import GradcheckSymError, InputError

__all__ = ["SCALE_COMMANDS"]

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
    p.add_argument("--debug", action="store_true",
                   help="show the traceback of an internal error (also GRADCHECK_SYM_DEBUG=1)")
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
    except Exception as exc:  # noqa: BLE001 - our bug: one line; the traceback only when asked for
        import traceback

        frame = traceback.extract_tb(exc.__traceback__)[-1]
        print(f"gradcheck-sym: internal error, please report: {type(exc).__name__}: {exc} "
              f"(at {os.path.basename(frame.filename)}:{frame.lineno})", file=sys.stderr)
        if args.debug or os.environ.get("GRADCHECK_SYM_DEBUG", "") not in ("", "0"):
            traceback.print_exception(exc, file=sys.stderr)
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
