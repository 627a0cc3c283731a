"""Imported by the pool's forkserver: one tiny check, so every worker forked from it starts warm.

The first check in a process pays for sympy's and torch's lazy imports and first-call set-up
(about a second); done once here, before any fork, no worker pays it. Torch runs on one thread
here, so no thread pool exists to be copied into the forked workers.
"""

import torch

import gradcheck_sym as gs

torch.set_num_threads(1)
gs.check("sin(x)*exp(y) + log(1 + x**2)/y + sqrt(x)*tanh(y)", domain={"x": (0.5, 1.0), "y": (1.0, 2.0)}, samples=4,
         seed=0, order=2)
gs.check("where(x > 0, x**2, -x)", at={"x": [0.5, -0.5]}, dtype="float32")
