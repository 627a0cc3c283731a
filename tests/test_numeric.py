"""reference.numeric: a large graph's sweep on numbers gives derive's values, adjoints and magnitudes."""

import gc
import math
import random
import threading

import pytest
import sympy
import torch

import gradcheck_sym as gs
import gradcheck_sym.reference.numeric as numeric
from gradcheck_sym.collector import frozen_before
from gradcheck_sym.reference.evaluate import TORCH, compile_program
from gradcheck_sym.reference.mp_backend import mpmath_backend
from gradcheck_sym.reference.numeric import NumericProgram, derive_numeric
from gradcheck_sym.reference.symbolic import derive

from .conftest import corpus_entries

# Each with what it exercises: where's selection and its strong zero, cuts, constants that sympy
# folds (cot(pi) is undefined), partials that are numbers (x*3, x**2), an adjoint that is 0 by
# structure (sqrt(x) - sqrt(x) at 0: 0, not 0*inf), kinks, poles and undefined points.
EXPRESSIONS = [
    "sin(x)*exp(y) + log(1 + x**2)/y",
    "where(x > 0, sqrt(x), 0) + relu(y)*x",
    "x*detach(tanh(x)) + no_grad(y*x)*y",
    "x**2*3 - 2**x + x/0.5 + 0*y",
    "sqrt(x) - sqrt(x) + y",
    "(sqrt(x) - sqrt(x))*log(y)",
    "abs(x - y) + max(x, y)*min(x, 1.5) + floor(x*3)",
    "x**cot(pi) + y",
    "atanh(x) + acosh(y + 2) + sigmoid(x*y) + expm1(x) + lgamma(y + 3)",
    "log(x)*x + 1/(x - y)",
]
POINTS = {"x": torch.tensor([0.0, 0.3, -0.7, 1.0, 2.5], dtype=torch.float64),
          "y": torch.tensor([0.0, 1.2, 0.7, -1.0, 0.5], dtype=torch.float64)}


def _extras(graph, d):
    """Every value and adjoint the judge can ask for, by node."""
    out = {f"v{k}": d.values[k] for k in range(len(graph.nodes)) if graph.nodes[k].op not in numeric.COMPARE}
    out |= {f"a{k}": e for k, e in d.adjoints.items()}
    out |= {f"c{k}": e for k, e in (d.cut_adjoints or {}).items()}
    return out


def _run(d, backend, extras, env):
    if isinstance(d.program, NumericProgram):
        compiled = d.program.compile(backend, extras, None)
    else:
        compiled = compile_program(d.program, backend, extras)
    out = compiled.run(dict(env))
    return {name: out[sympy.Symbol(f"extra[{name}]", real=True)] for name in extras}


def _same(a, b, rel):
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    a, b = torch.broadcast_tensors(a, b)
    return torch.allclose(a, b, rtol=rel, atol=1e-300, equal_nan=True)


@pytest.mark.parametrize("text", EXPRESSIONS)
def test_every_value_and_adjoint_is_derives_in_float64(text):
    g = gs.parse(text, variables=["x", "y"])
    sym, num = derive(g), derive_numeric(g)
    env = {sympy.Symbol(v, real=True): POINTS[v] for v in g.variables}
    want = _run(sym, TORCH, _extras(g, sym), env)
    got = _run(num, TORCH, _extras(g, num), env)
    assert want.keys() == got.keys()
    for name in want:
        assert _same(got[name], want[name], 1e-13), (name, got[name], want[name])


