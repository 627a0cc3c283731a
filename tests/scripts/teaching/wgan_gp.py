"""A WGAN with gradient penalty on 2-D points (the shape of published WGAN-GP tutorials; our own version): five critic
steps on `fake.detach()` per generator step, the penalty from torch.autograd.grad(create_graph=True) at points
between real and fake, Adam on each network.  N generator steps (3 here)."""
import os
import torch
torch.manual_seed(0)
D = torch.nn.Sequential(torch.nn.Linear(2, 64), torch.nn.LeakyReLU(0.2), torch.nn.Linear(64, 64),
                        torch.nn.LeakyReLU(0.2), torch.nn.Linear(64, 1))
G = torch.nn.Sequential(torch.nn.Linear(8, 64), torch.nn.ReLU(), torch.nn.Linear(64, 2))
optD = torch.optim.Adam(D.parameters(), lr=1e-4, betas=(0.5, 0.9))
optG = torch.optim.Adam(G.parameters(), lr=1e-4, betas=(0.5, 0.9))


def gradient_penalty(D, real, fake):
    alpha = torch.rand(real.size(0), 1)
    interpolates = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    d_interpolates = D(interpolates)
    gradients = torch.autograd.grad(outputs=d_interpolates, inputs=interpolates,
                                    grad_outputs=torch.ones_like(d_interpolates),
                                    create_graph=True, retain_graph=True, only_inputs=True)[0]
    return ((gradients.norm(2, dim=1) - 1) ** 2).mean()


for it in range(int(os.environ.get("N", 3))):
    for _ in range(5):
        real = torch.randn(64, 2) * 0.5 + torch.tensor([2.0, 0.0])
        fake = G(torch.randn(64, 8)).detach()
        lossD = D(fake).mean() - D(real).mean() + 10 * gradient_penalty(D, real, fake)
        optD.zero_grad()
        lossD.backward()
        optD.step()
    lossG = -D(G(torch.randn(64, 8))).mean()
    optG.zero_grad()
    lossG.backward()
    optG.step()
    print(it, f"{lossD.item():.4f} {lossG.item():.4f}")
