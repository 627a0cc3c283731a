"""An MNIST-sized MLP with BatchNorm trained for a few steps with SGD and momentum, then evaluated in no_grad."""
import torch
from torch import nn

torch.manual_seed(0)
X = torch.randn(256, 784)
Y = torch.randint(0, 10, (256,))
model = nn.Sequential(nn.Linear(784, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, 10))
opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
for step in range(8):
    xb, yb = X[step * 32:(step + 1) * 32], Y[step * 32:(step + 1) * 32]
    loss = nn.functional.cross_entropy(model(xb), yb)
    opt.zero_grad()
    loss.backward()
    opt.step()
model.eval()
with torch.no_grad():
    print((model(X).argmax(1) == Y).float().mean())
