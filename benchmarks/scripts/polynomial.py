"""Fitting sin(x) on [-pi, pi] with a cubic by gradient descent, autograd on four scalar leaves.

The shape of a well-known introductory tutorial (2,000 points, 2,000 iterations, plain SGD updates under
no_grad, gradients reset with `grad = None`), written in our own words for the benchmark.
"""
import math

import torch

grid = torch.linspace(-math.pi, math.pi, 2000)
target = torch.sin(grid)
coeffs = [torch.randn((), requires_grad=True) for _ in range(4)]
step = 1e-6
for it in range(2000):
    c0, c1, c2, c3 = coeffs
    fit = c0 + c1 * grid + c2 * grid ** 2 + c3 * grid ** 3
    loss = (fit - target).pow(2).sum()
    if it % 500 == 499:
        print(it, float(loss))
    loss.backward()
    with torch.no_grad():
        for c in coeffs:
            c -= step * c.grad
            c.grad = None
print("cubic:", [round(float(c), 4) for c in coeffs])
