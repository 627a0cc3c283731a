"""A 100-step Adam training loop of a 784-128-10 MLP with dropout on random data (issue 8's target)."""
import torch, torch.nn as nn, torch.nn.functional as F
torch.manual_seed(0)
X = torch.randn(512, 784); Y = torch.randint(0, 10, (512,))
model = nn.Sequential(nn.Linear(784, 128), nn.ReLU(), nn.Dropout(0.2), nn.Linear(128, 10))
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
for step in range(100):
    i = (step * 64) % 512
    xb, yb = X[i:i + 64], Y[i:i + 64]
    loss = F.cross_entropy(model(xb), yb)
    opt.zero_grad()
    loss.backward()
    opt.step()
print("final loss", float(loss))
