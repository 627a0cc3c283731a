"""The one-reduction whole-tensor tests (`ops.quick`) give exactly torch's answers, including where the sum they
look at first is not conclusive (an overflow, infinities of both signs)."""

import math

import pytest
import torch

from gradcheck_sym.ops.quick import all_finite, all_true, any_nan, any_true

INF, NAN = math.inf, math.nan
CASES = [
    [], [0.0], [1.0, -2.0], [3e38, 3e38], [1e308, 1e308], [INF], [-INF, 1.0], [INF, -INF], [NAN], [1.0, NAN, 2.0],
    [NAN, INF], [-0.0, 0.0],
]
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("values", CASES, ids=[str(c) for c in CASES])
def test_finite_and_nan_as_torch_says(values, dtype):
    x = torch.tensor(values, dtype=torch.float64).to(dtype)
    assert all_finite(x) == bool(torch.isfinite(x).all())
    assert any_nan(x) == bool(torch.isnan(x).any())
    y = x.reshape(-1, 1).expand(-1, 3).t()  # a strided view
    assert all_finite(y) == bool(torch.isfinite(y).all()) and any_nan(y) == bool(torch.isnan(y).any())


def test_other_dtypes():
    assert all_finite(torch.tensor([1, 2])) and not any_nan(torch.tensor([True]))
    z = torch.tensor([complex(1, INF)])
    assert not all_finite(z) and not any_nan(z)
    assert any_nan(torch.tensor([complex(NAN, 0)]))
    assert all_finite(torch.tensor(2.0)) and not any_nan(torch.tensor(2.0))


@pytest.mark.parametrize("values", [[], [True], [False], [True, False], [True, True], [False, False]])
def test_any_and_all_of_a_mask(values):
    m = torch.tensor(values, dtype=torch.bool)
    assert any_true(m) == bool(m.any()) and all_true(m) == bool(m.all())
    assert any_true(m.reshape(-1, 1).expand(-1, 2)) == bool(m.any())
    assert any_true(torch.tensor(values[0]) if values else torch.tensor(False)) == bool(values[:1] and values[0])
