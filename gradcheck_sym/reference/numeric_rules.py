"""What `symbolic.derive`'s substitution makes of each node, for the numeric sweep (`numeric`).

derive substitutes each node's arguments into its op's templates (`templates`), and sympy simplifies where
a constant goes in: ``x**0``'s partial is 0 (dropped, where ``0 * 0**-1`` on numbers is NaN), ``hypot(x, 0)``
is ``|x|`` (no overflow at 1e200), ``1 > 2`` decides a ``where``, a constants-only node is computed exactly
(``cot(pi)`` is undefined).  The numeric sweep must compute the same program, so each node gets a `Form`:

* a constants-only node: its folded value (`folded`);
* a comparison sympy decides (``1 > 2``, ``x >= x``), and a ``where`` whose condition it decided (`select`);
* a node with a constant argument: the templates with the constants substituted by sympy, once per
  (op, constants) -- except ``add``/``sub``/``mul``, where a number goes in unchanged (their partials are
  1, -1 or the other argument: the constant itself, a number);
* every other node: its op kind's own templates.

`static` holds the partials that are numbers (sympy numbers, as derive's sums and products of numbers are
exact; 0 is a partial derive drops).  Forms are the same for every backend; `compile_rule` compiles one
for a backend (float64's are shared by every check).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable

import sympy

from ..ir.graph import Graph
from ..ops import OPS
from .evaluate import TORCH, Backend, _compile
from .sweep import _SELECTORS, magnitude as magnitude_of
from .sympy_functions import S
from .templates import _OUT, _P, _TEMPLATES, _folded_away, _opaque, _rebuild, _substitute, const_expr

__all__ = ["COMPARE", "Form", "Rule", "folded_values", "forms", "compile_rule"]

COMPARE = frozenset(name for name, op in OPS.items() if op.kind == "compare")
_PLAIN = frozenset({"add", "sub", "mul"})  # a constant substituted changes nothing but the number in them
_POSITIONS = {**{p: i for i, p in enumerate(_P)}, _OUT: len(_P)}  # a rule reads [p0, p1, p2, out]
_CONDITION = sympy.Symbol("c")  # where's condition, a boolean


@dataclass(frozen=True)
class Form:
    """One node as derive's program has it, for one kind of sweep ("adjoint" or "magnitude").

    Attributes:
        key: what the compiled rule is shared by (the op kind, with the substituted constants if any).
        value: the node's expression over the placeholders (p[0..2]); None when `folded` or `select` says.
        partials: d value / d p[i], over the placeholders and ``out`` (the node's value).
        static: per partial, the sympy number it is, or None (computed per point); 0: no partial.
        folded: a constants-only node's value (a comparison's: true or false).
        select: the argument a where whose condition sympy decided takes.
    """

    key: tuple[Any, ...]
    value: sympy.Basic | None
    partials: tuple[sympy.Expr, ...] = ()
    static: tuple[sympy.Expr | None, ...] = ()
    folded: sympy.Basic | None = None
    select: int | None = None


@dataclass(frozen=True)
class Rule:
    """A `Form` compiled for one backend: `value` and each partial take [p0, p1, p2, out]."""

    value: Callable[[list[Any]], Any]
    partials: tuple[Callable[[list[Any]], Any] | None, ...]  # None: no partial (0, or derive has none)
    selects: tuple[bool, ...]  # whether the partial can be exactly 0 by selection (zmul's strong zero after it)


@functools.cache
def _templates(opname: str, nargs: int, kind: str) -> tuple[sympy.Basic, tuple[sympy.Expr, ...]]:
    """The op kind's expression and partials over placeholders (for "magnitude": the partials as torch's kernel
    computes them, each a sum of absolute values, as derive's magnitudes())."""
    if opname == "where":
        pieces = (sympy.Piecewise((1, _CONDITION), (0, True)), sympy.Piecewise((0, _CONDITION), (1, True)))
        return sympy.S.Zero, (sympy.S.Zero,) + pieces
    op = OPS[opname]
    args = _P[:nargs]
    if op.kind == "compare":
        return op.sympy(S, *args), ()
    template, partials = _TEMPLATES.get(opname, nargs)
    if kind == "magnitude":
        forms = tuple(op.kernel(S, _OUT, *args)) if op.kernel is not None else partials
        partials = tuple(magnitude_of(d) for d in forms)
    return template, partials


