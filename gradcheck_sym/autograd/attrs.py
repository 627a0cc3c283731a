"""A tensor's autograd attributes, read without raising.

torch raises on reading ``is_leaf`` or ``grad_fn`` of a view made under ``no_grad`` once its base was changed in
place (``with torch.no_grad(): w[0].fill_(0)``, as ``nn.Embedding(padding_idx=...)`` does to its weight): the view
is unusable by autograd, and torch says so the moment anyone asks.  The script never asks; the tracer and the judge
ask about every tensor they see, and must not raise the script's error for it.  For such a view these give what
torch said before the change: a leaf, with no ``grad_fn``.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["is_leaf", "grad_fn", "grad_fn_name", "leaf_window", "own_leaf"]


def is_leaf(t: torch.Tensor) -> bool:
    """``t.is_leaf`` (True for a view torch refuses to describe: see the module docstring)."""
    try:
        return t.is_leaf
    except RuntimeError:
        return True


def grad_fn(t: torch.Tensor) -> Any:
    """``t.grad_fn`` (None for a view torch refuses to describe: see the module docstring)."""
    try:
        return t.grad_fn
    except RuntimeError:
        return None


def grad_fn_name(t: torch.Tensor) -> str | None:
    """The class name of `t`'s grad_fn (``"MulBackward0"``), or None."""
    fn = grad_fn(t)
    return None if fn is None else type(fn).__name__


def leaf_window(t: torch.Tensor) -> bool:
    """`t` is a view of a leaf that requires grad, taken under no_grad (`w[0]` in `nn.Embedding`'s padding_idx
    init): a leaf to torch, but no tensor of its own; what is written through it is a new value of the leaf."""
    base = t._base
    return base is not None and base.requires_grad and is_leaf(base) and is_leaf(t)


def own_leaf(t: torch.Tensor) -> bool:
    """A leaf autograd follows with no other tensor behind it (not a `leaf_window`): two such leaves on one storage
    (`xb = x.detach().requires_grad_()`, twice) are two leaves to autograd, never a view of each other."""
    return t.requires_grad and is_leaf(t) and not leaf_window(t)
