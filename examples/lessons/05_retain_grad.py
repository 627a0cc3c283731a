"""Lesson 5: retain_grad().

Call .retain_grad() on a non-leaf before backward() and autograd keeps its gradient in .grad.

Run: gradcheck-sym run examples/lessons/05_retain_grad.py
"""

import torch

x = torch.tensor([1.0, -2.0], requires_grad=True)
h = torch.exp(x)
h.retain_grad()
loss = (h * h).sum()
loss.backward()
print("h.grad =", h.grad)  # 2h
print("x.grad =", x.grad)  # 2h * h
