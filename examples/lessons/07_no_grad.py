"""Lesson 7: torch.no_grad().

Inside `with torch.no_grad():` nothing is recorded: `w` has no grad_fn, so the path through it is
missing from y.grad. This is the script of the gradcheck-sym README.

Run: gradcheck-sym run examples/lessons/07_no_grad.py
"""

import torch

y = torch.tensor([2.0], requires_grad=True)
z = y + 1.0
with torch.no_grad():
    w = y * 3
out = z * w
out.backward()
print(y.grad)  # 6, while d(out)/dy = d((y+1)*3y)/dy = 6y + 3 = 15
