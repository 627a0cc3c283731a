"""The OpInfo sweep (issue 9's external test suite): every OpInfo entry of the installed torch, checked.

    python benchmarks/opinfo_sweep.py                       # everything: hours on 2 cores today
    python benchmarks/opinfo_sweep.py --ops 'sin,nn.functional.*' --random-points 0 --workers 2
    python benchmarks/opinfo_sweep.py --resume              # continue an interrupted sweep (same options)

For each entry with autograd and float64 on the CPU: its sample_inputs and reference_inputs
(a reference input equal to a sample input is checked once), plus K random points near each
sample, checked by gradcheck-sym and by torch.autograd.gradcheck on the same float64 inputs;
a relative gradient error (1e-4, and 1e-8) injected after each op of one verified sample per
entry, which must be caught at every op; order 2 on the entries that support gradgrad
(against gradgradcheck). It is `gradcheck-sym audit torch`, run twice (order 1 with the
injection, order 2), with the records streamed to OUT/order1.jsonl and OUT/order2.jsonl
(so --resume continues them) and the markdown reports written next to them.

Prints the table: entries, traced (%), not traced (reasons grouped), error findings where
gradcheck passes, tool errors, median time per sample against gradcheck's, the injection
columns and the order-2 column.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

import gradcheck_sym as gs
from gradcheck_sym.audit import AuditResult


def _table(order1: AuditResult, order2: AuditResult | None, seconds: dict[str, float]) -> str:
    s = order1.summary()
    n = s["entries"] or 1
    rows = [
        ("entries (autograd, float64, cpu)", f"{s['entries']}: " + ", ".join(
            f"{v} {k}" for k, v in s["entries_by_status"].items() if v)),
        ("traced on some sample", f"{s['traced_some_sample']} ({100 * s['traced_some_sample'] / n:.1f}%)"),
        ("traced on every sample", f"{s['traced_every_sample']} ({100 * s['traced_every_sample'] / n:.1f}%)"),
        ("samples checked (traced)", f"{s['samples']} ({s['samples_traced']})"),
        ("error findings where gradcheck passes (samples)", f"{s['failed_where_gradcheck_passes']}"),
        ("gradcheck fails where verified (samples)", f"{s['gradcheck_fails_where_verified']}"),
        ("tool errors (samples / entries)", f"{s['tool_errors']} / {s['entries_with_tool_errors']}"),
        ("median time per traced sample: gradcheck-sym vs gradcheck",
         f"{_ms(s['median_seconds'])} vs {_ms(s['gradcheck_median_seconds'])}"),
    ]
    for eps, inj in s["injection"].items():
        rows.append((f"injected {eps} after each op: caught at every op (entries)",
                     f"{inj['caught']} of {inj['entries']} ({100 * inj['caught'] / max(inj['entries'], 1):.1f}%); "
                     f"gradcheck {inj['gradcheck_caught']} of {inj['entries']}; no effect (gradient 0) on "
                     f"{inj.get('no_effect', 0)}"))
    if order2 is not None:
        t = order2.summary()
        rows.append(("order 2 (gradgrad entries): traced on some sample", f"{t['traced_some_sample']} of "
                     f"{t['entries']}"))
        rows.append(("order 2: error findings where gradgradcheck passes / tool errors",
                     f"{t['failed_where_gradcheck_passes']} / {t['tool_errors']}"))
    rows.append(("wall time (order 1 / order 2)", " / ".join(f"{v:.0f} s" for v in seconds.values())))
    width = max(len(r[0]) for r in rows)
    lines = [f"OpInfo sweep: torch {torch.__version__}, {order1.settings['random_points']} random points per sample",
             ""] + [f"{a.ljust(width)}  {b}" for a, b in rows]
    reasons = s["not_traced_reasons"]
    if reasons:
        lines += ["", "not traced, by reason (entries):"]
        lines += [f"  {len(names):4d}  {reason}" for reason, names in reasons.items()]
    return "\n".join(lines) + "\n"


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x * 1e3:.1f} ms"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ops", default=None, help="op names or globs (default: every entry)")
    p.add_argument("--random-points", type=int, default=20, metavar="K")
    p.add_argument("--samples-per-op", type=int, default=None, metavar="N")
    p.add_argument("--inject", default="1e-4,1e-8", help="relative errors to inject ('' for none)")
    p.add_argument("--no-order2", action="store_true", help="skip the order-2 pass")
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per check")
    p.add_argument("--out", default="benchmarks/opinfo_sweep", help="folder for the JSONL records and reports")
    p.add_argument("--resume", action="store_true")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    inject = tuple(float(x) for x in args.inject.split(",") if x.strip())
    seconds = {}
    start = time.perf_counter()
    order1 = gs.audit_torch(args.ops, samples_per_op=args.samples_per_op, random_points=args.random_points,
                            inject=inject, workers=args.workers, timeout=args.timeout,
                            output=out / "order1.jsonl", resume=args.resume)
    seconds["order1"] = time.perf_counter() - start
    (out / "order1.md").write_text(order1.to_markdown(), encoding="utf-8")
    order2 = None
    if not args.no_order2:
        start = time.perf_counter()
        order2 = gs.audit_torch(args.ops, order=2, samples_per_op=args.samples_per_op, random_points=0,
                                workers=args.workers, timeout=args.timeout, output=out / "order2.jsonl",
                                resume=args.resume)
        seconds["order2"] = time.perf_counter() - start
        (out / "order2.md").write_text(order2.to_markdown(), encoding="utf-8")
    table = _table(order1, order2, seconds)
    (out / "table.txt").write_text(table, encoding="utf-8")
    sys.stdout.write(table)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt as exc:
        print(f"interrupted ({getattr(exc, 'written', '?')} entries written): run again with --resume to finish",
              file=sys.stderr)
        sys.exit(130)
