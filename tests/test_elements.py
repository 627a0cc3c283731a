"""The per-element verdicts (judge/elements.py): the loose-allowance rule in particular."""
import torch

from gradcheck_sym.judge.elements import LOOSE, WIDE, classify

U32 = 2.0**-24
TINY32 = torch.finfo(torch.float32).tiny


def _f64(*v: float) -> torch.Tensor:
    return torch.tensor(v, dtype=torch.float64)


def test_an_allowance_above_the_largest_entry_is_loose() -> None:
    r = _f64(1.0, 2.0, 3.0)
    a = r * (1 + 1e-3)  # fails the cheap test, passes under the bound
    v = classify(a, r, u=U32, tiny=TINY32, bound=lambda: _f64(0.5, 0.5, 0.5))
    assert v.ok and v.loose == 3


def test_a_cancelled_entry_with_a_large_allowance_of_its_own_is_not_loose() -> None:
    # the second entry is small by cancellation: its allowance is large relative to itself, but
    # small relative to the gradient's scale (ordinary floating point, not a bound that says nothing)
    r = _f64(1.0, 1e-6)
    a = _f64(1.0, 1.2e-6)
    v = classify(a, r, u=U32, tiny=TINY32, bound=lambda: _f64(0.0, 1e-6))
    assert v.ok and v.loose == 0


def test_a_tight_allowance_is_not_loose_and_a_mismatch_is_still_one() -> None:
    r = _f64(1.0, 2.0)
    a = _f64(1.0 + 1e-4, 2.5)
    v = classify(a, r, u=U32, tiny=TINY32, bound=lambda: _f64(1e-4 / 8, 1e-4 / 8))
    assert v.loose == 0
    assert v.masks["mismatch"].tolist() == [False, True]


def test_the_users_rtol_is_a_choice_not_a_looseness() -> None:
    r = _f64(1.0, 2.0)
    a = r * 1.2
    v = classify(a, r, u=U32, tiny=TINY32, bound=lambda: None, rtol=0.5)
    assert v.ok and v.loose == 0
    assert LOOSE == 1.0


def test_the_scale_of_a_backward_call_covers_a_gradient_that_is_zero_in_the_math() -> None:
    # a bias before batch norm: exact 0 up to 1e-17, autograd's rounding noise 5e-9, an allowance of
    # 0.01 -- loose against its own size, not against the other leaves' gradients (0.15)
    r = _f64(1e-17, -2e-17)
    a = _f64(5e-9, -3e-9)
    bound = lambda: _f64(1e-3, 1e-3)  # noqa: E731
    assert classify(a, r, u=U32, tiny=TINY32, bound=bound).loose == 2
    assert classify(a, r, u=U32, tiny=TINY32, bound=bound, scale=0.15).loose == 0


def test_a_gradient_that_is_zero_in_the_math_compared_within_rounding_of_zero_is_not_loose():
    # normalize of a scalar: x/|x| is constant, autograd's gradient is rounding noise around 0; the allowance
    # (1e-15) is far above the exact values (1e-17) but far below sqrt(u): a meaningful comparison
    r = _f64(1e-17)
    a = _f64(-2e-16)
    assert classify(a, r, u=2.0**-53, tiny=2.2e-308, bound=lambda: _f64(1e-15)).loose == 0


def test_a_loose_comparison_is_not_verified_with_its_reason(monkeypatch):
    # a worst-case bound far above the gradient (a deep float32 chain) is simulated by marking every passing
    # entry loose: the report then says so, counts nothing as verified, and is not OK
    import dataclasses

    import gradcheck_sym as gs
    from gradcheck_sym.judge import tensor

    real = tensor.classify
    monkeypatch.setattr(tensor, "classify", lambda *a, **k: dataclasses.replace(real(*a, **k), loose=3))
    report = gs.check_function(lambda x: (x * x).sum(), torch.tensor([0.5, 1.0, 2.0]), dtype="float32")
    (f,) = report.errors()
    assert f.kind == "not-verified" and report.checked == 0
    assert f.message == ("the gradient for x (3 entries) was not verified at 1 of 1 point: the rounding bound of "
                         "the computation in float32 exceeds the gradient's largest entry (a long chain of "
                         "ill-conditioned operations): a comparison says nothing there; check in float64, or as a "
                         "module (whose float64 twin measures the rounding)")


