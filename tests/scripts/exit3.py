"""A script that exits with status 3 after one verified backward."""
import sys

import torch

x = torch.tensor(2.0, requires_grad=True)
(x ** 3).backward()
print("grad", x.grad.item())
sys.exit(3)