@functools.lru_cache(maxsize=4096)
def _substituted(opname: str, nargs: int, kind: str, consts: tuple[tuple[int, str, Any], ...]) -> Form:
    """The templates of `opname` with the constants `consts` ((position, type, value)) substituted by sympy,
    as derive substitutes them (the value kept as IEEE arithmetic has it where sympy's folding would lose it)."""
    args: list[sympy.Expr] = list(_P[:nargs])
    for i, _, v in consts:
        args[i] = const_expr(v)
    mapping: dict[sympy.Symbol, sympy.Expr] = dict(zip(_P, args))
    template, partials = _TEMPLATES.get(opname, nargs)
    value = _substitute(template, mapping)
    if _folded_away(value, tuple(args), template, mapping):
        value = _rebuild(template, mapping)
    mapping[_OUT] = _OUT
    subs = tuple(_substitute(d, mapping) for d in partials)
    if kind == "magnitude":
        op = OPS[opname]
        subs = tuple(magnitude_of(d) for d in (tuple(op.kernel(S, _OUT, *args)) if op.kernel is not None else subs))
    key = (opname, nargs, kind, consts)
    return Form(key, value, subs, tuple(d if d.is_Number else None for d in subs))


def _constant(graph: Graph, a: int) -> bool:
    node = graph.nodes[a]
    return node.op == "const" and not _opaque(node.value)


def _folded(graph: Graph, node: Any) -> sympy.Basic | None:
    """A node whose arguments are all constants, as derive's substitution computes it; else None."""
    if node.op == "const":
        return const_expr(node.value) if not _opaque(node.value) else None
    if not node.args or not all(_constant(graph, a) for a in node.args) or node.op == "where":
        return None
    args = tuple(const_expr(graph.nodes[a].value) for a in node.args)  # type: ignore[arg-type]
    if node.op in COMPARE:
        return OPS[node.op].sympy(S, *args)
    template, _ = _TEMPLATES.get(node.op, len(args))
    mapping = dict(zip(_P, args))
    expr = _substitute(template, mapping)
    return _rebuild(template, mapping) if _folded_away(expr, args, template, mapping) else expr


def _decided(graph: Graph, node: Any) -> bool | None:
    """A comparison sympy decides for every real value (``x > x``, ``1 > 2``): its truth; else None."""
    a, b = node.args
    pa = const_expr(graph.nodes[a].value) if _constant(graph, a) else _P[0]  # type: ignore[arg-type]
    pb = (const_expr(graph.nodes[b].value) if _constant(graph, b)  # type: ignore[arg-type]
          else pa if b == a else _P[1])
    rel = OPS[node.op].sympy(S, pa, pb)
    return bool(rel) if rel in (sympy.true, sympy.false) else None


def _static(node: Any, graph: Graph, partials: tuple[sympy.Expr, ...]) -> tuple[sympy.Expr | None, ...]:
    """The partials of an op kind's own templates that are numbers at this node (add's 1, mul's constant)."""
    out: list[sympy.Expr | None] = []
    for d in partials:
        if d.is_Number:
            out.append(d)
            continue
        inner = d.args[0] if isinstance(d, sympy.Abs) else d  # (a magnitude's |p[i]|)
        slot = _POSITIONS.get(inner)
        if slot is not None and slot < len(node.args) and _constant(graph, node.args[slot]):
            e = const_expr(graph.nodes[node.args[slot]].value)  # type: ignore[arg-type]
            out.append((abs(e) if inner is not d else e) if e.is_Number else None)
        else:
            out.append(None)
    return tuple(out)


