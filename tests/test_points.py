"""judge/points.py: the sampled points come from each variable's seeded stream, whatever the chunks and whichever
threads draw them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gradcheck_sym.judge import points as P

DOMAIN = {"x": (-1.0, 1.0), "y": (0.5, 2.0), "z": (0.0, 1.0)}


def _all(ps: P.PointSet, size: int) -> dict[str, torch.Tensor]:
    parts = [chunk for _, chunk in ps.chunks(size)]
    return {name: torch.cat([p[name] for p in parts]) for name in parts[0]}


def _uniform(n: int, seed: int, index: int, count: int = 3) -> torch.Tensor:
    """`n` draws in [0, 1) of variable `index`'s stream of `count`, made as the module documents it (not by its
    code)."""
    child = np.random.SeedSequence(seed).spawn(count)[index]
    return torch.from_numpy(np.random.Generator(np.random.PCG64(child)).random(n))


def test_points_are_each_variables_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(P, "PARALLEL_DRAW", 1)  # drawn in two threads
    got = _all(P.make_points(["x", "y", "z"], domain=DOMAIN, samples=5000, seed=7), 5000)
    for i, (name, (lo, hi)) in enumerate(DOMAIN.items()):
        expected = _uniform(5000, 7, i).mul_(hi - lo).add_(lo)
        assert torch.equal(got[name], expected)


@pytest.mark.parametrize("size", [100_000, 7_001, 1])
def test_the_same_points_whatever_the_chunks_and_threads(monkeypatch: pytest.MonkeyPatch, size: int) -> None:
    ps = P.make_points(["x", "y", "z"], domain=DOMAIN, samples=100_000 if size > 1 else 50, seed=3)
    monkeypatch.setattr(P, "PARALLEL_DRAW", 10**9)
    one_thread = _all(ps, ps.n)
    monkeypatch.setattr(P, "PARALLEL_DRAW", 1)
    two_threads = _all(ps, size)
    for name, (lo, hi) in DOMAIN.items():
        assert torch.equal(one_thread[name], two_threads[name])
        assert bool(((two_threads[name] >= lo) & (two_threads[name] <= hi)).all())


def test_a_given_first_point_leads_the_samples(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(P, "PARALLEL_DRAW", 1)
    ps = P.PointSet(("x", "y"), 6, {}, {"x": (0.0, 1.0), "y": (2.0, 3.0)}, 1, first={"x": 0.25, "y": 2.5})
    (start, chunk), (start2, chunk2) = list(ps.chunks(3))
    assert (start, start2) == (0, 3)
    assert chunk["x"][0].item() == 0.25 and chunk["y"][0].item() == 2.5
    for i, name in enumerate(("x", "y")):
        lo = (0.0, 2.0)[i]
        expected = _uniform(5, 1, i, 2).add_(lo)
        assert torch.equal(torch.cat([chunk[name][1:], chunk2[name]]), expected)


def test_a_box_wider_than_the_largest_float() -> None:
    ps = P.PointSet(("x",), 1000, {}, {"x": (-1.7e308, 1.7e308)}, 0)
    x = _all(ps, 1000)["x"]
    assert bool(torch.isfinite(x).all()) and x.min().item() < -1e307 and x.max().item() > 1e307


def test_a_first_point_without_every_variable_is_an_error() -> None:
    ps = P.PointSet(("x", "y"), 3, {}, {"x": (0.0, 1.0), "y": (5.0, 6.0)}, 1, first={"x": 0.5})
    with pytest.raises(KeyError):
        list(ps.chunks(3))  # (never 0.0 for y, outside its box)
