"""The same cubic fit with torch.optim.RMSprop, 2,000 points, 2,000 iterations (a published tutorial's size; our
own version).  N=... sets the count."""
import math
import os

import torch

x = torch.linspace(-math.pi, math.pi, 2000)
y = torch.sin(x)
xx = x.unsqueeze(-1).pow(torch.tensor([1, 2, 3]))
model = torch.nn.Sequential(torch.nn.Linear(3, 1), torch.nn.Flatten(0, 1))
loss_fn = torch.nn.MSELoss(reduction="sum")
opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
for t in range(int(os.environ.get("N", "2000"))):
    loss = loss_fn(model(xx), y)
    if t % 500 == 499:
        print(t, loss.item())
    opt.zero_grad()
    loss.backward()
    opt.step()
print(loss.item())
