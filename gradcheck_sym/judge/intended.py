"""Intended deviations: a straight-through estimator, a gradient reversal, a surrogate gradient, a cut
that is meant — declared, so they are shown as intended while everything else is still checked.

A declaration maps a *target* to a *behaviour*:

* target: a custom `torch.autograd.Function` (the class, or its name), or a cut's place
  (``"model.py:12"`` or the line number ``12``);
* behaviour, for a Function: ``"straight-through"`` (the gradient passes unchanged: ``dy/dx := 1``),
  ``"scale:0.5"`` (``:= 0.5``), ``"reverse"`` / ``"reverse:0.1"`` (gradient reversal: ``:= -1`` or
  ``-0.1``), ``"surrogate:<expression in x>"`` (``dy/dx :=`` that expression of the Function's input,
  e.g. ``"surrogate:1/(1 + abs(x))**2"``); the behaviour applies to the Function's first tensor input
  (its other inputs get no gradient) and its output must have that input's shape;
* behaviour, for a cut: ``"cut"`` (the value is meant to be a constant).

The judge then compares autograd with a third reference — the program with each declared Function
replaced by its declared derivative and each declared cut kept as a constant: where autograd matches
it and not the math, the deviation is shown as `intended` (info, with the numbers).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping

import sympy

from ..errors import InputError
from ..ir.program import Eqn, Program, Var
from ..ops.ew import P as X, EwFn

__all__ = ["Declaration", "parse_intended", "declared_program", "declared", "BEHAVIOURS", "FUNCTION_HINTS"]

BEHAVIOURS = "straight-through, scale:F, reverse[:F], surrogate:EXPR (for a Function) or cut (for a cut)"
# Behaviours tried, undeclared, to recognise a common pattern in a mismatch's message.
FUNCTION_HINTS = (("straight-through", 1.0), ("reverse", -1.0))


@dataclass(frozen=True)
class Declaration:
    """One intended deviation (see the module docstring)."""

    target: str
    behaviour: str
    factor: float = 1.0
    surrogate: Any = None  # an EwFn of one argument: the declared derivative
    text: str = ""

    @property
    def is_cut(self) -> bool:
        return self.behaviour == "cut"

    def matches_cut(self, file: str, line: int) -> bool:
        target = self.target
        if target.isdigit():
            return int(target) == line
        name, _, num = target.rpartition(":")
        return num.isdigit() and int(num) == line and os.path.basename(file) == os.path.basename(name)


def parse_intended(intended: Any) -> list[Declaration]:
    """The declarations, validated (an `InputError` names what is wrong and the accepted forms)."""
    if intended is None:
        return []
    if not isinstance(intended, Mapping):
        raise InputError(f"intended must map a Function or a cut's place to a behaviour, not "
                         f"{type(intended).__name__}", f"e.g. intended={{'STESign': 'straight-through'}}; "
                         f"behaviours: {BEHAVIOURS}")
    out = []
    for key, value in intended.items():
        if isinstance(key, type):
            target = key.__name__
        elif isinstance(key, int) and not isinstance(key, bool):
            target = str(key)
        elif isinstance(key, str) and key.strip():
            target = key.strip()
        else:
            raise InputError(f"intended: {key!r} is not a Function, a Function's name or a cut's place",
                             "use the class, its name, 'file.py:LINE' or a line number")
        if not isinstance(value, str):
            raise InputError(f"intended[{target!r}]: the behaviour must be a string, not {value!r}",
                             f"behaviours: {BEHAVIOURS}")
        out.append(_behaviour(target, value.strip()))
    return out


def _behaviour(target: str, text: str) -> Declaration:
    kind, _, arg = text.partition(":")
    kind = kind.strip().lower()
    if kind in ("straight-through", "ste", "identity", "pass-through"):
        return Declaration(target, "straight-through", 1.0, text=text)
    if kind in ("scale", "reverse"):
        try:
            f = float(arg) if arg.strip() else 1.0
        except ValueError:
            raise InputError(f"intended[{target!r}] = {text!r}: {arg.strip()!r} is not a number",
                             "write e.g. 'scale:0.5' or 'reverse:0.1'") from None
        if kind == "scale" and not arg.strip():
            raise InputError(f"intended[{target!r}] = {text!r}: scale needs a factor", "write e.g. 'scale:0.5'")
        return Declaration(target, kind, f if kind == "scale" else -f, text=text)
    if kind == "surrogate":
        return Declaration(target, "surrogate", 1.0, _surrogate(target, arg), text)
    if kind in ("cut", "stop-gradient", "constant"):
        return Declaration(target, "cut", text=text)
    raise InputError(f"intended[{target!r}] = {text!r}: unknown behaviour", f"behaviours: {BEHAVIOURS}")


def _surrogate(target: str, text: str) -> EwFn:
    from ..front.parse import parse
    from ..reference.symbolic import derive

    graph = parse(text, as_variables={"x"})
    if any(v != "x" for v in graph.variables):
        raise InputError(f"intended[{target!r}]: the surrogate derivative may use only x (the input), not "
                         f"{', '.join(v for v in graph.variables if v != 'x')}")
    d = derive(graph, whole_max_nodes=0)
    steps = dict(d.program.steps)
    expr = d.values[graph.output]
    for _ in range(len(steps) + 1):
        expr = expr.xreplace(steps)
    expr = expr.xreplace({sympy.Symbol("x", real=True): X[0]})
    return EwFn(f"surrogate {text}", X[0] * 0, 1, partials=[expr])


def declared_program(program: Program, call_of: dict[int, int], sites: Any,
                     decls: list[Declaration]) -> tuple[Program, list[str]]:
    """The program with each declared Function call replaced by its declared derivative.

    Returns:
        (the program, problems: declarations that could not be applied, in words).
    """
    funcs = {d.target: d for d in decls if not d.is_cut}
    problems: list[str] = []
    if not funcs:
        return program, problems
    calls: dict[int, list[int]] = {}
    for k, e in enumerate(program.eqns):
        site = sites[e.site] if e.site >= 0 else None
        if site is not None and site.custom in funcs and k in call_of:
            calls.setdefault(call_of[k], []).append(k)
    replaced: dict[int, Eqn | None] = {}
    used_after = _uses(program)
    for call, idx in calls.items():
        decl = funcs[sites[program.eqns[idx[0]].site].custom]
        inside = {v.id for k in idx for v in program.eqns[k].outputs}
        ins = [a for k in idx for a in program.eqns[k].inputs if isinstance(a, Var) and a.id not in inside]
        outs = [v for k in idx for v in program.eqns[k].outputs if v.id in used_after(idx)]
        if not ins or len(outs) != 1 or tuple(ins[0].shape) != tuple(outs[0].shape):
            problems.append(f"the declaration {decl.target}: {decl.text} could not be applied (it needs one output "
                            "with the shape of the Function's first input)")
            continue
        fn = decl.surrogate if decl.surrogate is not None else EwFn(
            f"{decl.behaviour} {decl.factor:g}", X[0] * 0, 1, partials=[sympy.Float(decl.factor, 53)])
        # The call becomes one equation out = fn(x): the sweep reads the output's value from the
        # environment (unchanged) and takes fn's declared derivative.
        for k in idx:
            replaced[k] = None
        replaced[idx[-1]] = Eqn("ew", (ins[0],), (outs[0],), {"fn": fn}, program.eqns[idx[-1]].site)
    eqns = tuple(e if k not in replaced else replaced[k] for k, e in enumerate(program.eqns)
                 if k not in replaced or replaced[k] is not None)
    return Program(program.inputs, program.input_names, eqns, program.outputs, program.consts,
                   program.sites), problems


def declared(program: Program, call_of: dict[int, int], sites: Any,
             decls: list[Declaration]) -> tuple[Program, Any, list[str]]:
    """What autograd should compute by the declarations: (the program with each declared Function call replaced,
    the `sweep` cut predicate of the declared cuts — False when none is declared —, problems in words)."""
    prog, problems = declared_program(program, call_of, sites, decls)
    cuts = [d for d in decls if d.is_cut]

    def declared_cut(e: Eqn) -> bool:
        site = sites[e.site] if e.site >= 0 else None
        return site is not None and any(d.matches_cut(site.file, site.line) for d in cuts)

    return prog, (declared_cut if cuts else False), problems


def _uses(program: Program) -> Any:
    """used_after(indices) -> ids of variables made in those equations and used outside them."""
    outputs = {v.id for v in program.outputs if isinstance(v, Var)}

    def used_after(idx: list[int]) -> set[int]:
        inside = set(idx)
        made = {v.id for k in idx for v in program.eqns[k].outputs}
        used = {a.id for k, e in enumerate(program.eqns) if k not in inside for a in e.inputs if isinstance(a, Var)}
        return (used | outputs) & made

    return used_after

