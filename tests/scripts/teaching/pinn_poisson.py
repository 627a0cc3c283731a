"""A physics-informed net for u'' = -pi^2 sin(pi x) on [0, 1], u(0) = u(1) = 0 (the shape of PINN tutorials; our own
version): the residual needs d2u/dx2, two torch.autograd.grad calls with create_graph=True each step, and
loss.backward() then fills x.grad (x requires grad) beside the parameters'. N steps of Adam (20 here)."""
import math, os
import torch
torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Linear(1, 20), torch.nn.Tanh(), torch.nn.Linear(20, 20), torch.nn.Tanh(),
                          torch.nn.Linear(20, 1))
opt = torch.optim.Adam(net.parameters(), lr=1e-3)
x = torch.linspace(0, 1, 100).reshape(-1, 1).requires_grad_(True)
xb = torch.tensor([[0.0], [1.0]])
N = int(os.environ.get("N", 20))
for it in range(N):
    u = net(x)
    du = torch.autograd.grad(u, x, torch.ones_like(u), create_graph=True)[0]
    d2u = torch.autograd.grad(du, x, torch.ones_like(du), create_graph=True)[0]
    f = d2u + math.pi ** 2 * torch.sin(math.pi * x)
    loss = (f ** 2).mean() + (net(xb) ** 2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    if it % 100 == 0:
        print(it, f"{loss.item():.5f}")
print("u(0.5) =", net(torch.tensor([[0.5]])).item())