def test_a_measured_noise_replaces_a_loose_bound_and_still_finds_a_mismatch() -> None:
    # the worst case (0.5) says nothing about entries near 1; a measured noise of 1e-5 does: the first two
    # entries (off by 3e-5, above the cheap test) pass under it and count as verified, the third (off by
    # 1e-3) is a mismatch
    r = _f64(1.0, 2.0, 3.0)
    a = r + _f64(3e-5, -3e-5, 1e-3)
    asked = []

    def measured():
        asked.append(1)
        return _f64(1e-5, 1e-5, 1e-5)

    v = classify(a, r, u=U32, tiny=TINY32, bound=lambda: _f64(0.5, 0.5, 0.5), measured=measured)
    assert v.loose == 0 and v.masks["mismatch"].tolist() == [False, False, True] and asked == [1]
    # without a measurement the worst case stands: nothing is a mismatch, everything is loose
    v = classify(a, r, u=U32, tiny=TINY32, bound=lambda: _f64(0.5, 0.5, 0.5), measured=lambda: None)
    assert v.ok and v.loose == 3
    # a measurement larger than the worst case does not widen it
    v = classify(a, r, u=U32, tiny=TINY32, bound=lambda: _f64(1e-4, 1e-4, 1e-4), measured=lambda: _f64(1.0, 1, 1))
    assert v.masks["mismatch"].tolist() == [False, False, True]


def test_a_bound_that_overflowed_to_nan_says_nothing_rather_than_failing_everything() -> None:
    # a word LM's hidden state carried over 100 LSTM steps: the worst case passed 1e38, then inf * 0 made NaN
    # entries; a NaN tolerance failed every entry there (false mismatches of 1e-5 of an entry) where a measured
    # noise was at hand.  NaN is now "says nothing": the measured noise decides, else the entry is loose.
    r = _f64(1.0, 2.0, 3.0)
    a = r + _f64(3e-5, -3e-5, 1e-3)
    nan = float("nan")
    v = classify(a, r, u=U32, tiny=TINY32, bound=lambda: _f64(nan, nan, 1e-6), measured=lambda: _f64(1e-5, 1e-5, 1e-5))
    assert v.loose == 0 and v.masks["mismatch"].tolist() == [False, False, True]
    v = classify(a, r, u=U32, tiny=TINY32, bound=lambda: _f64(nan, nan, 1e-6), measured=lambda: None)
    assert v.loose == 2 and v.masks["mismatch"].tolist() == [False, False, True]
    # (the small-tensor path too: a 0-d gradient)
    v = classify(r[:1].reshape(()) + 3e-5, r[:1].reshape(()), u=U32, tiny=TINY32, bound=lambda: _f64(nan).reshape(()),
                 measured=lambda: None)
    assert v.ok and v.loose == 1


def test_a_measured_noise_is_not_asked_for_where_the_bound_is_tight() -> None:
    r = _f64(1.0, 2.0)
    a = r * (1 + 1e-5)
    v = classify(a, r, u=U32, tiny=TINY32, bound=lambda: _f64(1e-5, 1e-5),
                 measured=lambda: (_ for _ in ()).throw(AssertionError("asked for")))
    assert v.ok and v.loose == 0


def test_a_measured_noise_as_large_as_the_gradient_is_still_loose() -> None:
    r = _f64(1.0, 2.0)
    a = r * (1 + 1e-3)
    v = classify(a, r, u=U32, tiny=TINY32, bound=lambda: _f64(5.0, 5.0), measured=lambda: _f64(1.0, 1.0))
    assert v.ok and v.loose == 2


