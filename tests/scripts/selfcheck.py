"""A script that checks itself with torch.autograd.gradcheck (its probes are its business)."""
import torch

x = torch.tensor([0.5, 1.5], dtype=torch.float64, requires_grad=True)
print(torch.autograd.gradcheck(torch.sin, (x,)))
print(torch.autograd.gradgradcheck(torch.sin, (x,)))
y = torch.sin(x).sum()
y.backward()
print(x.grad)
