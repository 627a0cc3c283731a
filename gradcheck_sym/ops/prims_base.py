"""What every primitive of `prims` uses: shapes and broadcasting, numpy object arrays (the mpmath and sympy
path), the rounding of a sum, whether a value is differentiable."""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch

from .core import is_tensor

__all__ = ["F64", "shape_of", "broadcast_shape", "gamma_sum"]

F64 = torch.float64

# ---------------------------------------------------------------- helpers
def shape_of(x: Any) -> tuple[int, ...]:
    return tuple(x.shape) if hasattr(x, "shape") else ()


def _is_obj(x: Any) -> bool:
    return isinstance(x, np.ndarray)


def _obj(x: Any) -> Any:
    """A torch tensor as a numpy object array of mpmath/sympy-ready floats (exact conversion)."""
    if is_tensor(x):
        arr = x.detach().cpu()
        if arr.dtype == torch.bool:
            return arr.numpy().astype(object)
        if not arr.is_floating_point():
            return arr.numpy().astype(object)
        return arr.to(F64).numpy().astype(object)
    return x


def _np_index(index: Any) -> np.ndarray:
    return index.detach().cpu().numpy() if is_tensor(index) else np.asarray(index)


def gamma_sum(n: int) -> float:
    """Rounding of a sum of n terms, in units of u of the terms' absolute sum.

    Sequential summation can cost n - 1 roundings; torch's kernels sum in blocks and
    pairwise, and independent roundings grow like sqrt(n).  This is the allowance used.
    """
    if n <= 1:
        return 0.0
    return float(n - 1) if n <= 32 else 32.0 + 4.0 * math.sqrt(n)


def _abs(x: Any) -> Any:
    return x.abs() if is_tensor(x) else abs(x)


def broadcast_shape(*shapes: Sequence[int]) -> tuple[int, ...]:
    """numpy's broadcasting of shapes (torch.broadcast_shapes goes through torch._refs: slow per op)."""
    first = tuple(shapes[0])
    for s in shapes[1:]:  # (a loop, not all(genexpr): this runs for every elementwise primitive)
        if s != first:
            break
    else:
        return first
    shapes = [tuple(s) for s in shapes]
    n = max(len(s) for s in shapes)
    out = [1] * n
    for s in shapes:
        for i, d in enumerate(s, n - len(s)):
            if d != 1:
                if out[i] not in (1, d):
                    raise ValueError(f"shapes {shapes} do not broadcast")
                out[i] = d
    return tuple(out)


def _bshape(args: Sequence[Any]) -> tuple[int, ...]:
    shape: Any = ()
    for a in args:  # every argument 0-d or of one shape (a 0-d parameter times a batch): that shape, at once
        if not isinstance(a, torch.Tensor):
            break
        if a.shape:
            if shape and a.shape != shape:
                break
            shape = a.shape
    else:
        return tuple(shape)
    return broadcast_shape(*[shape_of(a) for a in args])


def _differentiable(a: Any) -> bool:
    if is_tensor(a):
        return a.is_floating_point()
    if _is_obj(a):
        return True
    return hasattr(a, "var")  # a recorded value
