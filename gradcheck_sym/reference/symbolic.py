"""Stage 3: the symbolic reference — exact derivatives as a straight-line program.

Derivation is a reverse sweep over the graph (autodidax-style, but in sympy):
each node's local partial derivatives come from `sympy.diff` on that node's
own expression in terms of its arguments, and adjoints are accumulated as one
program step per node.  The program therefore grows linearly with the graph,
never swells like `sympy.diff` of a deeply nested whole expression, and gives
d(output)/d(node) for every node in one sweep.

Grammar of a `Program`::

    program := (symbol = expr)*          # each symbol bound once, in order
    expr    := sympy expression over the inputs and earlier symbols

Two details keep the numbers right where a naive chain rule would not:

* ``zmul(adjoint, partial)`` is a product that is exactly 0 when the adjoint
  is 0, so a branch that ``where`` did not select contributes 0 even where its
  own derivative is infinite (the math), where torch computes 0 * inf = NaN.
* ops whose sympy derivative does not evaluate (``floor``, ``sign``, ``%``)
  use the subclasses below, whose derivatives are the 0 / -floor(a/b) that
  hold away from the jumps; the jumps themselves are kinks (see `ops`).

For small graphs the whole expression is also differentiated with
`sympy.diff`, as an independent second opinion (`opinion`).
"""

from __future__ import annotations

import functools
import math
import types
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import sympy
from sympy.codegen.cfunctions import expm1, log1p, log2, log10

from ..budget import NO_DEADLINE, Deadline
from ..ir.graph import Graph
from ..ops import OPS
from .opinion import whole_expression_gradient

__all__ = ["Program", "Derivation", "derive", "S", "zmul", "sweep"]


class floor(sympy.floor):  # noqa: N801 - prints as sympy's floor
    """floor with derivative 0 (torch's value; true away from the integers)."""

    def fdiff(self, argindex: int = 1) -> sympy.Expr:
        return sympy.S.Zero


class ceiling(sympy.ceiling):  # noqa: N801
    """ceiling with derivative 0 (torch's value; true away from the integers)."""

    def fdiff(self, argindex: int = 1) -> sympy.Expr:
        return sympy.S.Zero


class sign(sympy.sign):  # noqa: N801
    """sign with derivative 0 instead of 2*DiracDelta (torch's value; true away from 0)."""

    def fdiff(self, argindex: int = 1) -> sympy.Expr:
        return sympy.S.Zero


class lgamma(sympy.Function):  # noqa: N801
    """log|gamma(x)|: torch's lgamma, real for negative x (sympy's loggamma is complex there)."""

    nargs = 1

    def fdiff(self, argindex: int = 1) -> sympy.Expr:
        return sympy.polygamma(0, self.args[0])


class mod(sympy.Function):  # noqa: N801
    """a % b with the sign of b; derivatives 1 and -floor(a/b) away from the jumps."""

    nargs = 2

    @classmethod
    def eval(cls, a: sympy.Expr, b: sympy.Expr) -> sympy.Expr | None:
        if a.is_Number and b.is_Number and b != 0:
            return sympy.Mod(a, b)
        return None

    def fdiff(self, argindex: int = 1) -> sympy.Expr:
        a, b = self.args
        return sympy.S.One if argindex == 1 else -floor(a / b)


class zmul(sympy.Function):  # noqa: N801
    """adjoint * partial, but exactly 0 where the adjoint is 0 (see the module docstring)."""

    nargs = 2

    @classmethod
    def eval(cls, a: sympy.Expr, b: sympy.Expr) -> sympy.Expr | None:
        if a == 0 or b == 0:
            return sympy.S.Zero
        if a == 1:
            return b
        if b == 1:
            return a
        if b == -1:
            return -a
        if a.is_Number and b.is_Number:
            return a * b
        return None

    def fdiff(self, argindex: int = 1) -> sympy.Expr:
        a, b = self.args
        return b if argindex == 1 else a


def _product(a: sympy.Expr, b: sympy.Expr, strong: bool) -> sympy.Expr:
    """adjoint * partial (zmul's strong zero when `strong`), trivial cases done here and the rest
    built without sympy's evaluation machinery."""
    if a == 1:
        return b
    if b == 1:
        return a
    if a.is_Number and b.is_Number:
        return zmul(a, b) if strong else a * b
    return zmul(a, b, evaluate=False) if strong else sympy.Mul(a, b, evaluate=False)


