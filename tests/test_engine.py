"""The tensor engine at the rule level: primitives' transposes, the interpreters, aliasing, second order."""

import mpmath
import numpy as np
import pytest
import sympy
import torch

import gradcheck_sym as gs
from gradcheck_sym.autograd.user import run_traced
from gradcheck_sym.ir.program import Program
from gradcheck_sym.ops import prims as P
from gradcheck_sym.ops.core import interpreting
from gradcheck_sym.ops.ew import ADD, MUL
from gradcheck_sym.reference.interpret import ObjectEager, Recorder, Traced, error_bounds, evaluate, record_sweep, sweep
from gradcheck_sym.reference.rounded import evaluate_rounded, rounded_sweep

from .oracle import assert_matches_oracle, traced

F64 = torch.float64
gen = torch.Generator().manual_seed(7)


def rand(*shape):
    return torch.randn(*shape, dtype=F64, generator=gen)


def vjp_of(f, x, g):
    """The VJP of primitive application f at x, through the sweep (the rules under test)."""
    rec = Recorder(1, 0)
    from gradcheck_sym.ir.program import Var

    v = Var(0, tuple(x.shape), "float64")
    with interpreting(rec):
        out = f(Traced(x, v))
    prog = Program((v,), ("x",), tuple(rec.eqns), (out.var,), tuple(rec.consts))
    env = {0: x, **rec.values}
    return sweep(prog, env, {out.var.id: g}).cts[0], out.value


LINEAR = {
    "reshape": (lambda x: P.reshape(x, (6, 4)), (4, 6)),
    "permute": (lambda x: P.permute(x, (2, 0, 1)), (2, 3, 4)),
    "expand": (lambda x: P.expand(x, (5, 3, 4)), (1, 3, 1)),
    "sum": (lambda x: P.sum_(x, (0, 2), keepdim=False), (3, 4, 5)),
    "sum keepdim": (lambda x: P.sum_(x, (1,), keepdim=True), (3, 4, 5)),
    "take": (lambda x: P.take(x, torch.tensor([[3, 0, -1], [3, 5, 1]])), (2, 3)),
    "segsum": (lambda x: P.segsum(x, torch.tensor([[2, 0, 2], [-1, 1, 0]]), (4,)), (2, 3)),
    "cumsum": (lambda x: P.cumsum(x, 1), (3, 5)),
    "reverse cumsum": (lambda x: P.cumsum(x, 0, reverse=True), (4, 2)),
    "matmul left": (lambda x: P.matmul(x, torch.ones(3, 2, dtype=F64) * 0.5), (4, 3)),
    "matmul right batched": (lambda x: P.matmul(torch.arange(24.0, dtype=F64).reshape(2, 3, 4), x), (4, 5)),
}


@pytest.mark.parametrize("name", list(LINEAR))
def test_linear_primitives_satisfy_the_dot_product_identity(name):
    """<L x, y> = <x, L^T y> at random tensors: the VJP is the exact transpose."""
    f, shape = LINEAR[name]
    x = rand(*shape)
    with interpreting(__import__("gradcheck_sym.ops.core", fromlist=["TorchEager"]).TorchEager()):
        lx = f(x)
    y = rand(*lx.shape)
    lty, _ = vjp_of(f, x, y)
    assert float((lx * y).sum()) == pytest.approx(float((x * lty).sum()), rel=1e-12, abs=1e-12)


def test_elementwise_vjp_undoes_broadcasting_and_uses_sympy_partials():
    x, w = rand(3, 1), rand(1, 4)
    assert_matches_oracle(lambda x, w: (torch.sin(x) * torch.exp(w) / (1 + x * x)).sum(), x, w)


@pytest.mark.parametrize("fn", [
    lambda x: torch.nn.functional.conv2d(x, torch.ones(2, 2, 2, 2, dtype=F64) * 0.3, padding=1).tanh().sum(),
    lambda x: torch.nn.functional.max_pool2d(x, 2, 1).sum() + torch.nn.functional.avg_pool2d(x, 2, ceil_mode=True,
                                                                                            count_include_pad=False)
    .square().sum(),
    lambda x: torch.nn.functional.layer_norm(x, (3,)).pow(3).sum(),
    lambda x: torch.log_softmax(x, -1).sum() + torch.softmax(x, 1).pow(2).sum(),
    lambda x: x.cumsum(-1).prod() + x.amax() + x.logsumexp(-1).sum(),
    lambda x: torch.einsum("bij,bjk->bik", x, x.transpose(-1, -2)).relu().sum(),
    lambda x: x[:, 1:, ::2].flip(0).sum() + torch.cat([x, x * 2], -1).std() + x.var(1).sum(),
])
def test_composites_match_the_per_element_sympy_path(fn):
    assert_matches_oracle(fn, rand(2, 2, 3))


