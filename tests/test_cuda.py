"""Tensors on a GPU: refused or reported by name, never a traceback from inside the check.

The tensor engine's reference runs on the CPU. These run where torch sees a CUDA device (the project's GPU
check, `benchmarks/cuda_check.py`); CI machines have none, and the device-independent parts are tested in
tests/test_function.py and tests/test_script.py.
"""

import subprocess
import sys

import pytest
import torch

import gradcheck_sym as gs
from gradcheck_sym.errors import UnsupportedError

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_check_function_refuses_cuda_inputs_and_modules_by_name():
    x = torch.randn(3, dtype=torch.float64, device="cuda")
    with pytest.raises(UnsupportedError, match=r"input 'x' is on cuda:0: the tensor engine's reference runs on the CPU"):
        gs.check_function(lambda x: x.sin().sum(), x)
    net = torch.nn.Linear(3, 1).cuda()
    with pytest.raises(UnsupportedError, match=r"the module's 'weight' is on cuda:0"):
        gs.check_function(net, torch.randn(2, 3))


def test_a_function_that_moves_to_cuda_inside_is_refused_by_its_line():
    with pytest.raises(UnsupportedError, match=r"test_cuda.py:\d+: operations on cuda:0 tensors are not traced"):
        gs.check_function(lambda x: (x.cuda() * 2).sum().cpu() + x.sum(), torch.randn(3, dtype=torch.float64))


def test_run_on_a_cuda_script_keeps_its_output_and_says_why_nothing_was_verified(tmp_path):
    script = tmp_path / "train.py"
    script.write_text("import torch\nw = torch.randn(3, device='cuda', requires_grad=True)\n"
                      "loss = (w * w).sum()\nloss.backward()\nprint('grad', w.grad.tolist() == (2 * w).tolist())\n")
    done = subprocess.run([sys.executable, "-m", "gradcheck_sym", "run", str(script)], capture_output=True, text=True)
    assert "grad True" in done.stdout
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "its output is on cuda:0: operations on cuda tensors are not traced" in done.stdout
