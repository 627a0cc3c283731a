"""A gradient penalty: backward through gradients made with create_graph=True."""
import torch

w = torch.tensor([0.5, -1.5, 2.0], requires_grad=True)
loss = (w.sin() * w).sum()
(g,) = torch.autograd.grad(loss, w, create_graph=True)
penalty = (g * g).sum()
penalty.backward()
print(w.grad)
