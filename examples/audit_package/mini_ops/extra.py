"""Plain functions: one marked with @gradcheck_sym.audited, two listed in pyproject.toml."""

import torch

import gradcheck_sym as gs


@gs.audited(sample_inputs=lambda: [(torch.linspace(-2, 2, 5, dtype=torch.float64),)], samples=5)
def smooth_abs(x):
    """sqrt(x**2 + 0.01): a differentiable |x| (5 random points near each sample are checked too)."""
    return torch.sqrt(x * x + 0.01)


def scaled_tanh(x, scale):
    """scale * tanh(x / scale); listed in pyproject.toml, samples from scaled_tanh_sample_inputs."""
    return scale * torch.tanh(x / scale)


def scaled_tanh_sample_inputs():
    # The second argument is a float: passed through as a constant, not differentiated.
    return [(torch.tensor([0.5, -3.0], dtype=torch.float64), 2.0)]


def cube(x):
    return (x ** 3).sum()


def cube_points():
    return [torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)]
