"""Nightly-style fuzz: thousands of hostile and realistic expressions, each must end in a report or a typed error.

Run:  python benchmarks/fuzz.py                      (2,400 generated cases + the hand-made attacks; ~15 min on 2 cores)
      python benchmarks/fuzz.py --cases 300 --workers 2 --seed 1 --json fuzz.json

Each case runs in a long-lived worker process (so a segfault is seen as a crash, not the end of
the run; torch and sympy are imported before its first case), through `gradcheck_sym.check` or, for about one case in five, through the command line
in-process (`cli.main`: exit 0/1 report, 2 typed error, 3 internal error).  A case that has used
`--hang` seconds (30) of CPU, or four times that of wall-clock time, is a hang: its worker is killed
and replaced.  The table gives the slowest finished case's wall-clock and CPU seconds (the machine
may be shared: wall-clock time then exceeds CPU time).

Prints a table: cases, reports (with and without error findings), typed errors, internal errors,
hangs, crashes; then the non-reports and the error findings of kind "mismatch" (a correct
expression must never get one: they are false-alarm suspects), one line each.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import io
import json
import os
import random
import re
import select
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# The sites measured in issue 12, always run (each once through the API).
ATTACKS: list[dict[str, Any]] = [
    {"expr": "+".join(["x"] * 45_000), "options": {"at": {"x": [1.0]}}},
    {"expr": "x*pow(7, 10**20)", "options": {"at": {"x": [1.0]}}},
    {"expr": "x*digamma(10**20)", "options": {"at": {"x": [1.0]}}},
    {"expr": "x*harmonic(10**20)", "options": {"at": {"x": [1.0]}}},
    {"expr": "digamma(x)", "options": {"at": {"x": [1e300]}}},
    {"expr": "x*1" + "0" * 320, "options": {"at": {"x": [1.0]}}},
    {"expr": "x*(2.5**10000.5)", "options": {"at": {"x": [1.0]}}},
    {"expr": "where(where(x>0,x,-x)>0.5,x,0)", "options": {"at": {"x": [0.7]}}},
    {"expr": "x*(-2)**0.5", "options": {"at": {"x": [1.0]}}},
    {"expr": "x*sin(1e400)", "options": {"at": {"x": [1.0]}}},
    {"expr": "2 % x", "options": {"at": {"x": [0.7]}}},
    {"expr": "atan2(x, y)", "options": {"at": {"x": [0.0], "y": [0.0]}}},
    {"expr": "sigmoid(atanh(x))", "options": {"at": {"x": [1.0]}}},
    {"expr": "max(x, 1/0)", "options": {"at": {"x": [1.0]}}},
    {"expr": "no_grad(x/y)", "options": {"at": {"x": [1.0], "y": [2.0]}, "order": 2}},
    {"expr": "1 + x", "options": {"domain": {"x": [0, 1]}, "samples": 10_001, "seed": 0}},
    {"expr": "atan2(x, pow(z, e**1e16))", "options": {"at": {"x": [1.0], "z": [2.0]}}},
    {"expr": "x + erfc(1e308)", "options": {"at": {"x": [1.0]}}},
    {"expr": "x*digamma(-1e300)", "options": {"at": {"x": [1.0]}}},
    {"expr": "sigmoid(x)", "options": {"domain": {"x": [-100, 100]}, "samples": 1000, "seed": 0}},
    {"expr": "sigmoid(x)", "options": {"domain": {"x": [-100, 100]}, "samples": 1000, "seed": 0, "dtype": "float32"}},
    {"expr": "x * where(x > 0, 2, 3)", "options": {"at": {"x": [0.5, -0.5]}}},
    {"expr": "x*y*" + "*".join(f"sin(x+{i})" for i in range(40)), "options": {"at": {"x": [0.3], "y": [0.2]}}},
    {"expr": "x*" + "9" * 4500, "options": {"at": {"x": [1.0]}}},
    {"expr": "-x*y", "options": {"at": {"x": [1.0], "y": [2.0]}}, "cli": True},
    {"expr": "\uff58 + x", "options": {"at": {"x": [1.0]}}},
]


# ---------------------------------------------------------------- the worker
def _run_case(c: dict[str, Any]) -> dict[str, Any]:
    result = _run_case_timed(c)
    result["cpu"] = time.process_time() - c["_cpu0"] if "_cpu0" in c else None
    return result


def _run_case_timed(c: dict[str, Any]) -> dict[str, Any]:
    import gradcheck_sym as gs

    start = time.perf_counter()
    if c.get("cli"):
        from gradcheck_sym.cli import main
        from tests.grammar import argv

        out, err = io.StringIO(), io.StringIO()
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = main(argv(c))
        except SystemExit as exc:  # argparse's own exit 2
            code = exc.code if isinstance(exc.code, int) else 2
        except BaseException as exc:  # noqa: BLE001 - what escapes main is an internal error
            return {"result": "internal", "what": f"{type(exc).__name__}: {exc}"[:300],
                    "where": traceback.format_exc().splitlines()[-3][:200], "seconds": time.perf_counter() - start}
        text = err.getvalue()
        seconds = time.perf_counter() - start
        if code == 3 or "Traceback" in text:
            return {"result": "internal", "what": text.strip().splitlines()[-1][:300] if text.strip() else "exit 3",
                    "seconds": seconds}
        if code == 2:
            return {"result": "typed", "what": text.strip().splitlines()[0][:200] if text.strip() else "",
                    "seconds": seconds}
        kinds = re.findall(r"\[error\] (\S+)", out.getvalue()) if code == 1 else []
        return {"result": "report", "errors": kinds, "seconds": seconds, "exit": code}
    try:
        report = gs.check(c["expr"], **c["options"])
        str(report)
        report.to_json()
    except gs.GradcheckSymError as exc:
        return {"result": "typed", "what": f"{type(exc).__name__}: {str(exc).splitlines()[0]}"[:200],
                "seconds": time.perf_counter() - start}
    except BaseException as exc:  # noqa: BLE001
        tb = traceback.extract_tb(exc.__traceback__)
        where = f"{Path(tb[-1].filename).name}:{tb[-1].lineno}" if tb else ""
        return {"result": "internal", "what": f"{type(exc).__name__}: {exc}"[:300], "where": where,
                "seconds": time.perf_counter() - start}
    errors = [f.kind for f in report.errors()]
    mism = [f.message[:200] for f in report.errors() if f.kind == "mismatch"]
    return {"result": "report", "errors": errors, "mismatch": mism, "seconds": time.perf_counter() - start}


def worker() -> None:
    import warnings

    warnings.simplefilter("ignore")
    import gradcheck_sym.api  # noqa: F401 - torch and sympy imported before the first case's clock starts
    import gradcheck_sym.cli  # noqa: F401

    sys.stdout.write("ready\n")
    sys.stdout.flush()
    for line in sys.stdin:
        c = json.loads(line)
        c["_cpu0"] = time.process_time()  # CPU seconds of this process (all its threads), besides wall time
        result = _run_case(c)
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()


# ---------------------------------------------------------------- the driver
class _Worker:
    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, __file__, "--worker"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1,
                                     cwd=str(ROOT))
        self.case: dict[str, Any] | None = None
        self.started = 0.0
        assert self.proc.stdout is not None
        self.proc.stdout.readline()  # "ready": imports done, so a case's time is its own

    def cpu(self) -> float:
        """CPU seconds the worker has used (all its threads), from /proc (0 where there is none)."""
        try:
            fields = open(f"/proc/{self.proc.pid}/stat").read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            return 0.0

    def send(self, c: dict[str, Any]) -> None:
        self.case, self.started, self.cpu0 = c, time.perf_counter(), self.cpu()
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(c) + "\n")
        self.proc.stdin.flush()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()


def drive(cases: list[dict[str, Any]], workers: int, hang: float) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    pool = [_Worker() for _ in range(workers)]
    todo = list(reversed(cases))
    results: list[tuple[dict[str, Any], dict[str, Any]]] = []
    done = 0
    while todo or any(w.case is not None for w in pool):
        for w in pool:
            if w.case is None and todo:
                w.send(todo.pop())
        busy = [w for w in pool if w.case is not None]
        ready, _, _ = select.select([w.proc.stdout for w in busy], [], [], 0.5)
        now = time.perf_counter()
        for i, w in enumerate(pool):
            if w.case is None:
                continue
            result = None
            if w.proc.stdout in ready:
                line = w.proc.stdout.readline()  # type: ignore[union-attr]
                if line:
                    result = json.loads(line)
                else:  # the worker died: a crash (segfault, abort, killed for memory)
                    code = w.proc.wait()
                    result = {"result": "crash", "what": f"worker exit {code}", "seconds": now - w.started}
            elif now - w.started > hang and (w.cpu() - w.cpu0 > hang or now - w.started > 4 * hang):
                # A hang: over `hang` seconds of CPU, or of wall-clock time four times over (on a busy
                # machine a case of 10 CPU seconds can take 30 s of wall-clock time).
                result = {"result": "hang", "what": f"over {hang:g} s", "seconds": now - w.started,
                          "cpu": w.cpu() - w.cpu0}
                w.proc.kill()
            if result is not None:
                results.append((w.case, result))
                done += 1
                if done % 100 == 0:
                    print(f"  {done}/{len(cases)} cases", file=sys.stderr, flush=True)
                if result["result"] in ("crash", "hang"):
                    w.kill()
                    pool[i] = _Worker()
                else:
                    w.case = None
    for w in pool:
        w.proc.stdin.close()  # type: ignore[union-attr]
        w.proc.wait()
    return results


def table(results: list[tuple[dict[str, Any], dict[str, Any]]], shown: int) -> str:
    count = collections.Counter(r["result"] for _, r in results)
    with_errors = sum(1 for _, r in results if r["result"] == "report" and r.get("errors"))
    mismatches = [(c, r) for c, r in results if r["result"] == "report" and "mismatch" in r.get("errors", [])]
    slow = sorted(results, key=lambda cr: -cr[1]["seconds"])
    cpu = max((r.get("cpu") or 0.0 for _, r in results if r["result"] != "hang"), default=0.0)
    over_wall = sum(1 for _, r in results if r["result"] != "hang" and r["seconds"] > 30)
    lines = [
        "| cases | reports (of which with an error finding) | typed errors | internal errors | hangs > 30 s "
        "| crashes | mismatch findings | most CPU of a finished case | finished after > 30 s wall-clock |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| {len(results)} | {count['report']} ({with_errors}) | {count['typed']} | {count['internal']} | "
        f"{count['hang']} | {count['crash']} | {len(mismatches)} | {cpu:.1f} s | {over_wall} |",
        "",
    ]
    fams = collections.Counter((c.get("family", "attack"), r["result"]) for c, r in results)
    lines.append("by family: " + ", ".join(f"{f}/{k}: {n}" for (f, k), n in sorted(fams.items())))
    kinds = collections.Counter(k for _, r in results if r["result"] == "report" for k in r.get("errors", []))
    lines.append("error findings by kind: " + ", ".join(f"{k}: {n}" for k, n in sorted(kinds.items())))
    bad = [(c, r) for c, r in results if r["result"] in ("internal", "hang", "crash")]
    groups: dict[str, list] = collections.defaultdict(list)
    for c, r in bad:
        groups[f"{r['result']}: {r.get('what', '')[:90]} {r.get('where', '')}"].append(c)
    for key, cs in sorted(groups.items(), key=lambda kv: -len(kv[1]))[:shown]:
        c = cs[0]
        lines.append(f"  {len(cs):4d} x {key}\n         e.g. {c['expr'][:100]!r} {json.dumps(c['options'])[:150]}"
                     + (" (cli)" if c.get("cli") else ""))
    for c, r in mismatches[:shown]:
        lines.append(f"  mismatch: {c['expr'][:100]!r} {json.dumps(c['options'])[:150]}\n      "
                     + (r.get("mismatch") or [""])[0][:200])
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=2400, help="generated cases (the attacks come on top)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=max(1, min(2, os.cpu_count() or 1)))
    parser.add_argument("--hang", type=float, default=30.0, help="seconds after which a case is a hang")
    parser.add_argument("--json", default=None, help="write every case and result here")
    parser.add_argument("--show", type=int, default=25, help="failure groups shown")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker()
        return
    from tests.grammar import case

    rng = random.Random(args.seed)
    cases = [dict(a, family="attack") for a in ATTACKS] + [case(rng) for _ in range(args.cases)]
    start = time.perf_counter()
    results = drive(cases, args.workers, args.hang)
    print(f"command: python benchmarks/fuzz.py --cases {args.cases} --seed {args.seed} --workers {args.workers}; "
          f"{time.perf_counter() - start:.0f} s wall")
    print(table(results, args.show))
    if args.json:
        Path(args.json).write_text(json.dumps([{"case": c, "result": r} for c, r in results], indent=1))


if __name__ == "__main__":
    main()