@pytest.mark.parametrize("text", EXPRESSIONS)
def test_every_adjoint_is_derives_in_50_digits(text):
    g = gs.parse(text, variables=["x", "y"])
    sym, num = derive(g), derive_numeric(g)
    backend = mpmath_backend(50)
    ctx = backend.context
    for x, y in [(0.3, 1.2), (0.0, 0.5), (2.5, -1.0)]:
        env = {sympy.Symbol("x", real=True): ctx.mpf(x), sympy.Symbol("y", real=True): ctx.mpf(y)}
        want = _run(sym, backend, {f"a{k}": e for k, e in sym.adjoints.items()}, env)
        got = _run(num, backend, {f"a{k}": e for k, e in num.adjoints.items()}, env)
        for name in want:
            w, h = want[name], got[name]
            if ctx.isnan(w) or ctx.isinf(w):
                assert (ctx.isnan(h) and ctx.isnan(w)) or h == w, (name, h, w)
            else:
                assert abs(h - w) <= ctx.mpf(10) ** -40 * (1 + abs(w)), (name, h, w)


@pytest.mark.parametrize("text", EXPRESSIONS)
def test_the_magnitude_sweep_is_derives(text):
    g = gs.parse(text, variables=["x", "y"])
    (sym_prog, sym_rows), (num_prog, num_rows) = derive(g).magnitudes(), derive_numeric(g).magnitudes()
    env = {sympy.Symbol(v, real=True): POINTS[v] for v in g.variables}
    want = compile_program(sym_prog, TORCH, {f"m{k}": e for k, e in sym_rows[0].items()}).run(dict(env))
    got = num_prog.compile(TORCH, {}, None).run(dict(env))  # (its sweep writes every magnitude, by node)
    for k in sym_rows[0]:
        s = sympy.Symbol(f"extra[m{k}]", real=True)
        assert _same(got[num_rows[0][k]].abs(), want[s].abs(), 1e-13), (k, got[num_rows[0][k]], want[s])


def _kinds(r):
    return sorted((f.kind, f.severity, f.node, f.count) for f in r.findings)


@pytest.mark.parametrize("text", EXPRESSIONS + ["where(x > 0, sqrt(x), 0)", "x*detach(tanh(x))", "atanh(x)*1e300"])
def test_a_check_on_the_numeric_path_reports_what_the_symbolic_path_does(text, monkeypatch):
    domain = {"x": (-1.5, 1.5), "y": (-1.5, 1.5)}
    want = gs.check(text, domain=domain, variables=["x", "y"], samples=200, seed=3)
    monkeypatch.setattr(numeric, "NUMERIC_MIN_NODES", 1)
    got = gs.check(text, domain=domain, variables=["x", "y"], samples=200, seed=3)
    assert "computed with numbers" in got.derivation and "computed with numbers" not in want.derivation
    assert _kinds(got) == _kinds(want) and got.checked == want.checked and got.ok == want.ok
    assert [(n.expression, n.status) for n in got.nodes] == [(n.expression, n.status) for n in want.nodes]


CORPUS = corpus_entries()


@pytest.mark.parametrize("entry", CORPUS, ids=[e["id"] for e in CORPUS])
def test_the_corpora_on_the_numeric_path(entry, monkeypatch):
    """No false alarm on the shared corpora either (the numeric path is otherwise only taken by large graphs),
    and the gradients at the recorded points are the corpus's."""
    monkeypatch.setattr(numeric, "NUMERIC_MIN_NODES", 1)
    domain = {k: tuple(v) for k, v in entry["vars"].items()}
    r = gs.check(entry["expr"], domain=domain, variables=list(domain), samples=30, seed=1)
    assert r.ok and "computed with numbers" in r.derivation, str(r)
    if entry["check"].get("grad_finite"):
        r = gs.check(entry["expr"], at=entry["check"]["point"], variables=list(entry["vars"]))
        got = {row.expression: row.symbolic_grad for row in r.nodes if row.op == "var"}
        for name, want in entry["check"]["grad"].items():
            assert math.isclose(got[name], want, rel_tol=1e-9, abs_tol=1e-12), (name, got[name], want)


