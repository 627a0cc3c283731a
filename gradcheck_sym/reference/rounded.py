"""Rounding noise measured: the reference's own formulas recomputed in the user's dtype.

`evaluate_rounded` recomputes a program's forward in the dtype each variable had in the user's run, and
`rounded_sweep` the reverse sweep after it, each primitive under `Rounding`.  Their distance from the float64
values is a *sample* of the rounding a float32 backward shows, for the tolerance only (`judge.backward_values`):
never a reference value.  With `proxy` ({float64: float32}) a dtype is recomputed in another: float64's own
rounding cannot be sampled against a float64 reference, float32's can, and scales with the unit roundoff.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from ..ir.program import Eqn, Program, Var
from ..ops.core import PRIMS, Interpreter, TorchEager, interpreting
from ..ops.prims import working_dtype
from .interpret import _DTYPES, sweep

__all__ = ["evaluate_rounded", "rounded_sweep", "Rounding"]


def _as(name: str, proxy: dict[Any, Any] | None) -> torch.dtype | None:
    """The dtype named `name` (a Var's), or the one `proxy` recomputes it in."""
    d = _DTYPES.get(name)
    return proxy.get(d, d) if proxy else d


def evaluate_rounded(program: Program, values: dict[int, Any], proxy: dict[Any, Any] | None = None,
                     user: dict[int, Any] | None = None) -> dict[int, Any]:
    """Every floating variable of `program` recomputed in the user's dtype (its `Var.dtype`), from the
    float64 `values` of the variables no equation defines (inputs, seeds): the same formulas, rounded as
    the user's computation rounds (float32 where it ran in float32).  Its distance from `values` is a
    measured sample of rounding noise, for the tolerance only; never a reference value.

    `user`: values the user's run itself computed (variable id -> tensor in its dtype), taken instead of ours where
    given.  Near an optimum the gradient is mostly the rounding of a residual (a LeNet's output minus its target, at
    a loss of 1e-7): our own float32 forward rounded it differently, once 20x less than torch's, and autograd's
    gradients (right to float32's precision) were said wrong.  From torch's own forward values, the sample carries
    the rounding that autograd's gradient does.

    An equation that cannot be evaluated this way keeps its float64 value (cast to its dtype).
    """
    env: dict[int, Any] = {}
    user = user or {}
    with interpreting(TorchEager()):
        for e in program.eqns:
            dtype = _as(e.outputs[0].dtype, proxy)
            own = [_own(user.get(v.id), v, proxy) for v in e.outputs]
            if all(x is not None for x in own):
                for v, x in zip(e.outputs, own):
                    env[v.id] = x
                continue
            with working_dtype(dtype):
                outs = _rounded_eqn(e, env, values, program.consts, dtype, proxy, stand_in=dtype != _DTYPES.get(
                    e.outputs[0].dtype))
            for v, o, x in zip(e.outputs, outs, own):
                env[v.id] = x if x is not None else _rounded(o, _as(v.dtype, proxy))
    return env


def _own(x: Any, v: Var, proxy: dict[Any, Any] | None) -> Any:
    """The user's own value `x` of variable `v`, where it is in the dtype `v` is recomputed in (else None)."""
    if x is None or not isinstance(x, torch.Tensor) or x.dtype != _as(v.dtype, proxy) or tuple(x.shape) != v.shape:
        return None
    return x


def _rounded(x: Any, dtype: torch.dtype | None) -> Any:
    """A floating tensor `x` in `dtype` (anything else as it is)."""
    if dtype is not None and isinstance(x, torch.Tensor) and x.is_floating_point() and x.dtype != dtype:
        return x.to(dtype)
    return x


def _rounded_eqn(e: Eqn, env: dict[int, Any], values: dict[int, Any], consts: Any,
                 dtype: torch.dtype | None, proxy: dict[Any, Any] | None = None,
                 stand_in: bool = False) -> Sequence[Any]:
    """One equation of `evaluate_rounded`, its inputs rounded to `dtype` (`stand_in`: in place of its own dtype, so
    not with the kernel its dtype would use: see `_as_torch_evaluates`)."""
    ins = []
    for a in e.inputs:
        if isinstance(a, Var):
            x = env.get(a.id)
            ins.append(_rounded(values[a.id], _as(a.dtype, proxy)) if x is None else x)
        else:
            ins.append(consts[a.index])
    ins = [_rounded(x, dtype) for x in ins]
    try:
        out = PRIMS[e.prim].impl(*ins, **_as_torch_evaluates(e.prim, e.params, stand_in))
        return out if PRIMS[e.prim].multiple else (out,)
    except Exception:  # noqa: BLE001 - a sample of noise, not a result: the float64 value stands in
        # (one let go as no sweep reads it, `ScriptMemory.drop_unread`: NaN, which measures nothing)
        return [torch.full(tuple(x.shape), float("nan"), dtype=x.dtype) if isinstance(x, torch.Tensor) and x.is_meta
                else x for x in (values[v.id] for v in e.outputs)]


def _as_torch_evaluates(prim: str, params: dict[str, Any], stand_in: bool = False) -> dict[str, Any]:
    """An elementwise function's `params` with the formula torch evaluates for it (`EwFn.as_torch_evaluates`): a
    sample of torch's rounding follows torch's formulas where we know them.  With `stand_in` (float64's rounding
    sampled in float32), a sum's `kernel` is dropped: torch's float64 convolution sums a bias's gradient as torch.sum
    does, 9x less rounding than oneDNN's float32 sum (`ops.prims_movement.kernel_sum`)."""
    if stand_in and "kernel" in params:
        params = {k: v for k, v in params.items() if k != "kernel"}
    if prim != "ew":
        return params
    fn = params["fn"].as_torch_evaluates
    return params if fn is params["fn"] else {**params, "fn": fn}


class Rounding(Interpreter):
    """Evaluate each primitive in `dtype` (its floating inputs and outputs rounded to it): a sweep under it
    rounds as a backward in the user's dtype does, whatever precision a rule's constants have."""

    dtype: torch.dtype | None = None
    per_equation_dtype = True  # `sweep` sets `dtype` to each equation's own

    def __init__(self, proxy: dict[Any, Any] | None = None) -> None:
        self.proxy = proxy or {}

    def process(self, prim: Any, args: tuple[Any, ...], params: dict[str, Any]) -> Any:
        d = self.proxy.get(self.dtype, self.dtype)
        params = _as_torch_evaluates(prim.name, params, stand_in=d != self.dtype)
        if d is None:
            return prim.impl(*args, **params)
        args = tuple([a.to(d) if isinstance(a, torch.Tensor) and a.dtype != d and a.is_floating_point() else a
                      for a in args])
        with working_dtype(d):
            out = prim.impl(*args, **params)
        if not prim.multiple:
            return out.to(d) if isinstance(out, torch.Tensor) and out.dtype != d and out.is_floating_point() else out
        return tuple([o.to(d) if isinstance(o, torch.Tensor) and o.dtype != d and o.is_floating_point() else o
                      for o in out])


def rounded_sweep(program: Program, values: dict[int, Any], seeds: dict[int, Any], keep: Any = None,
                  proxy: dict[Any, Any] | None = None, user: dict[int, Any] | None = None) -> dict[int, Any]:
    """The forward and the reverse sweep recomputed in the user's dtype (or the one `proxy` puts in its place) by our
    formulas (`evaluate_rounded`, from the user's own values where `user` has them, then the sweep under
    `Rounding`): the cotangents a float32 backward like ours would give.  A measured sample of rounding noise for the
    tolerance, never a reference value."""
    env = evaluate_rounded(program, values, proxy, user)
    for v in list(program.inputs) + [a for e in program.eqns for a in e.inputs if isinstance(a, Var)]:
        if v.id not in env:
            env[v.id] = _rounded(values[v.id], _as(v.dtype, proxy))
    typed = {v.id: v.dtype for e in program.eqns for v in e.outputs}
    typed.update({v.id: v.dtype for v in program.inputs})
    start = {}
    for vid, s in seeds.items():
        d = _as(typed.get(vid, "float64"), proxy)
        start[vid] = s.to(d) if d is not None and isinstance(s, torch.Tensor) else s
    return sweep(program, env, start, interp=Rounding(proxy), keep=keep).cts
