"""Check one sample: gradcheck-sym (public API only) and torch.autograd.gradcheck on the same inputs.

Used by both audits (torch's OpInfo entries and a package's Functions). Written
against ``gs.check_function`` and the `Report` records only, so it keeps working
when the engine behind them changes. How a result is classified:

- ``check_function`` raises `UnsupportedError` or `LimitError`, or its report has a
  ``not-verified`` finding → not traced (the reason: the message's first sentence,
  without its file:line, so the same reason groups across entries);
- it raises another typed error → not traced, except `FunctionError` (the function
  raised under the checker): skipped when plain torch's backward (second backward for
  order 2) raises too, else (the same call runs in plain torch) → tool error;
- it raises anything else → tool error (a bug of ours: counted, never hidden);
- otherwise verified, or failed when the report has an error finding; but an OK report
  that compared nothing (``checked == 0``) is not traced ("nothing was compared"), or
  skipped when every differentiable input is empty.
"""

from __future__ import annotations

import contextlib
import re
import time
import traceback
from typing import Any, Callable, Iterator, Sequence

from ..errors import GradcheckSymError, LimitError, UnsupportedError
from ..scale.guard import TaskTimeout, deadline
from ..scale.pool import beat
from .records import Gradcheck, SampleAudit, Worst

__all__ = ["check_sample", "reason_of", "worst_of", "describe_inputs", "run_gradcheck"]

# Above this many Jacobian entries (inputs x outputs) gradcheck runs in fast mode: its slow mode
# builds the Jacobian densely, one forward per input element (a 1029 x 917 reference input of a
# unary op would need 7 TB). On failure fast mode recomputes in slow mode for its message; that
# recomputation is skipped there too (it is what ran workers out of memory).
GRADCHECK_DENSE_MAX = 1_000_000

_LOCATION = re.compile(r"^\s*\S+\.py:\d+:\s*")
_SNIPPET = re.compile(r"\s*\(in `.*?`\)")


def reason_of(text: str) -> str:
    """The first sentence of a message, without a leading file:line or a quoted source snippet."""
    first = (text or "").strip().splitlines()[0] if (text or "").strip() else ""
    first = _SNIPPET.sub("", _LOCATION.sub("", first))
    cut = first.find(". ")
    return (first[:cut] if cut > 0 else first.rstrip(".")).strip()


def describe_inputs(names: Sequence[str], inputs: Sequence[Any]) -> str:
    import torch

    parts = []
    for name, x in zip(names, inputs):
        parts.append(f"{name} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else f"{name}={x!r}")
    return ", ".join(parts)


def worst_of(report: Any) -> Worst | None:
    """The largest error in a report, and where.

    From the error and warning findings' worst examples (the engine's relative error) when there
    are any; otherwise from the table's input rows at the first point (gradients of the sum of the
    outputs), as ``|a - r| / max(|r|, 1)`` — relative for gradients of magnitude 1 or more,
    absolute below, so that a gradient that is exactly 0 (softmax's summed output) does not read
    as a huge relative error of its rounding.
    """
    best: Worst | None = None

    def consider(rel: float | None, ab: float | None, a: float | None, s: float | None, q: str) -> None:
        nonlocal best
        if rel is None or rel != rel:
            return
        if best is None or rel > (best.rel_err or 0.0):
            best = Worst(rel, ab, a, s, q)

    for f in report.findings:
        if f.severity in ("error", "warning"):
            for ex in f.examples:
                consider(ex.rel_err, ex.abs_err, ex.autograd, ex.symbolic, ex.quantity or f.quantity or f.node)
    if best is not None:
        return best
    for row in report.nodes:
        a, s = row.autograd_grad, row.symbolic_grad
        if row.op in ("input", "var") and a is not None and s is not None and a == a and s == s:
            err = abs(a - s)
            consider(err / max(abs(s), 1.0), err, a, s, f"d sum(out)/d {row.expression} at point 0")
    return best


def _is_function_error(exc: BaseException) -> bool:
    return any(c.__name__ == "FunctionError" for c in type(exc).__mro__)


def _tool_error(exc: BaseException) -> tuple[str, str]:
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if "gradcheck_sym" in f.filename] or frames
    where = f" (at {ours[-1].filename.rsplit('/', 1)[-1]}:{ours[-1].lineno})" if ours else ""
    reason = f"{type(exc).__name__}: {reason_of(str(exc)) or type(exc).__name__}{where}"
    detail = "".join(traceback.format_list(frames[-4:])) + "".join(traceback.format_exception_only(type(exc), exc))
    return reason, detail.strip()


