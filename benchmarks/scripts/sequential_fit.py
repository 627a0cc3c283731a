"""nn.Sequential(Linear(3, 1), Flatten) with MSELoss and updates written by hand under no_grad, on the cubic fit
at a published tutorial's size: 2,000 points, 2,000 iterations (our own version).  N=... sets the count."""
import math
import os

import torch

x = torch.linspace(-math.pi, math.pi, 2000)
y = torch.sin(x)
xx = x.unsqueeze(-1).pow(torch.tensor([1, 2, 3]))
model = torch.nn.Sequential(torch.nn.Linear(3, 1), torch.nn.Flatten(0, 1))
loss_fn = torch.nn.MSELoss(reduction="sum")
for t in range(int(os.environ.get("N", "2000"))):
    loss = loss_fn(model(xx), y)
    if t % 500 == 499:
        print(t, loss.item())
    model.zero_grad()
    loss.backward()
    with torch.no_grad():
        for param in model.parameters():
            param -= 1e-6 * param.grad
print(model[0].bias.item())
