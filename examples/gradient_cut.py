"""A gradient cut pinned to its line: a normalisation computed under torch.no_grad().

Run: python examples/gradient_cut.py
"""

import torch

import gradcheck_sym as gs


def normalised_activations(x, w):
    h = torch.tanh(x @ w)
    with torch.no_grad():  # the bug: the scale depends on x and w, but autograd never sees it
        scale = h.norm()
    return (h / scale).sum()


def logsumexp(x):
    """A hand-written logsumexp: the detached max shift is a harmless cut."""
    m = x.max().detach()
    return torch.log(torch.exp(x - m).sum()) + m


if __name__ == "__main__":
    torch.manual_seed(0)
    x = torch.randn(2, 3, dtype=torch.float64)
    w = torch.randn(3, 2, dtype=torch.float64)
    report = gs.check_function(normalised_activations, x, w, samples=20, seed=0)
    print(report)
    (finding,) = report.errors()
    assert finding.kind == "untracked" and "gradient_cut.py:14" in finding.message
    report = gs.check_function(logsumexp, torch.tensor([0.3, 2.0, -1.0], dtype=torch.float64))
    print(report)
    assert report.ok and [f.kind for f in report.findings] == ["cut"]
