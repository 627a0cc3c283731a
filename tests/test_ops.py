"""One test per op of the op table: value against sympy, gradient checked in float64 and float32."""

import math

import mpmath
import pytest
import sympy
import torch

import gradcheck_sym as gs
from gradcheck_sym.ops import FUNCTIONS, OPS
from gradcheck_sym.reference.symbolic import S

SKIP = {"where", "detach", "no_grad"}  # tested in test_check (they need a condition / are cuts)
NAMES = ["x", "y", "z"]


def _expr(name: str, n: int) -> str:
    op = OPS[name]
    if op.kind == "unop":
        return f"{op.symbol}x"
    if op.kind == "binop":
        return f"x {op.symbol} y"
    return f"{name}(" + ", ".join(NAMES[:n]) + ")"


CASES = sorted({(name, op.arity[1] if name not in ("log",) else 1) for name, op in {**FUNCTIONS, **{
    k: v for k, v in OPS.items() if v.kind in ("binop", "unop")}}.items() if name not in SKIP} | {("log", 2)})


@pytest.mark.parametrize("name,n", CASES)
def test_value_matches_sympy(name, n):
    op = OPS[name]
    syms = sympy.symbols(NAMES[:n], real=True)
    expr = op.sympy(S, *syms)
    if name == "lgamma":  # sympy's log(gamma) is real on the box; our lgamma class has no evalf
        expr = sympy.log(sympy.gamma(syms[0]))
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        point = [lo + (hi - lo) * float(torch.rand((), generator=gen, dtype=torch.float64)) for lo, hi in op.box[:n]]
        want = float(expr.subs(dict(zip(syms, point))).evalf(30))
        got = float(op.torch(torch, *[torch.tensor(p, dtype=torch.float64) for p in point]))
        assert math.isclose(got, want, rel_tol=1e-12, abs_tol=1e-14), (name, point, got, want)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name,n", CASES)
def test_gradient_checks_clean_over_the_box(name, n, dtype):
    op = OPS[name]
    box = op.box if op.kind != "unop" else ((-2.0, 2.0),)
    domain = {v: box[i] for i, v in enumerate(NAMES[:n])}
    report = gs.check(_expr(name, n), domain=domain, samples=200, seed=1, dtype=dtype, order=2 if dtype == "float64" else 1)
    assert report.ok, str(report)
    assert report.n_points == 200
    # the gradient of the variable really was compared with a symbolic value
    assert all(row.symbolic_grad is not None for row in report.nodes if row.op == "var")


def test_every_function_has_a_sampling_box_and_doc():
    for name, op in FUNCTIONS.items():
        assert len(op.box) >= op.arity[0] and op.doc, name


@pytest.mark.parametrize("name,n", CASES)
def test_the_high_precision_program_agrees_with_float64_over_the_box(name, n):
    # Every rule of the mpmath backend runs here: each op's value, gradient and Hessian at 5 points.
    from gradcheck_sym.reference.evaluate import TORCH, compile_program
    from gradcheck_sym.reference.mp_backend import mpmath_backend
    from gradcheck_sym.reference.symbolic import derive

    op = OPS[name]
    box = op.box if op.kind != "unop" else ((-2.0, 2.0),)
    graph = gs.parse(_expr(name, n))
    d = derive(graph, order=2)
    extra = {f"g{k}": e for k, e in d.adjoints.items()} | {
        f"h{i}{j}": e for i, row in enumerate(d.hessian) for j, e in enumerate(row)}
    backend = mpmath_backend(30)
    mp, t64 = compile_program(d.program, backend, extra), compile_program(d.program, TORCH, extra)
    gen = torch.Generator().manual_seed(2)
    for _ in range(5):
        point = {v: lo + (hi - lo) * float(torch.rand((), generator=gen, dtype=torch.float64))
                 for v, (lo, hi) in zip(graph.variables, box)}
        hp = mp.run({sympy.Symbol(v, real=True): backend.context.mpf(x) for v, x in point.items()})
        lo = t64.run({sympy.Symbol(v, real=True): torch.tensor([x], dtype=torch.float64) for v, x in point.items()})
        for key in extra:
            s = sympy.Symbol(f"extra[{key}]", real=True)
            assert math.isclose(float(hp[s]), float(lo[s]), rel_tol=1e-9, abs_tol=1e-12), (name, key, point)


def test_binding_positional_arguments_quickly_agrees_with_inspect():
    # The tracer binds most calls without inspect: the result (values, defaults, order) and the refusals
    # must be inspect's, for every rule and every number of positional arguments.
    from gradcheck_sym.ops.torch import RULES
    from gradcheck_sym.ops.torch.registry import Refused, bind_args

    tried = 0
    for rule in RULES.values():
        params = list(rule.signature.parameters.values())
        for n in range(len(params) + 1):
            args = tuple(object() for _ in range(n))
            try:
                expected = rule.signature.bind(*args)
            except TypeError:
                expected = None
            if expected is not None:
                expected.apply_defaults()
            try:
                got = bind_args(rule, args, {})
            except Refused:
                got = "refused"
            if expected is None:
                assert got == "refused", (rule.name, n)
                continue
            tried += 1
            refused = any(name in expected.arguments and expected.arguments[name] is not
                          rule.signature.parameters[name].default for name in rule.refuse)
            if refused:
                assert got == "refused", (rule.name, n)
            else:
                assert list(got.items()) == list(expected.arguments.items()), (rule.name, n)
    assert tried > 500


def test_leaves_of_a_call_s_arguments_in_order_nested_or_not():
    from gradcheck_sym.ops.core import leaves

    def walk(x):  # the definition: depth first, args before kwargs values, dict values in order
        if isinstance(x, (list, tuple)):
            return [e for v in x for e in walk(v)]
        if isinstance(x, dict):
            return [e for v in x.values() for e in walk(v)]
        return [x]

    t = torch.zeros(2)
    for call in [((t, 2.0, t), {"alpha": 1}), ((), {}), ((t,), {"x": [1, (2, {"y": t})]}),
                 ((t, [t, (t, {"a": 3})]), {"b": 4}), ([t], {}), ((t, t), {"k": {"n": 5}})]:
        got = leaves(call)
        assert len(got) == len(walk(call)) and all(a is b for a, b in zip(got, walk(call))), call
