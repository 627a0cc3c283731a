"""A MaskedTensor (a tensor subclass) beside plain tensors: it runs as without us, its backward is not verified."""
import torch
from torch.masked import masked_tensor

data = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
mask = torch.tensor([True, False, True])
mt = masked_tensor(data, mask, requires_grad=True)
total = mt.sum()
total.backward()
print(mt.grad)
x = torch.tensor([1.0, 2.0], requires_grad=True)
(x * x).sum().backward()
print(x.grad)
