"""A custom autograd Function for the Legendre polynomial P3 inside a fitting loop (the shape of a tutorial's
example, our own words): forward 0.5 (5x^3 - 3x), backward 1.5 (5x^2 - 1)."""
import math
import os

import torch


class P3(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return 0.5 * (5 * x**3 - 3 * x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * 1.5 * (5 * x**2 - 1)


t = torch.linspace(-math.pi, math.pi, int(os.environ.get("POINTS", "200")))  # 2,000 in the tutorial
want = torch.sin(t)
p = [torch.full((), v, requires_grad=True) for v in (0.0, -1.0, 0.0, 0.3)]
for it in range(int(os.environ.get("N", "30"))):  # 2,000 in the tutorial
    pred = p[0] + p[1] * P3.apply(p[2] + p[3] * t)
    loss = (pred - want).pow(2).sum()
    loss.backward()
    with torch.no_grad():
        for q in p:
            q -= 5e-6 * q.grad
            q.grad = None
print(loss.item())
