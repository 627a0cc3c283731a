"""A spectrally normalised GAN's steps (the SN-GAN pattern; our version, small MLPs on 2-D points): the
discriminator's layers wrapped in `spectral_norm` (the old hook style and the parametrization), hinge losses, the
discriminator's step on real and on `fake.detach()`, then the generator's; torch's power iteration runs under its
own no_grad at every forward."""
import torch
import torch.nn as nn
from torch.nn.utils import parametrizations, spectral_norm

torch.manual_seed(0)
G = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))
D = nn.Sequential(spectral_norm(nn.Linear(2, 16)), nn.LeakyReLU(0.1),
                  parametrizations.spectral_norm(nn.Linear(16, 16)), nn.LeakyReLU(0.1), nn.Linear(16, 1))
optD = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.0, 0.9))
optG = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.0, 0.9))
for step in range(6):
    real = torch.randn(32, 2) * 0.5 + torch.tensor([2.0, -1.0])
    fake = G(torch.randn(32, 4))
    optD.zero_grad()
    lossD = torch.relu(1.0 - D(real)).mean() + torch.relu(1.0 + D(fake.detach())).mean()
    lossD.backward()
    optD.step()
    optG.zero_grad()
    lossG = -D(fake).mean()
    lossG.backward()
    optG.step()
    if step % 3 == 0:
        print(f"step {step} lossD {lossD.item():.4f} lossG {lossG.item():.4f}")
D.eval()  # (no power iteration in eval mode: sigma from the vectors as they are)
with torch.no_grad():
    print("score", D(torch.tensor([[2.0, -1.0]])).item())
