"""Conv2d and batch norm fused into one custom Function with a hand-derived backward, in a small float32 net
trained for a few steps (the shape of a published tutorial on fusing them; our own version)."""
import torch
import torch.nn.functional as F

SCALE = 1.0  # the backward's factor: 1 is right (a test sets another to check that a wrong one is found)


class FusedConvBN(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, eps=1e-3):
        y = F.conv2d(x, w)
        n = y.numel() // y.shape[1]
        mean = y.sum((0, 2, 3), keepdim=True) / n
        var = ((y - mean) ** 2).sum((0, 2, 3), keepdim=True) / (n - 1)
        inv = 1 / torch.sqrt(var + eps)
        ctx.save_for_backward(x, w, y, mean, inv)
        return (y - mean) * inv

    @staticmethod
    def backward(ctx, g):
        x, w, y, mean, inv = ctx.saved_tensors
        n = y.numel() // y.shape[1]
        xh = (y - mean) * inv
        gy = inv * (g - g.sum((0, 2, 3), keepdim=True) / n - xh * (g * xh).sum((0, 2, 3), keepdim=True) / (n - 1))
        gy = gy * SCALE
        gx = torch.nn.grad.conv2d_input(x.shape, w, gy)
        gw = torch.nn.grad.conv2d_weight(x, w.shape, gy)
        return gx, gw, None


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w1 = torch.nn.Parameter(torch.randn(8, 1, 3, 3) / 3)
        self.w2 = torch.nn.Parameter(torch.randn(16, 8, 3, 3) / 8)
        self.fc = torch.nn.Linear(16 * 6 * 6, 10)

    def forward(self, x):
        x = F.relu(FusedConvBN.apply(x, self.w1))
        x = F.max_pool2d(F.relu(FusedConvBN.apply(x, self.w2)), 2)
        return F.log_softmax(self.fc(torch.flatten(x, 1)), dim=1)


torch.manual_seed(0)
net = Net()
opt = torch.optim.Adadelta(net.parameters(), lr=1.0)
for step in range(3):
    x = torch.randn(16, 1, 16, 16)
    y = torch.randint(0, 10, (16,))
    opt.zero_grad()
    loss = F.nll_loss(net(x), y)
    loss.backward()
    opt.step()
print("loss", round(loss.item(), 3))
