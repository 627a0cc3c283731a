"""Exact derivatives as formulas in the report (reference/formulas.py): sympy objects, text, LaTeX."""
import json

import pytest
import sympy as sp

import gradcheck_sym as gs
from gradcheck_sym.reference import formulas as fm


def test_each_variables_derivative_is_sympys_derivative_of_the_expression():
    r = gs.check("sin(x)*exp(y) + log(1 + x**2)/y", at={"x": 0.7, "y": 1.3})
    x, y = sp.symbols("x y", real=True)
    f = sp.sin(x) * sp.exp(y) + sp.log(1 + x**2) / y
    for name, s in (("x", x), ("y", y)):
        got = r.derivative(name)
        # the same function (the symbols are the report's own: compare by value at a few points)
        gs_syms = {str(v): v for v in got.free_symbols}
        for px, py in ((0.3, 1.1), (-2.0, 0.4), (1.7, -3.0)):
            want = float(sp.diff(f, s).subs({x: px, y: py}))
            have = float(got.subs({gs_syms[k]: v for k, v in (("x", px), ("y", py)) if k in gs_syms}))
            assert have == pytest.approx(want, rel=1e-14)


def test_intermediate_nodes_get_their_adjoint():
    r = gs.check("sin(x)*y", at={"x": 0.7, "y": 1.3})
    assert [f.of for f in r.derivatives] == ["x", "y", "sin(x)"]
    assert r.derivative("sin(x)") == sp.Symbol("y", real=True)


def test_text_latex_and_json():
    r = gs.check("x**3", at={"x": 2.0})
    f = r.derivatives[0]
    assert (f.of, f.text, f.latex) == ("x", "3*x**2", "3 x^{2}")
    d = json.loads(r.to_json())["derivatives"]
    assert d == [{"of": "x", "node": 0, "text": "3*x**2", "latex": "3 x^{2}"}]  # no sympy object in JSON


def test_a_cut_keeps_the_full_math_derivative():
    # the exact derivative is the math's: the cut is what the report explains, not part of the formula
    r = gs.check("x*detach(x)", at={"x": 0.7})
    assert r.derivative("x") == 2 * sp.Symbol("x", real=True)


def test_the_html_view_typesets_the_formulas():
    html = gs.check("x**3", at={"x": 2.0})._repr_html_()
    assert "<li>d out / d <code>x</code>: $$3 x^{2}$$</li>" in html


def test_an_unknown_name_says_which_exist():
    r = gs.check("x**3", at={"x": 2.0})
    with pytest.raises(KeyError, match="there are: x"):
        r.derivative("y")


def test_large_programs_are_not_written_out(monkeypatch):
    monkeypatch.setattr(fm, "MAX_PROGRAM_OPS", 3)
    r = gs.check("sin(x)*exp(y) + log(1 + x**2)/y", at={"x": 0.7, "y": 1.3})
    assert r.ok and r.derivatives == ()


def test_a_sympy_input_gets_its_formulas_in_its_own_symbols():
    x, y = sp.symbols("x y")  # no assumptions: the user's, not ours
    f = sp.sin(x) * y**2
    r = gs.check(f, at={x: 0.7, y: 1.3})
    assert r.derivative("x") == sp.diff(f, x) and r.derivative("y") == sp.diff(f, y)


def test_check_function_with_expected_gives_the_elementwise_formula_per_input():
    import torch

    x = torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64)
    r = gs.check_function(lambda x: torch.sin(x) ** 2, x, expected="sin(x)**2")
    s = sp.Symbol("x", real=True)
    assert r.ok and [f.of for f in r.derivatives] == ["x"]
    assert sp.simplify(r.derivative("x") - 2 * sp.sin(s) * sp.cos(s)) == 0


def test_a_small_traced_call_gets_its_formulas_per_input_element():
    import torch

    x = torch.tensor([0.3, -1.2], dtype=torch.float64)
    r = gs.check_function(lambda x: (torch.tanh(x) * x).sum(), x)
    x0 = sp.Symbol("x_0", real=True)
    assert [f.of for f in r.derivatives] == ["x[0]", "x[1]"]
    assert sp.simplify(r.derivative("x[0]") - sp.diff(sp.tanh(x0) * x0, x0)) == 0


def test_a_matrix_input_is_named_by_its_index_and_vector_outputs_by_theirs():
    import torch

    x = torch.tensor([0.3, -1.2], dtype=torch.float64)
    w = torch.tensor([[0.5, 1.0], [2.0, -1.0]], dtype=torch.float64)
    r = gs.check_function(lambda x, w: w @ x, x, w)
    assert len(r.derivatives) == 12  # 2 outputs x (2 + 4) input elements
    assert r.derivative("out[1]/w[1,0]") == sp.Symbol("x_0", real=True)
    assert r.derivative("out[0]/x[1]") == sp.Symbol("w_0_1", real=True)


def test_a_large_traced_call_writes_no_formula():
    import torch

    r = gs.check_function(lambda x: x.exp().sum(), torch.linspace(0, 1, 100, dtype=torch.float64))
    assert r.ok and r.derivatives == ()


def test_formulas_are_written_only_when_read(monkeypatch):
    import torch

    calls = []
    real = fm.traced_formulas
    monkeypatch.setattr(fm, "traced_formulas", lambda *a: calls.append(1) or real(*a))
    r = gs.check_function(lambda x: (x * x).sum(), torch.tensor([0.5], dtype=torch.float64))
    assert r.ok and calls == []  # a check that never looks at them pays nothing
    assert r.derivative("x[0]") == 2 * sp.Symbol("x_0", real=True) and calls == [1]
    assert len(r.derivatives) == 1 and calls == [1]  # computed once


def test_a_report_with_formulas_pickles():
    import pickle

    import torch

    for r in (gs.check("sin(x)*y", at={"x": 0.7, "y": 1.3}),
              gs.check_function(lambda x: (x * x).sum(), torch.tensor([0.5], dtype=torch.float64))):
        back = pickle.loads(pickle.dumps(r))
        assert back.derivatives == r.derivatives and back.to_json() == r.to_json()
