"""Lesson 6: register_hook.

A hook sees the gradient flowing back into a tensor and may replace it. Here the hook doubles it,
so x.grad is twice the true derivative: gradcheck-sym reports that the hook changed it, and where.

Run: gradcheck-sym run examples/lessons/06_register_hook.py
"""

import torch

x = torch.tensor([0.5, 1.5], requires_grad=True)
y = x * x
y.register_hook(lambda g: g * 2)  # changes the gradient on its way back
y.sum().backward()
print("x.grad =", x.grad)  # 2 * 2x instead of 2x
