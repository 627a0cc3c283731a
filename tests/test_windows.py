"""ops.windows: the structured gather, scatter-add and overlap count equal the flat index map's, for every
window shape a convolution or pooling makes (strides, dilations, paddings, ceil_mode's growth)."""

from __future__ import annotations

import random

import warnings

import pytest
import torch

from gradcheck_sym.ops import prims_movement as M
from gradcheck_sym.ops import windows
from gradcheck_sym.ops.torch.conv import window_index

F64 = torch.float64


def _cases() -> list[tuple]:
    rng = random.Random(7)
    out = []
    for nd in (1, 2, 3):
        for _ in range(12 if nd < 3 else 5):
            k = tuple(rng.randint(1, 3) for _ in range(nd))
            st = tuple(rng.randint(1, 3) for _ in range(nd))
            dil = tuple(rng.randint(1, 2) for _ in range(nd))
            pads = [(rng.randint(0, 2), rng.randint(0, 2)) for _ in range(nd)]
            spatial = tuple(rng.randint((kk - 1) * d + 1, 7) for kk, d in zip(k, dil))
            out.append(((rng.randint(1, 2), rng.randint(1, 3)) + spatial, k, st, pads, dil, rng.random() < 0.3))
    return out


def _flat_scatter(x: torch.Tensor, index: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    keep = index.reshape(-1) >= 0
    out = torch.zeros(int(torch.tensor(shape).prod()), dtype=x.dtype)
    out.index_add_(0, index.reshape(-1)[keep], x.reshape(-1)[keep])
    return out.reshape(shape)


@pytest.mark.parametrize("shape,k,st,pads,dil,ceil", _cases())
def test_structured_paths_equal_the_flat_index(monkeypatch, shape, k, st, pads, dil, ceil) -> None:
    monkeypatch.setattr(windows, "FAST_FROM", 0)  # every map takes the structured path
    out_sizes = None
    if ceil:  # ceil_mode: one more window where the last one would start inside the input
        out_sizes = []
        for size, kk, s, (lo, hi), d in zip(shape[2:], k, st, pads, dil):
            span = (kk - 1) * d + 1
            n = -(-(size + lo + hi - span) // s) + 1
            out_sizes.append(n if (n - 1) * s < size + lo else n - 1)
    index = window_index(shape, k, st, pads, dil, out_sizes=out_sizes)
    w = windows.known(index)
    assert w is not None and w.out == tuple(index.shape[2:2 + len(k)])
    x = torch.randn(shape, dtype=F64)
    flat = x.reshape(-1)[index.clamp(min=0)] * (index >= 0)
    assert torch.equal(windows.gather(x, w), flat)
    assert torch.equal(M._take_impl(x, index, fill=bool((index < 0).any())), flat)
    cols = torch.randn(index.shape, dtype=F64)
    assert torch.allclose(windows.scatter(cols, w, shape), _flat_scatter(cols, index, shape), rtol=1e-14, atol=1e-14)
    assert windows.touches_padding(w) == bool((index < 0).any())
    valid = index.reshape(-1)[index.reshape(-1) >= 0]
    assert windows.most(w) == (int(torch.bincount(valid).max()) if valid.numel() else 1)


def test_maps_not_made_by_window_index_take_the_flat_path() -> None:
    index = torch.arange(6).reshape(2, 3).flip(1).contiguous()
    assert windows.known(index) is None
    x = torch.arange(6, dtype=F64)
    assert torch.equal(M._take_impl(x, index), x[index])
    # a map's structure is forgotten with the map
    made = window_index((1, 1, 9, 9), (3, 3), (1, 1), [(1, 1), (1, 1)], (1, 1))
    key = id(made)
    del made
    assert key not in windows._KNOWN


def test_windows_through_the_structured_path_match_torch(monkeypatch) -> None:
    # average pooling, and a convolution whose padding is uneven (padding="same" with an even kernel: the conv
    # primitive pads evenly), go through window maps
    import gradcheck_sym as gs

    calls = {"gather": 0, "scatter": 0}
    for name in calls:
        def counted(*args, _f=getattr(windows, name), _name=name):
            calls[_name] += 1
            return _f(*args)

        monkeypatch.setattr(windows, name, counted)
    x = torch.randn(8, 3, 32, 32, dtype=F64)  # 8*3*16*16*9 = 55,296 map entries: the structured path
    rep = gs.check_function(lambda x: torch.nn.functional.avg_pool2d(x, 3, 2, 1).square().sum(), x)
    assert calls["gather"] >= 1 and calls["scatter"] >= 1, calls
    assert rep.ok and rep.checked == 8 * 3 * 32 * 32
    assert not [f for f in rep.findings if f.kind == "not-verified"]
    calls.update(gather=0, scatter=0)
    conv = torch.nn.Conv2d(3, 4, 2, padding="same", dtype=F64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (torch's: "padding='same' with even kernel lengths ... a zero-padded copy")
        rep = gs.check_function(lambda x: conv(x).square().sum(), x)
    assert calls["gather"] >= 1 and calls["scatter"] >= 1, calls
    assert rep.ok and rep.checked == 8 * 3 * 32 * 32
    assert not [f for f in rep.findings if f.kind == "not-verified"]


def test_a_scattered_value_owns_its_storage() -> None:
    # the recorder counts a value's own storage (a view counts 0): a scatter-add's result is never a view
    for pads in ([(0, 0), (0, 0)], [(1, 1), (1, 1)]):
        index = window_index((4, 8, 32, 32), (3, 3), (1, 1), pads, (1, 1))
        w = windows.known(index)
        out = windows.scatter(torch.randn(index.shape, dtype=F64), w, (4, 8, 32, 32))
        assert out._base is None and out.is_contiguous()
