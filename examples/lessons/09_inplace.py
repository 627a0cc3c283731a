"""Lesson 9: in-place changes.

An in-place operation (add_, mul_, x += ...) on a tensor in the graph is tracked: autograd records
it and gives the right gradient. Updating a leaf in place is allowed only under no_grad (as an
optimizer does), and starts a new value for the next step.

Run: gradcheck-sym run examples/lessons/09_inplace.py
"""

import torch

w = torch.tensor([1.0, 2.0], requires_grad=True)
for step in range(2):
    h = w * 3
    h.add_(1.0)  # in place, tracked: h = 3w + 1
    loss = (h * h).sum()
    loss.backward()
    with torch.no_grad():
        w -= 0.01 * w.grad  # the update, in place under no_grad
    w.grad.zero_()
print("w =", w)
