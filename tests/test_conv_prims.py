"""The convolution primitives (`ops.conv_prims`): values against torch, exact transposes, the high-precision path,
second order, the rounding bound, and what a traced convolution keeps."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gradcheck_sym.ir.program import Program, Var
from gradcheck_sym.ops import conv_prims as CP
from gradcheck_sym.ops.core import TorchEager, interpreting
from gradcheck_sym.reference.interpret import Recorder, Traced, error_bounds, record_sweep, sweep

F64 = torch.float64
gen = torch.Generator().manual_seed(11)
_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def rand(*shape, dtype=F64):
    return torch.randn(*shape, dtype=F64, generator=gen).to(dtype)


# (nd, input spatial size, kernel, stride, padding, dilation, groups): strides that leave rows no window reads,
# padding larger than the kernel's span, groups, 1-D to 3-D
CASES = [
    (2, (9, 7), (3, 3), 1, 0, 1, 1),
    (2, (9, 8), (3, 2), 2, 1, 1, 1),
    (2, (10, 9), (3, 3), 3, 1, 2, 2),
    (2, (6, 6), (2, 2), 1, 3, 1, 1),
    (1, (11,), (3,), 2, 1, 1, 2),
    (1, (8,), (4,), 3, 2, 2, 1),
    (3, (5, 6, 4), (2, 3, 2), (1, 2, 1), 1, 1, 1),
]


def params(case):
    nd, _, _, s, p, d, g = case
    tup = lambda v: tuple(v) if isinstance(v, tuple) else (v,) * nd  # noqa: E731
    return dict(stride=tup(s), padding=tup(p), dilation=tup(d), groups=g)


def operands(case, n=2, c=4, o=6):
    nd, size, k, *_, g = case
    return rand(n, c, *size), rand(o, c // g, *k)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_the_three_match_torch_s_convolution_and_its_gradients(case):
    x, w = operands(case)
    prm = params(case)
    xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
    y = _CONV[case[0]](xr, wr, None, prm["stride"], prm["padding"], prm["dilation"], prm["groups"])
    g = rand(*y.shape)
    gx, gw = torch.autograd.grad(y, (xr, wr), g)  # torch as the test's oracle
    torch.testing.assert_close(CP._conv(x, w, **prm), y.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(CP._tin(g, w, size=tuple(x.shape[1:]), **prm), gx, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(CP._tw(x, g, k=tuple(w.shape[2:]), **prm), gw, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_a_batch_convolved_a_slice_at_a_time_gives_the_same_numbers(case, monkeypatch):
    # (a float64 convolution's im2col columns are one buffer for the whole batch: 2.7 GB at a tutorial's batch of
    # 2,048; past CHUNK_BYTES the batch goes a slice at a time, here one or two samples a slice)
    x, w = operands(case, n=5)
    prm = params(case)
    g = rand(*CP._conv(x, w, **prm).shape)
    whole = (CP._conv(x, w, **prm), CP._tin(g, w, size=tuple(x.shape[1:]), **prm),
             CP._tw(x, g, k=tuple(w.shape[2:]), **prm))
    sliced = []
    monkeypatch.setattr(CP, "CHUNK_BYTES", 1)
    real = CP._TORCH_CONV[case[0]]
    monkeypatch.setitem(CP._TORCH_CONV, case[0], lambda x, *a: sliced.append(x.shape[0]) or real(x, *a))
    parts = (CP._conv(x, w, **prm), CP._tin(g, w, size=tuple(x.shape[1:]), **prm),
             CP._tw(x, g, k=tuple(w.shape[2:]), **prm))
    assert sliced and set(sliced) == {1}  # (a sample a slice: each call went in slices)
    for a, b in zip(whole, parts):
        # the same sums, up to the order BLAS adds them in (a batch of one and of five take different kernels on some
        # CPUs: an AMD EPYC's differed in the last bits)
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-12 * float(a.abs().max()))
    assert CP._conv(x.float(), w.float(), **prm).dtype == torch.float32  # (float32 goes whole: no im2col)


def vjp(f, args, i, ct):
    """The cotangent of args[i] through primitive application f, by the sweep."""
    rec = Recorder(len(args), 0)
    vars_ = [Var(j, tuple(a.shape), "float64") for j, a in enumerate(args)]
    with interpreting(rec):
        out = f(*[Traced(a, v) for a, v in zip(args, vars_)])
    names = tuple(f"a{j}" for j in range(len(args)))
    prog = Program(tuple(vars_), names, tuple(rec.eqns), (out.var,), tuple(rec.consts))
    env = {v.id: a for v, a in zip(vars_, args)} | rec.values
    return sweep(prog, env, {out.var.id: ct}).cts[i], out.value


@pytest.mark.parametrize("case", CASES, ids=str)
def test_each_vjp_is_the_exact_transpose(case):
    """<L a, y> = <a, L^T y> in each argument of each of the three (bilinear: linear in each)."""
    x, w = operands(case)
    prm = params(case)
    size, k = tuple(x.shape[1:]), tuple(w.shape[2:])
    g = rand(*CP._conv(x, w, **prm).shape)
    fns = {"conv": (lambda a, b: CP.conv(a, b, **prm), (x, w)),
           "conv_tin": (lambda a, b: CP.conv_tin(a, b, size=size, **prm), (g, w)),
           "conv_tw": (lambda a, b: CP.conv_tw(a, b, k=k, **prm), (x, g))}
    for name, (f, args) in fns.items():
        with interpreting(TorchEager()):
            out = f(*args)
        y = rand(*out.shape)
        for i in (0, 1):
            lty, _ = vjp(f, list(args), i, y)
            assert float((out * y).sum()) == pytest.approx(float((args[i] * lty).sum()), rel=1e-11, abs=1e-11), (
                name, i)


def test_the_high_precision_path_computes_the_same_on_object_arrays():
    case = (2, (7, 6), (3, 2), 2, 1, 2, 2)
    x, w = operands(case, n=1, c=2, o=2)
    prm = params(case)
    y = CP._conv(x, w, **prm)
    g = rand(*y.shape)
    obj = lambda t: t.numpy().astype(object)  # noqa: E731
    size, k = tuple(x.shape[1:]), tuple(w.shape[2:])
    for ours, exact in ((CP._conv(obj(x), obj(w), **prm), y),
                        (CP._tin(obj(g), obj(w), size=size, **prm), CP._tin(g, w, size=size, **prm)),
                        (CP._tw(obj(x), obj(g), k=k, **prm), CP._tw(x, g, k=k, **prm))):
        assert isinstance(ours, np.ndarray) and ours.dtype == object
        torch.testing.assert_close(torch.tensor(ours.astype(float)), exact, rtol=1e-13, atol=1e-13)


def test_second_order_through_the_recorded_sweep_is_torch_s_hessian():
    case = (2, (6, 5), (3, 3), 2, 1, 1, 1)
    x, w = operands(case, n=2, c=2, o=3)
    prm = params(case)
    f = lambda x, w: F.conv2d(x, w, None, prm["stride"], prm["padding"], prm["dilation"]).pow(3).sum()  # noqa: E731
    rec = Recorder(2, 0)
    vx, vw = Var(0, tuple(x.shape), "float64"), Var(1, tuple(w.shape), "float64")
    from gradcheck_sym.ops import prims as P
    from gradcheck_sym.ops.ew import MUL

    with interpreting(rec):
        y = CP.conv(Traced(x, vx), Traced(w, vw), **prm)
        out = P.sum_(P.ew(MUL, P.ew(MUL, y, y), y), tuple(range(4)))
    prog = Program((vx, vw), ("x", "w"), tuple(rec.eqns), (out.var,), tuple(rec.consts))
    env = {0: x, 1: w} | rec.values
    whole, values, res = record_sweep(prog, env, {out.var.id: torch.ones((), dtype=F64)})
    ux, uw = rand(*x.shape), rand(*w.shape)
    # the Hessian times (ux, uw): the sweep of <grad, u> over the recorded sweep
    hv = sweep(whole, values, {res.cts[0].var.id: ux, res.cts[1].var.id: uw}).cts
    _, (hx, hw) = torch.autograd.functional.hvp(f, (x, w), (ux, uw))  # torch as the test's oracle
    torch.testing.assert_close(hv[0], hx, rtol=1e-11, atol=1e-11)
    torch.testing.assert_close(hv[1], hw, rtol=1e-11, atol=1e-11)


def test_large_bounds_kept_compact_are_still_bounds_and_read_wide():
    # A recorded forward's bounds are as large as its values: kept in float32, rounded up (`compact_bound`); a
    # convolution's bound reads its input's wide again (conv takes one dtype).
    from gradcheck_sym.ops import prims as P
    from gradcheck_sym.ops.ew import MUL
    from gradcheck_sym.reference.interpret import COMPACT_FROM, compact_bound, wide_bound

    x, w = rand(2, 4, 130, 130), rand(6, 4, 3, 3)
    rec = Recorder(2, 0)
    rec.dtype = "float32"
    vx, vw = Var(0, tuple(x.shape), "float64"), Var(1, tuple(w.shape), "float64")
    with interpreting(rec):
        y = P.ew(MUL, Traced(x, vx), Traced(x, vx))
        z = CP.conv(y, Traced(w, vw), stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1)
    prog = Program((vx, vw), ("x", "w"), tuple(rec.eqns), (z.var,), tuple(rec.consts))
    env = {0: x, 1: w} | rec.values
    plain = error_bounds(prog, env)
    compact = error_bounds(prog, env, compact=True)
    for v in (y.var.id, z.var.id):
        assert plain[v].numel() >= COMPACT_FROM and compact[v].dtype == torch.float32
        assert bool((compact[v].double() >= plain[v]).all())  # rounded up: still a bound
        torch.testing.assert_close(compact[v].double(), plain[v], rtol=2**-22, atol=0)
    small = torch.tensor([1e-3, 2.0], dtype=F64)
    assert compact_bound(small) is small  # (small: left as it is)
    part = plain[y.var.id][:, :2]
    assert compact_bound(part) is part  # (a slice shares its base's storage: not copied)
    wide = torch.ones(4, 1, 1, dtype=F64).expand(4, 200, 200)
    assert compact_bound(wide) is wide  # (nor is a broadcast made whole)
    assert compact_bound(plain[y.var.id].reshape(-1)).dtype == torch.float32  # (a view of all of it: kept so)
    assert wide_bound(compact[z.var.id]).dtype == F64 and wide_bound(None) is None


@pytest.mark.parametrize("case", CASES[:3], ids=str)
def test_float32_rounding_stays_within_the_bound(case):
    """torch's float32 convolution (and its gradients) against the float64 values: within `err`'s bound."""
    x, w = operands(case, n=8, c=8, o=8)
    prm = params(case)
    xr, wr = x.float().requires_grad_(), w.float().requires_grad_()
    y32 = _CONV[case[0]](xr, wr, None, prm["stride"], prm["padding"], prm["dilation"], prm["groups"])
    g = rand(*y32.shape, dtype=torch.float32)
    gx32, gw32 = torch.autograd.grad(y32, (xr, wr), g)
    x, w, g = x.float().double(), w.float().double(), g.double()  # the same operands, exactly
    size, k = tuple(x.shape[1:]), tuple(w.shape[2:])
    for name, args, f, got in (
            ("conv", (x, w), lambda a, b: CP.conv(a, b, **prm), y32),
            ("conv_tin", (g, w), lambda a, b: CP.conv_tin(a, b, size=size, **prm), gx32),
            ("conv_tw", (x, g), lambda a, b: CP.conv_tw(a, b, k=k, **prm), gw32)):
        rec = Recorder(2, 0)
        vars_ = [Var(j, tuple(a.shape), "float32") for j, a in enumerate(args)]
        rec.dtype = "float32"
        with interpreting(rec):
            out = f(*[Traced(a, v) for a, v in zip(args, vars_)])
        prog = Program(tuple(vars_), ("a", "b"), tuple(rec.eqns), (out.var,), ())
        bound = error_bounds(prog, {0: args[0], 1: args[1]} | rec.values)[out.var.id]
        diff = (got.detach().double() - out.value).abs()
        assert float(diff.max()) > 0, name  # float32 did round
        assert bool((diff <= bound).all()), name
        assert float(bound.max()) < 1e-3 * float(out.value.abs().max()), name  # and the bound says something


def test_a_traced_convolution_keeps_no_windows():
    # im2col kept every window (and an int64 map as large): nine copies of the input at 3x3, twice; the primitive
    # keeps its operands and its result
    from gradcheck_sym.front.tracer import Tracer

    x = torch.randn(16, 8, 32, 32)
    w = torch.randn(16, 8, 3, 3, requires_grad=True)
    tr = Tracer()
    tr.leaf(w, "w")
    with tr:
        y = F.conv2d(x, w, padding=1)
    prims = [e.prim for e in tr.rec.eqns]
    assert prims == ["conv"], prims
    kept = tr.rec.nbytes
    # the float64 copies of the data (a constant), the weight and the result: no more
    assert kept <= 8 * (x.numel() + w.numel() + y.numel()) + 4096, kept


@pytest.mark.parametrize("groups,stride", list(itertools.product((1, 2), (1, 2))))
def test_check_function_on_a_convolution_is_ok(groups, stride):
    import gradcheck_sym as gs

    x = torch.randn(2, 4, 9, 9, dtype=F64)
    conv = torch.nn.Conv2d(4, 6, 3, stride=stride, padding=1, groups=groups, dtype=F64)
    rep = gs.check_function(lambda x, w: F.conv2d(x, w, conv.bias, stride, 1, 1, groups).tanh().sum(), x,
                            conv.weight.detach().clone())
    assert rep.ok and rep.checked == x.numel() + conv.weight.numel()
    assert not [f for f in rep.findings if f.kind == "not-verified"]


@pytest.mark.parametrize("nd,stride,padding,output_padding,dilation,groups", [
    (2, 2, 1, 1, 1, 1), (2, 1, 0, 1, 2, 2), (1, 3, 2, 2, 1, 1), (3, (1, 2, 1), 1, (0, 1, 0), 1, 1)])
def test_a_transposed_convolution_is_the_input_transpose_first_and_second_order(nd, stride, padding, output_padding,
                                                                                 dilation, groups):
    # output_padding can make room for one more window than the input has positions (dilation 2, stride 1): the
    # second-order sweep crops the convolution it takes back (`conv`'s out)
    import gradcheck_sym as gs
    from gradcheck_sym.front.tracer import Tracer

    fn = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[nd]
    x, w = rand(2, 4, *(5, 4, 3)[:nd]), rand(4, 6 // groups, *(3, 2, 2)[:nd])
    f = lambda x, w: fn(x, w, None, stride, padding, output_padding, groups, dilation).sin().sum()  # noqa: E731
    rep = gs.check_function(f, x, w, order=2)
    assert rep.ok and rep.checked >= x.numel() + w.numel(), rep
    tr = Tracer()
    tr.leaf(w.requires_grad_(), "w")
    with tr:
        fn(x, w, None, stride, padding, output_padding, groups, dilation)
    assert [e.prim for e in tr.rec.eqns] == ["conv_tin"]


def test_a_stride_past_the_input_and_padding_past_the_kernel_give_zeros_where_nothing_reads():
    # the input's transpose crops more than the dilated gradient holds on one side (found by a review: torch's
    # narrow() raised, an internal error)
    import gradcheck_sym as gs

    x, w = rand(1, 1, 1), rand(1, 1, 1)
    assert gs.check_function(lambda x, w: F.conv1d(x, w, None, 5, 2), x, w).ok
    assert gs.check_function(lambda x, w: F.conv_transpose1d(x, w, None, 5, 2, 4), x, w).ok
    g = rand(1, 1, 1)
    prm = dict(stride=(5,), padding=(2,), dilation=(1,), groups=1)
    assert torch.equal(CP._tin(g, w, size=(1, 1), **prm), torch.zeros(1, 1, 1, dtype=F64))
    assert CP._tin(g.numpy().astype(object), w, size=(1, 1), **prm).tolist() == [[[0]]]


@pytest.mark.parametrize("module", [
    lambda: torch.nn.Conv2d(8, 16, 3, padding=1), lambda: torch.nn.Conv2d(8, 16, 3, stride=2, groups=2),
    lambda: torch.nn.Conv1d(4, 8, 3), lambda: torch.nn.ConvTranspose2d(8, 4, 4, stride=2, padding=1),
    lambda: torch.nn.ConvTranspose1d(4, 6, 3, stride=2, output_padding=1)], ids=["2d", "strided groups", "1d",
                                                                                 "transposed", "transposed pad"])
def test_a_conv_bias_sum_in_float32_is_the_kernels_own(module):
    # torch's CPU convolution sums a float32 bias's gradient its own way (90x to 290x further from the exact sum than
    # torch.sum on a CNN's step): the rounding sample of the bias's sum calls that kernel, whose bits it reproduces
    from gradcheck_sym.ops import prims as P
    from gradcheck_sym.ops.torch import conv as C

    torch.manual_seed(0)
    m = module()
    nd = m.weight.dim() - 2
    x = torch.randn((32, m.in_channels) + (12,) * nd)
    y = m(x)
    y.retain_grad()
    (y * torch.randn_like(y)).sum().backward()
    g = y.grad
    if isinstance(m, torch.nn.modules.conv._ConvTransposeNd):
        kernel = C._transposed(tuple(x.shape), m.weight, m.stride, m.padding, m.dilation, m.groups, g.shape[2:])
    else:
        kernel = (tuple(x.shape), tuple(m.weight.shape), m.stride, m.padding, m.dilation, False, (0,) * nd, m.groups)
    dims = (0,) + tuple(range(2, 2 + nd))
    with interpreting(TorchEager()):
        got = P.sum_(g, dims, keepdim=True, kernel=kernel)
        plain = P.sum_(g, dims, keepdim=True)
        exact = P.sum_(g.double(), dims, keepdim=True, kernel=kernel)
    assert torch.equal(got.reshape(-1), m.bias.grad)  # bit for bit
    assert got.shape == plain.shape == exact.shape == (1, g.shape[1]) + (1,) * nd
    assert torch.equal(exact, g.double().sum(dims, keepdim=True))  # float64: a plain sum (the reference's value)


def test_a_float64_bias_sum_sampled_in_float32_is_not_the_float32_kernels():
    # float64's rounding is sampled in float32 (a stand-in): torch's float64 convolution sums a bias's gradient as
    # torch.sum does, 9x less rounding than the float32 kernel's, so the stand-in sample does not call that kernel
    from gradcheck_sym.ops.core import PRIMS
    from gradcheck_sym.ops.prims_movement import kernel_sum
    from gradcheck_sym.reference.rounded import Rounding

    torch.manual_seed(0)
    g = torch.randn(64, 16, 16, 16, dtype=F64)
    kernel = ((64, 8, 16, 16), (16, 8, 3, 3), (1, 1), (1, 1), (1, 1), False, (0, 0), 1)
    params = {"dims": (0, 2, 3), "keepdim": True, "kernel": kernel}
    own, stand_in = Rounding(), Rounding({F64: torch.float32})
    own.dtype, stand_in.dtype = torch.float32, F64
    by_kernel = kernel_sum(g.float(), kernel).reshape(1, 16, 1, 1)
    assert torch.equal(own.process(PRIMS["sum"], (g.float(),), params), by_kernel)
    sampled = stand_in.process(PRIMS["sum"], (g,), params)
    assert torch.equal(sampled, g.float().sum((0, 2, 3), keepdim=True)) and not torch.equal(sampled, by_kernel)