def _scalarize(fn: Callable[..., Any], example: Any, seed: int) -> Callable[..., Any]:
    """fn's outputs summed with fixed random weights: a scalar, so order 2 checks a full Hessian.

    gradgradcheck uses random output gradients the same way.
    """
    import torch
    import torch.utils._pytree as pytree

    gen = torch.Generator().manual_seed(seed)
    shapes = [tuple(t.shape) for t in pytree.tree_leaves(example)
              if isinstance(t, torch.Tensor) and t.is_floating_point() and t.requires_grad]
    weights = [torch.rand(s, generator=gen, dtype=torch.float64) + 0.5 for s in shapes]

    def weighted_sum(*inputs: Any) -> Any:
        outs = [t for t in pytree.tree_leaves(fn(*inputs))
                if isinstance(t, torch.Tensor) and t.is_floating_point() and t.requires_grad]
        total = None
        for o, w in zip(outs, weights):
            term = (o * w.to(o.dtype)).sum()
            total = term if total is None else total + term
        return total

    weighted_sum.__name__ = getattr(fn, "__name__", "fn")
    return weighted_sum


def _leaves(inputs: Sequence[Any], dtype: str = "float64") -> list[Any]:
    """Fresh leaves of the inputs, rounded to `dtype` as the check rounds them (plain torch's calls see the
    numbers the check sees)."""
    import torch

    def leaf(x: torch.Tensor) -> torch.Tensor:
        x = x.detach() if dtype == "float64" else x.detach().to(getattr(torch, dtype))
        return x.clone().requires_grad_()

    return [leaf(x) if isinstance(x, torch.Tensor) and x.is_floating_point() else x for x in inputs]


def _plain_backward_error(subject: Callable[..., Any], inputs: Sequence[Any], order: int,
                          dtype: str = "float64") -> str | None:
    """The error plain torch raises differentiating `subject` (twice for order 2), or None when it runs."""
    import torch
    import torch.utils._pytree as pytree

    args = _leaves(inputs, dtype)
    xs = [x for x in args if isinstance(x, torch.Tensor) and x.requires_grad]
    try:
        outs = [t for t in pytree.tree_leaves(subject(*args))
                if isinstance(t, torch.Tensor) and t.is_floating_point() and t.requires_grad]
        if not outs or not xs:
            return None
        # for order 2 the output gradients take part in the second derivative (as in gradgradcheck)
        seeds = [torch.ones_like(t).requires_grad_(order == 2) for t in outs]
        grads = torch.autograd.grad(outs, xs, seeds, create_graph=order == 2, allow_unused=True)
        if order == 2:
            again = [g.sum() for g in grads if g is not None and g.requires_grad]
            if again:
                torch.autograd.grad(sum(again), xs, allow_unused=True)
    except Exception as exc:  # noqa: BLE001 - torch's own error: its text is the answer
        return f"{type(exc).__name__}: {reason_of(str(exc))}"
    return None