# The namespace the op table's sympy builders receive as `s`.
S = types.SimpleNamespace(
    **{name: getattr(sympy, name) for name in dir(sympy) if not name.startswith("_")},
)
S.floor, S.ceiling, S.sign, S.lgamma, S.mod = floor, ceiling, sign, lgamma, mod
S.expm1, S.log1p, S.log2, S.log10 = expm1, log1p, log2, log10


@dataclass(frozen=True)
class Program:
    """A straight-line program: ``steps[i] = (symbol, expr)``, each over inputs and earlier symbols."""

    inputs: tuple[sympy.Symbol, ...]
    steps: tuple[tuple[sympy.Symbol, sympy.Expr], ...]

    def size(self) -> int:
        """Number of sympy operations in the program (its tree nodes, shared steps counted once)."""
        return sum(sympy.count_ops(expr, visual=False) + 1 for _, expr in self.steps)

    def __str__(self) -> str:
        return "\n".join(f"{s} = {e}" for s, e in self.steps)


@dataclass(frozen=True)
class Derivation:
    """The symbolic reference for one graph.

    Attributes:
        program: every step needed for the expressions below.
        values: node id -> expression of its value (a symbol of `program`, or a number).
        adjoints: node id -> d(output)/d(node) with full-math semantics (cuts are identities).
        cut_adjoints: the same with the cuts treated as constants, or None if the graph has no cut.
        hessian: ``hessian[i][j]`` = d²(output)/d(var i)d(var j), or None (order 1).
        whole: variable name -> gradient from `sympy.diff` of the whole expression, or None.
        method: how the derivatives were obtained, in words (for the report).
        extra_rows: for each further output of `derive(outputs=...)`, its (adjoints, cut_adjoints).
        magnitudes: derives, on first call, (the forward steps plus the magnitude sweeps, and per
            output: node id -> the sum over paths of |adjoint x partial| terms); see `magnitude`.
        cut_hessian: the Hessian with the cuts treated as constants (order 2 with cuts), else None.
        constants: the program's steps that hold constants sympy must not compute with (see
            `_opaque`); `whole` refers to their symbols.
    """

    program: Program
    values: dict[int, sympy.Expr]
    adjoints: dict[int, sympy.Expr]
    cut_adjoints: dict[int, sympy.Expr] | None
    hessian: tuple[tuple[sympy.Expr, ...], ...] | None
    whole: dict[str, sympy.Expr] | None
    method: str
    extra_rows: tuple[tuple[dict[int, sympy.Expr], dict[int, sympy.Expr] | None], ...] = ()
    magnitudes: Callable[[], tuple[Program, tuple[dict[int, sympy.Expr], ...]]] | None = None
    cut_hessian: tuple[tuple[sympy.Expr, ...], ...] | None = None
    constants: tuple[tuple[sympy.Symbol, sympy.Expr], ...] = ()


def const_expr(value: int | float | str) -> sympy.Expr:
    """The sympy number for a constant node (floats exactly as the binary double)."""
    if isinstance(value, str):
        return getattr(sympy, value)  # "pi", "E"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(value)
    if isinstance(value, int):
        return sympy.Integer(value)
    return sympy.Float(value, 53) if value == value else sympy.nan


OPS_COMPARE = {name for name, op in OPS.items() if op.kind == "compare"}
# Constants beyond these are opaque to sympy (see _opaque).
OPAQUE_INT = 1000
OPAQUE_FLOAT = 1e6

_REUSE_VALUE = {"exp", "tanh"}
# Functions whose value (in a partial derivative) can be exactly 0 by selection.
_SELECTORS = (sympy.Piecewise, sympy.Heaviside, sympy.sign, sympy.DiracDelta, sympy.Max, sympy.Min)
_P = tuple(sympy.Symbol(f"p[{i}]", real=True) for i in range(3))
_OUT = sympy.Symbol("out", real=True)


