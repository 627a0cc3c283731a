"""A first backward through a TorchScript function (not seen by the tracer), then a verifiable one:
the second backward's increment is verified, and the total is never vouched for."""
import warnings

import torch

def cube_py(v):
    return v * v * v


with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    cube = torch.jit.script(cube_py)

w = torch.tensor([0.5, 1.5], requires_grad=True)
cube(w).sum().backward()  # inside TorchScript: not verified
(w * w).sum().backward()  # verifiable: its increment is
print(w.grad)
