"""Lesson 1: leaves and non-leaves.

A *leaf* is a tensor you create yourself (here with requires_grad=True); everything computed from
it is a *non-leaf* with a grad_fn that remembers how it was made. After backward(), only leaves
get their .grad filled.

Run: gradcheck-sym run examples/lessons/01_leaf_and_nonleaf.py
"""

import torch

x = torch.tensor([1.5, -0.5], requires_grad=True)  # a leaf
y = x * x  # a non-leaf: grad_fn = MulBackward0
loss = y.sum()  # a non-leaf: grad_fn = SumBackward0
loss.backward()
print("x.grad =", x.grad)  # d loss/dx = 2x
print("x.is_leaf:", x.is_leaf, " y.is_leaf:", y.is_leaf)