def test_small_tensors_judged_on_floats_get_the_ladders_verdict(monkeypatch) -> None:
    # A training loop's 0-d parameters take the float path when every element passes; whatever path they
    # take, the verdict (masks, tolerance, counts) is the vectorised ladder's, bit for bit.
    import math
    import random

    import gradcheck_sym.judge.elements as el

    rng = random.Random(0)
    taken = 0
    real = el._small_pass

    def counted(*args, **kwargs):
        nonlocal taken
        out = real(*args, **kwargs)
        taken += out is not None
        return out

    monkeypatch.setattr(el, "_small_pass", counted)
    for case in range(3000):
        n = rng.choice([1, 1, 2, 5, 16])
        u = rng.choice([2.0**-24, 2.0**-53])
        tiny = 1.2e-38 if u > 1e-10 else 2.2e-308
        mag = 10.0 ** rng.uniform(-6, 4)
        r = torch.tensor([rng.gauss(0, mag) if rng.random() > 0.1 else 0.0 for _ in range(n)], dtype=torch.float64)
        noise = [rng.choice([0.0, u, 50 * u, 1e3 * u, 1e-2]) * rng.gauss(0, 1) for _ in range(n)]
        a = r * (1 + torch.tensor(noise, dtype=torch.float64)) + rng.choice([0.0, 0.0, 1e-9 * mag])
        if rng.random() < 0.05:
            a[rng.randrange(n)] = rng.choice([math.nan, math.inf])
        e = rng.choice([None, 0.0, 1e2 * u * mag, torch.rand(n, dtype=torch.float64) * 1e3 * u * mag,
                        torch.tensor(mag * 0.5, dtype=torch.float64)])
        slack = rng.choice([None, None, torch.rand(n, dtype=torch.float64) * u * mag])
        rtol, atol = rng.choice([(None, None), (1e-5, None), (None, 1e-8)])
        scale = rng.choice([None, None, mag * 10])
        kw = dict(u=u, tiny=tiny, bound=lambda e=e: e, slack=slack, rtol=rtol, atol=atol, scale=scale,
                  measured=lambda: None)
        fast = classify(a.clone(), r.clone(), **kw)
        monkeypatch.setattr(el, "SMALL", 0)
        slow = classify(a.clone(), r.clone(), **kw)
        monkeypatch.setattr(el, "SMALL", 16)
        assert (fast.compared, fast.loose, sorted(fast.masks)) == (slow.compared, slow.loose, sorted(slow.masks)), case
        assert all(torch.equal(fast.masks[k], slow.masks[k]) for k in fast.masks), case
        assert (fast.tol is None) == (slow.tol is None) and (fast.tol is None or torch.equal(fast.tol, slow.tol)), case
    assert taken > 100  # the float path was exercised (129 of the 3,000), not only the fallbacks


def test_an_entry_a_cut_does_not_reach_is_a_mismatch_not_untracked() -> None:
    # The cut's exact values equal the full ones at these entries (a .item() used only for printing): the doubled
    # allowance the untracked test gives must not turn a mismatch into "what .item() hides" (a published
    # tutorial's conv + batch-norm custom Function, whose float32 rounding just exceeded the allowance).
    r = _f64(0.127, 0.25)
    a = r + _f64(1.5e-6, 0.0)
    bound = lambda: _f64(1e-7, 1e-7)  # noqa: E731 - SAFETY x 1e-7 < 1.5e-6 < 2 x that
    v = classify(a, r, u=U32, tiny=TINY32, bound=bound, cut=r.clone())
    assert list(v.masks) == ["mismatch"]
    moved = r + _f64(1.5e-6, 0.0)  # where the cut does change the value, the name stays
    assert list(classify(a, r, u=U32, tiny=TINY32, bound=bound, cut=moved).masks) == ["untracked"]


def test_beyond_a_measured_noise_of_another_formula_is_not_a_failure() -> None:
    # The worst-case bound says nothing here (0.5 on entries of 1), so a measured noise (1e-6) is the allowance.
    # Through a custom Function's backward that noise is a sample of our formulas, not of the one that ran:
    # 1e-4 off is then neither passed nor failed (`unmeasured`); through torch's own ops it is a mismatch; beyond
    # the worst case it is a mismatch either way.
    r = _f64(1.0, 2.0, 3.0)
    a = r + _f64(1e-4, 0.0, 0.0)
    kw = dict(u=U32, tiny=TINY32, bound=lambda: _f64(0.5, 0.5, 0.5), measured=lambda: _f64(1e-6, 1e-6, 1e-6))
    foreign = classify(a, r, foreign=True, **kw)
    assert foreign.ok and foreign.unmeasured == 1 and foreign.loose == 0
    own = classify(a, r, **kw)
    assert list(own.masks) == ["mismatch"] and own.unmeasured == 0
    far = classify(r + _f64(10.0, 0.0, 0.0), r, foreign=True, **kw)
    assert list(far.masks) == ["mismatch"] and far.unmeasured == 0
    # ... and so is 1% off, inside the worst case but beyond FOREIGN_NOISE times the measured noise (found by review:
    # the band was the whole worst-case bound, and a custom backward returning 0 was only "not verified")
    off = classify(r * 1.01, r, foreign=True, **kw)
    assert list(off.masks) == ["mismatch"] and off.unmeasured == 0


