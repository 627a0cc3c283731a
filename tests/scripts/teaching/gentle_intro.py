"""A first look at autograd: a vector-valued Q, backward with an explicit gradient, and checking .grad by hand
(the shape of torch's "gentle introduction", in our own words)."""
import torch

a = torch.tensor([2.0, 3.0], requires_grad=True)
b = torch.tensor([6.0, 4.0], requires_grad=True)
Q = 3 * a**3 - b**2
Q.backward(gradient=torch.tensor([1.0, 1.0]))
print(9 * a**2 == a.grad)
print(-2 * b == b.grad)
