"""Hooks for the tensors autograd saves (the shape of a published tutorial; our own version): identity and
printing pack/unpack hooks, a pack hook that keeps a copy, save_on_cpu around a small model, a hook registered on
one saved tensor, and, last, an unpack hook that returns twice the saved value: a wrong gradient, the one finding."""
import torch
from torch import nn

torch.manual_seed(0)
x = torch.randn(5, requires_grad=True)
y = x.pow(2)
print(y.grad_fn._saved_self.equal(x), type(y.grad_fn._raw_saved_self).__name__)
y.sum().backward()


def pack_hook(t):
    print("packing", tuple(t.shape))
    return t


def unpack_hook(t):
    print("unpacking", tuple(t.shape))
    return t


a = torch.ones(5, requires_grad=True)
b = torch.ones(5, requires_grad=True) * 2
with torch.autograd.graph.saved_tensors_hooks(pack_hook, unpack_hook):
    y = a * b
y.sum().backward()
print(a.grad)

with torch.autograd.graph.saved_tensors_hooks(lambda t: (t.device, t.clone()), lambda p: p[1].to(p[0])):
    z = x.sin().exp() * x
z.sum().backward()
print(x.grad)

model = nn.Sequential(nn.Linear(10, 100), nn.ReLU(), nn.Linear(100, 1))
with torch.autograd.graph.save_on_cpu():
    loss = model(torch.randn(8, 10)).pow(2).mean()
loss.backward()

w = torch.randn(5, requires_grad=True)
y = w.pow(2)
y.grad_fn._raw_saved_self.register_hooks(lambda t: t.clone(), lambda t: t)
y.sum().backward()
print(torch.allclose(w.grad, 2 * w))

v = torch.randn(5, requires_grad=True)
with torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t * 2):
    y = (v * v).sin()
y.sum().backward()
print(torch.allclose(v.grad, 2 * v * torch.cos(v * v)))
