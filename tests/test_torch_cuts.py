"""A no_grad block torch's own code opens while grad is on (front.tracer_sites.TorchNoGrad): spectral_norm's power
iteration is a constant of the gradient by torch's design, never the script's `untracked` error; the script's own
no_grad, around a module call, inside its own forward or as its own decorator, still is."""

import os
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
    # (said where a backward reached what it made: not at the model's line, where it ran when it was registered)
    (f,) = report.findings
    assert f.kind == "torch-cut", str(report)
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
    # its own generator, decorated (opened in the decorator's generator_context: found by a review)
    ("@torch.no_grad()\ndef scales(h):\n    yield F.softmax(h, 1)\nh = lin(x)\nloss = (h * next(scales(h))).sum()",
     10),
    # torch's own function, decorated by the script: its choice of a cut (found by a review)
    ("const_softmax = torch.no_grad()(F.softmax)\nh = lin(x)\nloss = (h * const_softmax(h, 1)).sum()", 10),
])
def test_the_script_s_own_no_grad_is_still_untracked(tmp_path, cut, line):
    path = tmp_path / "own.py"
    path.write_text(_OWN.replace("THE_CUT", cut), encoding="utf-8")
    report = gs.run_script(str(path))
    assert report.exit_code == 0 and not report.ok and report.summary["verified"] == 1, str(report)
    assert {f.kind for f in report.findings if f.severity == "error"} == {"untracked"}, str(report)
    assert any(f"what no_grad at line {line} hides" in f.message for f in report.findings), str(report)
    assert not any(f.kind == "torch-cut" for f in report.findings)


def test_a_no_grad_around_the_script_s_own_module_is_named_at_the_statement_inside_it(tmp_path):
    # The ops run in the module's forward, lines away from any no_grad: the finding named those lines ("no_grad at
    # line 10, no_grad at line 12"), where a student finds no no_grad (a DQN tutorial's target network, in a trial)
    cut = ("class M(nn.Module):\n    def forward(self, h):\n        return torch.tanh(h) * 2\n"
           "with torch.no_grad():\n    h = M()(lin(x))\nloss = (h * lin.weight.sum()).sum()")
    path = tmp_path / "own.py"
    path.write_text(_OWN.replace("THE_CUT", cut), encoding="utf-8")
    report = gs.run_script(str(path))
    errors = [f for f in report.findings if f.severity == "error"]
    assert {(f.kind, f.tensor) for f in errors} == {("untracked", "lin.weight"), ("untracked", "lin.bias")}, errors
    assert all(f.message.endswith("the difference is what no_grad at line 12 hides from autograd") for f in errors)


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


def test_the_script_s_cut_inside_an_optimizer_s_closure_is_the_script_s(tmp_path):
    # LBFGS steps under torch's no_grad and runs the closure under enable_grad: the script's set_grad_enabled(False)
    # inside it is the script's cut, not torch's (it read as torch's, and the error as OK: found by a review)
    path = tmp_path / "lbfgs.py"
    path.write_text(_OWN.replace("THE_CUT\nloss.backward()\n", textwrap.dedent('''\
        opt = torch.optim.LBFGS(lin.parameters(), max_iter=2)


        def closure():
            opt.zero_grad()
            h = lin(x)
            with torch.set_grad_enabled(False):
                s = F.softmax(h, 1)
            loss = (h * s).sum()
            loss.backward()
            return loss


        opt.step(closure)
        ''')), encoding="utf-8")
    report = gs.run_script(str(path))
    assert report.exit_code == 0 and not report.ok, str(report)
    assert {f.kind for f in report.findings if f.severity == "error"} == {"untracked"}, str(report)
    assert not any(f.kind == "torch-cut" for f in report.findings)


