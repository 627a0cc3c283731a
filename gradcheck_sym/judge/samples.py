"""Points for traced functions: the given inputs, then seeded samples near them or in a box.

Near the given inputs, each element is scaled by ``1 + d`` with ``d`` uniform in
[-0.1, 0.1] (an element that is 0 moves by up to 0.1 of its tensor's typical
magnitude instead): multiplicative, so a positive input stays positive — a ``sqrt``
checked at 0.01 is sampled at 0.009..0.011, inside its domain.  A sample where the
function's output is not finite while the given point's was is drawn again (at
most a few times): samples stay where the forward is defined.  In a `domain` box,
samples are uniform.
"""

from __future__ import annotations

import secrets
from typing import Any, Mapping, Sequence

import torch

from ..errors import InputError

__all__ = ["sample_points", "check_domain", "SPREAD"]

SPREAD = 0.1


def check_domain(domain: Any, names: Sequence[str]) -> dict[str, tuple[float, float]]:
    """Validate `domain` (input name -> (low, high)) and return it as floats."""
    if domain is None:
        return {}
    if not isinstance(domain, Mapping):
        raise InputError(f"domain must map input names to (low, high) pairs, not {type(domain).__name__}",
                         "e.g. domain={\"x\": (-1, 1)}")
    out = {}
    for name, box in domain.items():
        if name not in names:
            raise InputError(f"unknown input {name!r} in domain: the inputs are {', '.join(names)}")
        if isinstance(box, (str, bytes)) or not hasattr(box, "__len__") or len(box) != 2:
            raise InputError(f"the domain of {name!r} must be a (low, high) pair, not {box!r}")
        try:
            lo, hi = float(box[0]), float(box[1])
        except (TypeError, ValueError):
            raise InputError(f"the domain of {name!r} must be two numbers, not {box!r}") from None
        if not lo <= hi:
            raise InputError(f"the domain of {name!r} is empty: low {lo} > high {hi}")
        out[name] = (lo, hi)
    return out


def sample_points(values: Sequence[torch.Tensor], names: Sequence[str], samples: int, seed: int | None,
                  domain: dict[str, tuple[float, float]]) -> tuple[list[list[torch.Tensor]], int]:
    """(`samples` points, the seed used): each a list of tensors like `values`, float64."""
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise InputError(f"samples must be a positive integer, not {samples!r}")
    if seed is None:
        seed = secrets.randbits(32)
    gen = torch.Generator().manual_seed(int(seed))
    points = []
    for _ in range(samples):
        point = []
        for name, v in zip(names, values):
            base = v.detach().to(torch.float64)
            if name in domain:
                lo, hi = domain[name]
                point.append(torch.rand(base.shape, generator=gen, dtype=torch.float64) * (hi - lo) + lo)
                continue
            d = (torch.rand(base.shape, generator=gen, dtype=torch.float64) * 2 - 1) * SPREAD
            scale = base.abs().mean() if base.numel() and bool((base != 0).any()) else torch.tensor(1.0)
            point.append(torch.where(base != 0, base * (1 + d), d * scale))
        points.append(point)
    return points, int(seed)
