"""parse: the whitelist, the graph as written, errors with carets, limits."""

import subprocess
import sys

import pytest

from gradcheck_sym import LimitError, Limits, ParseError, UnknownFunctionError, parse


def test_each_operator_and_call_is_one_node_as_written():
    g = parse("sin(x)*exp(y) + log(1 + x**2)/y")
    texts = [g.text(n.id) for n in g.nodes if n.op not in ("var", "const")]
    assert texts == ["sin(x)", "exp(y)", "sin(x)*exp(y)", "x**2", "1 + x**2", "log(1 + x**2)", "log(1 + x**2)/y",
                     "sin(x)*exp(y) + log(1 + x**2)/y"]
    assert g.variables == ("x", "y")
    g.validate()


def test_identical_subexpressions_are_shared_but_not_across_no_grad():
    g = parse("sin(x) + sin(x) + no_grad(sin(x))")
    sins = [n for n in g.nodes if n.op == "sin"]
    assert len(sins) == 2  # the shared one, and the one inside no_grad
    assert sum(1 for n in sins if n.region is not None) == 1


def test_physics_names_are_variables_and_e_pi_constants():
    g = parse("gamma*beta + I*E + S*N*Q + e + pi")
    assert g.variables == ("gamma", "beta", "I", "E", "S", "N", "Q")
    g2 = parse("e*x", as_variables={"e"})
    assert g2.variables == ("e", "x")


def test_declared_variables_allow_unused_and_refuse_unknown():
    assert parse("x", variables=["x", "y"]).variables == ("x", "y")
    with pytest.raises(ParseError, match="unknown variable 'z'"):
        parse("x + z", variables=["x"])


PINNED = {
    "sinn(x) + 1": "unknown function 'sinn'\n  sinn(x) + 1\n  ^^^^\ndid you mean 'sin' or 'sinh'?",
    "x.y": "attribute access is not allowed\n  x.y\n  ^^^\ncall functions by name, e.g. sin(x) rather than torch.sin(x)",
    "torch.sin(x)": "attribute access is not allowed\n  torch.sin(x)\n  ^^^^^^^^^\n"
                    "call functions by name, e.g. sin(x) rather than torch.sin(x)",
    "x[0]": "subscripts are not allowed\n  x[0]\n  ^^^^\neach variable is a scalar; give separate names such as x0, x1",
    "lambda x: x": "lambda is not allowed\n  lambda x: x\n  ^^^^^^^^^^^\nwrite the expression itself",
    "[x for x in y]": "comprehensions are not allowed\n  [x for x in y]\n  ^^^^^^^^^^^^^^\n"
                      "write the expression out, e.g. x1 + x2 + x3",
    "clamp(x, min=0)": "keyword arguments are not supported\n  clamp(x, min=0)\n           ^^^^^\n"
                       "pass arguments by position, e.g. clamp(x, 0, 1)",
    "import os": "imports are not allowed\n  import os\n  ^^^^^^^^^\ngive one expression, e.g. sin(x) * y",
    "__import__('os')": "the name '__import__' is not allowed (names starting with '__' are reserved)\n"
                        "  __import__('os')\n  ^^^^^^^^^^\ncall a function of the op table, e.g. sin(x)",
    "x > 0": "comparisons are only allowed as the condition of where(...)\n  x > 0\n  ^^^^^\nwrite where(x > 0, a, b)",
    "sin(x, y)": "sin() takes 1 argument, got 2\n  sin(x, y)\n  ^^^^^^^^^\ne.g. sin(x)",
    "x // 2": "the operator '//' is not supported\n  x // 2\n  ^^^^^^\nuse floor(a / b)",
    "(x + 1": "'(' was never closed\n  (x + 1\n  ^\ncheck the expression near the caret",
    "": "the expression is empty\n  \n  ^\ngive an expression such as sin(x) * y",
    "where(x, 1, 2)": "the condition of where(...) must be a comparison\n  where(x, 1, 2)\n        ^\n"
                      "write e.g. where(x > 0, a, b)",
    "'abc'": "strings are not allowed\n  'abc'\n  ^^^^^\ngive a numeric expression",
}


@pytest.mark.parametrize("text", list(PINNED))
def test_parse_errors_are_pinned(text):
    with pytest.raises(ParseError) as info:
        parse(text)
    assert str(info.value) == PINNED[text]


def test_unknown_function_carries_position_and_suggestions():
    with pytest.raises(UnknownFunctionError) as info:
        parse("x + sqr(x)")
    err = info.value
    assert (err.line, err.col, err.name) == (1, 4, "sqr")
    assert "sqrt" in err.suggestions


def test_huge_integer_power_is_refused_with_a_clear_error():
    with pytest.raises(LimitError) as info:
        parse("10**10**10")
    assert info.value.limit == "max_int_digits"
    assert str(info.value).startswith("the constant power 10**10**10 would have about 1e+10 digits")
    parse("x**10**10")  # a variable base is fine: nothing to expand


@pytest.mark.parametrize("text,limits,message", [
    ("x + y*z", Limits(max_nodes=3), "the expression has more than 3 nodes\n"
     "raise it with Limits(max_nodes=...) in Python or --max-nodes on the command line"),
    ("x + 1", Limits(max_chars=3), "the expression is 5 characters long; the limit is 3\n"
     "raise it with Limits(max_chars=...) in Python or --max-chars on the command line"),
    ("x+x+x+x+x", Limits(max_depth=3), "the expression nests deeper than 3 levels\n"
     "raise it with Limits(max_depth=...) in Python or --max-depth on the command line"),
])
def test_limits_are_adjustable_and_their_errors_pinned(text, limits, message):
    with pytest.raises(LimitError) as info:
        parse(text, limits=limits)
    assert str(info.value) == message
    parse(text)  # the defaults admit it


def test_deep_and_long_input_parses_without_crashing():
    g = parse("+".join(f"x{i % 7}" for i in range(20_000)))
    assert len(g.variables) == 7
    nested = "x"
    for _ in range(150):
        nested = f"sin({nested})"
    assert len(parse(nested).nodes) == 151


def test_too_many_parentheses_is_a_parse_error_not_a_crash():
    with pytest.raises(ParseError, match="200 nested parentheses"):
        parse("(" * 250 + "x" + ")" * 250)


def test_parsing_never_imports_torch_or_sympy():
    code = "import sys, gradcheck_sym as gs; gs.parse('sin(x)*y'); print('torch' in sys.modules, 'sympy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False False"