def run_gradcheck(fn: Callable[..., Any], inputs: Sequence[Any], order: int, *, nondet_tol: float = 0.0,
                  fast_mode: bool = False, timeout: float | None = None) -> Gradcheck:
    """torch.autograd.gradcheck (order 1) or gradgradcheck (order 2) as a value check.

    Its batched-grad and undefined-grad checks are off: they test vmap support and None
    gradients, not whether the gradient's values are right.
    """
    import torch
    from torch.autograd.gradcheck import GradcheckError

    args = tuple(_leaves(inputs))
    note = ""
    start = time.perf_counter()
    try:
        with deadline(timeout):
            entries = _numel(inputs) * _numel(fn(*args))
            if not fast_mode and entries > GRADCHECK_DENSE_MAX:
                fast_mode = True
                note = f"fast mode (the dense Jacobian would have {entries:,} entries)"
            options = dict(check_batched_grad=False, check_undefined_grad=False, nondet_tol=nondet_tol,
                           fast_mode=fast_mode)
            start = time.perf_counter()
            with _no_slow_recomputation(entries > GRADCHECK_DENSE_MAX):
                if order == 1:
                    torch.autograd.gradcheck(fn, args, **options)
                else:
                    torch.autograd.gradgradcheck(fn, args, **options)
        verdict, message = "pass", note
    except TaskTimeout:
        verdict, message = "error", f"gradcheck ran past the {timeout:g} s timeout"
    except GradcheckError as exc:
        verdict, message = "fail", "\n".join(([note] if note else []) + str(exc).strip().splitlines()[:6])
    except Exception as exc:  # noqa: BLE001 - gradcheck's own failure to run, recorded as such
        verdict, message = "error", f"{type(exc).__name__}: {reason_of(str(exc))}"
    return Gradcheck(verdict, message, time.perf_counter() - start)  # type: ignore[arg-type]


@contextlib.contextmanager
def _no_slow_recomputation(active: bool) -> Iterator[None]:
    """Within the block, a failing fast-mode gradcheck says so without rebuilding the dense Jacobians."""
    import sys

    # NB: `import torch.autograd.gradcheck as gc` would give the function of that name, not the module.
    gc = sys.modules["torch.autograd.gradcheck"]
    if not active or not hasattr(gc, "_run_slow_mode_and_get_error"):
        yield
        return
    original = gc._run_slow_mode_and_get_error
    gc._run_slow_mode_and_get_error = lambda *a, **k: (  # type: ignore[assignment]
        "\n(gradcheck-sym skipped the slow-mode recomputation: the dense Jacobian is too large)")
    try:
        yield
    finally:
        gc._run_slow_mode_and_get_error = original


