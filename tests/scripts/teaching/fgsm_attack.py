"""Adversarial examples by the fast gradient sign method, as the tutorial makes them (our version, a small CNN
trained for a few steps on synthetic data): the input's gradient, `data.requires_grad = True` in the loop, the
perturbed image clamped, the model evaluated on it for each epsilon."""
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 10))
opt = torch.optim.SGD(model.parameters(), lr=0.05)
xs, ys = torch.rand(24, 1, 10, 10), torch.randint(0, 10, (24,))
for step in range(3):
    opt.zero_grad()
    F.cross_entropy(model(xs), ys).backward()
    opt.step()
model.eval()


def fgsm(image, epsilon, data_grad):
    return torch.clamp(image + epsilon * data_grad.sign(), 0, 1)


for epsilon in (0.0, 0.1, 0.3):
    correct = 0
    for i in range(4):
        data, target = xs[i:i + 1].clone(), ys[i:i + 1]
        data.requires_grad = True
        output = model(data)
        loss = F.nll_loss(F.log_softmax(output, dim=1), target)
        model.zero_grad()
        loss.backward()
        perturbed = fgsm(data, epsilon, data.grad.data)
        correct += int(model(perturbed).argmax(1).item() == target.item())
    print(f"epsilon {epsilon}: {correct}/4")
