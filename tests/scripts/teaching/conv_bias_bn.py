"""A float32 conv net with a conv bias before batch norm (nn modules, torch's own batch-norm backward): the bias's
gradient is 0 in the math and rounding noise in torch's run, which must be verified as such, not flagged."""
import torch

torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                          torch.nn.Flatten(), torch.nn.Linear(8 * 13 * 13, 10))
opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
x = torch.randn(32, 1, 28, 28)
y = torch.randint(0, 10, (32,))
for step in range(5):
    opt.zero_grad()
    loss = torch.nn.functional.cross_entropy(net(x), y)
    loss.backward()
    opt.step()
print("loss", round(loss.item(), 3))