def test_a_library_beside_torch_whose_name_begins_with_torch_is_not_torch(tmp_path):
    # torchvision, torchmetrics, torch_ema: their directories begin with torch's name (simulated: a function compiled
    # as site-packages/torchfakelib/ops.py); their no_grad is the script's as far as we know
    lib = os.path.join(os.path.dirname(os.path.dirname(torch.__file__)), "torchfakelib", "ops.py")
    path = tmp_path / "lib.py"
    path.write_text(_OWN.replace("THE_CUT", textwrap.dedent(f'''\
        ns = {{"torch": torch}}
        exec(compile("def scaled(h):\\n    with torch.no_grad():\\n        s = torch.softmax(h, 1)\\n    return h * s\\n",
                     {lib!r}, "exec"), ns)
        loss = ns["scaled"](lin(x)).sum()''')), encoding="utf-8")
    report = gs.run_script(str(path))
    assert report.exit_code == 0 and not report.ok, str(report)
    assert {f.kind for f in report.findings if f.severity == "error"} == {"untracked"}, str(report)


def test_torch_s_no_grad_that_no_backward_reaches_is_not_said(tmp_path):
    # load_state_dict, nn.init and clip_grad_norm_ fill or read under torch's no_grad: nothing a gradient depends on
    # (they were torch-cut infos: a review)
    path = tmp_path / "restore.py"
    path.write_text(textwrap.dedent('''\
        import torch
        import torch.nn as nn

        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        opt = torch.optim.Adam(net.parameters(), lr=1e-2)
        x = torch.randn(16, 4)
        saved = {k: v.clone() for k, v in net.state_dict().items()}
        for step in range(4):
            if step == 2:
                net.load_state_dict(saved)
                nn.init.kaiming_uniform_(net[2].weight)
                nn.init.zeros_(net[2].bias)
            loss = net(x).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
        '''), encoding="utf-8")
    report = gs.run_script(str(path))
    assert report.ok and report.summary["verified"] == 4 and not report.findings, str(report)


def test_runs_overlapping_in_two_threads_leave_torch_s_no_grad_as_it_was():
    # A starts, B starts, A ends, B ends: the wrapper B saw as the original was left installed (a review)
    import threading

    cls = torch.autograd.grad_mode.no_grad
    before = (cls.__dict__["__enter__"], cls.__dict__["__exit__"])
    started_a, started_b, ended_a = threading.Event(), threading.Event(), threading.Event()
    ok = {}

    def fa(x):
        started_a.set()
        started_b.wait(10)
        return (x * x).sum()

    def fb(x):
        started_b.set()
        ended_a.wait(10)
        return x.sin().sum()

    def run_a():
        ok["a"] = gs.check_function(fa, torch.randn(3, dtype=torch.float64)).ok
        ended_a.set()

    a = threading.Thread(target=run_a)
    b = threading.Thread(target=lambda: (started_a.wait(10),
                                         ok.setdefault("b", gs.check_function(fb, torch.randn(3, dtype=torch.float64)).ok)))
    a.start()
    b.start()
    a.join()
    b.join()
    assert ok == {"a": True, "b": True}
    assert (cls.__dict__["__enter__"], cls.__dict__["__exit__"]) == before


def test_a_parameter_s_initialisation_under_torch_s_no_grad_is_its_first_value(tmp_path):
    # nn.Conv2d's reset_parameters fills its weight and bias under torch's own no_grad (torch 2.13), and the first
    # backward comes before any optimizer step: the initialised values are the parameters' own first values, not values
    # torch's no_grad made that a backward reached (every Conv2d was a torch-cut info: a newcomer's LeNet)
    path = tmp_path / "lenet.py"
    path.write_text(textwrap.dedent('''\
        import torch
        import torch.nn as nn

        torch.manual_seed(0)
        conv = nn.Conv2d(1, 2, 3)
        w = nn.Parameter(torch.empty(2, 32))
        nn.init.kaiming_uniform_(w)
        x = torch.randn(1, 1, 6, 6)
        (conv(x).flatten(1) @ w.T).pow(2).sum().backward()
        print(conv.bias.grad.shape)
        '''), encoding="utf-8")
    report = gs.run_script(str(path))
    assert report.ok and report.summary["verified"] == 1 and report.summary["gradients"] == 3, str(report)
    assert not report.findings, str(report)
