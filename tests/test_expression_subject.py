"""judge/expression.py: which forward values a float64 check's reference reads from torch, and that reading them
changes no report."""

from __future__ import annotations

import pytest
import torch

import gradcheck_sym as gs
from gradcheck_sym.judge import expression as E
from gradcheck_sym.judge import programs
from gradcheck_sym.reference.symbolic import derive

from .conftest import corpus_entries


def _shared(text: str) -> set[str]:
    g = gs.parse(text)
    return {g.label(k) for k in E.ExpressionSubject(g, derive(g)).same_forward}


def test_nodes_of_constants_alone_and_named_constants_are_computed_by_the_reference() -> None:
    # cot(pi) is infinite for sympy, -8.2e15 for torch (pi rounded first): neither it nor x**cot(pi) is read
    assert _shared("x**cot(pi) + y") == set()
    # x*0.25: the same kernel on the same numbers; sin(pi*x) and what it feeds: not read
    assert _shared("sin(pi*x) + x*0.25") == {"x*0.25"}
    assert _shared("exp(x)*y - x**2") == {"exp(x)", "exp(x)*y", "x**2", "exp(x)*y - x**2"}


def test_an_op_torch_only_approximates_is_computed_by_the_reference() -> None:
    approximate = [name for name, op in gs.ops.OPS.items() if op.approx_rtol > 0 and op.kind == "function"]
    assert approximate, "no op is marked approximate: this test would test nothing"
    name = approximate[0]
    assert _shared(f"{name}(x) + x*y") == {"x*y"}


def test_the_reference_reads_them_in_float64_only(monkeypatch: pytest.MonkeyPatch) -> None:
    read: list[int] = []
    original = programs.References._given

    def spy(self, env, forward):
        read.append(len(forward))
        return original(self, env, forward)

    monkeypatch.setattr(programs.References, "_given", spy)
    gs.check("sin(x)*exp(y) + log(1 + x**2)/y", domain={"x": (-1, 1), "y": (0.5, 2)}, samples=100, seed=0)
    assert read == [8]  # every op node: sin, exp, *, **, +, log, /, +
    read.clear()
    gs.check("sin(x)*exp(y) + log(1 + x**2)/y", domain={"x": (-1, 1), "y": (0.5, 2)}, samples=100, seed=0,
             dtype="float32")
    assert read == []


def _report(r: gs.Report) -> tuple:
    return (r.ok, r.checked, r.high_precision_points,
            [(f.kind, f.severity, f.node, f.count, [(e.index, repr(e.autograd), repr(e.symbolic)) for e in f.examples])
             for f in r.findings],
            [(n.expression, n.status, repr(n.value), repr(n.autograd_grad), repr(n.symbolic_grad)) for n in r.nodes])


CASES = [(e["expr"], {k: tuple(v) for k, v in e["vars"].items()}) for e in corpus_entries()[::10]] + [
    ("where(x > 0, sqrt(x), 0)", {"x": (-1.0, 1.0)}),
    ("x*detach(tanh(x)) + no_grad(exp(x))", {"x": (-1.0, 1.0)}),
    ("log(x)*exp(x*1e3)", {"x": (0.0, 1.0)}),
    ("x**cot(pi) + y", {"x": (-1.5, 1.5), "y": (-1.5, 1.5)}),
]


@pytest.mark.parametrize("text,domain", CASES, ids=[c[0][:40] for c in CASES])
def test_reading_the_forward_values_changes_no_report(text: str, domain: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    shared = gs.check(text, domain=domain, variables=list(domain), samples=200, seed=2)
    monkeypatch.setattr(E.ExpressionSubject, "same_forward", frozenset())
    computed = gs.check(text, domain=domain, variables=list(domain), samples=200, seed=2)
    assert _report(shared) == _report(computed)
    assert torch.get_default_dtype() == torch.float32  # (nothing here changed the caller's state)
