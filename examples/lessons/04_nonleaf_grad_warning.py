"""Lesson 4: .grad of a non-leaf is None (and torch warns).

`h` is computed from `x`, so it is not a leaf: after backward() its .grad is None, and reading it
makes torch print a UserWarning. gradcheck-sym reports the read and still shows the value the
gradient would have.

Run: gradcheck-sym run examples/lessons/04_nonleaf_grad_warning.py
"""

import warnings

import torch

x = torch.tensor([2.0, 3.0], requires_grad=True)
h = x ** 3
loss = h.sum()
loss.backward()
with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # the warning is the point of the lesson; keep the output short
    print("h.grad =", h.grad)  # None
print("x.grad =", x.grad)
