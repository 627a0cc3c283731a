"""Scale-out benchmarks: 2 workers against 1, Dask, a killed worker, resume (ratios measured in one run).

    python benchmarks/scale_bench.py            # about 10 minutes on 2 idle cores
    python benchmarks/scale_bench.py --quick    # a smoke run

What is measured (each a ratio of medians of runs alternated 1, 2, 1, 2, ... so that a change
in the machine's load hits both sides alike; the machine's load average is printed with them):

- the 290 corpus expressions (tests/data/*.jsonl, their boxes, 30 sampled points each) through
  ``gs.check_many`` on a process pool of 1 and of 2 workers;
- next to each ratio, the machine's own: a pure-Python loop in 2 processes against 1, measured
  between the runs (2.0 on two idle cores; on a shared machine, what is left to us);
- an OpInfo slice (``gs.audit_torch`` on fixed entries) on 1 and 2 workers;
- in both, the pool's forkserver is started (torch, sympy and the OpInfo database imported once)
  before the clock starts: that one-off start-up is timed on its own;
- the same results byte for byte from a serial run, 1 and 2 workers and a Dask LocalCluster
  (audit records compared without their wall times);
- a worker killed (SIGKILL) mid-run: the run completes and its output equals the reference;
- ``--resume`` after an interrupt (Ctrl-C in the batch command, a cut file for the audit):
  the same output as an uninterrupted run.

Tests never assert timings; this script prints them.
"""

from __future__ import annotations

import _thread
import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import gradcheck_sym as gs
import gradcheck_sym.api  # noqa: F401 - torch and sympy imported before any clock starts
from gradcheck_sym.audit.records import strip_times
from gradcheck_sym.scale import ProcessPool, SerialExecutor
from gradcheck_sym.scale.batch import make_tasks, result_line, run_expression
from gradcheck_sym.scale.pool import warm_up

ROOT = Path(__file__).parent.parent
OPINFO = "torch.testing._internal.common_methods_invocations"
# A fixed slice of entries that trace today (elementwise, reductions, shapes, linear algebra-free).
SLICE = ("abs,acos,add,amax,amin,asin,atan,atan2,clamp,cos,cosh,div.no_rounding_mode,exp,expm1,hypot,log,log1p,"
         "logaddexp,max.reduction_no_dim,mul,neg,pow,sigmoid,sin,sinh,softmax,sqrt,sub,sum,tan,tanh,where")


def corpus_rows(samples: int = 30) -> list[dict]:
    rows = []
    for path in sorted((ROOT / "tests" / "data").glob("*.jsonl")):
        for line in path.read_text().splitlines():
            if line.strip():
                e = json.loads(line)
                rows.append({"id": e["id"], "expr": e["expr"], "vars": e["vars"], "samples": samples, "seed": 1})
    return rows


def _spin(n: int) -> int:
    s = 0
    for i in range(n):
        s += i
    return s


