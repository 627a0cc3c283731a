"""parse: the whitelist, the graph as written, errors with carets, limits."""

import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gradcheck_sym as gs
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


# ---------------------------------------------------------------- issue 12
@pytest.mark.parametrize("text,message", [
    ("x*pow(7, 10**20)", "the constant power pow(7, 10**20) would have about 8.45e+19 digits; the limit is 10,000"),
    ("2**(10**400)", "the constant power 2**(10**400) would have about 1e+399 digits; the limit is 10,000"),
    ("x*" + "9" * 10_001, "an integer literal has 10,001 digits; the limit is 10,000"),
])
def test_constant_powers_and_literals_beyond_the_limit_are_refused(text, message):
    with pytest.raises(LimitError) as info:
        parse(text)
    assert str(info.value).splitlines()[0] == message and info.value.limit == "max_int_digits"


def test_integer_literals_beyond_pythons_int_str_limit_are_read():
    g = parse("x*" + "1" + "0" * 5000)  # 5,001 digits: Python's own conversion stops at 4,300
    (const,) = [n for n in g.nodes if n.op == "const"]
    assert const.value == 10**5000
    assert "1000000000...(5,001 digits)" in str(g)


@pytest.mark.parametrize("text,message", [
    ("1if x else 2", "invalid decimal literal\n  1if x else 2\n  ^^^\n"
                     "is an operator or a space missing after the number (write 2*x)?"),
    ('x*"\\d"', 'strings are not allowed\n  x*"\\d"\n    ^^^^\ngive a numeric expression'),
])
def test_what_python_would_warn_about_is_an_error_and_no_warning(text, message):
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ParseError) as info:
            parse(text)
    assert str(info.value) == message and caught == []


def test_compatibility_letters_are_not_merged_and_lookalikes_are_named():
    with pytest.raises(ParseError) as info:
        parse("\uff58 + x")  # fullwidth x
    assert str(info.value) == (
        "the name 'ｘ' is written with compatibility characters (fullwidth or mathematical letters) that Python "
        "reads as 'x'\n  ｘ + x\n  ^\nwrite 'x': gradcheck-sym does not merge names that are written differently")
    with pytest.raises(ParseError, match="that Python reads as 'sin'"):
        parse("\U0001d42c\U0001d422\U0001d427(x)")  # mathematical bold sin
    assert parse("\u0445 + x").variables == ("\u0445", "x")  # Cyrillic х is another letter: another name
    with pytest.raises(gs.InputError) as info:
        gs.check("\u0445 + 1", at={"x": 1.0})
    assert str(info.value) == ("unknown variable 'x' in at: the expression uses х ('х' is written with CYRILLIC "
                               "SMALL LETTER HA)")


def test_deep_input_is_read_without_changing_the_recursion_limit():
    import threading

    limit = sys.getrecursionlimit()
    results = []

    def work():
        results.append(len(parse("+".join(["x"] * 30_000)).nodes))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
        assert sys.getrecursionlimit() == limit
    for t in threads:
        t.join()
    assert results == [30_000] * 4 and sys.getrecursionlimit() == limit


def test_the_deep_reader_gives_pythons_tree_positions_included():
    import ast

    from gradcheck_sym.front.deep import read_deep

    def error(message, start, end, hint=""):
        return ParseError(message, "", start[0], start[1], end[1], hint)

    for text in ["(x+y)*z", "-(x)**2", "2**-x**2*3", "x < (y) < z", "f((x), y,)", "sin(x)*exp(y) + log(1 + x**2)/y",
                 "where(x > 0, sqrt(x), 0)", "not x", "1 is not 2", "x // 2 @ y | z ^ w & v << 1 >> 2", "ｘ + 𝑥",
                 "1e5 + 0x1F + 1_000 + 2j + .5 + 5.", "max(x, y, z)", "f()", "((x))", "x - -y"]:
        assert ast.dump(read_deep(text, error), include_attributes=True) == ast.dump(
            ast.parse(text, mode="eval"), include_attributes=True), text


@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(st.randoms(use_true_random=False))
def test_the_deep_reader_agrees_with_python_on_the_grammar(rng):
    import ast

    from gradcheck_sym.front.deep import read_deep

    from .grammar import expression

    text = expression(rng, rng.randint(1, 6), hostile=rng.random() < 0.5).replace("1" + "0" * 5000, "7")

    def error(message, start, end, hint=""):
        return ParseError(message, "", start[0], start[1], end[1], hint)

    assert ast.dump(read_deep(text, error), include_attributes=True) == ast.dump(
        ast.parse(text, mode="eval"), include_attributes=True)
