"""A backprop lecture's exercise, our own words: a two-layer net on a batch of 32 points, retain_grad on every
intermediate, a manual backward compared with autograd's."""
import torch

torch.manual_seed(0)
X = torch.randn(32, 10)
Y = torch.randint(0, 3, (32,))
W1 = (torch.randn(10, 16) * 0.3).requires_grad_()
b1 = torch.zeros(16, requires_grad=True)
W2 = (torch.randn(16, 3) * 0.3).requires_grad_()
hpre = X @ W1 + b1
h = torch.tanh(hpre)
logits = h @ W2
logp = logits.log_softmax(1)
loss = -logp[range(32), Y].mean()
for t in (hpre, h, logits, logp):
    t.retain_grad()
loss.backward()
dlogits = torch.softmax(logits, 1)
dlogits[range(32), Y] -= 1
dlogits /= 32
print(torch.allclose(dlogits, logits.grad))
