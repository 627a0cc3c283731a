"""Conv + batch norm fused in a custom Function, trained like a published tutorial's MNIST example (our version,
synthetic 28x28 data): gradcheck of the Function first, then B-sized batches for N steps with Adadelta and StepLR,
an inference_mode test pass per epoch."""
import math
import os

import torch
import torch.nn.functional as F

B = int(os.environ.get("B", "16"))
N = int(os.environ.get("N", "4"))


class ConvBNFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, eps=1e-3):
        y = F.conv2d(x, w)
        n = y.numel() // y.shape[1]
        mean = y.sum((0, 2, 3), keepdim=True) / n
        var = ((y - mean) ** 2).sum((0, 2, 3), keepdim=True) / (n - 1)
        inv = 1 / torch.sqrt(var + eps)
        ctx.save_for_backward(x, w, mean, inv)
        ctx.eps = eps
        return (y - mean) * inv

    @staticmethod
    def backward(ctx, g):
        x, w, mean, inv = ctx.saved_tensors
        y = F.conv2d(x, w)  # recomputed: only the input is kept (the memory saving)
        n = y.numel() // y.shape[1]
        xh = (y - mean) * inv
        gy = inv * (g - g.sum((0, 2, 3), keepdim=True) / n - xh * (g * xh).sum((0, 2, 3), keepdim=True) / (n - 1))
        return torch.nn.grad.conv2d_input(x.shape, w, gy), torch.nn.grad.conv2d_weight(x, w.shape, gy), None


w = torch.rand(5, 3, 3, 3, dtype=torch.double, requires_grad=True)
xs = torch.rand(2, 3, 5, 5, dtype=torch.double, requires_grad=True)
print("gradcheck", torch.autograd.gradcheck(ConvBNFn.apply, (xs, w)))


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w1 = torch.nn.Parameter(torch.empty(32, 1, 3, 3))
        self.w2 = torch.nn.Parameter(torch.empty(64, 32, 3, 3))
        for p in (self.w1, self.w2):
            torch.nn.init.kaiming_uniform_(p, a=math.sqrt(5))
        self.fc1 = torch.nn.Linear(9216, 128)
        self.drop = torch.nn.Dropout(0.5)
        self.fc2 = torch.nn.Linear(128, 10)

    def forward(self, x):
        x = F.relu(ConvBNFn.apply(x, self.w1))
        x = F.relu(ConvBNFn.apply(x, self.w2))
        x = F.relu(F.max_pool2d(x, 2))
        x = F.relu(self.drop(self.fc1(x.flatten(1))))
        return F.log_softmax(self.fc2(x), dim=1)


torch.manual_seed(123456)
model = Net()
opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.7)
per_epoch = max(1, N // 2)
for step in range(N):
    model.train()
    data, target = torch.randn(B, 1, 28, 28), torch.randint(0, 10, (B,))
    opt.zero_grad()
    loss = F.nll_loss(model(data), target)
    loss.backward()
    opt.step()
    if step % 2 == 0:
        print(f"step {step} loss {loss.item():.6f}")
    if step % per_epoch == per_epoch - 1:
        model.eval()
        with torch.inference_mode():
            out = model(torch.randn(B, 1, 28, 28))
            print("test", int(out.argmax(1).eq(torch.randint(0, 10, (B,))).sum()))
        sched.step()
