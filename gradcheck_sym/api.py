"""The public entry points: the pipeline composed.

``check`` parses an expression, derives its symbolic reference and hands both,
with the points, to the checking engine (`checker`).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from .autograd import DTYPES
from .checker import Checker, ExpressionSubject
from .errors import InputError
from .graph import Graph
from .parse import Limits, parse
from .points import make_points
from .report import Report
from .symbolic import derive

__all__ = ["check", "check_graph"]


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

    Returns:
        A `Report`; ``report.ok`` is False when an error finding exists.

    Raises:
        GradcheckSymError: bad expression or input (a `ParseError`, `LimitError`, `InputError`, ...).

    Example:
        >>> check("sin(x)*exp(y)", at={"x": 0.7, "y": 1.3}).ok
        True
    """
    names = set(at or {}) | set(domain or {})
    graph = parse(expression, variables=variables, as_variables=names, limits=limits)
    return check_graph(
        graph, at=at, domain=domain, samples=samples, seed=seed, dtype=dtype, order=order,
        limits=limits, chunk_size=chunk_size, progress=progress,
    )


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
) -> Report:
    """`check` for a `Graph` built by `parse` or by code. Same arguments and result."""
    torch_dtype = torch_dtype_of(dtype, order)
    limits = limits or Limits()
    if not graph.variables and (at or domain):
        raise InputError("the expression has no variables: give no at/domain values")
    points = make_points(graph.variables, at=at, domain=domain, samples=samples, seed=seed, max_points=limits.max_points)
    subject = ExpressionSubject(graph, derive(graph, order=order))
    return Checker(subject, points, torch_dtype, order).run(chunk_size, progress)


def torch_dtype_of(dtype: str, order: int) -> Any:
    """Validate the dtype name and order; return the torch dtype."""
    if dtype not in DTYPES:
        raise InputError(f"unknown dtype {dtype!r}: use one of " + ", ".join(DTYPES))
    if order not in (1, 2) or isinstance(order, bool):
        raise InputError(f"order must be 1 or 2, not {order!r}")
    return DTYPES[dtype]
