"""What the linear-algebra primitives and rules share: masks, block index maps, error-bound
helpers, and the object-array path that applies mpmath or sympy one matrix at a time."""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import mpmath
import numpy as np
import sympy
import torch

from .ew import ADD, MUL
from .prims import ew, mT, segsum, shape_of, take
from .prims_base import _obj

__all__ = ["FLIP", "gamma_n", "eye", "tri_mask", "masked", "sym", "take_core", "place_core", "rows_of", "cols_of",
           "put_block", "inv_abs", "sum_abs", "fro_norm", "is_symbolic", "mp_matrix", "from_mp", "obj_per_matrix",
           "sym_matrix", "sym_to_np"]

F64 = torch.float64
# The triangle of a transposed triangular matrix.
FLIP = {None: None, "lower": "upper", "upper": "lower"}


# ---------------------------------------------------------------- masks and blocks
def gamma_n(n: int, u: float) -> float:
    """The backward error allowed to a factorisation of order n, in units of the entries' magnitudes."""
    return 8.0 * max(n, 1) * u


def eye(n: int, batch: Sequence[int] = ()) -> torch.Tensor:
    return torch.eye(n, dtype=F64).expand(tuple(batch) + (n, n))


def tri_mask(m: int, n: int, *, lower: bool, diagonal: float = 1.0, strict: bool = False) -> torch.Tensor:
    """0/1 mask of the lower (or upper) triangle of an m x n matrix; `diagonal` scales its diagonal."""
    i = torch.arange(m).reshape(m, 1)
    j = torch.arange(n).reshape(1, n)
    inside = (i > j) if lower else (i < j)
    mask = inside.to(F64)
    if not strict:
        mask = mask + diagonal * (i == j).to(F64)
    return mask


def masked(h: Any, mask: torch.Tensor) -> Any:
    """h * mask (a constant 0/1 mask): a linear map, its own transpose."""
    return ew(MUL, h, mask)


def sym(h: Any) -> Any:
    """(h + hᵀ) / 2."""
    return ew(MUL, ew(ADD, h, mT(h)), 0.5)


def _batch_index(batch: tuple[int, ...], core: int, extra: int) -> torch.Tensor:
    n = math.prod(batch)
    return (torch.arange(n) * core).reshape(batch + (1,) * extra)


def take_core(h: Any, core_index: torch.Tensor) -> Any:
    """Gather within each matrix of a batch: out[b, ...] = h[b].flatten()[core_index[...]]."""
    shape = shape_of(h)
    batch, core = shape[:-2], shape[-2] * shape[-1]
    return take(h, _batch_index(batch, core, core_index.dim()) + core_index)


def place_core(h: Any, core_index: torch.Tensor, core_shape: tuple[int, int]) -> Any:
    """Scatter each matrix of a batch into zeros of `core_shape` at positions `core_index` (same shape)."""
    shape = shape_of(h)
    batch = shape[:-2]
    index = _batch_index(batch, core_shape[0] * core_shape[1], 2) + core_index
    return segsum(h, index.expand(shape), batch + core_shape)


def rows_of(h: Any, start: int, stop: int) -> Any:
    """Rows start:stop of each matrix."""
    n = shape_of(h)[-1]
    return take_core(h, torch.arange(start, stop).reshape(-1, 1) * n + torch.arange(n).reshape(1, n))


def cols_of(h: Any, start: int, stop: int) -> Any:
    """Columns start:stop of each matrix."""
    m, n = shape_of(h)[-2:]
    return take_core(h, torch.arange(m).reshape(m, 1) * n + torch.arange(start, stop).reshape(1, -1))


def put_block(h: Any, shape: tuple[int, int], row0: int, col0: int) -> Any:
    """Each matrix of h (..., r, s) placed at (row0, col0) of zeros (..., *shape)."""
    r, s = shape_of(h)[-2:]
    index = (torch.arange(r).reshape(r, 1) + row0) * shape[1] + torch.arange(s).reshape(1, s) + col0
    return place_core(h, index, shape)


# ---------------------------------------------------------------- error-bound helpers
def fro_norm(x: torch.Tensor) -> torch.Tensor:
    """Frobenius norm of each matrix, as (..., 1, 1)."""
    return x.pow(2).sum(dim=(-2, -1), keepdim=True).sqrt()


def inv_abs(a: torch.Tensor) -> torch.Tensor:
    """|A⁻¹| for an error bound: inf where A is singular (no bound there, rather than an exception)."""
    res, info = torch.linalg.inv_ex(a)
    singular = (info != 0).reshape(tuple(info.shape) + (1, 1))
    return torch.where(singular | ~torch.isfinite(res), torch.full((), float("inf"), dtype=F64), res.abs())


def sum_abs(e: Any, like: torch.Tensor) -> torch.Tensor:
    """Sum of |e| over each matrix (a bound on its 2-norm), as (..., 1, 1); 0 for no error."""
    if e is None:
        return torch.zeros(like.shape[:-2] + (1, 1), dtype=F64)
    return e.abs().expand(like.shape).sum(dim=(-2, -1), keepdim=True)


# ---------------------------------------------------------------- object arrays: one matrix at a time
def is_symbolic(*arrays: Any) -> bool:
    return any(isinstance(e, sympy.Basic) for a in arrays for e in np.asarray(a, dtype=object).reshape(-1))


def mp_matrix(a: np.ndarray) -> Any:
    rows, cols = a.shape
    return mpmath.matrix([[mpmath.mpf(a[i, j]) if not isinstance(a[i, j], mpmath.mpf) else a[i, j]
                           for j in range(cols)] for i in range(rows)]) if rows and cols else mpmath.matrix(rows, cols)


def from_mp(m: Any, rows: int, cols: int) -> np.ndarray:
    out = np.empty((rows, cols), dtype=object)
    for i in range(rows):
        for j in range(cols):
            out[i, j] = m[i, j]
    return out


def obj_per_matrix(prim_impl: Callable[..., Any], one: Callable[..., Any], args: Sequence[Any],
                   core_dims: Sequence[int], **params: Any) -> Any:
    """Apply `one` (numpy object matrices -> object array or tuple) to each matrix of the broadcast batch.

    `prim_impl` (the torch rule) gives the output shapes on meta tensors, so empty batches work.
    """
    arrays = [np.asarray(_obj(a), dtype=object) for a in args]
    batch = np.broadcast_shapes(*[a.shape[:a.ndim - k] for a, k in zip(arrays, core_dims)])
    metas = prim_impl(*[torch.empty(a.shape, dtype=F64, device="meta") for a in arrays], **params)
    multiple = isinstance(metas, tuple)
    metas = metas if multiple else (metas,)
    outs = [np.empty(tuple(m.shape), dtype=object) for m in metas]
    wide = [np.broadcast_to(a, tuple(batch) + a.shape[a.ndim - k:]) for a, k in zip(arrays, core_dims)]
    for idx in np.ndindex(*batch):
        got = one(*[w[idx] for w in wide], **params)
        got = got if multiple else (got,)
        for o, g in zip(outs, got):
            o[idx] = np.asarray(g, dtype=object).reshape(o.shape[len(batch):])
    return tuple(outs) if multiple else outs[0]


def sym_matrix(a: np.ndarray) -> Any:
    return sympy.Matrix(a.tolist())


def sym_to_np(m: Any) -> np.ndarray:
    return np.array(m.tolist(), dtype=object).reshape(m.shape)
