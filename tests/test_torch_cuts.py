"""A no_grad block torch's own code opens while grad is on (front.tracer_sites.TorchNoGrad): spectral_norm's power
iteration is a constant of the gradient by torch's design, never the script's `untracked` error; the script's own
no_grad, around a module call, inside its own forward or as its own decorator, still is."""

import textwrap

import pytest
import torch

import gradcheck_sym as gs

_TRAIN = textwrap.dedent('''\
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    torch.manual_seed(0)
    MODEL
    opt = torch.optim.Adam(D.parameters(), lr=1e-3)
    for step in range(3):
        x = INPUT
        loss = D(x).float().pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    print("done")
    ''')


def _run(tmp_path, model: str, x: str = "torch.randn(16, 4)"):
    path = tmp_path / "train.py"
    path.write_text(_TRAIN.replace("MODEL", model).replace("INPUT", x), encoding="utf-8")
    return gs.run_script(str(path))


@pytest.mark.parametrize("model, where", [
    ("D = nn.Sequential(nn.utils.spectral_norm(nn.Linear(4, 8)), nn.LeakyReLU(0.2),\n"
     "                  nn.utils.spectral_norm(nn.Linear(8, 1)))", "torch/nn/utils/spectral_norm.py:"),
    ("D = nn.Sequential(nn.utils.parametrizations.spectral_norm(nn.Linear(4, 8)), nn.Tanh(), nn.Linear(8, 1))",
     "torch/nn/utils/parametrizations.py:"),
])
def test_spectral_norm_s_power_iteration_is_torch_s_constant_not_an_untracked_error(tmp_path, model, where):
    report = _run(tmp_path, model)
    assert report.exit_code == 0 and report.ok, str(report)
    assert report.summary["verified"] == 3 and report.summary["not_verified"] == 0
    # (the parametrization also runs its power iteration when it is registered, at the model's line: said there too)
    assert {f.kind for f in report.findings} == {"torch-cut"}, str(report)
    f = report.findings[-1]
    line = 1 + (tmp_path / "train.py").read_text().splitlines().index("    loss = D(x).float().pow(2).mean()")
    assert f.severity == "info" and f.line == line and where in f.message
    assert f.message.startswith(f"line {line} `loss = D(x).float().pow(2).mean()`: torch's own code ran part of it "
                                "under no_grad (torch/nn/utils/")
    # the vectors torch made under its no_grad are no rows of the line (they were `loss ×12`)
    assert not any(t.name.startswith("loss") and "no_grad" in t.status for t in report.tensors), str(report)


_OWN = textwrap.dedent('''\
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    torch.manual_seed(0)
    lin = nn.Linear(4, 4)
    x = torch.randn(8, 4)
    THE_CUT
    loss.backward()
    ''')


@pytest.mark.parametrize("cut, line", [
    # the script's own no_grad around a module call: the module began with grad off
    ("with torch.no_grad():\n    h = lin(x)\nloss = (h * lin.weight.sum()).sum()", 9),
    # inside its own module's forward, around a torch function (F.softmax runs in torch's functional.py)
    ("class M(nn.Module):\n    def forward(self, h):\n        with torch.no_grad():\n            s = F.softmax(h, 1)\n"
     "        return h * s\nloss = M()(lin(x)).sum()", 11),
    # its own function, decorated (torch's decorator opens the block: the body is the script's)
    ("@torch.no_grad()\ndef scale(h):\n    return F.softmax(h, 1)\nh = lin(x)\nloss = (h * scale(h)).sum()", 10),
])
def test_the_script_s_own_no_grad_is_still_untracked(tmp_path, cut, line):
    path = tmp_path / "own.py"
    path.write_text(_OWN.replace("THE_CUT", cut), encoding="utf-8")
    report = gs.run_script(str(path))
    assert report.exit_code == 0 and not report.ok and report.summary["verified"] == 1, str(report)
    assert {f.kind for f in report.findings if f.severity == "error"} == {"untracked"}, str(report)
    assert any(f"what no_grad at line {line} hides" in f.message for f in report.findings), str(report)
    assert not any(f.kind == "torch-cut" for f in report.findings)


def test_torch_s_no_grad_is_restored_after_the_run(tmp_path):
    cls = torch.autograd.grad_mode.no_grad
    before = (cls.__dict__["__enter__"], cls.__dict__["__exit__"])
    report = _run(tmp_path, "D = nn.Sequential(nn.utils.spectral_norm(nn.Linear(4, 8)), nn.Linear(8, 1))")
    assert report.ok
    assert (cls.__dict__["__enter__"], cls.__dict__["__exit__"]) == before


@pytest.mark.parametrize("torch_s", [True, False])
def test_check_function_takes_spectral_norm_s_constants_as_torch_does(monkeypatch, torch_s):
    from gradcheck_sym.front.tracer_sites import TorchNoGrad

    if not torch_s:  # (told apart from the script's own no_grad, as before: autograd's weight gradient "untracked")
        monkeypatch.setattr(TorchNoGrad, "opened", lambda self: None)
    torch.manual_seed(0)
    lin = torch.nn.utils.spectral_norm(torch.nn.Linear(3, 2, dtype=torch.float64))
    report = gs.check_function(lin, torch.randn(4, 3, dtype=torch.float64))
    if torch_s:
        assert report.ok and "weight_orig" in str(report), str(report)
    else:
        assert not report.ok and "untracked" in str(report), str(report)
