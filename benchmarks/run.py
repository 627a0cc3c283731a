"""Benchmarks for gradcheck-sym: ratios measured side by side in one run (medians of repeats).

Run:  python benchmarks/run.py            (about 2 minutes on 2 cores)
      python benchmarks/run.py --quick    (smaller sizes, for a smoke test)

Prints a Markdown table; `benchmarks/README.md` holds the latest one with the machine it ran on.
Nothing here is asserted by the tests: timings depend on the machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from typing import Any, Callable

import numpy as np
import sympy
import torch

import gradcheck_sym as gs
from gradcheck_sym.ir.graph import Graph, Node
from gradcheck_sym.reference.symbolic import derive

EXPR = "sin(x)*exp(y) + log(1 + x**2)/y + z"
DOMAIN = {"x": (-1.0, 1.0), "y": (0.5, 2.0), "z": (0.0, 1.0)}
ROWS: list[tuple[str, str, str, str]] = []


def median_time(fn: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def row(what: str, ours: str, theirs: str, ratio: str) -> None:
    ROWS.append((what, ours, theirs, ratio))
    print(f"| {what} | {ours} | {theirs} | {ratio} |", flush=True)


def fmt(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.2f} s"


def points(n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {name: torch.rand(n, generator=g, dtype=torch.float64) * (hi - lo) + lo for name, (lo, hi) in DOMAIN.items()}


def eager(p: dict[str, torch.Tensor]) -> None:
    x, y, z = (t.detach().requires_grad_() for t in p.values())
    (torch.sin(x) * torch.exp(y) + torch.log(1 + x**2) / y + z).sum().backward()


# ---------------------------------------------------------------- 1. per point vs gradcheck
def per_point(quick: bool) -> None:
    n_fd = 200 if quick else 1000
    p = points(n_fd)

    def f(x: torch.Tensor, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return torch.sin(x) * torch.exp(y) + torch.log(1 + x**2) / y + z

    def gradcheck_loop() -> None:
        for i in range(n_fd):
            args = tuple(t[i].clone().requires_grad_() for t in p.values())
            assert torch.autograd.gradcheck(f, args)

    t_fd = median_time(gradcheck_loop, 3) / n_fd
    t_small = median_time(lambda: gs.check(EXPR, at={k: v for k, v in p.items()}), 5) / n_fd
    row(f"per point, N = {n_fd}: check vs gradcheck loop", fmt(t_small), fmt(t_fd), f"{t_fd / t_small:,.0f}x faster")
    n_big = 10**5 if quick else 10**6
    big = points(n_big, 1)
    t_big = median_time(lambda: gs.check(EXPR, at=big), 5) / n_big
    row(f"per point, check at N = {n_big:,} vs gradcheck loop (N = {n_fd})", fmt(t_big), fmt(t_fd),
        f"{t_fd / t_big:,.0f}x faster")


# ---------------------------------------------------------------- 2. 1e6 points vs eager
def million(quick: bool) -> None:
    n = 10**5 if quick else 10**6
    p = points(n, 2)
    gs.check(EXPR, at=points(100))  # imports and caches warm
    t_eager = median_time(lambda: eager(p), 7)
    t_ours = median_time(lambda: gs.check(EXPR, at=p), 7)
    row(f"{n:,} given points: whole check (set-up incl.) vs one eager fwd+bwd", fmt(t_ours), fmt(t_eager),
        f"{t_ours / t_eager:.2f}x")
    t_sampled = median_time(lambda: gs.check(EXPR, domain=DOMAIN, samples=n, seed=0), 7)
    t_eager_sampled = median_time(lambda: eager(points(n, 3)), 7)
    row(f"{n:,} sampled points: check incl. sampling vs sampling + eager fwd+bwd", fmt(t_sampled),
        fmt(t_eager_sampled), f"{t_sampled / t_eager_sampled:.2f}x")


# ---------------------------------------------------------------- 3. derivation vs graph size
def nested_text(depth: int) -> str:
    text = "x*y"
    for i in range(depth):
        text = f"{'sin' if i % 2 == 0 else 'cos'}({text})"
    return text


def nested_graph(depth: int) -> Graph:
    """sin(cos(sin(...(x*y)))) built directly as a Graph: deeper than Python's parser allows."""
    nodes = [Node(0, "var", name="x"), Node(1, "var", name="y"), Node(2, "mul", (0, 1))]
    for i in range(depth):
        nodes.append(Node(len(nodes), "sin" if i % 2 == 0 else "cos", (len(nodes) - 1,)))
    return Graph(tuple(nodes), len(nodes) - 1, ("x", "y"))


