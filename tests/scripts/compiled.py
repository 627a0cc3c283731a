"""torch.compile'd functions: with the eager backend its ops are seen and verified; with aot_eager they run as
aten operations inside the compiled graph, which are reported as not verified."""
import sys

import torch

torch.manual_seed(0)
w = torch.randn(4, requires_grad=True)


def f(x):
    return (x.sin() * 2).sum()


compiled = torch.compile(f, backend=sys.argv[1] if len(sys.argv) > 1 else "eager")
loss = compiled(w)
loss.backward()
print(w.grad)
