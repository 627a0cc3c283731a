"""Indexing, scatter and in-place writes: sympy oracle per rule, end-to-end verdicts, injected errors."""

import pytest
import torch

import gradcheck_sym as gs
from gradcheck_sym.ops.torch import RULES, Rule
from tests.op_checks import F64, assert_caught, assert_ok, assert_oracle, rand

pytestmark = pytest.mark.filterwarnings("ignore:index_reduce\\(\\) is in beta")

IDX = torch.tensor([[0, 1, 0], [3, 1, 0], [0, 0, 2]])
SEG = torch.tensor([2, 0, 3])


def _setitem(x, v):
    y = x.clone()
    y[1:, ::2] = v
    return y * x


def _setitem_fresh_mask(x, v):
    buf = torch.zeros(4, 3, dtype=x.dtype)
    buf[x > 0] = v
    return buf


def _setitem_view(x, v):
    y = x.clone()
    y[1:, :][0] = v[:3]
    return y


CASES = {
    "scatter_add": (lambda x, s: torch.scatter_add(x, 0, IDX, s), (rand(4, 3), rand(3, 3, seed=1))),
    "scatter_add_": (lambda x, s: x.clone().scatter_add_(1, IDX.clamp(max=2), s), (rand(4, 3), rand(3, 3, seed=1))),
    "index_add": (lambda x, s: x.index_add(0, torch.tensor([0, 3, 0]), s, alpha=2.5), (rand(4, 3), rand(3, 3, seed=1))),
    "index_put accumulate": (lambda x, v: torch.index_put(x, (torch.tensor([0, 0, 2]),), v, accumulate=True),
                             (rand(4, 3), rand(3, 3, seed=1))),
    "put accumulate": (lambda x, v: torch.put(x, torch.tensor([0, -1, 0]), v, accumulate=True), (rand(4, 3), rand(3))),
    "masked index put": (lambda x, v: torch.ops.aten._unsafe_masked_index_put_accumulate(
        x, torch.tensor([True, False, True]), [torch.tensor([0, 9, 0])], v), (rand(4, 3), rand(3, 3, seed=1))),
    "setitem": (_setitem, (rand(4, 3), rand(seed=1))),
    "setitem mask into zeros": (_setitem_fresh_mask, (rand(4, 3), rand(seed=1))),
    "setitem through a view": (_setitem_view, (rand(4, 3), rand(3, seed=1))),
    "masked_fill traced value": (lambda x, v: x.masked_fill(x > 0, v), (rand(4, 3), rand(seed=1))),
    "index_fill traced value": (lambda x, v: x.index_fill(1, torch.tensor([0, 2]), v), (rand(4, 3), rand(seed=1))),
    "fill_": (lambda x, v: x.clone().fill_(v) * x, (rand(4, 3), rand(seed=1))),
    "zero_": (lambda x: x.clone().zero_() + x, (rand(4, 3),)),
    "copy_ broadcast": (lambda x: torch.zeros(4, 3, dtype=x.dtype).copy_(x[0]) * x, (rand(4, 3),)),
    "gather sparse_grad": (lambda x: torch.gather(x, 1, IDX.clamp(max=2), sparse_grad=True), (rand(4, 3),)),
    "getitem every index": (lambda x: x[..., None, torch.tensor([2, 0, 2])][x[:, 0] > 0], (rand(4, 3),)),
    "take_along_dim": (lambda x: torch.take_along_dim(x[:3], IDX.clamp(max=2), 1), (rand(4, 3),)),
    "repeat_interleave": (lambda x: x.repeat_interleave(torch.tensor([1, 0, 2, 3]), dim=0), (rand(4, 3),)),
    "unfold": (lambda x: x.unfold(0, 2, 1), (rand(4, 3),)),
    "as_strided": (lambda x: x.as_strided((2, 2), (1, 3), 2), (rand(4, 3),)),
    "tensor_split": (lambda x: torch.tensor_split(x, [1, 3], dim=0), (rand(4, 3),)),
    "atleast_2d of several": (lambda x, v: torch.atleast_2d(x[0], v), (rand(4, 3), rand(seed=1))),
    "new": (lambda x: x.new([1.0, 2.0, 3.0]) * x, (rand(4, 3),)),
}
for _red in ("sum", "prod", "mean", "amax", "amin"):
    for _inc in (True, False):
        CASES[f"scatter_reduce {_red} {_inc}"] = (
            lambda x, s, r=_red, i=_inc: torch.scatter_reduce(x, 0, IDX, s, r, include_self=i),
            (rand(4, 3), rand(3, 3, seed=1)))
        if _red != "sum":
            CASES[f"index_reduce {_red} {_inc}"] = (
                lambda x, s, r=_red, i=_inc: x.index_reduce(0, torch.tensor([0, 3, 0]), s, r, include_self=i),
                (rand(4, 3), rand(3, 3, seed=1)))
