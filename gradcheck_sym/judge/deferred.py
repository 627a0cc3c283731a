"""The detailed test's candidates gathered over chunks, to be tested together.

Past the leading points (`tolerance.NODE_POINTS`) a chunk compares the inputs' gradients only, and the few points
that fail the cheap test there cost the detailed test about as much whichever chunk they came from: its re-run of
autograd and its noise trials take about as long for 3 points as for 3,000.  So those candidates wait here, with
what the detailed test reads about them (the point, its index in the point set, which quantities failed there, the
kinks it sits at), and are tested together: once at the end of the check, or whenever `LIMIT` have gathered.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["Deferred", "Gathered", "LIMIT"]

# Candidates held before they are tested (their points and flags only: a few bytes each).
LIMIT = 1 << 14


@dataclass(frozen=True)
class Gathered:
    """Candidate points gathered from one or more chunks, in point-set order.

    Attributes:
        x64, xd: the points (float64, and in the check's dtype).
        index: each point's index in the point set.
        bad: per quantity, where it failed the cheap test (None: nowhere).
        kinks: kink node id -> where the point sits at that kink.
    """

    x64: dict[str, torch.Tensor]
    xd: dict[str, torch.Tensor]
    index: torch.Tensor
    bad: list[torch.Tensor | None]
    kinks: dict[int, torch.Tensor]


class Deferred:
    """Candidates waiting for the detailed test (see the module docstring)."""

    def __init__(self, n_quantities: int) -> None:
        self.n_quantities = n_quantities
        self._parts: list[Gathered] = []
        self.count = 0

    def add(self, start: int, candidates: torch.Tensor, x64: dict[str, torch.Tensor], xd: dict[str, torch.Tensor],
            bad: list[torch.Tensor | None], kinks: dict[int, torch.Tensor]) -> bool:
        """Keep a chunk's candidates (`candidates`: a mask over the chunk starting at `start`); True when `LIMIT` or
        more are waiting."""
        idx = torch.nonzero(candidates).flatten()
        self._parts.append(Gathered({k: v[idx] for k, v in x64.items()}, {k: v[idx] for k, v in xd.items()},
                                    idx + start, [None if b is None else b[idx] for b in bad],
                                    {k: m[idx] for k, m in kinks.items()}))
        self.count += len(idx)
        return self.count >= LIMIT

    def take(self) -> Gathered | None:
        """Every waiting candidate as one `Gathered` (None when none waits); the wait starts again empty."""
        parts, self._parts, self.count = self._parts, [], 0
        if not parts:
            return None
        if len(parts) == 1:
            return parts[0]

        def joined(pieces: list[torch.Tensor | None]) -> torch.Tensor | None:
            """The pieces one after another; a missing piece is all False (nothing failed, no kink there)."""
            if all(p is None for p in pieces):
                return None
            return torch.cat([torch.zeros(len(part.index), dtype=torch.bool) if p is None else p
                              for p, part in zip(pieces, parts)])

        names = parts[0].x64.keys()
        kink_ids = sorted({k for part in parts for k in part.kinks})
        kinks = {k: joined([part.kinks.get(k) for part in parts]) for k in kink_ids}
        return Gathered({k: torch.cat([p.x64[k] for p in parts]) for k in names},
                        {k: torch.cat([p.xd[k] for p in parts]) for k in names},
                        torch.cat([p.index for p in parts]),
                        [joined([p.bad[i] for p in parts]) for i in range(self.n_quantities)],
                        {k: m for k, m in kinks.items() if m is not None})
