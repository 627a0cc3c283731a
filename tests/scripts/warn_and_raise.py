"""Warnings from inside torch and an error raised inside torch.nn: both as Python shows them without us."""
import torch
import torch.nn.functional as F

torch.manual_seed(0)

w = torch.randn(3, requires_grad=True)
loss = (w * 2).sum()
loss.backward()
print(float(loss))  # torch warns: converting a tensor that requires grad to a scalar
F.mse_loss(torch.randn(3, 1), torch.randn(3))  # a Python warning from inside torch.nn.functional, about this line
try:
    torch.nn.Linear(4, 2)(torch.randn(3, 5))
except RuntimeError as exc:
    raise ValueError("the layer did not fit") from exc
