"""One chunk of points with its numbers: what the cheap test computed, and the detailed test reads."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sympy
import torch

from .subject import Run

__all__ = ["Chunk"]


@dataclass
class Chunk:
    """One chunk's numbers, shared by the cheap and the detailed test."""

    start: int
    n: int
    x64: dict[str, torch.Tensor]  # the points as rounded to the dtype, in float64
    xd: dict[str, torch.Tensor]  # the same in the dtype
    autograd: Run | None  # (None for candidates gathered from several chunks: see `deferred`)
    env: dict[sympy.Symbol, Any]
    outside: torch.Tensor | None = None  # points not compared (outside the domain, ill-conditioned, ...)
    index: torch.Tensor | None = None  # gathered candidates: each one's index in the point set (else start + i)

    def point_index(self, i: int) -> int:
        """Point `i` of this chunk's index in the point set."""
        return self.start + i if self.index is None else int(self.index[i])

    @property
    def key(self) -> int:
        """Tells this chunk from every other of the check (gathered ones are negative)."""
        return self.start if self.index is None else -1 - int(self.index[0])
