"""Teaching scripts under `gradcheck-sym run` against `python` on the same script (issue 11's list).

Run:  python benchmarks/teaching.py [--repeat N]

For each script of tests/scripts/teaching/, examples/lessons/ and benchmarks/scripts/, and the teaching scripts
that take their size from the environment once more at a published tutorial's size (`PUBLISHED`): the plain run's
and the checked run's wall time (medians of N alternated runs, each in a fresh process), both exit codes,
the backward calls verified / not verified and the error findings (from `--json-file`), and the longest
text report's line count.  Prints a Markdown table.  Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GROUPS = [ROOT / "tests" / "scripts" / "teaching", ROOT / "examples" / "lessons", ROOT / "benchmarks" / "scripts"]
# (script, environment): the test suite runs these small; here also at the size of the tutorial they follow
PUBLISHED = [(ROOT / "tests" / "scripts" / "teaching" / name, {"POINTS": "2000", "N": "2000"})
             for name in ("legendre.py", "nn_rmsprop.py")]
# the conv + batch-norm Function tutorial trains at batch 2,048 (verified here, 22 GB at its peak on 24 GB); also
# batch 256 for 6 steps and 1,024 for 2
PUBLISHED += [(ROOT / "tests" / "scripts" / "teaching" / "convbn_tutorial.py", {"B": b, "N": n})
              for b, n in (("256", "6"), ("1024", "2"), ("2048", "2"))]
# an MNIST-sized batch-norm MLP for one epoch at batch 64; the backprop lecture's 100 checked training steps
PUBLISHED += [(ROOT / "tests" / "scripts" / "teaching" / "mnist_bn_mlp.py", {"N": "938"}),
              (ROOT / "tests" / "scripts" / "teaching" / "backprop_by_hand.py", {"N": "100"}),
              (ROOT / "tests" / "scripts" / "teaching" / "makemore_layers.py", {"N": "1000"}),
              (ROOT / "tests" / "scripts" / "teaching" / "bilstm_crf.py", {"EPOCHS": "300"})]


def timed(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, int, str]:
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env={**os.environ, **env})
    return time.perf_counter() - start, done.returncode, done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--only", default="", help="run only the rows whose label contains this text")
    args = parser.parse_args()
    rows = ["| script | plain | gradcheck-sym run | ratio | exit (plain / run) | backward verified / not | "
            "error findings | report lines |", "|---|---|---|---|---|---|---|---|"]
    runs = [(script, {}) for group in GROUPS for script in sorted(group.glob("*.py"))] + PUBLISHED
    for script, env in runs:
        if args.only not in " ".join([str(script.relative_to(ROOT))] + [f"{k}={v}" for k, v in env.items()]):
            continue
        plain, checked = [], []
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "report.json"
            for _ in range(args.repeat):
                t, code_plain, _ = timed([sys.executable, str(script)], script.parent, env)
                plain.append(t)
                t, code_run, text = timed([sys.executable, "-m", "gradcheck_sym", "run", str(script),
                                           "--json-file", str(out)], script.parent, env)
                checked.append(t)
            report = json.loads(out.read_text()) if out.exists() else {}
        s = report.get("summary", {})
        errors = [f["kind"] for f in report.get("findings", []) if f.get("severity") == "error"]
        p, c = statistics.median(plain), statistics.median(checked)
        lines = text.count("\n")
        label = " ".join([str(script.relative_to(ROOT))] + [f"{k}={v}" for k, v in env.items()])
        rows.append(f"| {label} | {p:.2f} s | {c:.2f} s | {c / p:.1f}x | {code_plain} / "
                    f"{code_run} | {s.get('verified', '?')} / {s.get('not_verified', '?')} | "
                    f"{', '.join(sorted(set(errors))) or 'none'} | {lines} |")
        print(rows[-1], flush=True)
    print()
    print(f"Machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}; medians of {args.repeat} run(s).")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
