"""Lesson 2: requires_grad.

Only tensors with requires_grad=True are tracked. A tensor built from tracked and untracked ones
is tracked; the untracked one (here `scale`) is a constant for autograd and gets no .grad.

Run: gradcheck-sym run examples/lessons/02_requires_grad.py
"""

import torch

w = torch.tensor([0.5, 2.0], requires_grad=True)
scale = torch.tensor([3.0, 4.0])  # requires_grad=False: a constant
out = (w * scale).sum()
out.backward()
print("w.grad =", w.grad, " scale.requires_grad:", scale.requires_grad)
