"""Autograd's modes inside a check: set explicitly, restored afterwards.

A check called under ``torch.no_grad()``, ``torch.inference_mode()`` or after
``torch.set_grad_enabled(False)`` must still see autograd record its graph: the caller's
modes are the caller's business, not the check's input.  Both modes are thread-local in
torch, so setting them here changes nothing for other threads, and the context managers
restore the caller's modes on exit (also on an exception).
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

__all__ = ["autograd_on"]


@contextlib.contextmanager
def autograd_on() -> Iterator[None]:
    """Grad mode on and inference mode off for the block; the caller's modes come back after it.

    Example:
        >>> with torch.no_grad(), autograd_on():
        ...     torch.ones(1, requires_grad=True).mul(2).requires_grad
        True
    """
    with torch.inference_mode(False), torch.enable_grad():
        yield