def test_a_matmul_stays_one_equation():
    run = traced(lambda a, b: (a @ b).sum(), rand(64, 64), rand(64, 64))
    assert [e.prim for e in run.program.eqns] == ["matmul", "sum"]
    run.program.validate()
    assert "= matmul %0 %1" in str(run.program)


def test_the_high_precision_path_evaluates_the_same_program_in_mpmath():
    run = traced(lambda x: (torch.tanh(x) * torch.exp(-x)).sum(), rand(5))
    x = run.leaves[0].detach()
    with mpmath.workdps(50):
        env = evaluate(run.program, [np.array([mpmath.mpf(float(v)) for v in x], dtype=object)],
                       interp=ObjectEager())
        exact = env[run.program.outputs[0].id]
    assert float(exact) == pytest.approx(float(run.env[run.program.outputs[0].id]), rel=1e-15)


def test_second_order_is_the_sweep_of_the_recorded_sweep():
    x = rand(4)
    f = lambda x: (torch.sin(x) * x.exp()).sum() * x.square().sum()  # noqa: E731
    run = traced(f, x)
    prog, env = run.program, run.env
    whole, values, res = record_sweep(prog, env, {prog.outputs[0].id: torch.ones((), dtype=F64)})
    g = res.cts[prog.inputs[0].id]
    u = rand(4)
    hu = sweep(whole, values, {g.var.id: u}).cts[prog.inputs[0].id]
    expected = torch.autograd.functional.hessian(f, x) @ u  # torch as the test's oracle
    torch.testing.assert_close(hu, expected, rtol=1e-12, atol=1e-12)


def test_bounds_tracked_while_recording_the_sweep_equal_error_bounds_of_the_whole():
    # The tracer tracks the forward's bounds; the sweep's are tracked as it records: the same numbers as
    # bounding the whole program from scratch, here in float32 where the bounds matter.
    x = rand(6).float()
    run = traced(lambda x: (torch.tanh(x) * x.exp() - x.square().sum()).abs().sum(), x)
    prog, env = run.program, run.env
    seeds = {prog.outputs[0].id: torch.ones((), dtype=F64)}
    whole, values, res = record_sweep(prog, env, seeds, errs=run.tracer.rec.bounds())
    fresh = error_bounds(whole, values)
    grads = [res.cts[v.id].var.id for v in prog.inputs]
    assert all(res.errs[g].abs().max() > 0 for g in grads)  # a bound was computed, not a zero
    for g in grads:
        torch.testing.assert_close(res.errs[g], fresh[g], rtol=1e-13, atol=0)
    skipped = error_bounds(whole, values, start=run.tracer.rec.bounds(), skip=len(prog.eqns))
    for g in grads:
        torch.testing.assert_close(skipped[g], fresh[g], rtol=1e-13, atol=0)