def _random_text(n: int, rng: random.Random) -> str:
    """About n operators over 4 variables, finite everywhere (exp and log1p of bounded values)."""

    def build(k: int) -> str:
        if k <= 0:
            return rng.choice(["x0", "x1", "x2", "x3"]) if rng.random() < 0.8 else f"{rng.uniform(0.1, 3):.3f}"
        if rng.random() < 0.3:
            f = rng.choice(["sin", "tanh", "exp", "log1p"])
            inner = build(k - 1)
            return f"{f}({'tanh' if f == 'exp' else 'sigmoid' if f == 'log1p' else ''}({inner}))"
        left = rng.randint(0, k - 1)
        return f"({build(left)}{rng.choice('+-*')}{build(k - 1 - left)})"

    return build(n)


def test_a_large_graph_takes_the_numeric_path_and_gets_derives_gradients(monkeypatch):
    text = _random_text(1600, random.Random(5))
    at = {"x0": [0.3, -0.2], "x1": [0.5, 0.1], "x2": [-0.4, 0.9], "x3": [0.2, 0.6]}
    r = gs.check(text, at=at)
    assert len(gs.parse(text).nodes) >= numeric.NUMERIC_MIN_NODES
    assert r.ok and r.derivation.startswith(
        f"reverse sweep over the graph ({len(gs.parse(text).nodes)} nodes), computed with numbers: each op kind's "
        "derivatives derived once (graphs from 1,500 nodes); no second opinion and no formulas")
    assert r.derivatives == ()
    monkeypatch.setattr(numeric, "NUMERIC_MIN_NODES", 10**9)
    want = gs.check(text, at=at)
    assert "computed with numbers" not in want.derivation
    for a, b in zip(r.nodes, want.nodes):
        assert a.expression == b.expression and a.status == b.status
        if b.symbolic_grad is None:
            assert a.symbolic_grad is None
        else:
            assert math.isclose(a.symbolic_grad, b.symbolic_grad, rel_tol=1e-12), (a.expression, a, b)


def test_order_2_and_misplaced_comparisons_stay_symbolic(monkeypatch):
    monkeypatch.setattr(numeric, "NUMERIC_MIN_NODES", 1)
    g = gs.parse("where(x > 0, x**2, x)")
    assert numeric.suits(g, 1) and not numeric.suits(g, 2)
    r = gs.check("sin(x)*y", at={"x": 0.4, "y": 0.3}, order=2)
    assert r.ok and "computed with numbers" not in r.derivation


def test_a_check_freezes_the_older_objects_and_gives_them_back():
    assert gc.get_freeze_count() == 0
    with frozen_before():
        inside = gc.get_freeze_count()
        with frozen_before():  # nested (a check inside a check): one freeze
            assert gc.get_freeze_count() == inside
    assert inside > 0 and gc.get_freeze_count() == 0



def test_the_check_runs_with_the_older_objects_frozen(monkeypatch):
    import gradcheck_sym.api as api

    seen = []
    inner = api._check_graph_unguarded

    def spy(*args):
        seen.append(gc.get_freeze_count())
        return inner(*args)

    monkeypatch.setattr(api, "_check_graph_unguarded", spy)
    assert gs.check("sin(x)", at={"x": 0.5}).ok
    assert seen[0] > 0 and gc.get_freeze_count() == 0


def test_a_check_leaves_no_cyclic_garbage_behind():
    # Collected before the freeze ends: given back first, it counted as long-lived and waited for a full
    # collection (88 objects in cycles holding the check's tensors, per check; a loop of million-point
    # checks grew by 60 MB each).
    text, box = "sin(x)*exp(y) + log(1 + x**2)/y + z", {"x": (-1.0, 1.0), "y": (0.5, 2.0), "z": (0.0, 1.0)}
    gs.check(text, domain=box, samples=1000, seed=0)
    gc.collect()
    assert gs.check(text, domain=box, samples=1000, seed=0).ok
    assert gc.collect() == 0


def test_a_programs_own_freeze_is_left_alone():
    gc.freeze()
    try:
        before = gc.get_freeze_count()
        with frozen_before():
            pass
        assert gc.get_freeze_count() == before  # not unfrozen by us
    finally:
        gc.unfreeze()