def test_a_measured_noise_larger_than_a_small_gradient_is_loose_only_against_the_call_s_scale() -> None:
    # A 0-d parameter whose gradient crosses 0 in a training loop (4e-3 against the backward's 10): its worst-case
    # bound (1.0) is far above WIDE of it, so the measured float32 noise (1e-3, times SAFETY 8) is the allowance; that
    # exceeds the gradient itself, but it is the float32 run's own rounding: loose only against the backward's
    # largest entry (one backward in 30,000 of a tutorial's training loop was "not verified" for it)
    r = _f64(4e-3)
    a = _f64(4.5e-3)
    kw = dict(u=U32, tiny=TINY32, bound=lambda: _f64(1.0), measured=lambda: _f64(1e-3), scale=4e-3, wide_at=WIDE)
    v = classify(a, r, **kw)
    assert v.ok and v.loose == 1  # on its own scale, the allowance says nothing
    v = classify(a, r, context=10.0, **kw)
    assert v.ok and v.loose == 0
    # a sign flip is beyond that noise: a mismatch either way (the worst-case bound alone let it pass)
    assert "mismatch" in classify(-a, r, context=10.0, **kw).masks
    assert classify(-a, r, u=U32, tiny=TINY32, bound=lambda: _f64(1.0), scale=10.0).ok
    # between WIDE and LOOSE of the gradient, the bound decides by default (check_function: its measured twin only
    # where the bound says nothing at all); with wide_at=WIDE (a script's backward) the measured noise does
    kw2 = dict(u=U32, tiny=TINY32, bound=lambda: _f64(1e-4), measured=lambda: _f64(1e-5), scale=4e-3)
    assert classify(a, r, **kw2).ok
    assert "mismatch" in classify(a, r, wide_at=WIDE, **kw2).masks


def test_a_cut_that_moves_an_entry_by_just_under_the_allowance_still_explains_it() -> None:
    # A ResNet-18 with a detached residual branch (benchmarks/engine.py): the cut moved a conv weight's gradient from
    # 359.531 to 366.543 (torch's own float64 run: 366.543), under an allowance of 7.018; autograd's float32 value
    # 367.420 is 0.88 from the cut's and 7.89 from the exact one.  It was a mismatch ("the cut does not explain it"),
    # nine of them beside the genuine finding; it is the cut's doing.
    r, c, a = _f64(359.53115409804525), _f64(366.54312821762676), _f64(367.4203796386719)
    e = (7.018099113589563 - 4 * U32 * 359.53115409804525) / 8
    v = classify(a, r, u=U32, tiny=TINY32, bound=lambda: _f64(e), cut=c)
    assert list(v.masks) == ["untracked"], v.masks
    # a cut that does not reach the entry (its value is the exact one) still leaves a mismatch a mismatch
    assert list(classify(a, r, u=U32, tiny=TINY32, bound=lambda: _f64(e), cut=r.clone()).masks) == ["mismatch"]


def test_the_float_cheap_test_equals_the_vectorised_one_and_leaves_storage_less_tensors_to_it() -> None:
    from gradcheck_sym.judge.elements import cheap, cheap_floats

    r = _f64(1.0, -2.0, 0.0, float("inf"))
    for a in (r.clone(), r * (1 + 100 * U32), r * (1 + 200 * U32), _f64(1.0, -2.0, 1e-300, float("inf"))):
        assert cheap_floats(a, r, U32) == bool(cheap(a, r, U32, None, None).all())
    zero = torch._efficientzerotensor(3, dtype=torch.float64)  # (double backward hands these out)
    assert not cheap_floats(zero, _f64(0.0, 0.0, 0.0), U32)
    assert classify(zero, _f64(0.0, 0.0, 0.0), u=U32, tiny=TINY32, bound=lambda: None).ok


def test_a_gradient_zero_in_the_math_within_rounding_of_zero_is_not_a_mismatch_beyond_one_measured_sample() -> None:
    # A conv's bias before a training-mode batch norm (a mixup tutorial's): exact 1e-17 (0 in the math), autograd's
    # float32 value 5.3e-7, 10x our float32 recomputation's noise (5.3e-8) under a worst-case bound of 4.0 that says
    # nothing.  Within FOREIGN_NOISE times that noise and within sqrt(u) of the call's largest gradient (0.17): the
    # rounding of a zero.  Beyond sqrt(u) of the call, or where the exact value is not 0, still a mismatch.
    r = _f64(-3.5e-18, 7e-18, 1e-17)
    kw = dict(u=U32, tiny=TINY32, bound=lambda: _f64(4.0, 4.0, 4.0), measured=lambda: _f64(5.3e-8, 5.3e-8, 5.3e-8),
              scale=0.17, zero_below=U32**0.5 * 0.17, context=0.17, wide_at=WIDE)
    v = classify(r + _f64(5.3e-7, 0.0, -2e-7), r, **kw)
    assert v.ok and v.loose == 0 and v.unmeasured == 0
    assert list(classify(r + _f64(1e-4, 0.0, 0.0), r, **kw).masks) == ["mismatch"]  # beyond 4e-5: not rounding
    nonzero = _f64(1e-3, 2e-3, 3e-3)
    assert list(classify(nonzero + _f64(5.3e-7, 0.0, 0.0), nonzero, **kw).masks) == ["mismatch"]