def test_the_rounding_of_the_last_sums_is_a_lower_bound_of_the_rounding_bound():
    # A fit's 0-d coefficients, broadcast over 2,000 points: each gradient is a sum of 2,000 terms whose rounding
    # alone, gamma_sum(n) u sum|terms|, is part of the bound the recorded sweep tracks (and never more than it).
    from gradcheck_sym.judge.backward_values import consumers, last_sums
    from gradcheck_sym.ops.prims_base import gamma_sum

    xs = torch.linspace(-3, 3, 2000)
    ys = torch.sin(xs)
    a, b = torch.tensor(0.1), torch.tensor(0.8)
    run = run_traced(lambda p: ((p[0] + p[1] * xs) - ys).square().sum(), [a, b], ["a", "b"])
    prog, env = run.program, run.env
    assert [v.dtype for v in prog.inputs] == ["float32", "float32"]
    seeds = {prog.outputs[0].id: torch.ones((), dtype=F64)}
    whole, values, res = record_sweep(prog, env, seeds, errs=run.tracer.rec.bounds())
    plain = sweep(prog, env, seeds).cts
    reads = consumers(prog)
    va, vb = prog.inputs
    low_a = last_sums(prog, reads, plain, env, va)
    low_b = last_sums(prog, reads, plain, env, vb)
    # what it is, computed here from the cotangent of a + b*x and of b*x (both (2000,), float64)
    (add,) = [e for e, _ in reads[va.id]]
    (mul,) = [e for e, _ in reads[vb.id]]
    u = 2.0**-24
    assert float(low_a) == pytest.approx(gamma_sum(2000) * u * float(plain[add.outputs[0].id].abs().sum()), rel=1e-12)
    assert float(low_b) == pytest.approx(
        gamma_sum(2000) * u * float((plain[mul.outputs[0].id] * xs.double()).abs().sum()), rel=1e-12)
    # a lower bound of the full bound, and the larger part of it here
    for v, low in ((va, low_a), (vb, low_b)):
        full = res.errs[res.cts[v.id].var.id]
        assert 0 < float(low) <= float(full)
        assert float(low) > 0.3 * float(full)
    # nothing of that kind reads a variable that is not broadcast: no part, not a zero
    assert last_sums(prog, reads, plain, env, add.outputs[0]) is None


@pytest.mark.parametrize("case", ["a (1,) parameter", "a (3, 1) parameter", "read by a product and a sum",
                                  "the second argument of a difference", "float64 times float32 data", "float16"])
def test_the_last_sums_stay_below_the_rounding_bound(case):
    # the parts `last_sums` adds up, for parameters of other shapes, read more than once, or of another dtype than
    # the data, against the bound the recorded sweep tracks for their cotangents
    from gradcheck_sym.judge.backward_values import consumers, last_sums

    xs = torch.linspace(-3, 3, 2000)
    data = {"float16": xs.half(), "float64 times float32 data": xs}.get(case, xs)
    fns = {
        "a (1,) parameter": (lambda p: (p[0] * data - torch.sin(data)).square().sum(), [torch.tensor([0.7])]),
        "a (3, 1) parameter": (lambda p: (p[0] * data - torch.sin(data)).square().sum(), [torch.full((3, 1), 0.7)]),
        "read by a product and a sum": (lambda p: ((p[0] + p[0] * data) - torch.sin(data)).square().sum(),
                                        [torch.tensor(0.6)]),
        "the second argument of a difference": (lambda p: (torch.sin(data) - p[0] * data).square().sum(),
                                                [torch.tensor(0.8)]),
        "float64 times float32 data": (lambda p: (p[0] * data - torch.sin(data)).square().sum(),
                                       [torch.tensor(0.7, dtype=F64)]),
        "float16": (lambda p: (p[0] * data - torch.sin(data)).square().sum(), [torch.tensor(0.7).half()]),
    }
    fn, params = fns[case]
    run = run_traced(fn, params, ["p"])
    prog, env = run.program, run.env
    seeds = {prog.outputs[0].id: torch.ones((), dtype=F64)}
    whole, values, res = record_sweep(prog, env, seeds, errs=run.tracer.rec.bounds())
    plain = sweep(prog, env, seeds).cts
    (v,) = prog.inputs
    low = last_sums(prog, consumers(prog), plain, env, v)
    assert low is not None and tuple(low.shape) == tuple(v.shape)
    full = res.errs[res.cts[v.id].var.id]
    assert bool((low > 0).all()) and bool((low <= full).all()), (low, full)


def test_the_sweep_recomputed_in_float32_is_a_noise_sample_within_the_bound():
    # a float32 computation recorded and swept: recomputing the whole in float32 by our formulas gives
    # float32 gradients, off from the float64 ones by rounding (not 0), and within the worst-case bound
    x = rand(64).float()
    w = rand(64, 64).float() / 8
    run = run_traced(lambda xs: torch.tanh(w @ torch.tanh(w @ xs[0])).square().sum(), [x], ["x"])
    prog, env = run.program, run.env
    assert prog.inputs[0].dtype == "float32"
    whole, values, res = record_sweep(prog, env, {prog.outputs[0].id: torch.ones((), dtype=F64)},
                                      errs=run.tracer.rec.bounds())
    rounded = evaluate_rounded(whole, values)
    g = res.cts[prog.inputs[0].id].var.id
    assert rounded[g].dtype == torch.float32
    noise = (rounded[g].double() - values[g]).abs()
    assert 0 < float(noise.max()) < 1e-5 * float(values[g].abs().max())
    assert bool((noise <= res.errs[g]).all())
    # with torch's own float32 gradient for scale: the same order as ours
    xt = x.clone().requires_grad_()
    torch.tanh(w @ torch.tanh(w @ xt)).square().sum().backward()
    theirs = float((xt.grad.double() - values[g]).abs().max())
    assert 0.1 < theirs / float(noise.max()) < 10
    # the same without writing the sweep down: the forward and the sweep under float32 rounding
    swept = rounded_sweep(prog, env, {prog.outputs[0].id: torch.ones((), dtype=F64)})[prog.inputs[0].id]
    assert swept.dtype == torch.float32
    again = float((swept.double() - values[g]).abs().max())
    assert 0 < again and 0.1 < theirs / again < 10