def test_concurrent_checks_share_one_freeze():
    barrier = threading.Barrier(2)
    errors = []

    def work():
        try:
            with frozen_before():
                barrier.wait(5)
                assert gc.get_freeze_count() > 0
                barrier.wait(5)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and gc.get_freeze_count() == 0


@pytest.mark.parametrize("text", ["sin(x)*exp(y) + log(1 + x**2)/y", "where(x > 0, sqrt(x), 0) + relu(y)*x",
                                  "x*detach(tanh(x)) + y", "(exp(x) - 1 - x)/x**2 + y"])
def test_the_detailed_test_on_the_numeric_path_is_the_symbolic_path_s(text, monkeypatch):
    # every comparison sent to the detailed test (its measured noise, the magnitude sweep, the 50-digit reference)
    import gradcheck_sym.judge.tolerance as tl

    cheap = tl.cheap_pass
    monkeypatch.setattr(tl, "cheap_pass", lambda a, r, u: torch.zeros_like(cheap(a, r, u)))
    runs = []
    for threshold in (10**9, 1):
        monkeypatch.setattr(numeric, "NUMERIC_MIN_NODES", threshold)
        r = gs.check(text, domain={"x": (-1, 1), "y": (0.5, 2)}, samples=20, seed=2)
        runs.append((r.ok, r.checked, r.high_precision_points, _kinds(r), [n.status for n in r.nodes]))
    assert runs[0] == runs[1]
    if "where" in text or "detach" in text:
        assert runs[1][2] > 0  # (the 50-digit reference ran)


# where derive's substitution of constants changes a node (a review's reproducers): x**0's partial is 0, not
# 0 * 0**-1; hypot(x, 0) is |x| (no overflow); 1 > 2 and x > x decide their where; pi is not a number sympy sums
@pytest.mark.parametrize("text, at", [
    ("x**0", {"x": [0.0, 0.5]}), ("pow(x, 0.0)", {"x": [0.0]}), ("(x*y)**0", {"x": [0.0], "y": [0.0]}),
    ("relu(x)**0", {"x": [0.0]}), ("sqrt(x**0 - 1)", {"x": [0.5, 2.0]}),
    ("sqrt(clamp(x, 1, -1) + 1)", {"x": [0.5, 2.0]}), ("hypot(x, 0)", {"x": [1e200]}),
    ("atan2(x, 0)", {"x": [0.0]}), ("atan2(0, x)", {"x": [0.0]}), ("0/x", {"x": [0.0]}),
    ("0**x", {"x": [0.0]}), ("x/0", {"x": [0.5]}), ("sqrt(where(1 > 2, x, 0))", {"x": [0.5, -2.0]}),
    ("where(1 < 2, sqrt(x), 0)*y", {"x": [0.0], "y": [0.0]}), ("where(x > x, sqrt(x), x)", {"x": [0.0, -1.0]}),
    ("where(x >= x, x, sqrt(x))", {"x": [0.0, -1.0]}), ("sqrt(x)*pi - pi*sqrt(x)", {"x": [0.0]}),
    ("pi*x + e*x", {"x": [0.3]}),
])
def test_constants_go_into_a_node_as_derive_puts_them(text, at, monkeypatch):
    runs = []
    for threshold in (10**9, 1):
        monkeypatch.setattr(numeric, "NUMERIC_MIN_NODES", threshold)
        r = gs.check(text, at=at)
        runs.append((r.ok, _kinds(r), [(n.expression, n.status, repr(n.symbolic_grad)) for n in r.nodes]))
    assert runs[0] == runs[1]


def test_a_large_graph_with_constant_powers_is_verified():
    # 2,802 nodes, each term multiplied by x**0: the numeric path's default; x**0's partial is 0 (not NaN at 0)
    r = gs.check(" + ".join(f"{i}.5*sin(x*{i + 1})*x**0" for i in range(400)), at={"x": [0.0, 0.5]})
    assert r.ok and r.findings == () and "computed with numbers" in r.derivation
