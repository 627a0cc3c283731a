"""Where to check: explicit points (`at`) or seeded uniform samples from boxes (`domain`).

Samples are drawn per variable from its own numpy PCG64 stream, seeded through
`numpy.random.SeedSequence(seed).spawn`, so the points do not depend on how the batch is
split into chunks (a generator's stream is sequential).  PCG64 fills a float64 array about twice as fast as
torch's CPU generator (Mersenne Twister), and it fills without the GIL: large chunks draw the variables in two
threads (each stream its own generator: the same points whatever the threads' order), into their place in the
chunk.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import os
import secrets
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch

from ..errors import InputError, unusual_letters

__all__ = ["PointSet", "make_points"]


@dataclass(frozen=True)
class PointSet:
    """A batch of points, produced chunk by chunk.

    Attributes:
        names: the variables, in graph order.
        n: number of points.
        fixed: variable -> array of explicit values (length n, or 1 to broadcast).
        boxes: variable -> (low, high) for sampled variables.
        seed: the seed used for sampling (None when nothing is sampled).
        first: a point checked before the samples (the given inputs of a traced function), or None.
    """

    names: tuple[str, ...]
    n: int
    fixed: dict[str, np.ndarray]
    boxes: dict[str, tuple[float, float]]
    seed: int | None
    first: dict[str, float] | None = None

    def chunks(self, size: int) -> Iterator[tuple[int, dict[str, torch.Tensor]]]:
        """Yield (offset, {name: float64 tensor}) for consecutive chunks of at most `size` points."""
        streams = {}
        if self.boxes:
            children = np.random.SeedSequence(self.seed).spawn(len(self.names))
            streams = {name: np.random.Generator(np.random.PCG64(children[i]))
                       for i, name in enumerate(self.names) if name in self.boxes}
        boxed = [name for name in self.names if name in self.boxes]
        threads = min(size, self.n) >= PARALLEL_DRAW and len(boxed) > 1 and _cores() > 1
        # (one pool for every chunk: two threads started per chunk cost more than they saved)
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="gradcheck-sym-draw") if threads else \
                contextlib.nullcontext() as pool:
            for start in range(0, self.n, size):
                m = min(size, self.n - start)
                lead = 1 if self.first is not None and start == 0 else 0
                # (allocated here, filled in place: memory a worker thread allocates comes from its own arena,
                # fresh pages that cost more to fault in than the drawing saved)
                drawn = {name: torch.empty(m, dtype=torch.float64) for name in boxed}
                jobs = [(drawn[name][lead:].numpy(), streams[name]) for name in boxed]
                if pool is not None:  # a generator fills its array without the GIL: two streams at a time
                    list(pool.map(_fill, jobs))
                else:
                    for job in jobs:
                        _fill(job)
                for name in boxed:  # (in this thread: torch's kernels use torch's own threads)
                    _scale(drawn[name][lead:], self.boxes[name])
                    if lead and self.first is not None:
                        drawn[name][0] = self.first[name]  # (a first point names every variable)
                chunk = {}
                for name in self.names:
                    if name in drawn:
                        chunk[name] = drawn[name]
                    else:
                        values = torch.from_numpy(self.fixed[name])
                        chunk[name] = values.expand(m) if values.numel() == 1 else values[start : start + m]
                yield start, chunk


# From this many points per chunk, the sampled variables are drawn in two threads.
PARALLEL_DRAW = 1 << 16


def _cores() -> int:
    """The cores this process may run on (its affinity: a container's or a taskset's, not the machine's)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # (not on every platform)
        return os.cpu_count() or 1


def _fill(job: tuple[np.ndarray, np.random.Generator]) -> None:
    """An array filled with uniform draws in [0, 1) from a stream, in place."""
    out, stream = job
    stream.random(out=out)


def _scale(body: torch.Tensor, box: tuple[float, float]) -> None:
    """Uniform draws in [0, 1) moved into `box`, in place."""
    lo, hi = box
    if math.isinf(hi - lo):  # a box wider than the largest float: lo (1 - r) + hi r
        body.copy_(lo * (1 - body) + hi * body)
    else:
        body.mul_(hi - lo).add_(lo)


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        if hasattr(value, "item") and getattr(value, "size", 1) == 1:  # numpy / torch scalars
            return _number(value.item(), what)
        raise InputError(f"{what} must be a real number, not {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise InputError(f"{what} must be finite, not {v}")
    return v


def _values(value: Any, name: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray) and value.ndim == 1 and value.size:
        # Arrays of points (millions of them): checked in one vectorised pass.
        if not (np.issubdtype(value.dtype, np.floating) or np.issubdtype(value.dtype, np.integer)):
            raise InputError(f"the values of {name!r} must be real numbers, not {value.dtype}")
        arr = np.ascontiguousarray(value, dtype=np.float64)
        bad = np.flatnonzero(~np.isfinite(arr))
        if bad.size:
            raise InputError(f"the value of {name!r} must be finite, not {arr[bad[0]]} (at index {bad[0]})")
        return arr
    if isinstance(value, (str, bytes)):
        raise InputError(f"the value of {name!r} must be a number or a list of numbers, not {value!r}")
    if isinstance(value, Sequence) or (hasattr(value, "__len__") and not hasattr(value, "item")) or (
        hasattr(value, "shape") and getattr(value, "ndim", 0) > 0
    ):
        items = list(value)
        if not items:
            raise InputError(f"the value list of {name!r} is empty")
        return np.array([_number(v, f"the value of {name!r}") for v in items], dtype=np.float64)
    return np.array([_number(value, f"the value of {name!r}")], dtype=np.float64)


def make_points(
    variables: Sequence[str],
    *,
    at: Mapping[str, Any] | None = None,
    domain: Mapping[str, Any] | None = None,
    samples: int | None = None,
    seed: int | None = None,
    max_points: int = 10**9,
) -> PointSet:
    """Check and combine `at` and `domain` into a `PointSet`.

    Args:
        variables: the graph's variables.
        at: variable -> value or list of values (lists must share one length).
        domain: variable -> (low, high): sampled uniformly; variables also in `at` are held
            fixed at a single value.
        samples: number of sampled points (default 100 when `domain` is given).
        seed: integer seed; None draws one (it is recorded in the report).
        max_points: the limit on the number of points.

    Raises:
        InputError: unknown or missing variables, non-numeric values, bad ranges.
    """
    at = dict(at or {})
    domain = dict(domain or {})
    known = set(variables)
    for where, mapping in (("at", at), ("domain", domain)):
        for name in mapping:
            if name not in known:
                listed = ", ".join(v + unusual_letters(v) for v in variables) if variables else "no variables"
                raise InputError(f"unknown variable {name!r}{unusual_letters(name)} in {where}: the expression uses "
                                 f"{listed}")
    both = set(at) & set(domain)
    if both:
        raise InputError(f"{sorted(both)[0]!r} is given in both at and domain: give it once")
    missing = [v for v in variables if v not in at and v not in domain]
    if missing:
        raise InputError(
            f"no value for {missing[0]!r}{unusual_letters(missing[0])}: give it in at (e.g. --at {missing[0]}=0.5) "
            f"or domain (e.g. --domain {missing[0]}=-1:1)"
        )
    if samples is not None:
        if isinstance(samples, bool) or not isinstance(samples, numbers.Integral) or samples < 1:
            raise InputError(f"samples must be a positive integer, not {samples!r}")
        if not domain:
            raise InputError("samples needs a domain to draw from: give domain (e.g. --domain x=-1:1)")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0):
        raise InputError(f"seed must be a non-negative integer, not {seed!r}")
    fixed = {name: _values(value, name) for name, value in at.items()}
    boxes: dict[str, tuple[float, float]] = {}
    for name, box in domain.items():
        if isinstance(box, (str, bytes)) or not isinstance(box, Sequence) or len(box) != 2:
            raise InputError(f"the domain of {name!r} must be a pair (low, high), not {box!r}")
        lo = _number(box[0], f"the low end of the domain of {name!r}")
        hi = _number(box[1], f"the high end of the domain of {name!r}")
        if lo > hi:
            raise InputError(f"the domain of {name!r} is empty: low {lo} > high {hi}")
        boxes[name] = (lo, hi)
    if boxes:
        n = int(samples) if samples is not None else 100
        long = [name for name, v in fixed.items() if v.size != 1]
        if long:
            raise InputError(f"{long[0]!r} has several values in at while other variables are sampled: give one value")
        if seed is None:
            seed = secrets.randbits(32)
    else:
        sizes = {v.size for v in fixed.values() if v.size != 1}
        if len(sizes) > 1:
            raise InputError("the value lists in at have different lengths: " + ", ".join(
                f"{name}: {v.size}" for name, v in fixed.items()))
        n = sizes.pop() if sizes else 1
        seed = None
    if n > max_points:
        from ..errors import LimitError

        raise LimitError(f"{n:,} points is more than the limit of {max_points:,}", "max_points", n, max_points)
    return PointSet(tuple(variables), n, fixed, boxes, seed)
