"""A custom autograd Function (the Legendre polynomial P3) inside a fitting loop at a published tutorial's size:
2,000 points, 2,000 iterations, plain SGD by hand (our own version of the shape).  N=... sets the count."""
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


t = torch.linspace(-math.pi, math.pi, 2000)
want = torch.sin(t)
p = [torch.full((), v, requires_grad=True) for v in (0.0, -1.0, 0.0, 0.3)]
for it in range(int(os.environ.get("N", "2000"))):
    pred = p[0] + p[1] * P3.apply(p[2] + p[3] * t)
    loss = (pred - want).pow(2).sum()
    if it % 500 == 499:
        print(it, loss.item())
    loss.backward()
    with torch.no_grad():
        for q in p:
            q -= 5e-6 * q.grad
            q.grad = None
print(loss.item())