for _red in ("sum", "prod", "mean", "max", "min"):
    CASES[f"segment_reduce {_red}"] = (
        lambda x, r=_red: torch.segment_reduce(x, r, lengths=SEG, initial=0.5), (rand(5),))
    CASES[f"segment_reduce {_red} offsets"] = (
        lambda x, r=_red: torch.segment_reduce(x, r, offsets=torch.tensor([[0, 1, 3], [0, 2, 3]]), axis=1),
        (rand(2, 3, 2),))

NAMES = sorted(CASES)


@pytest.mark.parametrize("name", NAMES)
def test_rule_matches_sympy(name):
    fn, inputs = CASES[name]
    assert_oracle(fn, *inputs)


@pytest.mark.parametrize("name", NAMES)
def test_checks_clean_in_float64(name):
    fn, inputs = CASES[name]
    assert_ok(fn, *inputs)


@pytest.mark.parametrize("name", ["scatter_add", "scatter_reduce prod True", "scatter_reduce amax False",
                                  "index_reduce mean True", "index_put accumulate", "setitem",
                                  "segment_reduce max", "masked_fill traced value"])
def test_checks_clean_in_float32(name):
    fn, inputs = CASES[name]
    assert_ok(fn, *inputs, dtype="float32")


@pytest.mark.parametrize("name", ["scatter_add", "scatter_reduce prod True", "scatter_reduce mean False",
                                  "index_reduce prod False"])
def test_second_order(name):
    fn, inputs = CASES[name]
    assert_ok(fn, *inputs, order=2)


@pytest.mark.parametrize("name", NAMES)
def test_injected_error_is_caught(name):
    fn, inputs = CASES[name]
    assert_caught(fn, *inputs)


def test_products_of_zeros_have_their_second_derivatives():
    # d2/dx ds of x * s at x = s = 0 is 1: the product tree's sweep must keep it (ZMUL's derivative)
    x, s = torch.tensor([0.0], dtype=F64), torch.tensor([0.0, 2.0], dtype=F64)
    assert_ok(lambda x, s: torch.scatter_reduce(x, 0, torch.tensor([0, 0]), s, "prod"), x, s, order=2)


def test_a_tie_that_torch_splits_unevenly_is_a_kink():
    # include_self=False: torch counts the untouched-but-equal self in the split (1/3 each), a convention
    x, s = torch.tensor([1.0, 5.0], dtype=F64), torch.tensor([5.0, 5.0, 2.0], dtype=F64)
    report = gs.check_function(lambda x, s: x.scatter_reduce(0, torch.tensor([1, 1, 0]), s, "amax",
                                                             include_self=False), x, s)
    assert report.ok
    assert any(f.kind == "nondifferentiable" for f in report.findings)


def test_in_place_op_on_an_untracked_tensor_reads_its_old_value():
    def f(x):
        buf = torch.ones(3, dtype=x.dtype)
        buf.add_(x)  # buf was 1, not x
        return buf * x

    assert_ok(f, rand(3))


