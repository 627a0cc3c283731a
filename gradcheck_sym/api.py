"""The public entry points: the pipeline composed.

``check`` parses an expression, derives its symbolic reference and hands both,
with the points, to the checking engine (`checker`).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

from .autograd.expression import DTYPES
from .budget import Deadline
from .judge.engine import Checker
from .judge.expression import ExpressionSubject
from .errors import GradcheckSymError, InputError, InternalError, UnsupportedError
from .ir.graph import Graph
from .front.parse import Limits, parse
from .judge.points import make_points
from .report import Report
from .reference.symbolic import derive

__all__ = ["check", "check_graph", "check_function", "assert_gradients"]


def check(
    expression: str,
    *,
    at: Mapping[str, Any] | None = None,
    domain: Mapping[str, Any] | None = None,
    samples: int | None = None,
    seed: int | None = None,
    dtype: str = "float64",
    order: int = 1,
    variables: Sequence[str] | None = None,
    limits: Limits | None = None,
    chunk_size: int | None = None,
    progress: bool | None = None,
    timeout: float | None = None,
) -> Report:
    """Check torch autograd against exact symbolic derivatives for an expression.

    Args:
        expression: Python-syntax math, e.g. ``"sin(x)*exp(y)"``.
        at: variable -> value (or list of values: one point per entry).
        domain: variable -> (low, high) box to sample `samples` points from.
        samples: number of sampled points (default 100 with a domain).
        seed: sampling seed (drawn and recorded when None).
        dtype: "float64" (default), "float32", "float16" or "bfloat16".
        order: 1 for gradients, 2 to check the Hessian by double backward too.
        variables: declare the variables (unused ones get gradient 0).
        limits: size limits for parsing and points.
        chunk_size: points per vectorised chunk (default: by memory).
        progress: show a progress bar (default: on a terminal, for long runs).
        timeout: seconds the whole check may take (default: no limit); beyond it, `TimeLimitError`.

    Returns:
        A `Report`; ``report.ok`` is False when an error finding exists.

    Raises:
        GradcheckSymError: bad expression or input (a `ParseError`, `LimitError`, `InputError`, ...),
            `TimeLimitError` when `timeout` passed, or `InternalError` (a bug in gradcheck-sym: please
            report it; the original exception is its `cause`).

    Example:
        >>> check("sin(x)*exp(y)", at={"x": 0.7, "y": 1.3}).ok
        True
    """
    deadline = Deadline(timeout)
    for name, mapping in (("at", at), ("domain", domain)):
        if mapping is not None and not isinstance(mapping, Mapping):
            raise InputError(f"{name} must be a mapping of variable names to values, not {type(mapping).__name__}")
    if variables is not None and (isinstance(variables, str) or not isinstance(variables, Sequence)):
        raise InputError(f"variables must be a list of names, not {variables!r}")
    names = set(at or {}) | set(domain or {})
    try:
        graph = parse(expression, variables=variables, as_variables=names, limits=limits, deadline=deadline)
    except GradcheckSymError:
        raise
    except Exception as exc:  # noqa: BLE001 - see _check_graph
        raise InternalError(exc) from exc
    return _check_graph(graph, at, domain, samples, seed, dtype, order, limits, chunk_size, progress, deadline)


def check_graph(
    graph: Graph,
    *,
    at: Mapping[str, Any] | None = None,
    domain: Mapping[str, Any] | None = None,
    samples: int | None = None,
    seed: int | None = None,
    dtype: str = "float64",
    order: int = 1,
    limits: Limits | None = None,
    chunk_size: int | None = None,
    progress: bool | None = None,
    timeout: float | None = None,
) -> Report:
    """`check` for a `Graph` built by `parse` or by code. Same arguments and result."""
    return _check_graph(graph, at, domain, samples, seed, dtype, order, limits, chunk_size, progress,
                        Deadline(timeout))


def _check_graph(graph: Graph, at: Mapping[str, Any] | None, domain: Mapping[str, Any] | None,
                 samples: int | None, seed: int | None, dtype: str, order: int, limits: Limits | None,
                 chunk_size: int | None, progress: bool | None, deadline: Deadline) -> Report:
    try:
        return _check_graph_unguarded(graph, at, domain, samples, seed, dtype, order, limits, chunk_size, progress,
                                      deadline)
    except GradcheckSymError:
        raise
    except MemoryError:
        raise UnsupportedError("the check ran out of memory",
                               "check fewer points at once (chunk_size=...) or fewer points") from None
    except Exception as exc:  # noqa: BLE001 - no input should get here: a bug, said as one
        raise InternalError(exc) from exc


def _check_graph_unguarded(graph: Graph, at: Mapping[str, Any] | None, domain: Mapping[str, Any] | None,
                           samples: int | None, seed: int | None, dtype: str, order: int, limits: Limits | None,
                           chunk_size: int | None, progress: bool | None, deadline: Deadline) -> Report:
    torch_dtype = torch_dtype_of(dtype, order)
    limits = limits if limits is not None else Limits()
    if not isinstance(limits, Limits):
        raise InputError(f"limits must be a gradcheck_sym.Limits, not {type(limits).__name__}")
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise InputError(f"chunk_size must be a positive integer, not {chunk_size!r}")
    if not isinstance(graph, Graph):
        raise InputError(f"check_graph takes a gradcheck_sym.Graph, not {type(graph).__name__}: "
                         "use gs.check for expression text")
    try:
        graph.validate()
    except ValueError as exc:
        raise InputError(f"the graph is not valid: {exc}", "build it with gs.parse, or see Graph.validate") from None
    if not graph.variables and (at or domain):
        raise InputError("the expression has no variables: give no at/domain values")
    points = make_points(graph.variables, at=at, domain=domain, samples=samples, seed=seed, max_points=limits.max_points)
    subject = ExpressionSubject(graph, derive(graph, order=order, deadline=deadline), deadline=deadline)
    return Checker(subject, points, torch_dtype, order, deadline=deadline).run(chunk_size, progress)


def torch_dtype_of(dtype: str, order: int) -> Any:
    """Validate the dtype name and order; return the torch dtype."""
    if dtype not in DTYPES:
        raise InputError(f"unknown dtype {dtype!r}: use one of " + ", ".join(DTYPES))
    if order not in (1, 2) or isinstance(order, bool):
        raise InputError(f"order must be 1 or 2, not {order!r}")
    return DTYPES[dtype]


def check_function(
    fn: Callable[..., Any],
    *inputs: Any,
    names: Sequence[str] | None = None,
    expected: str | None = None,
    samples: int | None = None,
    seed: int | None = None,
    domain: Mapping[str, Any] | None = None,
    dtype: str = "float64",
    order: int = 1,
    chunk_size: int | None = None,
) -> Report:
    """Check a PyTorch function, `nn.Module` or custom `autograd.Function.apply` against exact math.

    The function is run for real and every torch op it performs is recorded and turned into
    sympy (see `trace`); its own autograd (hand-written backwards included) is compared with
    the exact derivatives, and every cut of the gradient is located and judged.

    Args:
        fn: the function; called as ``fn(*inputs)``.
        *inputs: its arguments. Floating-point tensors are differentiable inputs; anything else
            (integer targets, flags) is passed as it is. A module's parameters are inputs too.
        names: names of the positional inputs (default: the function's parameter names).
        expected: the math as an expression over the input names, applied elementwise
            (``"sin(x)**2"``), instead of the trace.
        samples: also check this many random points near the given inputs (each element within
            10% of its magnitude, at least 0.1), or in `domain`.
        seed: sampling seed (drawn and recorded when None).
        domain: input name -> (low, high) box for the sampled points.
        dtype: "float64" (default), "float32", "float16" or "bfloat16".
        order: 2 also checks the Hessian (scalar outputs), i.e. the backward's own derivative.
        chunk_size: points per chunk.

    Returns:
        A `Report`; ``report.ok`` is False when an error finding exists.

    Raises:
        GradcheckSymError: bad input, an op the tracer does not know (`UnsupportedError`), an
            exception inside the function (`FunctionError`, with the function's traceback).
    """
    from .autograd.function import FunctionSubject, describe_call
    from .front.trace import trace_function

    torch_dtype = torch_dtype_of(dtype, order)
    call, diff_inputs, params, all_names = _prepare_call(fn, inputs, names, torch_dtype)
    if not diff_inputs and not params:
        raise InputError("no input needs a gradient: give at least one floating-point tensor "
                         "(integer tensors and other arguments are passed through as constants)")
    if expected is not None:
        trace = _expected_trace(expected, call, diff_inputs + params)
    else:
        trace = trace_function(fn, diff_inputs, params=params, call=call)
    derivation = derive(trace.graph, order=order if len(trace.outputs) == 1 else 1, outputs=trace.outputs)
    subject = FunctionSubject(call, trace, derivation, title=describe_call(fn, all_names),
                              input_specs=trace.inputs, order=order if len(trace.outputs) == 1 else 1,
                              expected=expected)
    points = _function_points(trace, diff_inputs + params, samples, seed, domain)
    return Checker(subject, points, torch_dtype, subject.order).run(chunk_size, False)


def assert_gradients(fn: Callable[..., Any], *inputs: Any, **options: Any) -> Report:
    """`check_function`, raising AssertionError with the text report when an error finding exists.

    Example (in a test suite)::

        gs.assert_gradients(MySoftplus.apply, torch.randn(5, dtype=torch.float64))
    """
    report = check_function(fn, *inputs, **options)
    if not report.ok:
        raise AssertionError("gradcheck-sym found errors:\n" + str(report))
    return report


def _prepare_call(fn: Any, inputs: tuple, names: Sequence[str] | None, dtype: Any) -> tuple:
    """The differentiable inputs, the module parameters and a call(leaves) that rebuilds the arguments."""
    import inspect

    import torch

    target = fn.forward if isinstance(fn, torch.nn.Module) else fn
    if names is None:
        try:
            params_sig = [p.name for p in inspect.signature(target).parameters.values()
                          if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)]
        except (TypeError, ValueError):
            params_sig = []
        if params_sig and params_sig[-1:] and len(params_sig) >= len(inputs) and not any(
                p in ("args",) for p in params_sig[: len(inputs)]):
            names = params_sig[: len(inputs)]
        else:
            names = [f"x{i}" if len(inputs) > 1 else "x" for i in range(len(inputs))]
    names = list(names)
    if len(names) != len(inputs):
        raise InputError(f"{len(names)} names for {len(inputs)} inputs")
    positions, diff = [], []
    for i, (name, x) in enumerate(zip(names, inputs)):
        if isinstance(x, torch.Tensor) and x.is_complex():
            raise InputError(f"input {name!r} is complex; the checker works with real numbers")
        if isinstance(x, torch.Tensor) and x.is_floating_point():
            positions.append(i)
            diff.append((name, x.detach().to(dtype)))
    params: list[tuple[str, torch.Tensor]] = []
    if isinstance(fn, torch.nn.Module):
        params = [(n, p.detach().to(dtype)) for n, p in fn.named_parameters()]
    n_diff = len(diff)

    def call(leaves: list[torch.Tensor]) -> Any:
        args = list(inputs)
        for pos, leaf in zip(positions, leaves[:n_diff]):
            args[pos] = leaf
        if isinstance(fn, torch.nn.Module):
            state = {n: leaf for (n, _), leaf in zip(params, leaves[n_diff:])}
            return torch.func.functional_call(fn, state, tuple(args))
        return fn(*args)

    return call, diff, params, names


def _expected_trace(expected: str, call: Callable[..., Any], inputs: list) -> Any:
    """A trace built from an elementwise expression instead of the function's ops."""
    import numpy as np

    from .front.trace import FunctionError, Trace, _Builder, _element_name, check_outputs

    names = [n for n, _ in inputs]
    graph = parse(expected, as_variables=set(names))
    unknown = [v for v in graph.variables if v not in names]
    if unknown:
        raise InputError(f"expected= uses {unknown[0]!r}, which is not an input (inputs: {', '.join(names)})")
    try:
        outs = check_outputs(call([t.clone() for _, t in inputs]))
    except GradcheckSymError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise FunctionError(exc) from None
    if len(outs) != 1:
        raise InputError("expected= describes one output; the function returns several")
    shape = tuple(outs[0].shape)
    b = _Builder()
    specs, var_arrays = [], {}
    for name, t in inputs:
        elements = [_element_name(name, idx, t.dim()) for idx in np.ndindex(*t.shape)]
        arr = np.empty(tuple(t.shape), dtype=object)
        for idx, e in zip(np.ndindex(*t.shape), elements):
            arr[idx] = b.var(e).id
        specs.append((name, tuple(t.shape), elements))
        try:
            var_arrays[name] = np.broadcast_to(arr, shape)
        except ValueError:
            raise InputError(f"expected= is elementwise: input {name!r} of shape {tuple(t.shape)} does not broadcast "
                             f"to the output shape {shape}") from None
    outputs = []
    for idx in np.ndindex(*shape):
        ids: dict[int, int] = {}
        for node in graph.nodes:
            if node.op == "var":
                ids[node.id] = int(var_arrays[node.name][idx])
            elif node.op == "const":
                ids[node.id] = b.add("const", value=node.value)
            else:
                ids[node.id] = b.add(node.op, tuple(ids[a] for a in node.args))
        outputs.append(ids[graph.output])
    g = Graph(tuple(b.nodes), outputs[0], tuple(b.variables))
    return Trace(g, specs, outputs, [shape], [], [])


def _function_points(trace: Any, inputs: list, samples: int | None, seed: int | None,
                     domain: Mapping[str, Any] | None) -> Any:
    import numpy as np

    from .judge.points import PointSet

    values: dict[str, float] = {}
    for (name, _shape, elements), (_, t) in zip(trace.inputs, inputs):
        for e, v in zip(elements, t.detach().to(dtype=__import__("torch").float64).flatten().tolist()):
            values[e] = v
    names = tuple(trace.graph.variables)
    if samples is None:
        if domain:
            raise InputError("domain needs samples: give samples=N")
        return PointSet(names, 1, {n: np.array([values[n]]) for n in names}, {}, None)
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise InputError(f"samples must be a positive integer, not {samples!r}")
    domain = dict(domain or {})
    known = {name for name, _, _ in trace.inputs}
    for name in domain:
        if name not in known:
            raise InputError(f"unknown input {name!r} in domain: the inputs are {', '.join(sorted(known))}")
    boxes = {}
    for name, _shape, elements in trace.inputs:
        for e in elements:
            if name in domain:
                lo, hi = (float(v) for v in domain[name])
                if lo > hi:
                    raise InputError(f"the domain of {name!r} is empty: low {lo} > high {hi}")
                boxes[e] = (lo, hi)
            else:
                r = 0.1 * max(abs(values[e]), 1.0)
                boxes[e] = (values[e] - r, values[e] + r)
    if seed is None:
        import secrets

        seed = secrets.randbits(32)
    return PointSet(names, samples + 1, {}, boxes, seed, first=values)
