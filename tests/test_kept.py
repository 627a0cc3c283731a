"""A large backward's sweeps keep only the cotangents the judge reads (`judge.kept`): the same report as with every
cotangent kept, on teaching scripts that read each kind (compared gradients, named intermediates, cuts, a custom
Function's results for its replay, the last sums of a 0-d parameter)."""

import json
from pathlib import Path

import pytest
import torch

import gradcheck_sym as gs
import gradcheck_sym.judge.backward as backward
from gradcheck_sym.judge import kept as kept_mod

TEACHING = Path(__file__).parent / "scripts" / "teaching"


def _report(path, monkeypatch, kept_from):
    monkeypatch.setattr(backward, "KEPT_FROM", kept_from)
    torch.manual_seed(1234)  # (the scripts that draw without a seed draw the same numbers in both runs)
    return gs.run_script(str(path)).to_dict()


@pytest.mark.parametrize("name", ["d2l_autograd.py", "conv_bn_function.py", "gan_steps.py", "legendre.py",
                                  "backprop_by_hand.py", "spatial_transformer.py"])
def test_keeping_only_the_cotangents_read_changes_no_report(name, monkeypatch, capsys):
    calls = []
    real = kept_mod.kept

    def counted(*args):
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(backward, "kept", counted)
    lean = _report(TEACHING / name, monkeypatch, 0)
    assert calls  # (the lean sweeps ran)
    calls.clear()
    whole = _report(TEACHING / name, monkeypatch, 1 << 62)
    assert not calls
    assert json.dumps(lean, sort_keys=True) == json.dumps(whole, sort_keys=True)
    assert lean["summary"]["verified"] == lean["summary"]["backward_calls"] > 0


def test_what_is_kept(tmp_path, monkeypatch):
    # compared leaves, a named intermediate, a cut's output, the sum reading a 0-d parameter; not the rest
    text = ("import torch\nw = torch.tensor([0.5, -1.5], requires_grad=True)\nb = torch.tensor(0.3, "
            "requires_grad=True)\nx = torch.tensor([2.0, 3.0])\nh = torch.tanh(w * x) + b\n"
            "k = (h.detach() * h).sum()\nk.backward()\n")
    path = tmp_path / "script.py"
    path.write_text(text)
    seen = []
    real = kept_mod.kept

    def watched(tr, program, tensors):
        keep, reads = real(tr, program, tensors)
        made = {v.id: (e.prim, tr.sites[e.site].where.split(":")[-1]) for e in program.eqns for v in e.outputs}
        seen.append(sorted(made.get(v, ("input", "")) for v in keep))
        return keep, reads

    monkeypatch.setattr(backward, "kept", watched)
    monkeypatch.setattr(backward, "KEPT_FROM", 0)
    report = gs.run_script(str(path))
    assert report.summary["verified"] == 1
    # w and b (inputs), the product reading w and h (named, the sum reading b) at line 5, the detach at line 6,
    # k (named) and the product it sums (alive here: its row, hidden, keeps what it would hold too)
    assert seen == [[("ew", "5"), ("ew", "5"), ("ew", "6"), ("input", ""), ("input", ""), ("stop", "6"),
                     ("sum", "6")]]