def test_a_measured_noise_starts_from_the_user_s_own_forward_values():
    # torch's convolution of one input channel rounds otherwise than our float32 formula; near an optimum (the
    # target is what the layer computes) the gradient is that rounding of the residual: from the values the user's run
    # computed, the float32 sweep gives torch's own gradient, from our own forward values a different sample
    g = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(1, 1, 32, 32, generator=g), torch.randn(6, 1, 5, 5, generator=g) / 5, torch.randn(6, generator=g)
    target = torch.nn.functional.conv2d(x.double(), w.double(), b.double()).float()

    def f(xs):
        return torch.nn.functional.mse_loss(torch.nn.functional.conv2d(x, xs[0], b), target)

    run = run_traced(f, [w], ["w"])
    prog, env, user = run.program, run.env, run.tracer.rec.user
    assert sorted(tuple(v.shape) for v in user.values()) == [(), (1, 6, 28, 28)] and \
        all(v.dtype == torch.float32 for v in user.values())
    forward = evaluate_rounded(prog, env, user=user)
    assert all(forward[k] is v for k, v in user.items())
    seed = {prog.outputs[0].id: torch.ones((), dtype=F64)}
    exact = sweep(prog, env, seed).cts[prog.inputs[0].id]
    sampled = rounded_sweep(prog, env, seed, user=user)[prog.inputs[0].id].double()
    own = rounded_sweep(prog, env, seed)[prog.inputs[0].id].double()
    wt = w.clone().requires_grad_()
    f([wt]).backward()
    theirs = wt.grad.double()
    assert float((theirs - exact).abs().max()) > 1e-9  # (float32's rounding of the residual: the whole gradient)
    assert float((sampled - theirs).abs().max()) <= 1e-3 * float((theirs - exact).abs().max())
    assert float((own - theirs).abs().max()) > 0.1 * float((theirs - exact).abs().max())


def test_a_sweep_says_whether_a_cut_was_reached():
    x = rand(3)
    reached = traced(lambda x: (x.detach() * x).sum(), x)
    untouched = traced(lambda x: (x * x).sum() + x.detach().sum().item() * 0, x)
    for run, expected in ((reached, True), (untouched, False)):
        prog = run.program
        res = sweep(prog, run.env, {prog.outputs[0].id: torch.ones((), dtype=F64)})
        assert res.cut_reached is expected


# ---------------------------------------------------------------- aliasing: views and in-place changes
def _inplace_through_a_view(x):
    y = x * 1.0
    v = y[1:]  # a view of y
    v.mul_(torch.arange(1.0, 4.0, dtype=x.dtype))  # changes y too
    return (y * y).sum() + v.sum()


def _view_then_base_changes(x):
    y = x * 2  # (exp would save its output: torch's own backward would then refuse the change below)
    v = y.view(2, 2)
    y.add_(1.0)  # the view sees it
    return (v * v).sum()


def _detach_alias_changes(x):
    y = x * 2
    d = y.detach()
    d.mul_(3)  # changes y's value (torch: y is not saved, so backward is fine)
    return (y * x).sum()


def _setitem_into_fresh(x):
    out = torch.zeros_like(x)
    out[x > 0] = x[x > 0].sqrt()  # the docs' recommended NaN-safe pattern
    return out.sum()


