"""Shared checks for the op-rule tests: the sympy oracle on a clean trace, the end-to-end verdict, and an
injected gradient error that must be caught."""

from __future__ import annotations

from typing import Any, Callable

import torch

import gradcheck_sym as gs
from tests.oracle import assert_matches_oracle, traced

F64 = torch.float64


def rand(*shape: int, seed: int = 0, lo: float = -2.0, hi: float = 2.0) -> torch.Tensor:
    """Seeded uniform values in [lo, hi) (distinct with probability 1: no ties unless a test makes them)."""
    gen = torch.Generator().manual_seed(seed)
    return lo + (hi - lo) * torch.rand(shape, dtype=F64, generator=gen)


def assert_traced_cleanly(fn: Callable[..., Any], *inputs: torch.Tensor) -> None:
    """Every op of `fn` has a rule that reproduced torch's value (no opaque value, no internal error)."""
    run = traced(fn, *inputs)
    notes = [n.text for n in run.tracer.notes]
    assert not notes, notes
    assert all(e.prim != "opaque" for e in run.program.eqns), str(run.program)


def assert_oracle(fn: Callable[..., Any], *inputs: torch.Tensor) -> None:
    """Our reverse sweep of the traced program equals sympy's derivative of the same program."""
    assert_traced_cleanly(fn, *inputs)
    assert_matches_oracle(fn, *inputs)


def assert_ok(fn: Callable[..., Any], *inputs: torch.Tensor, **kw: Any) -> gs.Report:
    report = gs.check_function(fn, *inputs, **kw)
    bad = [f for f in report.findings if f.severity == "error" or f.kind == "not-verified"]
    assert report.ok and not bad, str(report)
    return report


def injected(fn: Callable[..., Any], rel: float = 1e-4) -> Callable[..., Any]:
    """`fn` whose gradient is wrong by a relative `rel`: a hook on each floating output scales it."""

    def wrong(*args: torch.Tensor) -> Any:
        out = fn(*args)
        for t in out if isinstance(out, tuple) else (out,):
            if isinstance(t, torch.Tensor) and t.requires_grad:
                t.register_hook(lambda g: g * (1 + rel))
        return out

    return wrong


def assert_caught(fn: Callable[..., Any], *inputs: torch.Tensor) -> None:
    """The checker is not blind on `fn`: a 1e-4 relative gradient error is a mismatch in float64."""
    report = gs.check_function(injected(fn), *inputs)
    assert not report.ok and any(f.kind == "mismatch" for f in report.findings), str(report)
