"""An MNIST-sized MLP with two BatchNorm layers (784-256-128-10) trained in float32 with Adam: deep enough that a
worst-case rounding bound says nothing, so its gradients are verified against a measured rounding noise."""
import os

import torch
from torch import nn

torch.manual_seed(0)
net = nn.Sequential(nn.Linear(784, 256), nn.BatchNorm1d(256), nn.ReLU(),
                    nn.Linear(256, 128), nn.BatchNorm1d(128), nn.ReLU(), nn.Linear(128, 10))
opt = torch.optim.Adam(net.parameters(), lr=1e-3)
for step in range(int(os.environ.get("N", "3"))):  # one epoch of MNIST at batch 64: N=938
    x = torch.randn(64, 784)
    y = torch.randint(0, 10, (64,))
    opt.zero_grad()
    loss = nn.functional.cross_entropy(net(x), y)
    loss.backward()
    opt.step()
print("loss", round(loss.item(), 3))