@pytest.mark.parametrize("fn,kinds", [
    (_inplace_through_a_view, []),
    (_view_then_base_changes, []),
    (_detach_alias_changes, ["stale-graph"]),
    (_setitem_into_fresh, []),
])
def test_views_and_in_place_changes_mean_what_they_mean_in_torch(fn, kinds):
    report = gs.check_function(fn, torch.tensor([0.3, -1.2, 2.0, 0.7], dtype=F64))
    assert sorted({f.kind for f in report.errors()}) == kinds, str(report)


def test_the_value_of_every_traced_op_is_checked_against_torch():
    run = traced(lambda x: (x.sin() @ x.cos().T).relu().sum(), rand(3, 4))
    ours = run.env[run.program.outputs[0].id]
    assert float(ours) == pytest.approx(float(run.outputs[0].detach()), rel=1e-14)
    assert not run.tracer.notes


def test_add_and_mul_rules_are_the_table_s():
    run = traced(lambda x, y: x * y + x, rand(3), rand(3))
    fns = [e.params["fn"] for e in run.program.eqns if e.prim == "ew"]
    assert [f.name for f in fns] == ["mul", "add"]
    assert fns[0].expr == MUL.expr and fns[1].expr == ADD.expr


@pytest.mark.parametrize("name, expr", [("relu", lambda x: sympy.Max(x, 0)),
                                         ("leaky_relu", lambda x: sympy.Piecewise((x, x > 0), (x / 100, True))),
                                         ("min", lambda x: sympy.Min(-x, 0))])
def test_a_kink_between_the_user_s_value_and_the_reference_s_passes_the_input_s_bound_on(name, expr):
    # A float32 run took one side of a kink (its input -1e-7: relu gives 0) and the float64 reference, within the
    # input's bound of it, the other (+3e-7).  The bound on the output must cover the difference: it was
    # |d relu/dx| on the user's side times the input's bound, 0, and a published tutorial's conv + batch norm at
    # batch 256 made an internal error of it (our value "differs from torch's").
    from gradcheck_sym.ops.ew import P as ARGS
    from gradcheck_sym.ops.ew import EwFn
    from gradcheck_sym.ops.prims import _ew_err

    fn = EwFn(name, expr(ARGS[0]), 1).branched
    ref = torch.tensor([3e-7, -3e-7, 2.0], dtype=torch.float64)
    user = torch.tensor([-1e-7, 1e-7, 2.0], dtype=torch.float64)
    e_in = torch.full((3,), 5e-3, dtype=torch.float64)
    (bound,) = _ew_err([e_in, None], [ref, user], [P._ew_impl(ref, user, fn=fn)], 2.0**-24, fn)
    assert bool((bound >= 5e-3).all()), bound  # every slope here is 1 on one side


def test_an_elementwise_result_of_another_shape_than_its_arguments_is_refused() -> None:
    # 0-d arguments and a result with a dimension: broadcasting cannot make it, the rule is wrong
    from gradcheck_sym.ops.ew import EwFn, P as PARAMS
    from gradcheck_sym.ops.prims import _ew_impl

    wrong = EwFn("reshaped", PARAMS[0], 1, torch_impl=lambda a: a.reshape(-1))
    with pytest.raises(RuntimeError):
        _ew_impl(torch.tensor(2.0, dtype=F64), fn=wrong)
    both = EwFn("sum", PARAMS[0] + PARAMS[1], 2)  # broadcast from one argument's shape: expanded as before
    out = _ew_impl(torch.ones((2, 1), dtype=F64), torch.ones((1, 3), dtype=F64), fn=both)
    assert tuple(out.shape) == (2, 3) and bool((out == 2).all())


@pytest.mark.parametrize("fn", [
    lambda x: (torch.tanh(x) * x.exp() - x.square().sum()).abs().sum(),
    lambda x: torch.nn.functional.conv2d(x.reshape(1, 1, 4, 6), x[:4].reshape(1, 1, 2, 2), padding=1).relu().sum(),
    lambda x: torch.softmax(x.reshape(2, 12) @ x.reshape(12, 2), 0).log().sum(),
], ids=["elementwise", "conv", "matmul softmax"])
def test_bounds_of_the_lean_sweep_equal_the_written_sweep_s(fn):
    # `sweep_bounds` holds only the asked cotangents (and drops the others as it goes): the same numbers as the
    # written sweep's tracked bounds, in float32 where they matter
    from gradcheck_sym.reference.lean_bounds import sweep_bounds

    x = rand(24).float()
    run = traced(fn, x)
    prog, env = run.program, run.env
    seeds = {prog.outputs[0].id: torch.ones((), dtype=F64)}
    whole, values, res = record_sweep(prog, env, seeds, errs=run.tracer.rec.bounds())
    keep = {prog.inputs[0].id}
    lean = sweep_bounds(prog, env, seeds, errs=run.tracer.rec.bounds(), keep=keep)
    assert set(lean) == keep
    written = res.errs[res.cts[prog.inputs[0].id].var.id]
    assert float(written.abs().max()) > 0
    torch.testing.assert_close(lean[prog.inputs[0].id], written, rtol=1e-13, atol=0)
    # and a sweep told what to keep holds nothing else
    kept = sweep(prog, env, seeds, keep=keep).cts
    assert set(kept) == keep
    torch.testing.assert_close(kept[prog.inputs[0].id], sweep(prog, env, seeds).cts[prog.inputs[0].id])


