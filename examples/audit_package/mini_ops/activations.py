"""Custom autograd.Functions, each with its sample inputs next to it (the audit's convention)."""

import torch

import gradcheck_sym as gs


class Softplus(torch.autograd.Function):
    """log(1 + exp(x)), whose derivative is sigmoid(x)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.log1p(torch.exp(x))

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * torch.sigmoid(x)

    @staticmethod
    def sample_inputs():
        # One sample = the tuple of arguments of apply(); torch's RNG is seeded per Function.
        return [(torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64),),
                (torch.randn(2, 3, dtype=torch.float64),)]


class BadSoftplus(Softplus):
    """The same forward with a wrong backward: exp(x) instead of sigmoid(x)."""

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * torch.exp(x)


@gs.audited(order=2)
class SquarePlus(torch.autograd.Function):
    """(x + sqrt(x**2 + 4)) / 2, checked to second order: its backward is itself differentiable."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return (x + torch.sqrt(x * x + 4)) / 2

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * (1 + x / torch.sqrt(x * x + 4)) / 2

    @staticmethod
    def sample_inputs():
        return [(torch.tensor([-1.5, 0.25, 3.0], dtype=torch.float64),)]


class ClampUnit(torch.autograd.Function):
    """No sample_inputs(): the audit lists it as not checked and says what to add."""

    @staticmethod
    def forward(ctx, x):
        return x.clamp(0, 1)

    @staticmethod
    def backward(ctx, g):
        return g
