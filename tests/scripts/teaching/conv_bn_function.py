"""Conv and batch norm written as custom autograd Functions with hand-derived backwards (the shape of a tutorial
on fusing them), used in a training step: the backwards must match the exact derivatives."""
import torch
import torch.nn.functional as F


class Conv2D(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w):
        ctx.save_for_backward(x, w)
        return F.conv2d(x, w)

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        gx = torch.nn.grad.conv2d_input(x.shape, w, g)
        gw = torch.nn.grad.conv2d_weight(x, w.shape, g)
        return gx, gw


class BatchNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, eps=1e-3):
        dims = (0, 2, 3)
        mean = x.mean(dims, keepdim=True)
        var = x.var(dims, unbiased=True, keepdim=True)
        inv = 1 / torch.sqrt(var + eps)
        xh = (x - mean) * inv
        ctx.save_for_backward(xh, inv)
        ctx.n = x.numel() // x.shape[1]
        return xh

    @staticmethod
    def backward(ctx, g):
        xh, inv = ctx.saved_tensors
        n, dims = ctx.n, (0, 2, 3)
        gx = inv * (g - g.mean(dims, keepdim=True) - xh * (g * xh).sum(dims, keepdim=True) / (n - 1))
        return gx, None


torch.manual_seed(0)
x = torch.randn(2, 3, 6, 6, dtype=torch.double)
w = torch.randn(4, 3, 3, 3, dtype=torch.double, requires_grad=True)
out = BatchNorm.apply(Conv2D.apply(x, w))
loss = (out * torch.linspace(-1, 1, 4, dtype=torch.double).view(1, 4, 1, 1)).pow(2).sum()
loss.backward()
print(w.grad.norm())
