"""Custom autograd.Function: a softplus whose hand-written backward is wrong, found and explained.

Run: python examples/custom_function.py
CLI: gradcheck-sym function examples/custom_function.py:BadSoftplus.apply --input 'x=[0.3, -1.2, 2.0]'
"""

import torch

import gradcheck_sym as gs


class BadSoftplus(torch.autograd.Function):
    """softplus(x) = log(1 + exp(x)); its derivative is sigmoid(x), not exp(x)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.log1p(torch.exp(x))

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * torch.exp(x)  # the bug: should be g * torch.sigmoid(x)


class GoodSoftplus(BadSoftplus):
    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * torch.sigmoid(x)


if __name__ == "__main__":
    x = torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64)
    report = gs.check_function(BadSoftplus.apply, x)
    print(report)
    assert [f.kind for f in report.errors()] == ["mismatch"]
    # The corrected backward passes, in float32 too and at 50 random points near x.
    assert gs.check_function(GoodSoftplus.apply, x, dtype="float32", samples=50, seed=0).ok
