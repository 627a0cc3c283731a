"""100 Adam steps of a 784-128-10 MLP with dropout on random MNIST-sized data (the benchmark's training loop)."""
import torch
import torch.nn.functional as F
from torch import nn

torch.manual_seed(0)
images = torch.randn(512, 784)
labels = torch.randint(0, 10, (512,))
net = nn.Sequential(nn.Linear(784, 128), nn.ReLU(), nn.Dropout(0.2), nn.Linear(128, 10))
optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
for step in range(100):
    start = (step * 64) % 512
    batch, answers = images[start:start + 64], labels[start:start + 64]
    loss = F.cross_entropy(net(batch), answers)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
print("final loss", float(loss.detach()))