class _Templates:
    """Per op: the expression and its partial derivatives over placeholders, derived once."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, int], tuple[sympy.Expr, tuple[sympy.Expr, ...]]] = {}

    def get(self, opname: str, nargs: int) -> tuple[sympy.Expr, tuple[sympy.Expr, ...]]:
        key = (opname, nargs)
        if key not in self._cache:
            op = OPS[opname]
            args = _P[:nargs]
            expr = op.sympy(S, *args)
            if op.partials is not None:
                partials = tuple(op.partials(S, *args))
            else:
                partials = tuple(sympy.diff(expr, p) for p in args)
            # Reuse the node's own value where the derivative repeats it exactly.  Only
            # structural replacement, and only where it cannot divide by zero later.
            if opname in _REUSE_VALUE:
                partials = tuple(d.xreplace({expr: _OUT}) for d in partials)
            self._cache[key] = (expr, partials)
        return self._cache[key]


_TEMPLATES = _Templates()


def magnitude(expr: sympy.Expr) -> sympy.Expr:
    """The expression with every sum of terms replaced by the sum of their absolute values.

    |magnitude(d)| bounds what rounding inside a kernel computing ``d`` is relative to: for
    gelu'(x) = Phi(x) + x*phi(x) near its root the value is tiny but the terms are not; for
    atanh'(x) = 1/(1 - x**2) near x = 1 the power of a cancelling sum carries its relative error.
    """
    if isinstance(expr, sympy.Add):
        return sympy.Add(*[magnitude(a) for a in expr.args], evaluate=False)
    if isinstance(expr, sympy.Mul):
        return sympy.Mul(*[magnitude(a) for a in expr.args], evaluate=False)
    if isinstance(expr, sympy.Piecewise):
        return sympy.Piecewise(*[(magnitude(e), c) for e, c in expr.args])
    if isinstance(expr, zmul):
        return zmul(magnitude(expr.args[0]), magnitude(expr.args[1]), evaluate=False)
    if isinstance(expr, sympy.Pow) and expr.base.has(sympy.Add):
        # A power's relative error is |p| times its base's, and a sum that cancels (1 - x**2 near
        # x = 1, the derivative of atanh) has relative error u * magnitude / |sum|.
        base, p = expr.args
        return sympy.Mul(sympy.Abs(expr, evaluate=False), sympy.Abs(p, evaluate=False), magnitude(base),
                         sympy.Pow(sympy.Abs(base, evaluate=False), -1, evaluate=False), evaluate=False)
    if expr.is_Symbol or expr.is_Number or isinstance(expr, sympy.NumberSymbol):
        return expr if expr.is_Number and expr.is_extended_nonnegative else sympy.Abs(expr, evaluate=False)
    return sympy.Abs(expr, evaluate=False)


def _substitute(template: sympy.Expr, mapping: dict[sympy.Symbol, sympy.Expr]) -> sympy.Expr:
    """`template` with placeholders replaced.

    With only symbols substituted, the template's structure is already canonical, so it is
    rebuilt without sympy's evaluation (the slow part of a sweep over thousands of nodes);
    with numbers substituted, sympy evaluates, so that ``b*a**(b - 1)`` becomes ``2*a``.
    """
    if not all(v.is_Symbol for v in mapping.values()):
        return template.xreplace(mapping)
    return _rebuild(template, mapping)


def _rebuild(expr: sympy.Expr, mapping: dict[sympy.Symbol, sympy.Expr]) -> sympy.Expr:
    if expr in mapping:
        return mapping[expr]
    if not expr.args or not expr.has(*mapping):
        return expr
    args = [_rebuild(a, mapping) for a in expr.args]
    if isinstance(expr, (sympy.Piecewise, sympy.core.relational.Relational)) or isinstance(expr, sympy.logic.boolalg.Boolean):
        return expr.func(*args)
    return expr.func(*args, evaluate=False)


def _folded_away(expr: sympy.Expr, args: tuple[sympy.Expr, ...], template: sympy.Expr,
                 mapping: dict[sympy.Symbol, sympy.Expr]) -> bool:
    """Whether sympy's evaluation of a node's value lost what IEEE arithmetic keeps.

    ``0*y`` folds to 0, but torch's value is -0.0 for negative y (and 1/(0*y) is then -inf);
    ``log2(0)`` folds to ``zoo``, an infinity without a sign, where torch has -inf.  Such a
    value is built unevaluated instead, so the backends compute it as torch does.  But a
    constant pole that float64 misses because its argument is rounded (``cot(pi)``: finite
    in floats) stays ``zoo``: the output is not a real number there.  (Partial derivatives
    stay folded: they are the exact math.)
    """
    symbols = [isinstance(a, sympy.Symbol) for a in args]
    if all(symbols):
        return False
    if expr.has(sympy.zoo, sympy.nan):
        if any(symbols):
            return True
        from .evaluate import TORCH, _compile  # a constant: what float64 makes of it

        value = float(_compile(_rebuild(template, mapping), TORCH, {})({}))
        return math.isinf(value)
    return expr.is_Number and any(symbols)


def _var_symbol(name: str) -> sympy.Symbol:
    return sympy.Symbol(name, real=True)


def sweep(
    steps: list[tuple[sympy.Symbol, sympy.Expr]],
    output: sympy.Expr,
    partials_of: Callable[[sympy.Symbol, sympy.Expr], Iterable[tuple[sympy.Symbol, sympy.Expr]]],
    prefix: str,
    deadline: Deadline | None = None,
) -> tuple[list[tuple[sympy.Symbol, sympy.Expr]], dict[sympy.Symbol, sympy.Expr]]:
    """One reverse sweep: adjoint steps for `output` over `steps`.

    Args:
        steps: the forward program.
        output: the expression differentiated (a step symbol, an input or a number).
        partials_of: ``(symbol, expr) -> [(dependency, d expr / d dependency), ...]``.
        prefix: names the new adjoint symbols (``a`` gives ``a[k]``).
        deadline: checked at every step (`TimeLimitError` when spent).

    Returns:
        (new steps, adjoint of every symbol reached, inputs included).
    """
    contributions: dict[sympy.Symbol, list[sympy.Expr]] = {}
    adjoint: dict[sympy.Symbol, sympy.Expr] = {}
    new_steps: list[tuple[sympy.Symbol, sympy.Expr]] = []
    # Symbols whose adjoint can be exactly 0 because a branch was not selected (where, relu,
    # max, ...): only their products need zmul's strong zero; plain products are cheaper.
    selectable: set[sympy.Symbol] = set()
    if isinstance(output, sympy.Symbol):
        contributions[output] = [sympy.S.One]
    for index in range(len(steps) - 1, -1, -1):
        if deadline is not None:
            deadline.check("deriving the gradients")
        sym, expr = steps[index]
        terms = contributions.pop(sym, None)
        if not terms:
            continue
        # Sums and products are built unevaluated: sympy's canonicalisation is the slow part of
        # a sweep, and the program is evaluated numerically, so it buys nothing here.  Numbers are
        # added up exactly (x+x+...+x: the adjoint of x is 45,000, not a sum of 45,000 ones).
        total = terms[0] if len(terms) == 1 else _sum(terms)
        if total.is_Number or total.is_Symbol:
            adj = total
        else:
            adj = sympy.Symbol(f"{prefix}[{index}]", real=True)
            new_steps.append((adj, total))
        adjoint[sym] = adj
        if adj == 0:
            continue
        strong = sym in selectable
        for dep, partial in partials_of(sym, expr):
            term = _product(adj, partial, strong)
            contributions.setdefault(dep, []).append(term)
            if strong or partial.has(*_SELECTORS):
                selectable.add(dep)
    for sym, terms in contributions.items():  # inputs: never assigned by a step
        adjoint[sym] = terms[0] if len(terms) == 1 else _sum(terms)
    return new_steps, adjoint


def _sum(terms: list[sympy.Expr]) -> sympy.Expr:
    """The terms added up, unevaluated but for their numbers, which are added exactly."""
    numbers = [t for t in terms if t.is_Number]
    if len(numbers) < 2:
        return sympy.Add(*terms, evaluate=False)
    rest = [t for t in terms if not t.is_Number]
    total = sympy.Add(*numbers)
    if not rest:
        return total
    return sympy.Add(*rest, total, evaluate=False) if total != 0 else (
        rest[0] if len(rest) == 1 else sympy.Add(*rest, evaluate=False))


def _generic_partials(sym: sympy.Symbol, expr: sympy.Expr, known: set[sympy.Symbol]) -> list[tuple[sympy.Symbol, sympy.Expr]]:
    out = []
    for dep in sorted(expr.free_symbols & known, key=str):
        d = sympy.diff(expr, dep)
        if d != 0:
            out.append((dep, d))
    return out


def derive(
    graph: Graph, *, order: int = 1, whole_max_nodes: int = 60, outputs: Sequence[int] | None = None,
    deadline: Deadline | None = None,
) -> Derivation:
    """Derive the symbolic reference for `graph`.

    Args:
        graph: the parsed graph.
        order: 1 for gradients and adjoints, 2 to add the Hessian.
        whole_max_nodes: differentiate the whole expression with `sympy.diff` as a
            second opinion only up to this many graph nodes (it swells beyond).
        outputs: node ids to differentiate, one sweep each (Jacobian rows); the first is the
            primary output (`adjoints`, `hessian`, `whole` refer to it). Default: `graph.output`.
        deadline: the check's time budget, looked at every node and step.

    Returns:
        A `Derivation`.

    Raises:
        TimeLimitError: the deadline passed.
    """
    deadline = deadline or NO_DEADLINE
    inputs = tuple(_var_symbol(v) for v in graph.variables)
    values: dict[int, sympy.Expr] = {}
    steps: list[tuple[sympy.Symbol, sympy.Expr]] = []
    # Per forward step: its node and the expressions of its arguments, for the partials.
    step_info: dict[sympy.Symbol, tuple[int, tuple[sympy.Expr, ...]]] = {}
    relations: dict[int, sympy.Expr] = {}
    const_syms: set[sympy.Symbol] = set()  # constants sympy only sees as symbols (see _opaque)
    for node in graph.nodes:
        k = node.id
        deadline.check("deriving the values")
        if node.op == "var":
            values[k] = _var_symbol(node.name or "")
            continue
        if node.op == "const":
            values[k] = const_expr(node.value)  # type: ignore[arg-type]
            if _opaque(node.value):
                sym = sympy.Symbol(f"v[{k}]", real=True)
                steps.append((sym, values[k]))
                values[k] = sym
                const_syms.add(sym)
            continue
        args = tuple(relations.get(a, values.get(a)) for a in node.args)
        op = OPS[node.op]
        if op.kind == "compare":
            relations[k] = op.sympy(S, *args)
            values[k] = relations[k]
            continue
        if node.op == "where":
            expr = sympy.Piecewise((args[1], args[0]), (args[2], True))
        else:
            template, _ = _TEMPLATES.get(node.op, len(args))
            mapping = dict(zip(_P, args))
            expr = _substitute(template, mapping)
            if _folded_away(expr, args, template, mapping):  # keep what torch computes: the sign of 0*y, -inf for log2(0)
                expr = _rebuild(template, mapping)
        # Every op node gets a step, even x*0 or detach(x): its adjoint is reported.
        sym = sympy.Symbol(f"v[{k}]", real=True)
        steps.append((sym, expr))
        values[k] = sym
        step_info[sym] = (k, args)

    cache: dict[tuple[bool, sympy.Symbol], list[tuple[sympy.Symbol, sympy.Expr]]] = {}

    def node_partials(cut: bool) -> Callable[[sympy.Symbol, sympy.Expr], list[tuple[sympy.Symbol, sympy.Expr]]]:
        def partials(sym: sympy.Symbol, expr: sympy.Expr) -> list[tuple[sympy.Symbol, sympy.Expr]]:
            if sym not in step_info:  # a constant's step
                return []
            k, args = step_info[sym]
            node = graph.nodes[k]
            if cut and node.op in ("detach", "no_grad"):
                return []
            found = cache.get((False, sym))  # the same partials serve every sweep
            if found is not None:
                return found
            if node.op == "where":
                cond = args[0]
                raw = [(args[1], sympy.Piecewise((1, cond), (0, True))), (args[2], sympy.Piecewise((0, cond), (1, True)))]
            else:
                _, templates = _TEMPLATES.get(node.op, len(args))
                mapping = dict(zip(_P, args))
                mapping[_OUT] = sym
                raw = [(a, _substitute(d, mapping)) for a, d in zip(args, templates)]
            found = [(a, d) for a, d in raw if isinstance(a, sympy.Symbol) and d != 0 and a not in const_syms]
            cache[(False, sym)] = found
            return found

        return partials

    def adjoints_for(output: int, cut: bool, prefix: str) -> tuple[list[tuple[sympy.Symbol, sympy.Expr]], dict[int, sympy.Expr]]:
        new_steps, adj_map = sweep(steps, values[output], node_partials(cut), prefix, deadline)
        adj = {k: adj_map.get(v, sympy.S.Zero) if isinstance(v, sympy.Symbol) else sympy.S.Zero
               for k, v in values.items() if graph.depends_on_vars[k] and graph.nodes[k].op not in OPS_COMPARE}
        return new_steps, adj

    all_steps = list(steps)
    rows: list[tuple[dict[int, sympy.Expr], dict[int, sympy.Expr] | None]] = []
    for i, output in enumerate(outputs if outputs is not None else (graph.output,)):
        tag = "" if i == 0 else f"{i}:"
        adj_steps, adj = adjoints_for(output, False, f"a{tag}")
        all_steps += adj_steps
        cut_adj = None
        if graph.has_cuts:
            cut_steps, cut_adj = adjoints_for(output, True, f"c{tag}")
            all_steps += cut_steps
        rows.append((adj, cut_adj))
    (adjoints, cut_adjoints), extra_rows = rows[0], tuple(rows[1:])

    @functools.cache
    def magnitudes() -> tuple[Program, tuple[dict[int, sympy.Expr], ...]]:
        """Magnitude sweeps (|terms| in every partial), derived when the detailed test needs them."""
        mag_cache: dict[sympy.Symbol, list[tuple[sympy.Symbol, sympy.Expr]]] = {}

        def mag_partials(sym: sympy.Symbol, expr: sympy.Expr) -> list[tuple[sympy.Symbol, sympy.Expr]]:
            if sym not in step_info:
                return []
            if sym not in mag_cache:
                k, args = step_info[sym]
                kernel = OPS[graph.nodes[k].op].kernel if graph.nodes[k].op in OPS else None
                if kernel is not None:  # the partials as torch's backward computes them (see ops.Op.kernel)
                    forms = kernel(S, sym, *args)
                    mag_cache[sym] = [(a, magnitude(d)) for a, d in zip(args, forms)
                                      if isinstance(a, sympy.Symbol) and a not in const_syms]
                else:
                    mag_cache[sym] = [(a, magnitude(d)) for a, d in node_partials(False)(sym, expr)]
            return mag_cache[sym]

        mag_steps: list[tuple[sympy.Symbol, sympy.Expr]] = []
        mag_rows: list[dict[int, sympy.Expr]] = []
        for i, output in enumerate(outputs if outputs is not None else (graph.output,)):
            new_steps, mag_map = sweep(steps, values[output], mag_partials, f"m{'' if i == 0 else f'{i}:'}", deadline)
            mag_steps += new_steps
            mag_rows.append({k: mag_map.get(v, sympy.S.Zero) if isinstance(v, sympy.Symbol) else sympy.S.Zero
                             for k, v in values.items() if k in adjoints})
        return Program(inputs, tuple(steps + mag_steps)), tuple(mag_rows)

    adj_steps = [st for st in all_steps[len(steps):] if str(st[0]).startswith("a[")]
    hessian = cut_hessian = None
    if order >= 2:
        hessian, hess_steps = _hessian(graph, inputs, steps + adj_steps, adjoints, step_info, node_partials(False),
                                       deadline, const_syms=const_syms)
        all_steps += hess_steps
        if cut_adjoints is not None:  # what autograd computes when it treats the cuts as constants
            cut_steps = [st for st in all_steps[len(steps):] if str(st[0]).startswith("c[")]
            cut_hessian, more = _hessian(graph, inputs, steps + cut_steps, cut_adjoints, step_info,
                                         node_partials(True), deadline, prefix="k", const_syms=const_syms)
            all_steps += more
    method = f"reverse sweep over the graph ({len(step_info)} nodes, {len(all_steps)} program steps)"
    if extra_rows:
        method = method.replace("reverse sweep", f"{len(rows)} reverse sweeps (one per output element)")
    # Steps that sympy folded into an opaque number (10**20 from 10 and 20, zoo from 1/0) are
    # opaque constants for the second opinion too.
    opaque = const_syms | {sym for sym, expr in steps if not expr.free_symbols and _opaque_number(expr)}
    whole = None
    if not graph.variables:
        method += "; no second opinion (no variables)"
    elif len(graph.nodes) <= whole_max_nodes:
        whole, why = whole_expression_gradient(graph, inputs, values, steps, opaque, deadline)
        method += "; second opinion: sympy.diff of the whole expression" if whole else f"; no second opinion ({why})"
    else:
        method += f"; no second opinion (sympy.diff of the whole expression is used up to {whole_max_nodes} nodes)"
    constants = tuple(st for st in steps if st[0] in opaque)
    return Derivation(Program(inputs, tuple(all_steps)), values, adjoints, cut_adjoints, hessian, whole, method,
                      extra_rows, magnitudes, cut_hessian, constants)


def _hessian(
    graph: Graph,
    inputs: tuple[sympy.Symbol, ...],
    program: list[tuple[sympy.Symbol, sympy.Expr]],
    adjoints: dict[int, sympy.Expr],
    step_info: dict[sympy.Symbol, tuple[int, tuple[sympy.Expr, ...]]],
    forward_partials: Callable[[sympy.Symbol, sympy.Expr], list[tuple[sympy.Symbol, sympy.Expr]]],
    deadline: Deadline,
    prefix: str = "h",
    const_syms: set[sympy.Symbol] = frozenset(),  # type: ignore[assignment]
) -> tuple[tuple[tuple[sympy.Expr, ...], ...], list[tuple[sympy.Symbol, sympy.Expr]]]:
    """Second derivatives: one more reverse sweep over the gradient program per variable.

    `prefix` names the new symbols (``h0[...]``, ``gh[0]``), so that two Hessians can share a program.
    """
    known = ({s for s, _ in program} | set(inputs)) - const_syms

    def partials(sym: sympy.Symbol, expr: sympy.Expr) -> list[tuple[sympy.Symbol, sympy.Expr]]:
        if sym in step_info:
            return forward_partials(sym, expr)
        return _generic_partials(sym, expr, known)

    rows = []
    new_steps: list[tuple[sympy.Symbol, sympy.Expr]] = []
    for i, name in enumerate(graph.variables):
        g = adjoints.get(graph.var_ids[name], sympy.S.Zero)
        if not isinstance(g, sympy.Symbol):
            g_steps: list[tuple[sympy.Symbol, sympy.Expr]] = []
            if g.free_symbols & known:  # an input's adjoint is an inline sum: give it a step
                sym = sympy.Symbol(f"g{prefix}[{i}]" if prefix != "h" else f"g[{i}]", real=True)
                g_steps = [(sym, g)]
                g = sym
            else:
                rows.append(tuple(sympy.S.Zero for _ in inputs))
                continue
        else:
            g_steps = []
        steps_i, adj = sweep(program + g_steps, g, partials, f"{prefix}{i}", deadline)
        new_steps += g_steps + steps_i
        rows.append(tuple(adj.get(x, sympy.S.Zero) for x in inputs))
    return tuple(rows), new_steps


def _opaque(value: int | float | str | None) -> bool:
    """Whether sympy should see this constant as a symbol rather than a number.

    Exact arithmetic on large integers can take unbounded time in sympy (``digamma(10**20)``
    sums a harmonic series, ``acos(n)`` factors ``1 - n**2``), and huge, tiny or infinite floats
    meet slow or failing paths (``softplus(1e30)``, ``max(x, 1e400)``).  Such a constant gets a
    program step of its own and sympy only ever sees its symbol; the numbers are computed by
    `evaluate`, in float64 or mpmath.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if isinstance(value, int):
        return abs(value) > OPAQUE_INT
    return not math.isfinite(value) or abs(value) > OPAQUE_FLOAT or 0 < abs(value) < 1 / OPAQUE_FLOAT


def _opaque_number(e: sympy.Expr) -> bool:
    """`_opaque` for a folded step's constant value (any constant that is not a small rational or float)."""
    if e.is_Integer:
        return abs(e) > OPAQUE_INT
    if e.is_Rational:
        return abs(e.p) > OPAQUE_INT or e.q > OPAQUE_INT
    if e.is_Float:
        return _opaque(float(e)) if e.is_finite else True
    return True  # zoo, nan, oo, and constant expressions such as digamma(10**20) or cos(3)
