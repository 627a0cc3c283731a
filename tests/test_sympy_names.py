"""Pasting sympy's printed form (front/sympy_names.py): the same checks as the sympy object itself."""
import pytest
import sympy as sp

import gradcheck_sym as gs
from gradcheck_sym.errors import ParseError

x, y = sp.symbols("x_1 y", real=True)

PASTED = [
    sp.Abs(x) * y,
    sp.Max(x, y) + sp.Min(x, 2),
    sp.Heaviside(x) * x**2,
    sp.Heaviside(x, 1) * x,
    sp.Piecewise((x**2, x > 0), (sp.sin(x), True)),
    sp.Piecewise((x, x < -1), (x**3, x < 1), (2 * x, True)),
    sp.log(x + 3, 2) * y,
    sp.ceiling(x) * x + sp.loggamma(x + 2),
    sp.sign(x) * sp.exp(y),
]


@pytest.mark.parametrize("expr", PASTED, ids=[str(e) for e in PASTED])
@pytest.mark.parametrize("point", [0.7, -0.4, 1.6])
def test_pasted_text_gives_the_sympy_objects_gradient(expr, point):
    at = {str(s): point if str(s) == "x_1" else 1.3 for s in expr.free_symbols}
    from_text = gs.check(str(expr), at=at)
    assert from_text.ok, str(from_text)
    # the exact gradient, from sympy directly (the derivative of ceiling stays unevaluated in sympy:
    # 0 away from the integers)
    compared = 0
    for row in from_text.nodes:
        s = next((v for v in expr.free_symbols if str(v) == row.expression), None)
        if s is None:
            continue
        d = sp.diff(expr, s).replace(lambda e: isinstance(e, sp.Derivative), lambda e: sp.S.Zero)
        exact = float(d.subs({v: at[str(v)] for v in expr.free_symbols}))
        assert row.symbolic_grad == pytest.approx(exact, rel=1e-12, abs=1e-300)
        compared += 1
    assert compared == len(expr.free_symbols)


def test_the_pasted_text_and_the_object_agree_on_a_mismatch_free_report():
    e = sp.Piecewise((x**2, x > 0), (sp.sin(x), True)) * sp.Abs(y)
    assert gs.check(str(e), at={"x_1": 0.3, "y": -2.0}).checked == gs.check(e, at={x: 0.3, y: -2.0}).checked


def test_re_and_im_of_real_inputs():
    r = gs.check("re(x) + im(x)*x", at={"x": 0.5})
    assert r.ok and r.nodes[0].symbolic_grad == pytest.approx(1.0)


@pytest.mark.parametrize("text, message, caret", [
    ("Piecewise((x, x > 0))", "must end with an otherwise piece (value, True)", "^" * 21),
    ("Piecewise((x, True), (1, x > 0), (2, True))", "only the last piece of Piecewise may have the condition True",
     "^^^^"),
    ("Piecewise(x)", "each argument of Piecewise must be a pair (value, condition)", "^"),
])
def test_a_malformed_piecewise_is_a_parse_error_with_a_caret(text, message, caret):
    with pytest.raises(ParseError) as info:
        gs.check(text, at={"x": 1.0})
    assert message in str(info.value) and caret in str(info.value)


def test_abs_is_no_longer_refused():
    assert gs.check("Abs(x_1)", at={"x_1": -2.0}).ok