def random_text(n: int, rng: random.Random, nvars: int = 8, bounded: bool = False) -> str:
    """A random expression tree with about n operators and calls (few repeats, so the graph is ~n nodes).

    `bounded`: exp and log1p take a tanh and a sigmoid, so the value is finite at any point.
    """
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * n + 1000))

    def build(k: int) -> str:
        if k <= 0:
            return rng.choice([f"x{i}" for i in range(nvars)]) if rng.random() < 0.8 else f"{rng.uniform(0.1, 3):.3f}"
        if rng.random() < 0.3:
            f = rng.choice(['sin', 'cos', 'tanh', 'exp', 'sigmoid', 'log1p'])
            inner = build(k - 1)
            if bounded and f in ("exp", "log1p"):
                inner = f"{'tanh' if f == 'exp' else 'sigmoid'}({inner})"
            return f"{f}({inner})"
        left = rng.randint(0, k - 1)
        return f"({build(left)}{rng.choice('+-*')}{build(k - 1 - left)})"

    return build(n)


def program_size(d: Any) -> int:
    return sum(sympy.count_ops(e, visual=False) + 1 for _, e in d.program.steps)


def whole_diff_seconds(text: str, limit: float) -> str:
    """sympy.diff of the whole expression (a fresh process, so a swell cannot stall the run)."""
    code = ("import sys, time, sympy; sys.setrecursionlimit(100000)\n"
            "import gradcheck_sym as gs\n"
            "from gradcheck_sym.reference.symbolic import derive\n"
            f"g = gs.parse({text!r})\n"
            "d = derive(g, whole_max_nodes=0)\n"
            "full = {}\n"
            "for s, e in d.program.steps[:len([n for n in g.nodes if n.op not in ('var', 'const')])]:\n"
            "    full[s] = e.xreplace(full)\n"
            "out = d.values[g.output]; out = full.get(out, out)\n"
            "t = time.perf_counter(); grads = [sympy.diff(out, sympy.Symbol(v, real=True)) for v in g.variables]\n"
            "t = time.perf_counter() - t\n"
            "print(t, sum(sympy.count_ops(e, visual=False) for e in grads))\n")
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=limit)
        t, size = out.stdout.split()
        return f"{fmt(float(t))} ({int(size):,} ops)"
    except subprocess.TimeoutExpired:
        return f"> {limit:.0f} s"
    except ValueError:
        return "failed"


def derivation(quick: bool) -> None:
    depths = [10, 20, 40, 80, 160] if not quick else [10, 40]
    for depth in depths:
        text = nested_text(depth)
        t = median_time(lambda: derive(gs.parse(text), whole_max_nodes=0), 3)
        d = derive(gs.parse(text), whole_max_nodes=0)
        row(f"nested depth {depth} (text): reverse sweep vs whole-expression diff",
            f"{fmt(t)} ({program_size(d):,} ops)", whole_diff_seconds(text, 30 if not quick else 10), "")
    for depth in ([320, 1280, 5120] if not quick else [320]):
        g = nested_graph(depth)
        t = median_time(lambda: derive(g, whole_max_nodes=0), 3)
        row(f"nested depth {depth} (Graph API): reverse sweep", f"{fmt(t)} ({program_size(derive(g, whole_max_nodes=0)):,} ops)",
            "-", "")
    sizes = [10, 100, 1000, 3000, 10000] if not quick else [10, 100, 1000]
    times = {}
    for n in sizes:
        text = random_text(n, random.Random(n))
        g = gs.parse(text)
        t = median_time(lambda: derive(gs.parse(text), whole_max_nodes=0), 3 if n <= 3000 else 1)
        times[n] = (t, len(g.nodes))
        diff = whole_diff_seconds(text, 20) if n <= 100 else "not tried (swells)"
        row(f"random graph, {len(g.nodes):,} nodes ({len(text):,} chars): parse + sweep vs whole diff",
            f"{fmt(t)} ({program_size(derive(g, whole_max_nodes=0)):,} ops)", diff, "")
    if 1000 in times and max(sizes) >= 3000:
        (t1, n1), (tn, nn) = times[1000], times[max(sizes)]
        row(f"linearity: time per node at {nn:,} vs {n1:,} nodes", fmt(tn / nn), fmt(t1 / n1),
            f"{(tn / nn) / (t1 / n1):.2f}x")
    # The target itself: a whole check (derivation, both sides, the detailed test with its high-precision
    # reference) at one point.  The graphs above are NaN or infinite at nearly every point (log1p of a
    # negative, exp of a large product), where nothing is compared: this one keeps exp and log1p finite.
    for n in ([10000] if not quick else [1000]):
        text = random_text(n, random.Random(n), bounded=True)
        g = gs.parse(text)
        at = {v: [0.05 + 0.07 * i] for i, v in enumerate(g.variables)}
        t = median_time(lambda: gs.check(text, at=at), 3 if quick else 1)
        rep = gs.check(text, at=at)
        row(f"random graph, {len(g.nodes):,} nodes, finite at the point: whole check at one point (detailed test "
            f"included: {rep.checked:,} values compared, {rep.high_precision_points} point in high precision)",
            fmt(t), "target 2 s", f"{t / 2:.1f}x the target")
    mlp_text = mlp_expression()
    t = median_time(lambda: derive(gs.parse(mlp_text), whole_max_nodes=0), 3)
    g = gs.parse(mlp_text)
    row(f"tanh MLP 4-8-8-1 as one expression ({len(g.nodes)} nodes)",
        f"{fmt(t)} ({program_size(derive(g, whole_max_nodes=0)):,} ops)", whole_diff_seconds(mlp_text, 60), "")