def folded_values(graph: Graph) -> list[sympy.Basic | None]:
    """Per node, its value if derive folds it (its arguments all constants; see `_folded`), else None."""
    return [_folded(graph, node) for node in graph.nodes]


def forms(graph: Graph, kind: str, folded: list[sympy.Basic | None]) -> list[Form | None]:
    """Per node, its `Form` for the sweep of `kind` (None for a variable); `folded` from `folded_values`."""
    out: list[Form | None] = []
    decided: dict[int, bool] = {}
    for node in graph.nodes:
        if node.op == "var":
            out.append(None)
            continue
        folded_value = folded[node.id]
        if node.op in COMPARE and folded_value is not None:  # (two constants: 1 > 2 decides its where)
            decided[node.id] = bool(folded_value)
        if folded_value is not None or node.op == "const":  # (an opaque constant: its value computed by the backend)
            out.append(Form(("const",), None, folded=folded_value))
            continue
        if node.op in COMPARE and (truth := _decided(graph, node)) is not None:
            decided[node.id] = truth
            out.append(Form(("const",), None, folded=sympy.true if truth else sympy.false))
            continue
        if node.op == "where" and node.args[0] in decided:
            pick = 1 if decided[node.args[0]] else 2
            static = tuple(sympy.S.One if j == pick else sympy.S.Zero for j in range(3))
            out.append(Form(("where", pick), None, (sympy.S.Zero,) * 3, static, select=pick))
            continue
        consts = tuple((i, type(graph.nodes[a].value).__name__, graph.nodes[a].value)
                       for i, a in enumerate(node.args) if _constant(graph, a))
        if consts and node.op not in _PLAIN and node.op not in COMPARE and node.op != "where":
            out.append(_substituted(node.op, len(node.args), kind, consts))
        elif consts:  # add, sub, mul with a constant: the op's own form, the constant its partial
            own = _own(node.op, len(node.args), kind)
            out.append(Form(own.key, own.value, own.partials, _static(node, graph, own.partials)))
        else:
            out.append(_own(node.op, len(node.args), kind))
    return out


@functools.cache
def _own(opname: str, nargs: int, kind: str) -> Form:
    """An op kind's own form (no constant argument): one object for all its nodes."""
    value, partials = _templates(opname, nargs, kind)
    return Form((opname, nargs, kind), value, partials, tuple(d if d.is_Number else None for d in partials))


def compile_rule(form: Form, backend: Backend, consts: dict[sympy.Expr, Any], rules: dict[Any, Rule]) -> Rule:
    """`form` compiled for `backend`, once per `form.key` in `rules` (float64's are shared by every check)."""
    rule = rules.get(form.key)
    if rule is None:
        rule = rules[form.key] = _torch_rule(form) if backend is TORCH else _compile_form(form, backend, consts)
    return rule


@functools.lru_cache(maxsize=8192)
def _torch_rule(form: Form) -> Rule:
    return _compile_form(form, TORCH, {})  # (asked once per key and sweeper: a Form hashed that rarely is cheap)


def _compile_form(form: Form, backend: Backend, consts: dict[sympy.Expr, Any]) -> Rule:
    if form.select is not None:  # a where sympy decided: its chosen argument (static partial 1)
        pick = form.select
        return Rule(lambda a: a[pick], tuple((lambda a: None) if j == pick else None for j in range(3)),
                    (False,) * 3)
    if form.key[0] == "where":
        one, zero, where = backend.const(sympy.S.One), backend.const(sympy.S.Zero), backend.where
        return Rule(lambda a: where(a[0], a[1], a[2]),
                    (None, lambda a: where(a[0], one, zero), lambda a: where(a[0], zero, one)), (False, True, True))
    assert form.value is not None
    partials = tuple(None if d == 0 else _compile(d, backend, consts, _POSITIONS) for d in form.partials)
    return Rule(_compile(form.value, backend, consts, _POSITIONS), partials,
                tuple(d.has(*_SELECTORS) for d in form.partials))
