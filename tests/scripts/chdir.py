"""A script that changes directory: the report's files stay where they were asked for."""
import os
import tempfile

import torch

os.chdir(tempfile.gettempdir())
x = torch.tensor([1.0, -2.0], requires_grad=True)
(x.exp() * x).sum().backward()
