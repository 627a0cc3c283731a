"""Gaussian-process regression by hand (the shape of GP-from-scratch tutorials; our own version): an RBF kernel's
three log-hyperparameters fitted to the marginal likelihood in float64 through a 50x50 Cholesky, Adam, N steps."""
import math, os
import torch
torch.manual_seed(0)
X = torch.linspace(0, 1, 50).unsqueeze(1).double()
y = torch.sin(6 * X).squeeze() + 0.1 * torch.randn(50, dtype=torch.float64)
log_ls = torch.tensor(0.0, dtype=torch.float64, requires_grad=True)
log_sf = torch.tensor(0.0, dtype=torch.float64, requires_grad=True)
log_sn = torch.tensor(-2.0, dtype=torch.float64, requires_grad=True)
opt = torch.optim.Adam([log_ls, log_sf, log_sn], lr=0.05)
for it in range(int(os.environ.get("N", 50))):
    opt.zero_grad()
    d2 = (X - X.T) ** 2
    K = log_sf.exp() ** 2 * torch.exp(-0.5 * d2 / log_ls.exp() ** 2) + \
        (log_sn.exp() ** 2 + 1e-6) * torch.eye(50, dtype=torch.float64)
    L = torch.linalg.cholesky(K)
    alpha = torch.cholesky_solve(y.unsqueeze(1), L)
    nll = 0.5 * (y.unsqueeze(1) * alpha).sum() + torch.log(torch.diagonal(L)).sum() + 25 * math.log(2 * math.pi)
    nll.backward()
    opt.step()
print(f"{nll.item():.4f} ls={log_ls.exp().item():.3f}")
