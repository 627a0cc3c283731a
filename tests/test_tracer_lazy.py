"""Ops under the script's no_grad recorded when first read (`front.tracer_lazy`): bookkeeping no backward reads
records nothing, and a value read later is the one its op computed then, whatever the script did since."""

import subprocess
import sys

import gradcheck_sym as gs
from gradcheck_sym.front.tracer_lazy import CHAIN
from gradcheck_sym.reference.lazy import pending
from tests.test_script import _run_watching_prunes, _script

_FIT = ("import torch\ngrid = torch.linspace(-1, 1, 50)\nc = torch.zeros(3, requires_grad=True)\nratios = []\n"
        "for it in range(12):\n"
        "    fit = c[0] + c[1] * grid + c[2] * grid ** 2\n"
        "    loss = (fit - grid.sin()).pow(2).sum()\n"
        "    loss.backward()\n"
        "    with torch.no_grad():\n"
        "        c -= 0.01 * c.grad\n"
        "{extra}"
        "        c.grad = None\n"
        "print(ratios[-1] if ratios else None)\n")


def _errors(report):
    return [f.kind for f in report.findings if f.severity == "error"]


def _untracked(tmp_path, text):
    """The script's one error finding, an untracked gradient, and the row of `w`."""
    report = gs.run_script(_script(tmp_path, text))
    (finding,) = [f for f in report.findings if f.severity == "error"]
    (w,) = [r for r in report.tensors if r.name == "w"]
    assert finding.kind == "untracked"
    return finding, w


def test_statistics_under_no_grad_that_leave_by_item_record_nothing(tmp_path, capfd):
    # A lecture's update-to-data ratios: every step, every parameter's std under no_grad, its float kept in a list.
    # Nothing reads them back: the program holds no more equations than the same loop without them (they were 70%
    # of a batch-norm lecture's recorded equations).
    sizes = {}
    for label, extra in [("plain", ""), ("ratios", "        ratios.append(((0.01 * c.grad).std() / "
                                                  "c.data.std()).log10().item())\n")]:
        seen = []
        capfd.readouterr()
        report = _run_watching_prunes(tmp_path, _FIT.format(extra=extra), lambda tr: seen.append(len(tr.rec.eqns)))
        assert report.ok and report.summary["verified"] == 12 and _errors(report) == []
        sizes[label] = max(seen)
    assert sizes["ratios"] == sizes["plain"]
    # the script's own last ratio, as python prints it
    plain = subprocess.run([sys.executable, _script(tmp_path, _FIT.format(extra=extra))], capture_output=True,
                           text=True, check=True).stdout
    assert capfd.readouterr().out == plain and float(plain) < -1


def test_a_deferred_value_is_what_its_op_computed_then(tmp_path):
    # s is read after the script changed x in place: it is 2 * (1 + 2 + 3) = 12, as torch computed it, so the
    # gradient autograd gives w is 12 and the exact one 24 (the no_grad at line 5 hides w's part in s).  Read from
    # x as it is at the backward, s would have been 72.
    text = ("import torch\nx = torch.tensor([1.0, 2.0, 3.0])\nw = torch.tensor(2.0, requires_grad=True)\n"
            "with torch.no_grad():\n    s = (w * x).sum()\n    x.add_(10)\nloss = w * s\nloss.backward()\n")
    finding, w = _untracked(tmp_path, text)
    assert "is 12, the exact gradient is 24" in finding.message and "no_grad at line 5" in finding.message
    assert (w.grad, w.exact) == (12.0, 24.0)


def test_a_deferred_value_of_a_leaf_updated_since_is_the_old_leafs(tmp_path):
    # m is the mean of w before `w.mul_(3)`: 2 * 2 = 4, a constant of autograd's; w's gradient is m, verified.
    text = ("import torch\nw = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)\nwith torch.no_grad():\n"
            "    m = w.mean() * 2\n    w.mul_(3)\nloss = (w * m).sum()\nloss.backward()\n")
    report = gs.run_script(_script(tmp_path, text))
    assert report.ok and report.summary["verified"] == 1 and _errors(report) == []
    (w,) = [r for r in report.tensors if r.name == "w"]
    assert w.grad == w.exact == [4.0, 4.0, 4.0]


