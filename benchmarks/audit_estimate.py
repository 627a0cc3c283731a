"""How long a full audit takes: all OpInfo entries x 3 dtypes x 20 random points, on 1, 2 and N workers.

    python benchmarks/audit_estimate.py [--entries 20] [--workers 2] [--efficiency 0.9]

Measured, then extrapolated (the full audit itself is hours of CPU on this machine):

1. every auditable entry's number of samples (sample_inputs + reference_inputs, duplicates removed)
   and the dtypes it supports: cheap, enumerated here;
2. a random slice of entries (seeded) audited for real at 20 random points per sample, in float64
   (with gradcheck), float32 and bfloat16, each sample's CPU time recorded on its worker's thread
   (CPU time, not wall time, so that other load on a shared machine does not inflate it);
3. the full audit's CPU time = for each dtype, the slice's CPU per sample x the number of samples of
   the entries supporting that dtype; wall time on N workers = start-up + CPU / (N x efficiency),
   but never less than the longest single entry (the critical path: one entry is one task).
   `--efficiency` is the parallel efficiency measured by scale_bench.py (its 2-worker speed-up / 2).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time

import torch

import gradcheck_sym as gs
from gradcheck_sym.audit.opinfo import OpTask, _samples, auditable, select_ops

DTYPES = ("float64", "float32", "bfloat16")


def count_samples() -> dict[str, tuple[int, tuple[str, ...]]]:
    """entry -> (distinct samples, supported dtypes among DTYPES)."""
    out = {}
    for op in select_ops():
        torch.manual_seed(0)
        try:
            n = sum(1 for item in _samples(op, OpTask(op.full_name)) if item != "duplicate")
        except Exception:  # noqa: BLE001 - torch's generator failed: the audit records it, with 0 samples
            n = 0
        out[op.full_name] = (n, tuple(d for d in DTYPES if auditable(op, d)))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--entries", type=int, default=20, help="entries in the measured slice")
    p.add_argument("--random-points", type=int, default=20)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--efficiency", type=float, default=0.9, help="parallel efficiency (scale_bench.py)")
    p.add_argument("--startup", type=float, default=10.0, help="seconds to start the pool (scale_bench.py)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    start = time.perf_counter()
    counts = count_samples()
    print(f"{len(counts)} entries, {sum(n for n, _ in counts.values())} distinct samples "
          f"(enumerated in {time.perf_counter() - start:.0f} s)", flush=True)
    rng = random.Random(args.seed)
    chosen = sorted(rng.sample(sorted(counts), args.entries))
    per_sample: dict[str, float] = {}
    longest = 0.0
    for dtype in DTYPES:
        names = [n for n in chosen if dtype in counts[n][1]]
        t0 = time.perf_counter()
        result = gs.audit_torch(names, dtypes=dtype, random_points=args.random_points, workers=args.workers,
                                timeout=300)
        wall = time.perf_counter() - t0
        cpu = [s.cpu_seconds for e in result.entries for s in e.samples]
        per_entry = [sum(s.cpu_seconds for s in e.samples) for e in result.entries]
        longest = max([longest, *per_entry])
        per_sample[dtype] = sum(cpu) / max(len(cpu), 1)
        print(f"slice {dtype}: {len(result.entries)} entries, {len(cpu)} samples, CPU {sum(cpu):.0f} s "
              f"(median {statistics.median(cpu) if cpu else 0:.2f} s, mean {per_sample[dtype]:.2f} s per sample), "
              f"wall {wall:.0f} s on {args.workers} workers", flush=True)
    total = sum(per_sample[d] * sum(n for n, ds in counts.values() if d in ds) for d in DTYPES)
    print(f"\nestimated CPU for all {len(counts)} entries x {len(DTYPES)} dtypes x {args.random_points} random points: "
          f"{total / 3600:.1f} h (longest single entry in the slice: {longest / 60:.1f} min)")
    for n in (1, 2, 8, 32, 128):
        wall = max(args.startup + total / (n * (1.0 if n == 1 else args.efficiency)), longest)
        print(f"  {n:4d} workers: {wall / 3600:6.2f} h")
    return 0


if __name__ == "__main__":
    sys.exit(main())
