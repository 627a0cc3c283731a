"""Lesson 8: .data versus .detach().

Both give the values without the graph. .detach() is a clean constant; assigning to .data changes
a tensor's value behind autograd's back, and its grad_fn still describes the old value: backward
then differentiates something that no longer matches the numbers (a stale graph).

Run: gradcheck-sym run examples/lessons/08_data_vs_detach.py
"""

import torch

x = torch.tensor([0.3, 0.7], requires_grad=True)
s = torch.sigmoid(x)
c = s.detach()  # a constant copy: fine
s.data = s.data * 2  # the stale graph: s's value doubles, its SigmoidBackward0 does not know
loss = (s + c).sum()
loss.backward()
print("x.grad =", x.grad)
