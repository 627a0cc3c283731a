"""``gradcheck-sym audit torch|PACKAGE``: options → `audit_torch` / `audit_package` → the table and the files."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import IO, Any

from ..errors import InputError

__all__ = ["audit_command"]


def _inject(text: str | None) -> tuple[float, ...]:
    if not text:
        return ()
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise InputError(f"--inject {text!r}: give relative errors separated by commas, e.g. --inject 1e-4,1e-8") \
            from None


def _check_paths(*paths: str | None) -> None:
    for p in paths:
        if p and not Path(p).resolve().parent.is_dir():
            raise InputError(f"{p!r}: the folder {str(Path(p).resolve().parent)!r} does not exist")


def audit_command(args: argparse.Namespace, client: Any, *, stdout: IO[str], width: int, color: bool) -> int:
    """Run the audit the options describe; print the table; write --json/--markdown/--html.

    Returns:
        The exit code: 0 nothing failed; 1 a sample failed or hit a tool error (for a package, also an
        item that could not be checked: no samples, not traced, an import failure).
    """
    from .api import audit_package, audit_torch
    from ..report.audit import render_text

    _check_paths(args.json, args.markdown, args.html)
    common = dict(executor=client, workers=args.workers, timeout=args.timeout or None, chunksize=args.chunksize,
                  output=args.json, resume=args.resume)
    if args.target == "torch":
        if args.config:
            raise InputError("--config is for `audit PACKAGE`; `audit torch` reads torch's OpInfo database")
        result = audit_torch(args.ops, dtypes=args.dtype, device=args.device, order=args.order,
                             samples_per_op=args.samples_per_op, random_points=args.random_points,
                             inject=_inject(args.inject), **common)
        code = 0 if result.ok else 1
    else:
        torch_only = [name for name, value, default in (
            ("--ops", args.ops, None), ("--dtype", args.dtype, "float64"), ("--device", args.device, "cpu"),
            ("--order", args.order, 1), ("--samples-per-op", args.samples_per_op, None),
            ("--inject", args.inject, None)) if value != default]
        if torch_only:
            raise InputError(f"{torch_only[0]} is for `audit torch`; for a package, put the options next to each "
                             f"Function: @gradcheck_sym.audited(order=2, dtype=..., samples=...)")
        result = audit_package(args.target, config=args.config, random_points=args.random_points, **common)
        code = 0 if all(e.status == "verified" for e in result.entries) else 1
    stdout.write(render_text(result, width=width, color=color))
    if args.markdown:
        Path(args.markdown).write_text(result.to_markdown(), encoding="utf-8")
    if args.html:
        Path(args.html).write_text(result.to_html(), encoding="utf-8")
    return code