def mlp_expression() -> str:
    rng = np.random.default_rng(0)
    h = [f"x{i}" for i in range(4)]
    for width in (8, 8):
        w, b = rng.normal(size=(width, len(h))), rng.normal(size=width)
        h = [f"tanh({' + '.join(f'{w[j, i]:.4f}*{h[i]}' for i in range(len(h)))} + {b[j]:.4f})" for j in range(width)]
    w = rng.normal(size=len(h))
    return " + ".join(f"{w[i]:.4f}*{h[i]}" for i in range(len(h)))


# ---------------------------------------------------------------- 4. CLI start-up
def cli() -> None:
    exe = [sys.executable, "-m", "gradcheck_sym"]
    t_cli = median_time(lambda: subprocess.run(exe + ["check", "sin(x)*exp(y) + log(1 + x**2)/y", "--at", "x=0.7,y=1.3"],
                                               capture_output=True, check=True), 5)
    t_floor = median_time(lambda: subprocess.run([sys.executable, "-c", "import torch, sympy"], check=True), 5)
    t_help = median_time(lambda: subprocess.run(exe + ["--help"], capture_output=True, check=True), 5)
    row("CLI: one `gradcheck-sym check` vs `python -c \"import torch, sympy\"`", fmt(t_cli), fmt(t_floor),
        f"{t_cli / t_floor:.2f}x")
    row("CLI: `gradcheck-sym --help` (imports neither)", fmt(t_help), fmt(t_floor), f"{t_help / t_floor:.2f}x")


# ---------------------------------------------------------------- 5. traced MLP vs gradcheck
def traced_mlp() -> None:
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 8), torch.nn.Tanh(),
                              torch.nn.Linear(8, 1)).double()
    x = torch.randn(4, dtype=torch.float64)
    names = [n for n, _ in mlp.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for p in mlp.parameters())

    def f(*ps: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(mlp, dict(zip(names, ps)), (x,))

    t_fd = median_time(lambda: torch.autograd.gradcheck(f, params), 5)
    t_ours = median_time(lambda: gs.check_function(mlp, x), 5)
    row("traced MLP 4-8-8-1, parameters as inputs: check_function vs gradcheck", fmt(t_ours), fmt(t_fd),
        f"{t_fd / t_ours:.2f}x faster")


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"sympy {sympy.__version__}, Python {platform.python_version()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes")
    args = parser.parse_args()
    print(f"machine: {machine()}\n")
    print("| benchmark | gradcheck-sym | reference | ratio |")
    print("|---|---|---|---|")
    per_point(args.quick)
    million(args.quick)
    derivation(args.quick)
    cli()
    traced_mlp()


if __name__ == "__main__":
    main()
