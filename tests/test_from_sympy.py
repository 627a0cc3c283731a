"""Sympy in: sympy objects printed in our syntax, parsed, and equal to the original."""

from __future__ import annotations

import contextlib
import inspect
import math
import sys

import pytest
import sympy as sp

from gradcheck_sym.errors import InputError, LimitError
from gradcheck_sym.front.from_sympy import sympy_to_text
from gradcheck_sym.front.parse import parse
import torch

from gradcheck_sym.ops import OPS

x, y, z = sp.symbols("x y z")

CASES = [
    (sp.sin(x) / y - sp.Abs(x), "sin(x)/y - abs(x)"),
    (x - y, "x - y"),
    (-x, "-x"),
    (1 / x, "1/x"),
    (x**-2, "1/x**2"),
    (1 / sp.sqrt(x), "1/sqrt(x)"),
    (x ** sp.Rational(3, 2), "x**(3/2)"),
    (-2 * x / 3, "-2*x/3"),
    (-((x + y) ** 2), "-(x + y)**2"),
    (x ** (y + 1), "x**(y + 1)"),
    (sp.Max(x, y, z), None),
    (sp.Heaviside(x - 1), None),
    (sp.Heaviside(x - 1, 0), None),
    (sp.Piecewise((x, x > 1), (y**2, y < 1), (0, True)), None),
    (sp.log(x, 2), "log(x)/log(2)"),
    (sp.re(x) + sp.im(y), "x"),
    (sp.polygamma(0, x), "digamma(x)"),
    (sp.Float(-1.5) * x, "-1.5*x"),
    (sp.pi * x + sp.E, None),
    (sp.Mod(x, y), "x % y"),
    (sp.ceiling(x) * sp.floor(y), "ceil(x)*floor(y)"),
    (sp.loggamma(x), "lgamma(x)"),
    (x / (y * z**2), "x/(y*z**2)"),
    (sp.EulerGamma * x, None),
    (sp.atan2(y, x), "atan2(y, x)"),
    (sp.cbrt(x), "x**(1/3)"),
    (sp.Min(x, 2) - sp.sign(y) * sp.exp(-x), None),
    ((x - y) ** -3, "1/(x - y)**3"),
    (2 ** (x * y), "2**(x*y)"),
    (sp.exp(x) ** 2, None),
    (x * (-y), "-x*y"),
]


def evaluate_graph(graph, values):
    """The graph's value by the op table's torch functions, in float64."""
    out = []
    for node in graph.nodes:
        if node.op == "var":
            out.append(torch.tensor(values[node.name], dtype=torch.float64))
        elif node.op == "const":
            v = node.value
            out.append(torch.tensor(float(getattr(math, v.lower())) if isinstance(v, str) else float(v), dtype=torch.float64))
        else:
            out.append(OPS[node.op].torch(torch, *[out[a] for a in node.args]))
    return float(out[graph.output])


@pytest.mark.parametrize("expr, text", CASES, ids=[str(c[0]) for c in CASES])
def test_printed_text_parses_to_the_same_function(expr, text):
    printed = sympy_to_text(expr)
    if text is not None:
        assert printed == text
    graph = parse(printed)
    symbols = sorted(expr.free_symbols, key=str)
    for point in ([0.7, 1.3, 0.4], [1.6, 0.5, 2.2], [2.5, 3.0, 1.1]):
        values = {s.name: v for s, v in zip(symbols, point)}
        want = complex(expr.subs({s: v for s, v in zip(symbols, point)}).evalf(30))
        got = evaluate_graph(graph, values)
        assert want.imag == 0
        assert math.isclose(got, want.real, rel_tol=1e-12, abs_tol=1e-12), (printed, point)


def test_deep_expression_prints_without_our_recursion():
    expr = x
    for _ in range(150):
        expr = sp.sin(expr)
    assert sympy_to_text(expr).count("sin(") == 150


def test_too_deep_for_sympy_is_a_limit_error():
    expr = x
    for _ in range(150):
        expr = sp.sin(expr)
    # sympy hashes trees recursively: give it fewer frames than the depth needs.
    with sympy_limit(len(inspect.stack()) + 100), pytest.raises(LimitError, match="nests too deeply for sympy"):
        sympy_to_text(expr)


@contextlib.contextmanager
def sympy_limit(n):
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(n)
    try:
        yield
    finally:
        sys.setrecursionlimit(old)


@pytest.mark.parametrize(
    "expr, message",
    [
        (sp.gamma(x), "the sympy function gamma is not supported"),
        (sp.Integral(x, x), "the sympy object Integral is not supported"),
        (x + sp.I, "is not a finite real number"),
        (x + sp.oo, "is not a finite real number"),
        (sp.Piecewise((x, x > 0)), "without a final (expr, True) branch"),
        (sp.Piecewise((x, (x > 0) & (y > 0)), (1, True)), "is not a single comparison"),
        (x > 1, "is a condition, not a number"),
        (sp.Symbol("x y"), "is not a Python identifier"),
        (sp.Function("f")(x), "the sympy function f is not supported"),
    ],
)
def test_refused_with_a_typed_error(expr, message):
    with pytest.raises(InputError) as info:
        sympy_to_text(expr)
    assert message in str(info.value)


def test_check_takes_a_sympy_expression_with_symbol_keys():
    import gradcheck_sym as gs

    expr = sp.Abs(x) * sp.sin(y) + sp.Piecewise((x**2, x > 0), (0, True))
    report = gs.check(expr, at={x: 0.5, y: 1.2})
    assert report.ok and report.expression == "abs(x)*sin(y) + where(x > 0, x**2, 0)"
    grads = {row.expression: row.symbolic_grad for row in report.nodes if row.expression in ("x", "y")}
    assert math.isclose(grads["x"], math.sin(1.2) + 1.0, rel_tol=1e-14)  # |x|' sin(y) + 2x at x = 0.5
    assert math.isclose(grads["y"], 0.5 * math.cos(1.2), rel_tol=1e-14)
    sampled = gs.check(sp.Max(x, y) * sp.exp(-x), domain={x: (-1, 1), y: (-1, 1)}, samples=20, seed=1)
    assert sampled.ok and sampled.n_points == 20


def test_check_refuses_unsupported_sympy_with_a_typed_error():
    import gradcheck_sym as gs

    with pytest.raises(InputError, match="the sympy function gamma is not supported"):
        gs.check(sp.gamma(x), at={x: 0.5})
