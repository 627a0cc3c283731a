"""The per-element oracle for the tensor engine's rules: the traced program evaluated on sympy symbols.

The program's *forward* is run with numpy object arrays of sympy symbols (one per input element, the
primitives' object-array rules: no derivative rule is used), each output element becomes a sympy
expression of the inputs, and ``sympy.diff`` of it — evaluated at the point — is the reference the
engine's reverse sweep (our VJP rules) must reproduce.  Independent of every VJP rule under test.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import sympy
import torch

from gradcheck_sym.autograd.user import run_traced
from gradcheck_sym.ir.program import Var
from gradcheck_sym.reference.interpret import ObjectEager, evaluate, sweep


def traced(fn: Callable[..., Any], *inputs: torch.Tensor) -> Any:
    names = [f"a{i}" for i in range(len(inputs))]
    return run_traced(lambda leaves: fn(*leaves), [t.to(torch.float64) for t in inputs], names)


def symbols_for(inputs: Sequence[torch.Tensor]) -> tuple[list[np.ndarray], dict[sympy.Symbol, float]]:
    arrays, point = [], {}
    for i, t in enumerate(inputs):
        flat = t.detach().to(torch.float64).reshape(-1).tolist()
        syms = [sympy.Symbol(f"a{i}_{j}", real=True) for j in range(len(flat))]
        point.update({s: sympy.Float(v, 53) for s, v in zip(syms, flat)})
        arrays.append(np.array(syms, dtype=object).reshape(tuple(t.shape)))
    return arrays, point


def oracle_vjp(fn: Callable[..., Any], inputs: Sequence[torch.Tensor], seeds: Sequence[torch.Tensor] | None = None
               ) -> tuple[list[np.ndarray], list[torch.Tensor]]:
    """(sympy's gradient of sum(seed * output) at the point, our sweep's), per input."""
    run = traced(fn, *inputs)
    prog = run.program
    arrays, point = symbols_for(inputs)
    env = evaluate(prog, arrays, interp=ObjectEager())
    seeds = seeds or [torch.ones(s, dtype=torch.float64) for s in run.shapes]
    total = sympy.S.Zero
    for v, s in zip(prog.outputs, seeds):
        if not isinstance(v, Var):
            continue
        out = np.asarray(env[v.id], dtype=object).reshape(-1)
        for e, w in zip(out, s.reshape(-1).tolist()):
            total += sympy.Float(w, 53) * e
    exact = []
    for arr in arrays:
        grads = [float(sympy.diff(total, sym).xreplace(point).evalf(30)) for sym in arr.reshape(-1)]
        exact.append(np.array(grads, dtype=float).reshape(arr.shape))
    res = sweep(prog, run.env, {v.id: s for v, s in zip(prog.outputs, seeds) if isinstance(v, Var)})
    ours = []
    for v, t in zip(prog.inputs, inputs):
        g = res.cts.get(v.id)
        ours.append(torch.zeros(t.shape, dtype=torch.float64) if g is None else g.to(torch.float64))
    return exact, ours


def assert_matches_oracle(fn: Callable[..., Any], *inputs: torch.Tensor, rtol: float = 1e-10) -> None:
    exact, ours = oracle_vjp(fn, inputs)
    for e, o in zip(exact, ours):
        np.testing.assert_allclose(o.numpy(), e, rtol=rtol, atol=1e-12)
