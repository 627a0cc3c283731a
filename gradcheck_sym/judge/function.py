"""`check_function`, composed: the call, the points, the traced runs, the judge, the report.

A module's parameters are inputs too (named as ``named_parameters`` names them);
other arguments (integer targets, flags) pass through as they are.  Each point is
one traced run of the user's function (`autograd.user.run_traced`); the judge
(`judge.tensor`) compares, and the report says what was compared, how, and what
was not.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import sys
from typing import Any, Callable, Mapping, Sequence

import torch

from ..autograd.user import TracedRun, run_traced
from ..errors import GradcheckSymError, InputError, UnsupportedError
from ..front.parse import parse
from ..report.records import Formula, LazyFormulas, NodeRow, Report
from .samples import check_domain, sample_points
from .tensor import FunctionJudge
from .tensor_findings import element_name

__all__ = ["check_traced_function", "describe_call", "prepare_call"]

# A sample whose output is not finite (where the given point's was) is drawn again up to this often.
REDRAWS = 3


def prepare_call(fn: Any, inputs: tuple, names: Sequence[str] | None, dtype: torch.dtype
                 ) -> tuple[Callable[[list[torch.Tensor]], Any], list[tuple[str, torch.Tensor]], list[str]]:
    """(call(leaves), the differentiable inputs and module parameters as (name, value), the input names)."""
    target = fn.forward if isinstance(fn, torch.nn.Module) else fn
    if names is None:
        try:
            sig = [p.name for p in inspect.signature(target).parameters.values()
                   if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        except (TypeError, ValueError):
            sig = []
        names = sig[: len(inputs)] if len(sig) >= len(inputs) else \
            [f"x{i}" if len(inputs) > 1 else "x" for i in range(len(inputs))]
    names = list(names)
    if len(names) != len(inputs):
        raise InputError(f"{len(names)} names for {len(inputs)} inputs")
    positions, diff = [], []
    for i, (name, x) in enumerate(zip(names, inputs)):
        if isinstance(x, torch.Tensor) and x.is_complex():
            raise InputError(f"input {name!r} is complex; the checker works with real numbers")
        if isinstance(x, torch.Tensor) and x.layout != torch.strided:
            raise UnsupportedError(f"input {name!r} is a {str(x.layout).replace('torch.', '')} tensor; the checker "
                                   "works with dense (strided) tensors", "pass x.to_dense()")
        if isinstance(x, torch.Tensor) and x.device.type == "meta":
            raise InputError(f"input {name!r} is on the meta device: it has no values to check")
        if isinstance(x, torch.Tensor) and x.device.type != "cpu":
            raise _on_device(f"input {name!r}", x.device)
        if isinstance(x, torch.Tensor) and x.is_floating_point():
            positions.append(i)
            diff.append((name, x.detach().to(dtype)))
    params: list[tuple[str, torch.Tensor]] = []
    buffers: list[tuple[str, torch.Tensor]] = []
    if isinstance(fn, torch.nn.Module):
        for n, t in list(fn.named_parameters()) + list(fn.named_buffers()):
            if t.device.type != "cpu":
                raise _on_device(f"the module's {n!r}", t.device)
        params = [(n, p.detach().to(dtype)) for n, p in fn.named_parameters()]
        buffers = [(n, b.detach().clone()) for n, b in fn.named_buffers()]
    n_diff = len(diff)

    def call(leaves: list[torch.Tensor], float64: bool = False) -> Any:
        args = list(inputs)
        for pos, leaf in zip(positions, leaves[:n_diff]):
            args[pos] = leaf
        if isinstance(fn, torch.nn.Module):
            state = {n: leaf for (n, _), leaf in zip(params, leaves[n_diff:])}
            # Buffers are copies, taken before the first call: batch norm's running statistics (or any
            # buffer a forward updates) change neither the user's module nor the next point's run.
            for n, b in buffers:
                state[n] = b.to(torch.float64) if float64 and b.is_floating_point() else b.clone()
            return torch.func.functional_call(fn, state, tuple(args))
        return fn(*args)

    return call, diff + params, names


def check_traced_function(fn: Any, inputs: tuple, *, names: Sequence[str] | None, expected: str | None,
                          samples: int | None, seed: int | None, domain: Mapping[str, Any] | None,
                          dtype: torch.dtype, order: int, rtol: float | None = None,
                          atol: float | None = None, intended: Any = None) -> Report:
    call, diff, arg_names = prepare_call(fn, inputs, names, dtype)
    if not diff:
        raise InputError("no input needs a gradient: give at least one floating-point tensor "
                         "(integer tensors and other arguments are passed through as constants)")
    input_names = [n for n, _ in diff]
    values = [v for _, v in diff]
    box = check_domain(domain, input_names)
    if box and samples is None:
        raise InputError("domain needs samples: give samples=N")
    for name, v in (("rtol", rtol), ("atol", atol)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0):
            raise InputError(f"{name} must be a non-negative number, not {v!r}")
    from .intended import parse_intended

    decls = parse_intended(intended)
    judge = FunctionJudge(input_names, dtype, order, rtol=rtol, atol=atol, expected=expected is not None,
                          intended=decls, shadow=None if expected is not None else call)
    judge.acc.declared = decls
    make = _expected_run(expected, call, input_names) if expected is not None else \
        (lambda vals: run_traced(call, vals, input_names))
    first = make(values)
    for note in getattr(first.tracer, "notes", ()):
        if note.kind == "device":  # part of the function ran on a GPU: nothing there can be compared
            raise UnsupportedError(f"{first.tracer.sites[note.site].where}: {note.text}",
                                   "check that part on the CPU (the same math, with torch's CPU kernels)")
    judge.point(0, first)
    used_seed = None
    redrawn = 0
    if samples is not None:
        candidates, used_seed = sample_points(values, input_names, samples * (1 + REDRAWS), seed, box)
        first_finite = all(bool(torch.isfinite(t).all()) for t in first.outputs)
        k = 0
        for point in candidates:
            if k >= samples:
                break
            run = make([p.to(dtype) for p in point])
            if first_finite and not all(bool(torch.isfinite(t).all()) for t in run.outputs) and \
                    redrawn < samples * REDRAWS:
                redrawn += 1
                continue
            k += 1
            judge.point(k, run)
    report = _report(fn, arg_names, input_names, first, judge, dtype, order, used_seed, expected, redrawn)
    formulas = getattr(make, "formulas", None)
    return dataclasses.replace(report, derivatives=formulas if formulas is not None else
                               LazyFormulas(lambda: _formulas(first, input_names)))


def _formulas(run: TracedRun, names: list[str]) -> tuple[Formula, ...]:
    """The exact derivatives as formulas, for a call small enough to write them out (see `traced_formulas`)."""
    import sympy

    from ..reference.formulas import traced_formulas

    found = traced_formulas(run.program, names, [tuple(t.shape) for t in run.leaves])
    return tuple(Formula(of, k, str(e), sympy.latex(e), e) for of, k, e in found)


def _expected_run(expected: str, call: Callable[[list[torch.Tensor]], Any], names: list[str]) -> Any:
    """Runs whose program is the expected expression, elementwise over the broadcast inputs."""
    from ..autograd.user import check_outputs
    from ..front.tracer import Tracer
    from ..ops import prims as P
    from ..ops.core import interpreting
    from ..ops.ew import EwFn, P as X
    from ..reference.symbolic import derive

    graph = parse(expected, as_variables=set(names))
    unknown = [v for v in graph.variables if v not in names]
    if unknown:
        raise InputError(f"expected= uses {unknown[0]!r}, which is not an input (inputs: {', '.join(names)})")
    d = derive(graph, whole_max_nodes=0)
    steps = dict(d.program.steps)
    expr = d.values[graph.output]
    for _ in range(len(steps) + 1):  # inline the forward steps
        expr = expr.xreplace(steps)
    import sympy

    syms = {sympy.Symbol(n, real=True): X[i] for i, n in enumerate(names)}
    fn = EwFn(f"expected {expected}", expr.xreplace(syms), len(names))
    # the exact derivatives as formulas, per input (elementwise: the same formula for every element)
    formulas = tuple(Formula(n, i, str(g), sympy.latex(g), g) for i, n in enumerate(names)
                     if n in graph.variables for g in [sympy.diff(expr, sympy.Symbol(n, real=True))])

    def make(vals: list[torch.Tensor]) -> TracedRun:
        leaves = [v.detach().clone().requires_grad_(True) for v in vals]
        try:
            with torch.inference_mode(False), torch.enable_grad():
                outputs = check_outputs(call(leaves))
        except GradcheckSymError:
            raise
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - the user's error
            from ..autograd.user import FunctionError

            raise FunctionError(exc) from None
        if len(outputs) != 1:
            raise InputError("expected= describes one output; the function returns several")
        tr = Tracer()
        handles = [tr.leaf(leaf, n) for leaf, n in zip(leaves, names)]
        shape = tuple(outputs[0].shape)
        try:
            with interpreting(tr.rec):
                tr.rec.dtype = str(outputs[0].dtype).replace("torch.", "")
                h = P.broadcast_to(P.ew(fn, *handles), shape)
        except RuntimeError:
            raise InputError(f"expected= is elementwise: the inputs do not broadcast to the output shape "
                             f"{shape}") from None
        return TracedRun(leaves, outputs, [shape], tr, tr.program([h]), tr.env())

    make.formulas = formulas  # type: ignore[attr-defined]
    return make


def _report(fn: Any, arg_names: list[str], names: list[str], first: TracedRun, judge: FunctionJudge,
            dtype: torch.dtype, order: int, seed: int | None, expected: str | None, redrawn: int) -> Report:
    findings = judge.findings()
    notes = [f"reference: the tensor program of {len(first.program.eqns)} primitive equations"
             f" from {len(first.tracer.sites)} torch calls, differentiated by our rules (never torch's backward)"
             if expected is None else f"symbolic side: the expected expression {expected!r}, elementwise",
             f"compared: {judge.how}"]
    if judge.hess_how:
        notes.append(f"second order: {judge.hess_how}")
    if judge.custom:
        notes.append("custom autograd.Function " + ", ".join(judge.custom) + ": math from its forward, autograd "
                     "from its backward")
    if judge.intended:
        notes.append("declared deviations: " + ", ".join(f"{d.target}: {d.text}" for d in judge.intended))
    if judge.precise_used:
        notes.append("disputed elements re-derived in 50-digit arithmetic (the same rules, in mpmath)")
    if redrawn:
        notes.append(f"{redrawn} sample{'s' if redrawn != 1 else ''} drawn again (the output was not finite there)")
    rows = _rows(first, judge, names)
    point = judge._point(first, 0)
    tol = (f"{str(dtype).replace('torch.', '')}: cheap test |a - r| <= 128 ulp, then the rounding bound of the "
           "whole computation (forward and backward, in the dtype) x 8, plus the float64 reference's own"
           + (", plus 32 ulp of the largest element compared with it (linear algebra)" if judge.normwise_used else "")
           + ("; torch's own rounding, measured against the same call in float64, in place of the bound"
              if judge.measured_used else "")
           + (f"; user tolerance rtol={judge.rtol}, atol={judge.atol}" if judge.rtol or judge.atol else ""))
    return Report(
        expression=describe_call(fn, arg_names), variables=tuple(names), dtype=str(dtype).replace("torch.", ""),
        order=order, n_points=judge.points, seed=seed, derivation="; ".join(notes), tolerance=tol,
        findings=tuple(findings), nodes=tuple(rows), checked=judge.checked, high_precision_points=0,
        first_point=point, edges=(),
    )


def _rows(run: TracedRun, judge: FunctionJudge, names: list[str]) -> list[NodeRow]:
    """The table at the first point: input elements when they are few, else one row per input."""
    rows = []
    auto = judge.first.get("auto") or []
    ref = judge.first.get("ref") or []
    small = sum(t.numel() for t in run.leaves) <= 12
    status = judge.status_by_input()
    for i, (name, leaf) in enumerate(zip(names, run.leaves)):
        a = auto[i] if i < len(auto) else None
        r = ref[i] if i < len(ref) and ref[i] is not None else (torch.zeros_like(a) if a is not None else None)
        if status.get(name) == "not-verified" and judge.checked == 0:
            r = None  # nothing was compared: no "exact" value is shown (it would be a partial sweep's)
        value = leaf.detach().to(torch.float64)
        if small:
            for j in range(leaf.numel()):
                rows.append(NodeRow(id=i, expression=element_name(name, tuple(leaf.shape), j), op="input",
                                    grad_fn=None, is_leaf=True, requires_grad=True, retains_grad=False, cut=None,
                                    value=float(value.reshape(-1)[j]),
                                    autograd_grad=None if a is None else float(a.reshape(-1)[j]),
                                    symbolic_grad=None if r is None else float(r.reshape(-1)[j]),
                                    status=status.get(name, "ok")))
        else:
            shape = "x".join(map(str, leaf.shape)) or "scalar"
            rows.append(NodeRow(id=i, expression=f"{name} [{shape}]", op="input", grad_fn=None, is_leaf=True,
                                requires_grad=True, retains_grad=False, cut=None,
                                value=float(value.norm()) if value.numel() else 0.0,
                                autograd_grad=None if a is None else float(a.norm()),
                                symbolic_grad=None if r is None else float(r.norm()),
                                status=(status.get(name, "ok") + " (norms shown)")))
    return rows


def describe_call(fn: Any, names: Sequence[str]) -> str:
    """A title such as ``f(x, w)`` or ``MySoftplus.apply(x)``."""
    qual = getattr(fn, "__qualname__", None) or type(fn).__name__
    owner = getattr(fn, "__self__", None)
    if isinstance(owner, type):  # MyFunction.apply: a classmethod bound to the user's class
        qual = f"{owner.__name__}.{getattr(fn, '__name__', 'apply')}"
        fn = owner
    if isinstance(fn, torch.nn.Module):
        qual = type(fn).__name__
    file = getattr(getattr(fn, "__code__", None), "co_filename", None)
    if file is None and isinstance(fn, type):
        file = getattr(sys.modules.get(fn.__module__), "__file__", None)
    where = f" ({os.path.basename(file)})" if file else ""
    return f"{qual}({', '.join(names)}){where}"


def _on_device(what: str, device: torch.device) -> UnsupportedError:
    # The reference (and its index maps, masks and constants) lives on the CPU; mixing devices inside it
    # raised torch's "Expected all tensors to be on the same device" from within the check.
    return UnsupportedError(f"{what} is on {device}: the tensor engine's reference runs on the CPU, and gradients "
                            f"computed on {device.type} are not verified yet",
                            "check on the CPU (move the inputs, and a module, there with .cpu()): the same math, "
                            "though torch's CPU kernels are then what is checked")
