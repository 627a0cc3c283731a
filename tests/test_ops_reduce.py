"""Reductions, scans and order statistics: sympy oracle per rule, end-to-end verdicts, injected errors."""

import pytest
import torch

import gradcheck_sym as gs
from tests.op_checks import F64, assert_caught, assert_ok, assert_oracle, rand

TIES = torch.tensor([[1.0, 3.0, 3.0, 2.0], [0.0, 0.0, 5.0, 1.0]], dtype=F64)
WITH_ZEROS = torch.tensor([[0.5, 0.0, 2.0, -1.5], [0.0, 3.0, 0.0, 1.25]], dtype=F64)


def _with_nan():
    x = rand(3, 4)
    x[0, 1] = x[2, 3] = float("nan")
    return x


CASES = {
    "nansum": (lambda x: torch.nansum(x, 1), (_with_nan(),)),
    # numpy's names, which torch takes (d2l's softmax, makemore): axis= for dim=, keepdims= for keepdim=
    "sum(axis, keepdims)": (lambda x: x.sum(axis=1, keepdims=True), (rand(3, 4),)),
    "std(axis)": (lambda x: torch.std(x, axis=0), (rand(3, 4),)),
    "max(axis)": (lambda x: x.max(axis=1, keepdims=True).values, (rand(3, 4),)),
    "nanmean": (lambda x: torch.nanmean(x, 0, keepdim=True), (_with_nan(),)),
    "sum_to_size": (lambda x: x.sum_to_size(1, 4), (rand(3, 4),)),
    "prod": (lambda x: torch.prod(x, 1), (rand(3, 4),)),
    "prod with zeros": (lambda x: torch.prod(x, 1), (WITH_ZEROS,)),
    "amax ties": (lambda x: torch.amax(x, 1), (TIES,)),
    "max()": (lambda x: x.max(), (TIES,)),
    "min(dim)": (lambda x: x.min(1).values, (rand(3, 4),)),
    "aminmax": (lambda x: torch.aminmax(x, dim=1), (TIES,)),
    "median()": (lambda x: torch.median(x), (TIES,)),
    "nanmedian(dim)": (lambda x: torch.nanmedian(x, 1).values, (_with_nan(),)),
    "mode": (lambda x: torch.mode(x, 1).values, (TIES,)),
    "kthvalue": (lambda x: torch.kthvalue(x, 2, 1).values, (rand(3, 4),)),
    "sort": (lambda x: torch.sort(x, 0, descending=True).values, (rand(3, 4),)),
    "msort": (lambda x: torch.msort(x), (rand(3, 4),)),
    "msort ties": (lambda x: torch.msort(x.t()), (TIES,)),
    "topk": (lambda x: torch.topk(x, 2, 1).values, (rand(3, 4),)),
    "cummax": (lambda x: torch.cummax(x, 1).values, (TIES,)),
    "cumsum": (lambda x: torch.cumsum(x, 1), (rand(3, 4),)),
    "cumprod": (lambda x: torch.cumprod(x, 1), (rand(3, 4),)),
    "cumprod with zeros": (lambda x: torch.cumprod(x, 1), (WITH_ZEROS,)),
    "logcumsumexp": (lambda x: torch.logcumsumexp(x, 1), (rand(3, 4),)),
    "logsumexp": (lambda x: torch.logsumexp(x, (0, 1)), (rand(3, 4),)),
    "var correction": (lambda x: torch.var(x, 1, correction=0.5), (rand(3, 4),)),
    "std_mean": (lambda x: torch.std_mean(x, 0, unbiased=False), (rand(3, 4),)),
    "norm p=3": (lambda x: torch.norm(x, 3, 1), (rand(3, 4),)),
    "vector_norm inf ties": (lambda x: torch.linalg.vector_norm(x, float("inf"), 1), (TIES,)),
    "renorm": (lambda x: torch.renorm(x, 2, 0, 1.0), (rand(3, 4),)),
    "diff": (lambda x, p: torch.diff(x, 2, 1, prepend=p, append=p), (rand(3, 4), rand(3, 1, seed=1))),
    "gradient": (lambda x: torch.gradient(x, spacing=[2.0, 0.5], edge_order=2), (rand(3, 4),)),
    "gradient coordinates": (lambda x: torch.gradient(x, spacing=(torch.tensor([0.0, 1, 3, 3.5], dtype=F64),),
                                                      dim=1), (rand(3, 4),)),
    "trapezoid": (lambda y, x: torch.trapezoid(y, x), (rand(3, 4), rand(4, seed=1))),
    "trapz dx": (lambda y: torch.trapz(y, dx=0.5, dim=0), (rand(3, 4),)),
    "cumulative_trapezoid": (lambda y, x: torch.cumulative_trapezoid(y, x, dim=1), (rand(3, 4), rand(3, 4, seed=1))),
    "cov weights": (lambda x, w: torch.cov(x, fweights=torch.tensor([1, 2, 1, 3]), aweights=w),
                    (rand(3, 4), rand(4, seed=1, lo=0.5, hi=1.5))),
    "corrcoef": (lambda x: torch.corrcoef(x), (rand(3, 4),)),
}
for _interp in ("linear", "lower", "higher", "midpoint", "nearest"):
    CASES[f"quantile {_interp}"] = (
        lambda x, q, i=_interp: torch.quantile(x, q, dim=1, interpolation=i),
        (rand(3, 4), torch.tensor([0.2, 0.7], dtype=F64)))
