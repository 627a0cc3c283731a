"""judge/deferred.py: candidates of the detailed test gathered over chunks give the report one chunk gives."""

from __future__ import annotations

import torch

import gradcheck_sym as gs
from gradcheck_sym.judge import deferred as D


def _summary(r: gs.Report) -> tuple:
    findings = [(f.kind, f.severity, f.node, f.count,  # (repr: NaN is not equal to itself)
                 [(e.index, e.point, repr(e.autograd), repr(e.symbolic), repr(e.tol)) for e in f.examples])
                for f in r.findings]
    return r.ok, r.checked, r.high_precision_points, findings


def test_take_joins_the_chunks_candidates_in_order() -> None:
    d = D.Deferred(3)
    x = torch.arange(10, dtype=torch.float64)
    first = torch.zeros(10, dtype=torch.bool)
    first[[2, 7]] = True
    bad = [None, first.clone(), None]
    assert not d.add(100, first, {"x": x}, {"x": x.float()}, bad, {4: first.clone()})
    second = torch.zeros(10, dtype=torch.bool)
    second[5] = True
    assert not d.add(110, second, {"x": x + 10}, {"x": (x + 10).float()}, [second.clone(), None, None], {})
    assert d.count == 3
    g = d.take()
    assert g is not None and d.count == 0 and d.take() is None
    assert g.index.tolist() == [102, 107, 115]
    assert g.x64["x"].tolist() == [2.0, 7.0, 15.0] and g.xd["x"].dtype == torch.float32
    assert g.bad[0].tolist() == [False, False, True]  # (nothing failed for quantity 0 in the first chunk)
    assert g.bad[1].tolist() == [True, True, False]
    assert g.bad[2] is None
    assert g.kinks[4].tolist() == [True, True, False]  # (the second chunk sits at no kink)


def test_a_full_wait_asks_to_be_tested(monkeypatch) -> None:
    monkeypatch.setattr(D, "LIMIT", 4)
    d = D.Deferred(1)
    mask = torch.tensor([True, True, False, True])
    assert not d.add(0, mask, {"x": torch.zeros(4)}, {"x": torch.zeros(4)}, [mask], {})
    assert d.add(4, mask, {"x": torch.zeros(4)}, {"x": torch.zeros(4)}, [mask], {})


def test_candidates_past_the_leading_points_give_the_report_one_chunk_gives() -> None:
    # NaN gradients of where() at the negative points (found by the detailed test), in every chunk
    text, domain = "where(x > 0, sqrt(x), 0) + x*y", {"x": (-1.0, 1.0), "y": (0.5, 2.0)}
    one = gs.check(text, domain=domain, samples=24_000, seed=4, chunk_size=24_000)
    many = gs.check(text, domain=domain, samples=24_000, seed=4, chunk_size=3_500)
    assert not one.ok and one.findings[0].kind == "nonfinite" and one.findings[0].count > 10_000
    assert _summary(many) == _summary(one)


def test_points_at_kinks_in_later_chunks_are_judged_as_in_one_chunk() -> None:
    # relu and abs at exactly 0 (kinks: torch's convention there) and a cancellation the cheap test sends on
    n = 40_000
    x = torch.linspace(-2.0, 2.0, n, dtype=torch.float64)
    x[[12_000, 25_000, 39_000]] = 0.0
    y = torch.linspace(0.5, 1.5, n, dtype=torch.float64)
    text = "relu(x)*y + abs(x) + sin(x)*exp(y) - log(1 + x**2)/y"
    one = gs.check(text, at={"x": x, "y": y}, chunk_size=n)
    many = gs.check(text, at={"x": x, "y": y}, chunk_size=3_000)
    kinds = {f.kind for f in one.findings}
    assert "nondifferentiable" in kinds
    assert _summary(many) == _summary(one)
