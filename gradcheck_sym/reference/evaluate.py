"""Numbers from the symbolic program: vectorised in torch, or per point in mpmath.

`compile_program` turns each step's sympy expression into nested Python
closures once (no `lambdify`, no generated source: sympy's own printers crash
on constants such as ``cos(3)`` and on ``Heaviside``/``Max``, see
shared/reference/sympy-torch-pitfalls.md).  The closures then run on a whole
batch of points in torch float64, or on one point at a time in mpmath at high
precision for the points whose verdict needs it.

Real semantics throughout: where the real function is undefined the result is
NaN, as in torch (mpmath would return a complex number); a constant sympy could
only write as a non-real number (``sqrt(-2)``, ``AccumBounds(-1, 1)`` for
``sin(oo)``) is NaN too.  Division by zero, poles and overflow give +-inf as in
IEEE arithmetic; no evaluation raises.  The mpmath backend has its own
`mpmath.MPContext` per check (`precise.mpmath_backend`), so concurrent checks
never share a working precision.
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

import sympy
import torch

from ..budget import Deadline
from .backend import EXTRA_FUNCS, MP_LOCK, Backend, register_function, special_number
from .symbolic import Program
from .torch_backend import TORCH, _t_pow_for

__all__ = ["Backend", "TORCH", "compile_program", "real_symbol", "CompiledProgram", "UnevaluableError",
           "special_number", "register_function", "EXTRA_FUNCS", "MP_LOCK"]

Env = dict[sympy.Symbol, Any]
Fn = Callable[[Env], Any]


class UnevaluableError(Exception):
    """The program contains a sympy object with no numeric rule (a bug, or an unevaluated derivative)."""


def _is_constant(expr: sympy.Expr) -> bool:
    """A number, a named constant (pi), or a non-real constant sympy cannot evaluate further."""
    return (expr.is_Number or isinstance(expr, sympy.NumberSymbol) or expr in (sympy.zoo, sympy.nan, sympy.I)
            or isinstance(expr, sympy.AccumBounds))


@functools.lru_cache(maxsize=1 << 15)
def real_symbol(name: str) -> sympy.Symbol:
    """``Symbol(name, real=True)``, remembered: sympy's own cache keeps 1,000 symbols, and a check of a
    10,000-node graph names its 10,000 compared quantities twice (building a real symbol costs ~6 us)."""
    return sympy.Symbol(name, real=True)


# ---------------------------------------------------------------- compiler
def _compile(expr: sympy.Expr, backend: Backend, consts: dict[sympy.Expr, Any],
             positions: dict[sympy.Symbol, int] | None = None) -> Fn:
    """`expr` as a function of an environment (symbol -> value).

    With `positions` (symbol -> index), the function takes the sequence of its arguments in that order instead:
    an elementwise rule's formula runs for every op a script makes, and a dict built and a symbol hashed per
    argument were a fifth of its cost.
    """
    torch_backend = backend is TORCH

    def walk(expr: sympy.Expr) -> Fn:
        if isinstance(expr, sympy.Symbol):
            if positions is not None and expr in positions:
                i = positions[expr]
                return lambda env: env[i]
            return lambda env: env[expr]
        if _is_constant(expr):
            if expr not in consts:
                consts[expr] = backend.const(expr)
            value = consts[expr]
            return lambda env: value
        if expr is sympy.true or expr is sympy.false:
            value = bool(expr)
            return lambda env: value
        if isinstance(expr, sympy.Add):
            # a + (-1)*b is computed as a - b: one kernel instead of two.
            plus = [a for a in expr.args if not _negated(a)]
            minus = [_negated(a) for a in expr.args if _negated(a)]
            add = backend.add
            if plus and minus:
                p_parts = [walk(a) for a in plus]
                m_parts = [walk(a) for a in minus]
                sub = backend.sub
                if torch_backend and len(p_parts) == len(m_parts) == 1:
                    p0, m0 = p_parts[0], m_parts[0]
                    return lambda env: p0(env) - m0(env)
                return lambda env: sub(add([p(env) for p in p_parts]), add([m(env) for m in m_parts]))
            parts = [walk(a) for a in expr.args]
            if torch_backend and len(parts) == 2:  # (what the reduction does with two terms)
                p0, p1 = parts
                return lambda env: torch.add(p0(env), p1(env))
            return lambda env: add([p(env) for p in parts])
        if isinstance(expr, sympy.Mul):
            # a * b**-1 is computed as a / b: one kernel instead of a reciprocal and a product.
            num = [a for a in expr.args if not (isinstance(a, sympy.Pow) and a.exp == -1)]
            den = [a.base for a in expr.args if isinstance(a, sympy.Pow) and a.exp == -1]
            mul, div = backend.mul, backend.div
            if num and den:
                n_parts = [walk(a) for a in num]
                d_parts = [walk(a) for a in den]
                return lambda env: div(mul([p(env) for p in n_parts]), mul([d(env) for d in d_parts]))
            parts = [walk(a) for a in expr.args]
            if torch_backend and len(parts) == 2:
                p0, p1 = parts
                return lambda env: torch.mul(p0(env), p1(env))
            return lambda env: mul([p(env) for p in parts])
        if isinstance(expr, sympy.Pow):
            base = walk(expr.base)
            exponent_expr = expr.exp
            exponent = walk(exponent_expr)
            if torch_backend:  # the exponent's case decided once, not at every call
                pw2 = _t_pow_for(exponent_expr)
                return lambda env: pw2(base(env), exponent(env))
            pw = backend.pow
            return lambda env: pw(base(env), exponent_expr, exponent(env))
        if isinstance(expr, sympy.Piecewise):
            pieces = [(walk(e), walk(c)) for e, c in expr.args]
            where = backend.where
            if len(pieces) == 1:
                return pieces[0][0]

            def piecewise(env: Env) -> Any:
                # The last piece's condition is True (as our builder writes it); fold from the end.
                out = pieces[-1][0](env)
                for value, cond in reversed(pieces[:-1]):
                    out = where(cond(env), value(env), out)
                return out

            return piecewise
        fn = backend.funcs.get(type(expr)) or backend.extra(type(expr))
        if fn is None:
            for cls, f in backend.funcs.items():  # subclasses, e.g. sympy's floor for ours
                if isinstance(expr, cls):
                    fn = f
                    break
        if fn is None:
            raise UnevaluableError(f"no numeric rule for {type(expr).__name__} in {expr}")
        args = [walk(a) for a in expr.args]
        if len(args) == 1:
            a0 = args[0]
            return lambda env: fn(a0(env))
        return lambda env: fn(*[a(env) for a in args])

    return walk(expr)


def _negated(expr: sympy.Expr) -> sympy.Expr | None:
    """b for a term written (-1)*b, else None."""
    if isinstance(expr, sympy.Mul) and expr.args and expr.args[0] == -1:
        rest = expr.args[1:]
        return rest[0] if len(rest) == 1 else sympy.Mul(*rest, evaluate=False)
    return None


@dataclass
class CompiledProgram:
    """A program compiled for one backend; `run` evaluates it on an environment of inputs."""

    backend: Backend
    steps: list[tuple[sympy.Symbol, Fn]]
    frees: list[list[sympy.Symbol]]
    n_program: int = 0  # the program's own steps come first; the extras after them
    program_last: dict[sympy.Symbol, int] = field(default_factory=dict)
    source: tuple[tuple[sympy.Symbol, sympy.Expr], ...] = ()  # the program's own steps, as given
    # A numeric sweep run before the steps (`numeric.NumericProgram`): (env, every value wanted, deadline).
    prelude: Callable[[Env, bool, Deadline | None], None] | None = None
    work: int = 0  # the prelude's work, in program steps (for the high-precision budget)

    def run(self, env: Env, keep: set[sympy.Symbol] | None = None, deadline: Deadline | None = None) -> Env:
        """Evaluate every step into `env` (updated and returned).

        Args:
            env: values of the inputs.
            keep: symbols to keep; others are dropped after their last use to bound
                memory (None keeps everything).
            deadline: checked before every step (raises `TimeLimitError` when spent).

        Raises:
            TimeLimitError: the deadline passed.
        """
        if self.prelude is not None:
            self.prelude(env, keep is None, deadline)
        for i, (sym, fn) in enumerate(self.steps):
            if deadline is not None:
                deadline.check("evaluating the reference")
            env[sym] = fn(env)
            if keep is not None:
                for dead in self.frees[i]:
                    if dead not in keep:
                        env.pop(dead, None)
        return env


def compile_program(program: Program, backend: Backend, extra: dict[str, sympy.Expr] | None = None,
                    deadline: Deadline | None = None, base: CompiledProgram | None = None) -> CompiledProgram:
    """Compile `program` (plus named `extra` expressions as final steps) for `backend`.

    Args:
        program: the straight-line program.
        backend: torch or an mpmath backend.
        extra: name -> expression, evaluated after the program as ``extra[name]``.
        deadline: looked at every step.
        base: a compilation of the same program for the same backend: its steps are reused
            and only `extra` is compiled (two programs that differ in their extras); or of a program
            this one starts with: those steps are reused (the magnitude sweep after the forward).

    Raises:
        UnevaluableError: a sympy object without a numeric rule.
        TimeLimitError: the deadline passed.
    """
    # The float64 compilation of a program checked before (the same expression again, at other points,
    # in a test suite or a loop) is reused: the closures are pure functions of the program's text.
    key = None
    if backend is TORCH:
        key = (tuple(program.steps), tuple((extra or {}).items()),
               None if base is None else (len(base.steps), base.n_program))
        with _COMPILED_LOCK:
            found = _COMPILED.get(key)
            if found is not None:
                _COMPILED[key] = _COMPILED.pop(key)  # most recently used last
                return found
    compiled = _compile_program(program, backend, extra, deadline, base)
    if key is not None:
        with _COMPILED_LOCK:
            _COMPILED[key] = compiled
            while len(_COMPILED) > _COMPILED_MAX:
                _COMPILED.pop(next(iter(_COMPILED)))
    return compiled


_COMPILED: dict[Any, CompiledProgram] = {}
_COMPILED_MAX = 16
_COMPILED_LOCK = threading.Lock()


def _compile_program(program: Program, backend: Backend, extra: dict[str, sympy.Expr] | None,
                     deadline: Deadline | None, base: CompiledProgram | None) -> CompiledProgram:
    consts: dict[sympy.Expr, Any] = {}
    if base is not None and base.backend is backend and base.n_program == len(program.steps) and \
            base.source == tuple(program.steps):
        steps = list(base.steps[: base.n_program])
        last = dict(base.program_last)
    else:
        shared = 0
        if base is not None and base.backend is backend:
            n = min(len(base.source), len(program.steps))
            while shared < n and base.source[shared] == program.steps[shared]:
                shared += 1
        steps = list(base.steps[:shared]) if base is not None and shared else []
        last = {}
        for i, (sym, expr) in enumerate(program.steps):
            if i >= shared:
                if deadline is not None:
                    deadline.check("compiling the reference")
                steps.append((sym, _compile(expr, backend, consts)))
            for s in expr.free_symbols:  # the last use of each symbol: temporaries are dropped after it
                last[s] = i
    program_last = dict(last)
    for name, expr in (extra or {}).items():
        if deadline is not None:
            deadline.check("compiling the reference")
        for s in expr.free_symbols:
            last[s] = len(steps)
        steps.append((real_symbol(f"extra[{name}]"), _compile(expr, backend, consts)))
    frees: list[list[sympy.Symbol]] = [[] for _ in steps]
    for s, i in last.items():
        frees[i].append(s)  # type: ignore[arg-type]
    return CompiledProgram(backend, steps, frees, len(program.steps), program_last, tuple(program.steps))