CASES["quantile ties"] = (lambda x: torch.quantile(x, 0.4, dim=1, keepdim=True), (TIES,))
CASES["nanquantile"] = (lambda x: torch.nanquantile(x, 0.3, dim=1), (_with_nan(),))

NAMES = sorted(CASES)


@pytest.mark.parametrize("name", NAMES)
def test_rule_matches_sympy(name):
    fn, inputs = CASES[name]
    assert_oracle(fn, *inputs)


@pytest.mark.parametrize("name", NAMES)
def test_checks_clean_in_float64(name):
    fn, inputs = CASES[name]
    assert_ok(fn, *inputs)


@pytest.mark.parametrize("name", ["prod with zeros", "cumprod", "msort", "quantile linear", "logcumsumexp",
                                  "cov weights", "corrcoef", "aminmax", "renorm", "gradient"])
def test_checks_clean_in_float32(name):
    fn, inputs = CASES[name]
    if name == "corrcoef":
        report = gs.check_function(fn, *inputs, dtype="float32")
        if any(f.kind == "nondifferentiable" for f in report.findings):
            # the diagonal is 1 in the math; float32 rounds it onto corrcoef's clamp at 1 on some CPUs (an AMD EPYC),
            # a kink the run sits on: not verified there, and never said wrong
            assert not [f for f in report.findings if f.severity == "error"], str(report)
            return
    assert_ok(fn, *inputs, dtype="float32")


@pytest.mark.parametrize("name", ["prod", "prod with zeros", "cumprod", "cumprod with zeros", "quantile linear",
                                  "cov weights", "diff", "nanmean", "renorm"])
def test_second_order(name):
    fn, inputs = CASES[name]
    assert_ok(fn, *inputs, order=2)


# every rule whose backward depends on a decision (an order, a tie, a max) is covered here (issue 9 item 3)
@pytest.mark.parametrize("name", NAMES)
def test_injected_error_is_caught(name):
    fn, inputs = CASES[name]
    assert_caught(fn, *inputs)


def test_ties_are_kinks_where_torch_routes_through_its_sort():
    report = gs.check_function(lambda x: torch.msort(x.t()), TIES)
    assert report.ok
    assert any(f.kind == "nondifferentiable" for f in report.findings)


def test_logcumsumexp_large_values_allow_torchs_log_domain_backward():
    # torch's backward (exp(logcumsumexp(log|g| - out) + x)) loses ~1e-12 relative at |x| = 1e4
    x = rand(5, 3)
    x[0, 1] = 1e4
    assert_ok(lambda x: torch.logcumsumexp(x, 0), x)
    assert_caught(lambda x: torch.logcumsumexp(x, 0), x)


def test_logcumsumexp_second_order_where_one_element_dominates_its_prefix():
    # torch's backward works in the log domain: with an element of 1e4 its second derivative carries an error of
    # about u * 2e4 relative to the first derivative, on Hessian entries that are exactly 0 (a false alarm once).
    g = torch.Generator().manual_seed(0)
    x = torch.rand(5, 5, 5, generator=g, dtype=torch.float64) * 18 - 9
    x[0, 0, :] = 1e4
    x[0, :, 2] = 1e4
    w = torch.rand(5, 5, 5, generator=g, dtype=torch.float64) + 0.5
    report = gs.check_function(lambda t: (torch.logcumsumexp(t, 0) * w).sum(), x, order=2)
    assert report.ok and report.checked > 0


def test_logcumsumexp_where_an_element_is_its_own_prefix_carries_torch_s_log_domain_error():
    # x[0, 0, 3] is the smallest of its large line: out[0, 0, 3] is x[0, 0, 3] alone (derivative 1, every
    # other term exp(-1694) = 0), which torch computes as exp(log g - out + x) with an error of about
    # u * 1e4: a false alarm once, at a random point near an OpInfo reference input.
    g = torch.Generator().manual_seed(1)
    x = torch.rand(5, 5, 5, generator=g, dtype=torch.float64) * 18 - 9
    x[0, :, 3] = torch.tensor([9070.8135, 10764.4149, 10015.0121, 10318.0754, 10532.3586], dtype=torch.float64)
    x[0, 0, :] = torch.tensor([10786.6168, 9615.3502, 10250.4480, 9070.8135, 9157.8907], dtype=torch.float64)
    report = gs.check_function(lambda t: torch.logcumsumexp(t, 1), x)
    assert report.ok and report.checked > 0