def check_sample(fn: Callable[..., Any], inputs: Sequence[Any], names: Sequence[str], *, source: str, index: int,
                 dtype: str = "float64", order: int = 1, random_points: int = 0, seed: int = 0,
                 timeout: float | None = None, gradcheck: bool = True, nondet_tol: float = 0.0,
                 fast_mode: bool = False) -> SampleAudit:
    """Check one sample with gradcheck-sym and (in float64) with gradcheck; every outcome is a `SampleAudit`.

    Args:
        fn: the function of the differentiable inputs (and pass-through arguments).
        inputs: its positional arguments.
        names: their names (for the report: "input", "arg1", ...).
        source, index: where the sample came from.
        dtype, order: of the check; order 2 checks the Hessian of the outputs summed with fixed random weights.
        random_points: also check this many random points near the sample.
        seed: the sampling seed.
        timeout: seconds for the check, and again for gradcheck.
        gradcheck: also run torch.autograd.gradcheck (only for float64).
        nondet_tol, fast_mode: gradcheck's options (an OpInfo entry's own).
    """
    import gradcheck_sym as gs

    described = describe_inputs(names, inputs)
    cpu = time.thread_time()

    def make(status: str, **kw: Any) -> SampleAudit:
        return SampleAudit(source, index, described, status, **kw)  # type: ignore[arg-type]

    try:
        with deadline(timeout):
            example = fn(*_leaves(inputs, dtype))
    except TaskTimeout:
        return make("timeout", reason=f"the plain call ran past the {timeout:g} s timeout")
    except Exception as exc:  # noqa: BLE001 - a sample torch itself cannot run: nothing to check
        return make("skipped", reason=f"the sample raises in plain torch: {type(exc).__name__}: {reason_of(str(exc))}")
    beat()
    subject = fn if order == 1 else _scalarize(fn, example, seed)
    if order == 2 and not any(True for _ in _float_outputs(example)):
        return make("skipped", reason="no differentiable output")
    start = time.perf_counter()
    worst = None
    try:
        with deadline(timeout):
            report = gs.check_function(subject, *inputs, names=list(names), samples=random_points or None,
                                       seed=seed, dtype=dtype, order=order)
        seconds = time.perf_counter() - start
        findings = tuple((f.kind, f.severity) for f in report.findings)
        worst = worst_of(report)
        not_verified = report.by_kind("not-verified")
        errors = [f for f in report.findings if f.severity == "error" and f.kind != "not-verified"]
        common = dict(findings=findings, worst=worst, points=report.n_points, checked=report.checked, seconds=seconds)
        if not_verified:
            result = make("not-traced", reason=reason_of(not_verified[0].message), detail=not_verified[0].message,
                          **common)
        elif not errors and report.checked == 0:
            # An OK report that compared nothing is no verification (issue 9's silent "ok").
            if _numel(inputs) == 0:
                result = make("skipped", reason="every differentiable input is empty", **common)
            else:
                outside = report.by_kind("outside-domain")
                why = ": an output is NaN or infinite at every point (outside-domain)" if outside else ""
                result = make("not-traced", reason="nothing was compared" + why,
                              detail=outside[0].message if outside else "", **common)
        elif errors:
            result = make("failed", reason=f"{errors[0].kind} {errors[0].node}: {reason_of(errors[0].message)}",
                          detail=errors[0].message, **common)
        else:
            result = make("verified", **common)
    except TaskTimeout:
        return make("timeout", reason=f"the check ran past the {timeout:g} s timeout",
                    seconds=time.perf_counter() - start)
    except LimitError as exc:
        limit = getattr(exc, "limit", "")
        maximum = getattr(exc, "maximum", None)
        reason = f"size limit {limit} ({maximum:,})" if limit and isinstance(maximum, int) else reason_of(str(exc))
        result = make("not-traced", reason=reason, detail=str(exc), seconds=time.perf_counter() - start)
    except UnsupportedError as exc:
        result = make("not-traced", reason=reason_of(str(exc)), detail=str(exc), seconds=time.perf_counter() - start)
    except GradcheckSymError as exc:
        plain = _plain_backward_error(subject, inputs, order, dtype) if _is_function_error(exc) else None
        if plain is not None:
            # torch's own backward raises the same way (a second-order formula written with out=, say):
            # nothing of ours failed, and there is nothing to compare
            result = make("skipped", reason=f"torch's own {'second-order ' if order == 2 else ''}backward raises in "
                                            f"plain torch: {plain}", detail=str(exc),
                          seconds=time.perf_counter() - start)
        elif _is_function_error(exc):
            raised = reason_of(str(exc)).removeprefix("the function raised ")
            result = make("tool-error", reason="the function raised under the checker but runs in plain torch: "
                                               + raised, detail=str(exc),
                          seconds=time.perf_counter() - start)
        else:
            result = make("not-traced", reason=f"{type(exc).__name__}: {reason_of(str(exc))}", detail=str(exc),
                          seconds=time.perf_counter() - start)
    except Exception as exc:  # noqa: BLE001 - our bug: counted and shown, never hidden
        reason, detail = _tool_error(exc)
        result = make("tool-error", reason=reason, detail=detail, seconds=time.perf_counter() - start)
    if gradcheck and dtype == "float64":
        beat()
        g = run_gradcheck(fn, inputs, order, nondet_tol=nondet_tol, fast_mode=fast_mode, timeout=timeout)
    else:
        g = Gradcheck("not-run", "gradcheck runs in float64 only" if gradcheck else "")
    return SampleAudit(result.source, result.index, result.inputs, result.status, result.reason, result.detail,
                       result.findings, result.worst, result.points, result.checked, result.seconds, g,
                       time.thread_time() - cpu)


def _numel(x: Any) -> int:
    import torch
    import torch.utils._pytree as pytree

    # complex tensors count twice (gradcheck differentiates their real and imaginary parts); once they
    # were not counted at all, and a large complex output ran gradcheck's slow mode out of memory (19 GB)
    return sum(t.numel() * (2 if t.is_complex() else 1) for t in pytree.tree_leaves(x)
               if isinstance(t, torch.Tensor) and (t.is_floating_point() or t.is_complex()))


def _float_outputs(example: Any) -> list[Any]:
    import torch
    import torch.utils._pytree as pytree

    return [t for t in pytree.tree_leaves(example)
            if isinstance(t, torch.Tensor) and t.is_floating_point() and t.requires_grad]