def test_the_documented_nan_fix_by_masked_assignment():
    def f(x):
        y = torch.log(x)
        y[torch.isnan(y)] = 0.0
        return y

    assert_ok(f, torch.tensor([1.0, -1.0, 2.0], dtype=F64))


def test_a_write_into_float32_rounds():
    def f(x):
        y = torch.zeros(3, dtype=torch.float32)
        y[:2] = x[:2]
        return y.double() * x

    assert_ok(f, rand(3))


def test_an_internal_error_is_not_verified_never_a_constant(monkeypatch):
    def broken(c, a):
        raise ValueError("a bug in a rule")

    old = RULES["sin"]
    monkeypatch.setitem(RULES, "sin", Rule(old.name, old.signature, broken, old.refuse, old.doc))
    report = gs.check_function(lambda x: torch.sin(x) * 2, rand(3))
    assert not report.ok
    assert [f.kind for f in report.findings if f.severity == "error"] == ["not-verified"]
    assert "a bug in a rule" in str(report)


def test_as_strided_scatter_finding_is_torchs():
    # torch 2.13's backward passes the gradient to the overwritten elements and drops it from the kept ones
    # (pytorch/pytorch#88105; OpInfo marks test_fn_grad as an expected failure); gradcheck agrees.
    x, src = rand(3, 3), rand(2, 2, seed=1)

    def f(x, src):
        return torch.as_strided_scatter(x, src, (2, 2), (1, 2), 0)

    report = gs.check_function(f, x, src)
    assert [f.node for f in report.findings if f.kind == "mismatch"] == ["x"]
    assert not torch.autograd.gradcheck(f, (x.requires_grad_(), src.requires_grad_()), raise_exception=False)


@pytest.mark.parametrize("shift", [torch.fft.fftshift, torch.fft.ifftshift])
def test_fft_shifts_are_permutations_with_exact_adjoints(shift):
    x = torch.arange(12, dtype=torch.float64).reshape(3, 4) / 7
    w = torch.linspace(-1, 1, 12, dtype=torch.float64).reshape(3, 4)
    report = gs.check_function(lambda x: (shift(x, dim=(0, 1)) * w).sum(), x)
    assert report.ok and report.checked == 12 and not report.by_kind("not-verified")
    # the exact gradient is w shifted back: the inverse permutation of the one forward applied
    back = torch.fft.ifftshift if shift is torch.fft.fftshift else torch.fft.fftshift
    assert torch.tensor([r.symbolic_grad for r in report.nodes], dtype=torch.float64).reshape(3, 4).allclose(back(w, dim=(0, 1)))


def test_a_loops_movement_ops_are_probed_once_per_kind_and_shapes(monkeypatch):
    # A probe's maps come from three runs of torch's kernel and a check; a loop's cats and slices reuse theirs.  Ops
    # that differ only in an argument (a cat's dim, a slice's bounds) each have their own: the values stay right.
    from gradcheck_sym.ops.torch import movement

    runs = []
    real = movement._maps
    monkeypatch.setattr(movement, "_maps", lambda *a: runs.append(1) or real(*a))

    def loop(n):
        def f(x):
            total = 0
            for _ in range(n):
                a = torch.cat((x, x * 2), 0)  # (6, 3)
                b = torch.cat((x, x * 2), 1)  # (3, 6)
                total = total + (a[1:4, :].sum(0) * b[0:3, 1:4].sum(1)).sum() + a[0:3].mean()
            return total
        return f

    counts = []
    for n in (1, 6):
        runs.clear()
        report = gs.check_function(loop(n), rand(3, 3))
        assert report.ok and [f.kind for f in report.findings if f.severity == "error"] == []
        counts.append(len(runs))
    assert counts[0] == counts[1] >= 5
    assert_ok(loop(3), rand(3, 3))
