"""The public entry points: the pipeline composed.

``check`` parses an expression, derives its symbolic reference and hands both,
with the points, to the checking engine (`checker`).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

from .autograd.expression import DTYPES
from .budget import Deadline
from .collector import frozen_before
from .judge.engine import Checker
from .judge.expression import ExpressionSubject
from .errors import GradcheckSymError, InputError, InternalError, UnsupportedError
from .ir.graph import Graph
from .front.from_sympy import is_sympy, sympy_name, sympy_to_text
from .front.parse import Limits, parse
from .judge.points import make_points
from .report import Report
from .report.records import Formula
from .reference.numeric import derive_numeric, suits as numeric_suits
from .reference.symbolic import derive

__all__ = ["check", "check_graph", "check_function", "assert_gradients"]


def check(
    expression: Any,
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
        expression: Python-syntax math, e.g. ``"sin(x)*exp(y)"``, or a sympy expression (its symbols
            may key `at` and `domain`).
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
    user_symbols = None
    if is_sympy(expression):
        # A sympy object, walked against the same whitelist and printed in our syntax: never sympify.
        user_symbols = {str(s): s for s in expression.free_symbols}
        expression = sympy_to_text(expression)
        at = _names_of(at)
        domain = _names_of(domain)
        variables = None if variables is None else [sympy_name(v) for v in variables]
    deadline = Deadline(timeout)
    for name, mapping in (("at", at), ("domain", domain)):
        if mapping is not None and not isinstance(mapping, Mapping):
            raise InputError(f"{name} must be a mapping of variable names to values, not {type(mapping).__name__}")
    if variables is not None and (isinstance(variables, str) or not isinstance(variables, Sequence)):
        raise InputError(f"variables must be a list of names, not {variables!r}")
    names = set(at or {}) | set(domain or {})
    with frozen_before():  # (parsing too: a 10,000-node graph is 100,000 objects)
        try:
            graph = parse(expression, variables=variables, as_variables=names, limits=limits, deadline=deadline)
        except GradcheckSymError:
            raise
        except Exception as exc:  # noqa: BLE001 - see _check_graph
            raise InternalError(exc) from exc
        report = _check_graph(graph, at, domain, samples, seed, dtype, order, limits, chunk_size, progress,
                              deadline)
    return report if user_symbols is None else _in_user_symbols(report, user_symbols)


def _in_user_symbols(report: Report, symbols: dict[str, Any]) -> Report:
    """The report's formulas in the user's own sympy symbols (with their assumptions), not ours."""
    import dataclasses

    def own(f: Formula) -> Formula:
        e = f.expr.xreplace({s: symbols[str(s)] for s in f.expr.free_symbols if str(s) in symbols})
        return dataclasses.replace(f, expr=e)

    return dataclasses.replace(report, derivatives=tuple(own(f) for f in report.derivatives))


def _names_of(mapping: Mapping[Any, Any] | None) -> dict[str, Any] | None:
    return None if mapping is None else {sympy_name(k): v for k, v in mapping.items()}


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
        with frozen_before():  # full garbage collections walk the check's objects only (see collector)
            return _check_graph_unguarded(graph, at, domain, samples, seed, dtype, order, limits, chunk_size,
                                          progress, deadline)
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
    # A large graph's first derivatives come from a numeric sweep, each op kind derived once (see reference.numeric).
    derivation = (derive_numeric(graph, deadline=deadline) if numeric_suits(graph, order) else
                  derive(graph, order=order, deadline=deadline))
    subject = ExpressionSubject(graph, derivation, deadline=deadline)
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
    rtol: float | None = None,
    atol: float | None = None,
    intended: Mapping[Any, str] | None = None,
) -> Report:
    """Check a PyTorch function, `nn.Module` or custom `autograd.Function.apply` against exact math.

    The function runs for real under a tracer that records each torch op on whole tensors;
    the reference differentiates that program with our own rules (sympy for elementwise
    math, exact transposes for linear maps), and the function's own autograd (hand-written
    backwards, hooks and cuts included) is compared with it element by element.  Every cut
    of the gradient is located and judged; what cannot be verified is said.

    Args:
        fn: the function; called as ``fn(*inputs)``.
        *inputs: its arguments. Floating-point tensors are differentiable inputs; anything else
            (integer targets, flags) is passed as it is. A module's parameters are inputs too.
        names: names of the positional inputs (default: the function's parameter names).
        expected: the math as an expression over the input names, applied elementwise
            (``"sin(x)**2"``), instead of the trace.
        samples: also check this many random points near the given inputs (each element scaled
            by up to 10%), or in `domain`.
        seed: sampling seed (drawn and recorded when None).
        domain: input name -> (low, high) box for the sampled points.
        dtype: "float64" (default), "float32", "float16" or "bfloat16".
        order: 2 also checks second derivatives (Hessian-vector products of each output), i.e.
            the backward's own derivative.
        rtol, atol: extra tolerance the caller accepts (e.g. a deliberate epsilon), recorded
            in the report.
        intended: deviations that are meant, shown as `intended` (info) while everything else is
            still checked: ``{MyFunction: "straight-through"}``, ``{"ReverseGrad": "reverse:0.1"}``,
            ``{"model.py:12": "cut"}``, ``{"Spike": "surrogate:1/(1 + abs(x))**2"}`` (see
            `gradcheck_sym.judge.intended`).

    Returns:
        A `Report`; ``report.ok`` is False when an error finding exists (a `not-verified`
        error when nothing could be compared).

    Raises:
        GradcheckSymError: bad input, or an exception inside the function (`FunctionError`,
            with the function's own traceback).
    """
    from .judge.function import check_traced_function

    torch_dtype = torch_dtype_of(dtype, order)
    return check_traced_function(fn, inputs, names=names, expected=expected, samples=samples, seed=seed,
                                 domain=domain, dtype=torch_dtype, order=order, rtol=rtol, atol=atol,
                                 intended=intended)


def assert_gradients(fn: Callable[..., Any], *inputs: Any, **options: Any) -> Report:
    """`check_function`, raising AssertionError with the text report when an error finding exists.

    Example (in a test suite)::

        gs.assert_gradients(MySoftplus.apply, torch.randn(5, dtype=torch.float64))
    """
    report = check_function(fn, *inputs, **options)
    if not report.ok:
        raise AssertionError("gradcheck-sym found errors:\n" + str(report))
    return report