def test_a_float_of_a_deferred_value_that_comes_back_is_traced(tmp_path):
    # scale = w.std().item() under no_grad, then used with grad on: the exact gradient has the std's part (the
    # float is recognised as w's), autograd's has not
    text = ("import torch\nw = torch.tensor([1.0, 2.0, 4.0], requires_grad=True)\nwith torch.no_grad():\n"
            "    scale = w.std().item()\nloss = (w * scale).sum()\nloss.backward()\n")
    finding, w = _untracked(tmp_path, text)
    assert ".item() at line 4, no_grad at line 4" in finding.message
    assert [round(v, 4) for v in w.exact] == [-1.5275, 0.7638, 5.3463]


def test_a_running_average_of_deferred_values_is_asked_for_every_few_links(tmp_path):
    # An average of the weights updated from itself every step under no_grad, never read with grad on: each step's
    # value is deferred and reads the last one's; every CHAIN links the chain is recorded (each step's copies held
    # otherwise), and the program stays the same size from step to step.
    text = ("import torch\nw = torch.linspace(-1, 1, 6).requires_grad_()\nema = torch.zeros(6)\n"
            "for it in range(40):\n    loss = (w ** 2).sum()\n    loss.backward()\n    with torch.no_grad():\n"
            "        w -= 0.1 * w.grad\n        w.grad = None\n        ema = 0.9 * ema + 0.1 * w\n"
            "print(round(float(ema.sum()), 6))\n")
    depths, sizes = [], []

    def watch(tr):
        depths.append(max([r.handle.depth for r in tr.recs.values() if pending(r.handle)], default=0))
        sizes.append(len(tr.rec.eqns))

    report = _run_watching_prunes(tmp_path, text, watch)
    assert report.ok and report.summary["verified"] == 40 and _errors(report) == []
    assert 2 <= max(depths) <= CHAIN
    assert max(sizes[5:]) <= 4 * CHAIN and max(sizes[-10:]) == max(sizes[10:20])  # (bounded: no growth)


def test_a_running_mean_of_a_batch_statistic_lets_the_freed_graph_go(tmp_path):
    # A hand-written batch norm's running mean, from each batch's mean under no_grad: deferred, but read from the
    # graph the backward frees, so recorded then (a cut of it, as before); the program does not keep every
    # iteration's forward for it.
    text = ("import torch\ntorch.manual_seed(0)\nw = torch.randn(4, 3, requires_grad=True)\nrunning = torch.zeros(3)\n"
            "for it in range(30):\n    h = torch.randn(8, 4) @ w\n    mean = h.mean(0)\n"
            "    loss = ((h - mean) ** 2).mean()\n"
            "    with torch.no_grad():\n        running = 0.9 * running + 0.1 * mean\n"
            "    loss.backward()\n    with torch.no_grad():\n        w -= 0.1 * w.grad\n        w.grad = None\n"
            "print(running.shape)\n")
    sizes = []
    report = _run_watching_prunes(tmp_path, text, lambda tr: sizes.append(len(tr.rec.eqns)))
    assert report.ok and report.summary["verified"] == 30 and _errors(report) == []
    assert max(sizes[-10:]) == max(sizes[10:20])  # (no growth with the iterations)


def test_our_failure_in_a_deferred_op_is_a_note_never_the_scripts(tmp_path, monkeypatch, capfd):
    # A rule that fails when a deferred op is finally recorded: the script runs as plain python does, the note names
    # the op and the line it ran at (as an op recorded at once would), and nothing through it is vouched for.
    from gradcheck_sym.ops.torch import RULES, Rule

    def broken(c, a):
        raise ValueError("a bug in a rule")

    old = RULES["sin"]
    monkeypatch.setitem(RULES, "sin", Rule(old.name, old.signature, broken, old.refuse, old.doc))
    text = ("import torch\nw = torch.tensor([0.5, 1.5], requires_grad=True)\nwith torch.no_grad():\n"
            "    s = torch.sin(w).sum()\nloss = (w * s).sum()\nloss.backward()\nprint(w.grad.tolist())\n")
    report = gs.run_script(_script(tmp_path, text))
    printed = capfd.readouterr().out
    assert printed.startswith("[1.4769")  # (the script's own print: sin(0.5) + sin(1.5) for each entry)
    assert "internal error while tracing sin at script.py:4: ValueError: a bug in a rule" in str(report)
    assert not report.ok and report.summary["verified"] == 0
