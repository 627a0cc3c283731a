"""nn.Sequential, MSELoss, and an optimizer (RMSprop) on the cubic fit: the tutorial's higher-level versions."""
import math
import os

import torch

x = torch.linspace(-math.pi, math.pi, int(os.environ.get("POINTS", "200")))  # 2,000 in the tutorial
y = torch.sin(x)
xx = x.unsqueeze(-1).pow(torch.tensor([1, 2, 3]))
model = torch.nn.Sequential(torch.nn.Linear(3, 1), torch.nn.Flatten(0, 1))
loss_fn = torch.nn.MSELoss(reduction="sum")
opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
for t in range(int(os.environ.get("N", "40"))):  # 2,000 in the tutorial
    loss = loss_fn(model(xx), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
print(loss.item())
