"""Benchmarks of the tensor engine against its targets (issue 8): ratios measured side by side, in one run.

Run:  python benchmarks/engine.py [--quick] [--only NAME,...]

* ResNet-18 in plain torch (conv, batch_norm in train mode, relu, max_pool, adaptive_avg_pool, linear,
  cross_entropy), batch 2, 3x32x32, float32, every parameter an input: `check_function` vs one eager
  forward+backward of the same model (target: at most 30x);
* the same model with one residual branch `.detach()`ed: the `untracked` finding must name its line;
* `gradcheck-sym run` of a 100-step Adam training loop of a 784-128-10 MLP with dropout vs `python` on the same
  script (target: at most 10x, every backward verified);
* `gradcheck-sym run` of the PyTorch polynomial tutorial at its published 2,000 iterations vs `python`
  (target: at most 10x, every backward verified); script rows are medians of 3 runs, with the ratio of the
  script's run alone (start-up excluded on both sides, in-process) beside them;
* `check_function` vs `torch.autograd.gradcheck` on torch's OpInfo samples (float64, at most 500 elements):
  medians per sample (target: ours at most gradcheck's).

Prints a Markdown table. Thread count: torch's default (2 here) on both sides. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from models import ResNet18, ResNetLoss  # noqa: E402
from run import median_time  # noqa: E402

import gradcheck_sym as gs  # noqa: E402

ROWS: list[str] = []


def row(what: str, ours: float, theirs: float, target: str, note: str = "") -> None:
    text = f"| {what} | {ours:.3g} s | {theirs:.3g} s | {ours / theirs:.1f}x | {target} | {note} |"
    ROWS.append(text)
    print(text, flush=True)


def resnet(quick: bool) -> None:
    torch.manual_seed(0)
    model = ResNetLoss(ResNet18(width=16 if quick else 64), torch.tensor([1, 7]))
    x = torch.randn(2, 3, 32, 32)

    def eager() -> None:
        xx = x.clone().requires_grad_(True)
        model.zero_grad()
        model(xx).backward()

    eager()
    t_eager = median_time(eager, 5)
    report = None

    def check() -> None:
        nonlocal report
        report = gs.check_function(model, x, dtype="float32")

    # `import gradcheck_sym` is light (the CLI's --help imports neither torch's extras nor sympy); the library
    # itself (sympy and our modules) loads at the first call: timed apart with a one-line check (which derives
    # no rule the ResNet needs), as eager's time leaves out `import torch`.
    start = time.perf_counter()
    gs.check_function(lambda t: (t * t).sum(), torch.randn(3))
    t_import = time.perf_counter() - start
    start = time.perf_counter()
    check()  # the first check in a process also derives and compiles each op kind's rules (cached after)
    t_cold = time.perf_counter() - start
    t_check = median_time(check, 3)
    assert report is not None
    n = sum(p.numel() for p in model.parameters())
    verdict = "report OK" if report.ok else "report FAILED: " + "; ".join(f.kind for f in report.errors())
    row(f"ResNet-18 ({n:,} parameters) check_function float32 vs one eager fwd+bwd (median of 3; the first "
        f"check in the process: {t_cold:.2f} s = {t_cold / t_eager:.0f}x, after loading the library: "
        f"{t_import:.2f} s)", t_check, t_eager, "<= 30x",
        f"{verdict}; ratio {'met' if t_check / t_eager <= 30 else 'NOT met'}")
    broken = ResNetLoss(ResNet18(width=16 if quick else 64, detach_block=3), torch.tensor([1, 7]))
    broken.load_state_dict(model.state_dict())
    start = time.perf_counter()
    bad = gs.check_function(broken, x, dtype="float32")
    t_bad = time.perf_counter() - start
    kinds = [f.kind for f in bad.errors()]
    line = next((f"{os.path.basename(f.file)}:{f.line}" for f in bad.errors() if f.kind == "untracked"), "-")
    row("ResNet-18 with a detached residual branch: untracked names its line", t_bad, t_eager, "finding",
        f"{kinds} at {line}")


def _wall(cmd: list[str], check: bool = True) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=check, capture_output=True, env=dict(os.environ))
    return time.perf_counter() - start


# The script's own run inside a process that has already imported everything (start-up excluded), on each side.
_INSIDE = ("import sys, time, runpy, torch, gradcheck_sym as gs\n"
           "path, ours = sys.argv[1], sys.argv[2] == 'ours'\n"
           "start = time.perf_counter()\n"
           "gs.run_script(path) if ours else runpy.run_path(path, run_name='__main__')\n"
           "print(time.perf_counter() - start, file=sys.stderr)\n")


def _inside(path: str, ours: bool) -> float:
    done = subprocess.run([sys.executable, "-c", _INSIDE, path, "ours" if ours else "plain"], check=True,
                          capture_output=True, text=True, env=dict(os.environ))
    return float(done.stderr.strip().splitlines()[-1])


def run_script(path: str, quick: bool) -> None:
    """Medians of 3 runs each side (whole processes, as a user runs them); the note also gives the ratio of
    the script's run alone, start-up excluded on both sides (the part that grows with the iterations)."""
    repeats = 1 if quick else 3
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "report.json")
        t_plain = statistics.median(_wall([sys.executable, path]) for _ in range(repeats))
        t_run = statistics.median(_wall([sys.executable, "-m", "gradcheck_sym", "run", path, "--json-file", out],
                                        check=False) for _ in range(repeats))
        in_plain = statistics.median(_inside(path, False) for _ in range(repeats))
        in_ours = statistics.median(_inside(path, True) for _ in range(repeats))
        import json

        with open(out, encoding="utf-8") as f:
            summary = json.load(f)["summary"]
    row(f"run {os.path.basename(path)} vs python", t_run, t_plain, "<= 10x",
        f"{summary['verified']}/{summary['backward_calls']} backwards verified, {summary['errors']} errors; "
        f"the script alone (start-up excluded) {in_ours:.2f} s vs {in_plain:.2f} s = {in_ours / in_plain:.0f}x")


