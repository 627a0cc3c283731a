"""A backward run in another thread."""
import threading

import torch

w = torch.tensor([0.5, 1.5], requires_grad=True)


def work():
    (w * w * w).sum().backward()


t = threading.Thread(target=work)
t.start()
t.join()
print(w.grad)
