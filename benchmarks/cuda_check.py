"""The engine on CUDA tensors: check_function, `run` and an audit slice with device="cuda" (a GPU machine).

Run:  python benchmarks/cuda_check.py [--device cuda]

Prints one line per case: what ran, whether the report is OK, what it verified, and any finding or error. The
same cases on cpu are the baseline (`--device cpu`). Nothing is asserted: the output is read by a person.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import traceback

import torch
import torch.nn.functional as F

import gradcheck_sym as gs


def cases(dev: str) -> list[tuple[str, object, tuple]]:
    g = torch.Generator().manual_seed(0)

    def r(*shape: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=dtype).to(dev)

    mlp = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)).double().to(dev)
    conv = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                               torch.nn.AdaptiveAvgPool2d(1)).to(dev)
    w = r(3, 5)
    return [
        ("elementwise float64", lambda x: (torch.sin(x) * x.exp() + x.square().log1p()).sum(), (r(7),)),
        ("softmax + matmul float64", lambda x: (F.softmax(x @ w, -1) * torch.arange(5.0, device=dev)).sum(),
         (r(2, 3),)),
        ("indexing + scatter float64", lambda x: x[torch.tensor([0, 2], device=dev)].sum() + x.cumsum(0).sum()
         + torch.zeros(5, dtype=x.dtype, device=dev).index_add(0, torch.tensor([1, 1, 3], device=dev), x[:3]).sum(),
         (r(4),)),
        ("nn.Module MLP float64", mlp, (r(5, 4),)),
        ("conv + batch_norm float32", conv, (r(2, 3, 6, 6, dtype=torch.float32),)),
        ("a detached branch float64", lambda x: (x * x.detach()).sum(), (r(3),)),
    ]


def check_cases(dev: str) -> None:
    for name, fn, inputs in cases(dev):
        start = time.perf_counter()
        try:
            rep = gs.check_function(fn, *inputs, dtype=str(inputs[0].dtype).replace("torch.", ""))
            kinds = sorted({f.kind for f in rep.findings if f.severity != "info"})
            print(f"{dev} check_function {name}: ok={rep.ok} checked={rep.checked} findings={kinds} "
                  f"({time.perf_counter() - start:.2f} s)", flush=True)
            for f in rep.errors()[:2]:
                print("    ", f.message[:300], flush=True)
        except Exception:  # noqa: BLE001 - what a user would see, printed for the reader
            print(f"{dev} check_function {name}: RAISED", flush=True)
            print("    " + traceback.format_exc()[-1500:].replace("\n", "\n    "), flush=True)


SCRIPT = """import torch
dev = {dev!r}
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(10, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1)).to(dev)
opt = torch.optim.Adam(model.parameters(), lr=1e-2)
x, y = torch.randn(32, 10, device=dev), torch.randn(32, 1, device=dev)
for step in range(20):
    opt.zero_grad()
    loss = torch.nn.functional.mse_loss(model(x), y)
    loss.backward()
    opt.step()
print("final loss", float(loss))
"""


def run_case(dev: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "train.py")
        with open(path, "w", encoding="utf-8") as f:
            f.write(SCRIPT.format(dev=dev))
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "gradcheck_sym", "run", path], capture_output=True, text=True)
        print(f"{dev} run train.py: exit {done.returncode} ({time.perf_counter() - start:.1f} s)", flush=True)
        print("    " + (done.stdout[-1200:] + done.stderr[-800:]).replace("\n", "\n    "), flush=True)


def audit_case(dev: str) -> None:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "gradcheck_sym", "audit", "torch", "--device", dev, "--ops",
                           "sin,mul,matmul,softmax,nn.functional.conv2d,nn.functional.layer_norm,cumsum,"
                           "index_add,nn.functional.cross_entropy,linalg.solve", "--samples-per-op", "2"],
                          capture_output=True, text=True)
    print(f"{dev} audit slice: exit {done.returncode} ({time.perf_counter() - start:.1f} s)", flush=True)
    print("    " + done.stdout[:2500].replace("\n", "\n    "), flush=True)
    if done.returncode not in (0, 1):
        print("    " + done.stderr[-1500:].replace("\n", "\n    "), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    dev = parser.parse_args().device
    print(f"torch {torch.__version__}, device {dev}"
          + (f" ({torch.cuda.get_device_name()})" if dev == "cuda" else ""), flush=True)
    check_cases(dev)
    run_case(dev)
    audit_case(dev)


if __name__ == "__main__":
    main()
