"""Lesson 3: grad_fn.

Every non-leaf remembers the operation that made it in grad_fn (AddBackward0, SinBackward0, ...);
backward() walks these from the output back to the leaves.

Run: gradcheck-sym run examples/lessons/03_grad_fn.py
"""

import torch

a = torch.tensor(0.8, requires_grad=True)
b = torch.sin(a)
c = b * a + 1
print("b.grad_fn:", b.grad_fn, " c.grad_fn:", c.grad_fn)
c.backward()
print("a.grad =", a.grad)  # cos(a)*a + sin(a)