def _traced32(fn, x):
    """`fn` traced at a float32 `x`: a program the user computed in float32."""
    return run_traced(lambda leaves: fn(*leaves), [x], ["a0"])


@pytest.mark.parametrize("fn", [
    lambda x: (torch.tanh(x) * x.exp() - x.square().sum()).abs().sum(),
    lambda x: torch.nn.functional.conv2d(x.reshape(1, 2, 3, 4), x[:8].reshape(2, 2, 2, 1)).tanh().pow(2).sum(),
    lambda x: torch.softmax(x.reshape(2, 12) @ x.reshape(12, 2), 0).log().sum(),
    # a batch norm's backward, where the cotangent cancels: the bound is of sums of non-negative terms all the same
    lambda x: ((x.reshape(6, 4) - x.reshape(6, 4).mean(0)) / x.reshape(6, 4).var(0).add(1e-5).sqrt()).sin().sum(),
], ids=["elementwise", "conv", "matmul softmax", "batch norm"])
def test_bounds_of_a_float32_program_computed_in_float32_are_still_bounds(fn):
    # `sweep_bounds(narrow=True)` (a large float32 backward's): in float32, made NARROW_SLACK larger at the end —
    # never below the float64 computation's, and within that slack of it
    from gradcheck_sym.reference.lean_bounds import NARROW_SLACK, sweep_bounds

    x = rand(24).float()
    run = _traced32(fn, x)
    assert {v.dtype for e in run.program.eqns for v in e.outputs} == {"float32"}
    prog, env = run.program, run.env
    seeds = {prog.outputs[0].id: torch.ones((), dtype=F64)}
    keep = {prog.inputs[0].id}
    wide = sweep_bounds(prog, env, seeds, errs=run.tracer.rec.bounds(), keep=keep)[prog.inputs[0].id]
    narrow = sweep_bounds(prog, env, seeds, errs=run.tracer.rec.bounds(), keep=keep, narrow=True)[prog.inputs[0].id]
    assert narrow.dtype == wide.dtype == F64 and float(wide.min()) > 0
    assert bool((narrow >= wide).all()) and bool((narrow <= wide * NARROW_SLACK * (1 + 2.0**-20)).all())
    assert float((narrow / wide).min()) > 1 + 2.0**-7  # (the slack is there: float32's own error is far below it)


def test_a_value_let_go_stands_in_as_nan_where_its_equation_cannot_be_recomputed(monkeypatch):
    # (`ScriptMemory.drop_unread` puts a meta tensor in place of a value no sweep reads; the float32 recomputation
    # falls back on the float64 value where an equation cannot be evaluated: NaN then, which measures nothing)
    import dataclasses

    from gradcheck_sym.ops.core import PRIMS

    x = rand(8).float()
    run = run_traced(lambda xs: torch.tanh(xs[0]).square().sum(), [x], ["x"])
    prog, env = run.program, dict(run.env)
    (e,) = [e for e in prog.eqns if e.prim == "ew" and e.params["fn"].name == "tanh"]
    v = e.outputs[0]
    env[v.id] = torch.empty(tuple(env[v.id].shape), dtype=F64, device="meta")

    def fails(*args, **params):
        raise RuntimeError("cannot")

    monkeypatch.setitem(PRIMS, "ew", dataclasses.replace(PRIMS["ew"], impl=fails))
    rounded = evaluate_rounded(prog, env)
    assert not rounded[v.id].is_meta and bool(rounded[v.id].isnan().all())
