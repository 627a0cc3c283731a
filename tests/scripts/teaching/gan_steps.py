"""A GAN trained the way the DCGAN tutorial trains one (our version, small MLPs on 2-D points): the discriminator's
step on real and on `fake.detach()`, then the generator's step through the discriminator; BCELoss, Adam (betas 0.5)."""
import torch
import torch.nn as nn

torch.manual_seed(0)
G = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))
D = nn.Sequential(nn.Linear(2, 16), nn.LeakyReLU(0.2), nn.Linear(16, 1), nn.Sigmoid())
criterion = nn.BCELoss()
optD = torch.optim.Adam(D.parameters(), lr=2e-3, betas=(0.5, 0.999))
optG = torch.optim.Adam(G.parameters(), lr=2e-3, betas=(0.5, 0.999))
real_label, fake_label = 1.0, 0.0
for step in range(8):
    real = torch.randn(32, 2) * 0.5 + torch.tensor([2.0, -1.0])
    D.zero_grad()
    label = torch.full((32,), real_label)
    errD_real = criterion(D(real).view(-1), label)
    errD_real.backward()
    noise = torch.randn(32, 4)
    fake = G(noise)
    label.fill_(fake_label)
    errD_fake = criterion(D(fake.detach()).view(-1), label)
    errD_fake.backward()
    optD.step()
    G.zero_grad()
    label.fill_(real_label)
    errG = criterion(D(fake).view(-1), label)
    errG.backward()
    optG.step()
    if step % 4 == 0:
        print(f"step {step} lossD {(errD_real + errD_fake).item():.4f} lossG {errG.item():.4f}")