def opinfo(quick: bool) -> None:
    from torch.testing._internal.common_methods_invocations import op_db

    ours, theirs = [], []
    entries = [o for o in op_db if o.supports_autograd and torch.float64 in o.supported_dtypes("cpu")]
    if quick:
        entries = entries[::10]
    for op in entries:
        try:
            samples = list(op.sample_inputs("cpu", torch.float64, requires_grad=True))[:2]
        except Exception:  # noqa: BLE001 - an entry whose samples cannot be built here
            continue
        for s in samples:
            leaves = [t for t in [s.input, *s.args] if isinstance(t, torch.Tensor) and t.requires_grad]
            if not leaves or sum(t.numel() for t in leaves) > 500:
                continue

            def fn(*xs: torch.Tensor, s: Any = s) -> Any:
                it = iter(xs)
                args = [next(it) if isinstance(a, torch.Tensor) and a.requires_grad else a for a in [s.input, *s.args]]
                out = op.gradcheck_wrapper(op.get_op(), *args, **s.kwargs)
                out = s.output_process_fn_grad(out)
                if isinstance(out, (tuple, list)):
                    out = tuple(o for o in out if isinstance(o, torch.Tensor) and o.is_floating_point())
                return out

            values = [t.detach() for t in leaves]
            try:
                start = time.perf_counter()
                torch.autograd.gradcheck(fn, [v.clone().requires_grad_(True) for v in values], raise_exception=False)
                t_theirs = time.perf_counter() - start
                start = time.perf_counter()
                gs.check_function(fn, *values, names=[f"a{i}" for i in range(len(values))])
                t_ours = time.perf_counter() - start
            except Exception:  # noqa: BLE001 - a sample one side cannot run is not timed
                continue
            ours.append(t_ours)
            theirs.append(t_theirs)
    row(f"OpInfo samples (float64, <= 500 elements, {len(ours)} samples): median check_function vs gradcheck",
        statistics.median(ours), statistics.median(theirs), "<= 1x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", default="")
    args = parser.parse_args()
    only = set(filter(None, args.only.split(",")))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores")
    print("| benchmark | gradcheck-sym | reference | ratio | target | result |")
    print("|---|---|---|---|---|---|")
    if not only or "resnet" in only:
        resnet(args.quick)
    if not only or "mlp" in only:
        run_script(os.path.join(HERE, "scripts", "train_mlp.py"), args.quick)
    if not only or "polynomial" in only:
        run_script(os.path.join(HERE, "scripts", "polynomial.py"), args.quick)
    if not only or "opinfo" in only:
        opinfo(args.quick)


if __name__ == "__main__":
    main()