def control() -> float:
    """The machine's parallelism right now: a pure-Python loop in 2 processes against 1 (2.0 on 2 idle cores).

    On a machine shared with other work (or a container whose CPU share is capped) it is lower, and
    no executor can do better: the pool's ratio is reported next to it.
    """
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    times = {}
    for k in (1, 2):
        start = time.perf_counter()
        procs = [ctx.Process(target=_spin, args=(15_000_000,)) for _ in range(k)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        times[k] = time.perf_counter() - start
    return 2 * times[1] / times[2]


def load() -> str:
    return "load average %.1f %.1f %.1f" % os.getloadavg()


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - start, out


CONTROL: list[float] = []


def alternate(runs: int, one, two) -> tuple[list[float], list[float], list, list]:
    t1, t2, o1, o2 = [], [], [], []
    for _ in range(runs):
        CONTROL.append(control())
        for times, outs, fn in ((t1, o1, one), (t2, o2, two)):
            t, out = timed(fn)
            times.append(t)
            outs.append(out)
    return t1, t2, o1, o2


def available() -> str:
    return f"machine's own 2-vs-1 ratio meanwhile {statistics.median(CONTROL[-3:]):.2f}x"


def lines(results) -> str:
    return "".join(result_line(r) for r in results)


def audit_key(result) -> str:
    return json.dumps(strip_times(result.to_dict()), sort_keys=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--samples", type=int, default=30, help="sampled points per corpus expression")
    args = p.parse_args(argv)
    runs = 1 if args.quick else args.runs
    rows = corpus_rows(args.samples)[: 60 if args.quick else None]
    ops = ",".join(SLICE.split(",")[: 6 if args.quick else None])
    audit = dict(samples_per_op=2 if args.quick else 4, sources=("sample", "reference"))
    table: list[tuple[str, str]] = []
    print(f"machine: {os.cpu_count()} cores; {load()}; python {sys.version.split()[0]}; its own 2-vs-1 ratio now "
          f"{control():.2f}x", flush=True)

    start = time.perf_counter()
    warm_up([OPINFO])
    with ProcessPool(1, preload=[OPINFO]) as pool:
        pool.start()
        list(pool.run(run_expression, make_tasks([{"id": 0, "expr": "x", "at": {"x": 1}}])))
    table.append(("pool start-up (forkserver imports torch, sympy, OpInfo db; once per run)",
                  f"{time.perf_counter() - start:.1f} s"))

    # -- the corpus: 2 workers vs 1 ---------------------------------------------------------------
    t1, t2, o1, o2 = alternate(runs, lambda: lines(gs.check_many(rows, workers=1)),
                               lambda: lines(gs.check_many(rows, workers=2)))
    ratio = statistics.median(t1) / statistics.median(t2)
    table.append((f"corpus, {len(rows)} expressions x {args.samples} points: 1 worker / 2 workers (median of {runs})",
                  f"{statistics.median(t1):.1f} s / {statistics.median(t2):.1f} s = {ratio:.2f}x ({available()}; "
                  f"{load()})"))
    lines(gs.check_many(rows[:4], executor=SerialExecutor()))  # this process's first checks, not timed
    serial_t, serial = timed(lambda: lines(gs.check_many(rows, executor=SerialExecutor())))
    table.append(("corpus: serial in this process (no pool, warm)", f"{serial_t:.1f} s"))
    same = all(o == serial for o in o1 + o2)
    table.append(("corpus: serial, 1 worker, 2 workers byte-identical", str(same)))

    # -- an OpInfo slice: 2 workers vs 1 ----------------------------------------------------------
    t1, t2, a1, a2 = alternate(runs, lambda: gs.audit_torch(ops, workers=1, **audit),
                               lambda: gs.audit_torch(ops, workers=2, **audit))
    ratio = statistics.median(t1) / statistics.median(t2)
    n_samples = a1[0].summary()["samples"]
    table.append((f"OpInfo slice, {len(a1[0].entries)} entries, {n_samples} samples: 1 / 2 workers",
                  f"{statistics.median(t1):.1f} s / {statistics.median(t2):.1f} s = {ratio:.2f}x ({available()}; "
                  f"{load()})"))
    table.append(("OpInfo slice: 1 and 2 workers identical (wall times left out)",
                  str(len({audit_key(a) for a in a1 + a2}) == 1)))

    # -- Dask -------------------------------------------------------------------------------------
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                      silence_logs=50) as cluster, Client(cluster) as client:
        client.run(lambda: __import__("gradcheck_sym.api") and __import__(OPINFO))  # import before timing
        td, dask_out = timed(lambda: lines(gs.check_many(rows, executor=client)))
        table.append(("corpus through a Dask LocalCluster (2 workers): time, byte-identical",
                      f"{td:.1f} s, {dask_out == serial}"))
        ta, dask_audit = timed(lambda: gs.audit_torch(ops, executor=client, **audit))
        table.append(("OpInfo slice through Dask: time, identical", f"{ta:.1f} s, "
                                                                    f"{audit_key(dask_audit) == audit_key(a1[0])}"))

    # -- a worker killed mid-run ------------------------------------------------------------------
    tasks = make_tasks(rows)
    results = [None] * len(tasks)
    killed = []
    with ProcessPool(2) as pool:
        for n, (i, r) in enumerate(pool.run(run_expression, tasks)):
            results[i] = r
            if n == len(tasks) // 3 and not killed:
                victim = pool.busy_pids()[0]
                os.kill(victim, signal.SIGKILL)
                killed.append(victim)
        restarts = pool.restarts
    table.append(("worker SIGKILLed a third of the way: run completed, re-started workers, output identical",
                  f"{all(r is not None for r in results)}, {restarts}, {lines(results) == serial}"))

    # -- resume after an interrupt ----------------------------------------------------------------
    from gradcheck_sym.cli import main as cli

    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "rows.jsonl", Path(tmp) / "out.jsonl"
        src.write_text("".join(json.dumps(r) + "\n" for r in rows))
        argv_ = ["batch", str(src), "-o", str(out), "--workers", "2"]

        def ctrl_c() -> None:
            while not out.exists() or out.read_text().count("\n") < len(rows) // 2:
                time.sleep(0.02)
            _thread.interrupt_main()

        helper = threading.Thread(target=ctrl_c)
        helper.start()
        code1 = cli(argv_)
        helper.join()
        cut = out.read_text().count("\n")
        code2 = cli(argv_ + ["--resume"])
        table.append(("batch: Ctrl-C at half, then --resume: exit codes, rows before, identical to uninterrupted",
                      f"{code1}, {code2}, {cut} of {len(rows)}, {out.read_text() == serial}"))
        audit_out = Path(tmp) / "audit.jsonl"
        full = gs.audit_torch(ops, workers=2, output=audit_out, **audit)
        text = audit_out.read_text().splitlines(keepends=True)
        audit_out.write_text("".join(text[: len(text) // 2]) + text[len(text) // 2][:40])
        resumed = gs.audit_torch(ops, workers=2, output=audit_out, resume=True, **audit)
        same_file = [strip_times(json.loads(x)) for x in audit_out.read_text().splitlines()] == \
            [strip_times(json.loads(x)) for x in text]
        table.append(("audit: file cut mid-line at half, then resume: records and file identical",
                      f"{audit_key(resumed) == audit_key(full)}, {same_file}"))

    width = max(len(a) for a, _ in table)
    print()
    for a, b in table:
        print(f"{a.ljust(width)}  {b}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
