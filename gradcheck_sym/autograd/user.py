"""The user's function, run for real under the tracer, and its own autograd.

`run_traced` calls the function once with fresh leaf tensors (the check's inputs,
in the check's dtype) under a `Tracer`: the same run gives the program (the
math, for the reference) and the output tensors whose graph is the user's
autograd — custom `autograd.Function` backwards, hooks and cuts act exactly as in
their code, and a random op's draw is the same on both sides.  `vjp` and `hvp`
ask that graph for vector-Jacobian and Hessian-vector products with
`torch.autograd.grad`.  Grad mode is switched on for the run (a check called
under ``torch.no_grad()`` still checks) and restored after.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from ..errors import InternalError, GradcheckSymError, UnsupportedError
from ..front.tracer import Tracer, internal_file
from ..ir.program import Program

__all__ = ["FunctionError", "TracedRun", "run_traced", "vjp", "hvp", "check_outputs", "Shadow", "shadow_run"]


class FunctionError(GradcheckSymError):
    """The user's function (or its backward) raised; carries its own traceback (our frames and torch's
    removed)."""

    def __init__(self, exc: BaseException, what: str = "the function", hint: str = "") -> None:
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if not internal_file(f.filename)]
        text = "".join(traceback.format_list(frames)) + "".join(traceback.format_exception_only(type(exc), exc))
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        super().__init__(f"{what} raised {type(exc).__name__}: {first}{hint}",
                         "Traceback (most recent call last):\n" + text.rstrip())
        self.original = exc


def _dtype_hint(exc: BaseException, leaves: list[torch.Tensor]) -> str:
    """What to do when the function met our float64 inputs with float32 parameters of its own (a module)."""
    text = str(exc)
    if any(x.dtype == torch.float64 for x in leaves) and ("Double" in text or "double" in text) and \
            ("Float" in text or "float" in text):
        return (" (the inputs were float64, the check's default dtype; for a float32 model pass dtype=\"float32\", "
                "or --dtype float32)")
    return ""


@dataclass
class TracedRun:
    """One call of the user's function.

    Attributes:
        leaves: the differentiable inputs, as passed (requires_grad, in the check's dtype).
        outputs: the returned floating tensors, flattened in order.
        shapes: each output's shape.
        tracer: what the tracer recorded (cuts, notes, custom Functions).
        program: the program (inputs: the leaves; outputs: the outputs).
        env: the reference's float64 value of every variable (computed while tracing).
    """

    leaves: list[torch.Tensor]
    outputs: list[torch.Tensor]
    shapes: list[tuple[int, ...]]
    tracer: Tracer
    program: Program
    env: dict[int, Any]
    rng: torch.Tensor | None = None


@dataclass
class Shadow:
    """The same call in float64, untraced: its outputs and leaves, for autograd's own products there."""

    leaves: list[torch.Tensor]
    outputs: list[torch.Tensor]


def shadow_run(call: Callable[..., Any], run: TracedRun) -> Shadow | None:
    """Run the user's function again on float64 copies of the run's inputs, with the run's random state.

    Autograd there applies the same formulas as in the checked dtype, with float64 rounding: the
    difference of the two is a measurement of the checked dtype's rounding in torch's own kernels.
    Any trouble (a float32 tensor inside the function, an error, another structure) gives None: the
    check then relies on the rounding bound alone.  The random state is restored afterwards.
    """
    leaves = [leaf.detach().to(torch.float64).requires_grad_(True) for leaf in run.leaves]
    try:
        with torch.random.fork_rng(devices=[]), torch.inference_mode(False), torch.enable_grad():
            if run.rng is not None:
                torch.random.set_rng_state(run.rng)
            out = call(leaves, float64=True)
        outputs = check_outputs(out)
    except (Exception, SystemExit):  # noqa: BLE001 - a measurement only: without it the bound stands
        return None
    if len(outputs) != len(run.outputs) or any(o.dtype != torch.float64 or o.shape != t.shape
                                                for o, t in zip(outputs, run.outputs)):
        return None
    return Shadow(leaves, outputs)


def shadow_vjp(shadow: Shadow, seeds: Sequence[torch.Tensor]) -> list[torch.Tensor] | None:
    """Autograd's vector-Jacobian product in the shadow run (None if its backward fails)."""
    pairs = [(t, s.to(torch.float64)) for t, s in zip(shadow.outputs, seeds) if t.requires_grad]
    if not pairs:
        return [torch.zeros_like(leaf) for leaf in shadow.leaves]
    try:
        with torch.enable_grad():
            return list(torch.autograd.grad([t for t, _ in pairs], shadow.leaves, [s for _, s in pairs],
                                            retain_graph=True, allow_unused=True, materialize_grads=True))
    except Exception:  # noqa: BLE001 - as above
        return None


def check_outputs(out: Any) -> list[torch.Tensor]:
    """The function's output as a list of floating tensors, or a clear error.

    Integer and boolean tensors beside floating ones (max_pool's indices, frexp's exponents) carry no
    gradient and are left out; an output that is only such tensors is refused.
    """
    outs = list(out) if isinstance(out, (tuple, list)) else [out]
    if not outs:
        raise UnsupportedError("the function returned nothing to differentiate", "return a tensor or a tuple of tensors")
    floating = [t for t in outs if isinstance(t, torch.Tensor) and (t.is_floating_point() or t.is_complex())]
    if floating and len(floating) < len(outs) and all(isinstance(t, torch.Tensor) for t in outs):
        outs = floating
    for i, t in enumerate(outs):
        if not isinstance(t, torch.Tensor):
            raise UnsupportedError(f"output {i} is a {type(t).__name__}, not a tensor",
                                   "return a tensor or a tuple of tensors")
        if t.layout != torch.strided:
            raise UnsupportedError(f"output {i} is a {str(t.layout).replace('torch.', '')} tensor; the checker "
                                   "works with dense (strided) tensors", "return t.to_dense()")
        if t.is_complex():
            raise UnsupportedError(f"output {i} is complex ({t.dtype}); the checker works with real numbers",
                                   "return the real and imaginary parts as two real outputs")
        if not t.is_floating_point():
            raise UnsupportedError(f"output {i} has dtype {str(t.dtype).replace('torch.', '')}, which has no "
                                   "gradient", "return a floating-point tensor (a comparison's result is not "
                                   "differentiable; compute with the values it selects)")
    return outs


def run_traced(call: Callable[[list[torch.Tensor]], Any], values: Sequence[torch.Tensor],
               names: Sequence[str]) -> TracedRun:
    """Run `call(leaves)` once under the tracer; the leaves are fresh copies of `values` requiring grad.

    Raises:
        FunctionError: the function raised (with its own traceback); SystemExit included.
    """
    leaves = [v.detach().clone().requires_grad_(True) for v in values]
    rng = torch.random.get_rng_state()  # the shadow run (below) replays the same draws
    tracer = Tracer()
    for leaf, name in zip(leaves, names):
        tracer.leaf(leaf, name)
    try:
        with torch.inference_mode(False), torch.enable_grad(), tracer, tracer.torch_no_grad:
            out = call(leaves)
    except GradcheckSymError:
        raise
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - the user's error, with the user's traceback
        raise FunctionError(exc, hint=_dtype_hint(exc, leaves)) from None
    if tracer.gave_up:  # our recording failed where it could not even mark the result opaque: ours, not the user's
        raise InternalError(RuntimeError(tracer.gave_up))
    outputs = check_outputs(out)
    program = tracer.program([tracer.v(t) for t in outputs])
    return TracedRun(leaves, outputs, [tuple(t.shape) for t in outputs], tracer, program, tracer.env(), rng)


def vjp(run: TracedRun, seeds: Sequence[torch.Tensor], *, create_graph: bool = False) -> list[torch.Tensor]:
    """Autograd's gradient of sum(seed * output) with respect to every leaf (zeros where unused)."""
    outs, grads = [], []
    for t, s in zip(run.outputs, seeds):
        if t.requires_grad:
            outs.append(t)
            grads.append(s.to(t.dtype) if s.dtype != t.dtype else s)
    if not outs:
        return [torch.zeros_like(leaf) for leaf in run.leaves]
    try:
        with torch.enable_grad():
            res = torch.autograd.grad(outs, run.leaves, grads, retain_graph=True, create_graph=create_graph,
                                      allow_unused=True, materialize_grads=True)
    except Exception as exc:  # noqa: BLE001 - the user's backward (or torch's, on the user's graph) raised
        raise FunctionError(exc, "the function's backward") from None
    return [_dense(g) for g in res]


def _dense(g: torch.Tensor) -> torch.Tensor:
    """A gradient as a strided tensor (gather(..., sparse_grad=True) and embedding(sparse=True) give sparse ones)."""
    return g.to_dense() if g.layout != torch.strided else g


def hvp(run: TracedRun, grads: Sequence[torch.Tensor], direction: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Autograd's Hessian-vector product: d/dx <grad, direction> (grads from `vjp(create_graph=True)`)."""
    terms = [(g * d.to(g.dtype)).sum() for g, d in zip(grads, direction) if g.requires_grad]
    if not terms:
        return [torch.zeros_like(leaf) for leaf in run.leaves]
    total = terms[0]
    for t in terms[1:]:
        total = total + t
    try:
        with torch.enable_grad():
            res = torch.autograd.grad(total, run.leaves, retain_graph=True, allow_unused=True,
                                      materialize_grads=True)
    except Exception as exc:  # noqa: BLE001 - the user's double backward raised
        raise FunctionError(exc, "the function's double backward") from None
    return [_dense(g) for g in res]

