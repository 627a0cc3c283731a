"""What a backward's plan compares (`judge.backward_plan.targets_of`): with ``backward(inputs=...)`` only those
tensors' .grad (torch leaves every other as it was: found by review, a leaf outside `inputs` read as a mismatch)."""

import gradcheck_sym as gs

_TEXT = """import torch
w = torch.tensor([0.5, -1.5], requires_grad=True)
b = torch.tensor(0.3, requires_grad=True)
x = torch.tensor([2.0, 3.0])
(torch.tanh(w * x) + b).sum().backward()
loss = (torch.tanh(w * x) * b).sum()
{call}
print(w.grad, b.grad)
"""


def _run(tmp_path, call):
    path = tmp_path / "script.py"
    path.write_text(_TEXT.format(call=call))
    report = gs.run_script(str(path))
    return report, {r.name: r for r in report.tensors}


def test_a_backward_with_inputs_compares_those_alone(tmp_path, capfd):
    for call in ("loss.backward(inputs=[w])", "torch.autograd.backward(loss, inputs=w)"):
        report, rows = _run(tmp_path, call)
        assert report.ok and report.summary["verified"] == 2 and report.summary["errors"] == 0, call
        assert [b.compared for b in report.backwards] == [2, 1], call
        assert rows["w"].status == "ok" and rows["b"].status == "ok", call  # (b: as the first backward left it)
    path = tmp_path / "alone.py"
    path.write_text("import torch\nw = torch.tensor([0.5, -1.5], requires_grad=True)\nb = torch.tensor(0.3, "
                    "requires_grad=True)\nloss = (w * b).sum()\nloss.backward(inputs=[w])\n")
    report = gs.run_script(str(path))
    rows = {r.name: r for r in report.tensors}
    assert report.ok and rows["w"].status == "ok" and rows["b"].status == "not among the backward's inputs="
    assert " not in inputs=" in str(report)


def test_a_wrong_gradient_among_the_inputs_is_still_found(tmp_path):
    report, rows = _run(tmp_path, "w.register_hook(lambda g: g * 3)\nloss.backward(inputs=[w, b])")
    assert [b.compared for b in report.backwards] == [2, 2]
    assert rows["b"].status == "ok" and rows["w"].status == "hook"
