"""Lesson 10: gradients accumulate.

Two backward() calls add their gradients in .grad unless it is zeroed in between; retain_graph=True
keeps the graph alive for the second call.

Run: gradcheck-sym run examples/lessons/10_accumulation.py
"""

import torch

x = torch.tensor(1.5, requires_grad=True)
y = x ** 2
y.backward(retain_graph=True)  # x.grad = 3
y.backward()  # x.grad = 3 + 3 = 6
print("after two backward calls:", x.grad)
x.grad = None
(x * 4).backward()
print("after grad = None and one more:", x.grad)
g, = torch.autograd.grad(torch.sin(x), x)
print("torch.autograd.grad:", g)
