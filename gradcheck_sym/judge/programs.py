"""The reference side of one check: the symbolic program with everything the judge reads from it.

`References` assembles, once per check, the expressions the engine compares and inspects
(each quantity's reference and cut reference, the adjoint each cut drops, the outputs, the
arguments of ops with kinks), compiles them for torch float64 — over every point of a chunk
for the inputs' gradients, over the leading `tolerance.NODE_POINTS` points for intermediate
nodes — and, on demand, the magnitude sweep, the second opinion and the program in
high-precision mpmath, within a budget of work and time.
"""

from __future__ import annotations

import math
import time
from typing import Any, Sequence

import sympy
import torch

from ..budget import BudgetExceeded, Deadline, run_bounded
from ..ir.graph import Graph
from ..ops import OPS
from ..reference.evaluate import TORCH, Backend, CompiledProgram, UnevaluableError, compile_program, real_symbol
from ..reference.mp_backend import mpmath_backend
from ..reference.numeric import NumericProgram
from ..reference.symbolic import Derivation, Program
from . import tolerance as tl
from .compare import Quantity, full
from .subject import Region

__all__ = ["References"]

Env = dict[sympy.Symbol, Any]


_sym = real_symbol


def _compile(program: Program, backend: Backend, extra: dict[str, sympy.Expr], deadline: Deadline | None,
             base: CompiledProgram | None = None) -> CompiledProgram:
    """`compile_program`, or a numeric derivation's sweep with the extras after it."""
    if isinstance(program, NumericProgram):
        return program.compile(backend, extra, deadline)
    return compile_program(program, backend, extra, deadline, base=base)


class References:
    """The compiled reference programs of one check (see the module docstring)."""

    def __init__(self, graph: Graph, derivation: Derivation, quantities: Sequence[Quantity],
                 regions: Sequence[Region], outputs: Sequence[int], deadline: Deadline) -> None:
        self.graph, self.d, self.deadline = graph, derivation, deadline
        extra: dict[str, sympy.Expr] = {}
        # Intermediate nodes' references are needed on the first NODE_POINTS points only: they
        # get their own program, run on those points (see `env`).
        self.leading_only: set[str] = set()
        numeric = isinstance(derivation.program, NumericProgram)  # one sweep gives every node's adjoint anyway
        for i, q in enumerate(quantities):
            extra[f"q{i}"] = q.ref
            if q.cut_ref is not None:
                extra[f"c{i}"] = q.cut_ref
            if not q.is_input and q.hess is None and not numeric:
                self.leading_only |= {f"q{i}", f"c{i}"}
        rows = [(derivation.adjoints, None)] + list(derivation.extra_rows)
        rows_used = sorted({q.row for q in quantities})
        for region in regions:  # the gradient each cut drops: its own full-math adjoint
            for c in region.nodes:
                for row in rows_used:
                    extra[f"a{row}:{c}"] = rows[row][0].get(c, sympy.S.Zero)
        for o, k in enumerate(outputs):
            extra[f"out{o}"] = derivation.values[k]
        self.kink_nodes = [n.id for n in graph.nodes if OPS.get(n.op) is not None and OPS[n.op].kink is not None
                           and graph.depends_on_vars[n.id]]
        for k in self.kink_nodes:
            for a in graph.nodes[k].args:
                extra[f"v{a}"] = derivation.values[a]
        # Identical expressions are computed once (x+x+...+x: 45,000 adjoints, all 1); the leading
        # ones apart from the rest, which are computed at every point.
        self.extra: dict[str, sympy.Expr] = {}
        self.syms: dict[str, sympy.Symbol] = {}
        canonical: dict[tuple[bool, sympy.Expr], sympy.Symbol] = {}
        for name, e in extra.items():
            key = (name in self.leading_only, e)
            if key not in canonical:
                canonical[key] = _sym(f"extra[{name}]")
                self.extra[name] = e
            self.syms[name] = canonical[key]
        self.keep = set(self.syms.values())
        deadline.check("compiling the reference")
        self.compiled = _compile(derivation.program, TORCH,
                                 {k: e for k, e in self.extra.items() if k not in self.leading_only}, deadline)
        # The same program with every extra: its steps are shared with `compiled`.
        self.compiled_leading = (_compile(derivation.program, TORCH, self.extra, deadline, base=self.compiled)
                                 if self.leading_only else None)
        # The second opinion has its own program: it runs on the first NODE_POINTS points only.
        self.whole: CompiledProgram | None = None
        if derivation.whole is not None:
            self.whole = compile_program(Program(derivation.program.inputs, derivation.constants), TORCH,
                                         {f"w:{name}": e for name, e in derivation.whole.items()})
        self._mag: CompiledProgram | None = None
        self._mag_env: Env = {}
        self._mag_env_key: int | None = None
        self._mp: CompiledProgram | None = None
        self.mp_budget = tl.MP_BUDGET
        self.mp_seconds = tl.MP_SECONDS
        self.mp_points = 0
        self.mp_skipped: dict[str, int] = {}  # why -> points where the mpmath reference was skipped
        self._confirmed = 0  # second-opinion disagreements checked in high precision

    @property
    def steps(self) -> int:
        return len(self.compiled.steps) + self.compiled.work

    def env(self, x64: dict[str, torch.Tensor], keep: set[sympy.Symbol] | None, sub: int | None = None) -> Env:
        """The reference program's values: every point for the full-batch quantities, and (with
        `sub`) the intermediate nodes' references on the first `sub` points.

        With ``keep=None``: every value of the program (the detailed test, at a few points).
        """
        env: Env = {_sym(name): x64[name] for name in x64}
        if keep is None:
            return (self.compiled_leading or self.compiled).run(env, keep=None, deadline=self.deadline)
        out = self.compiled.run(env, keep=keep, deadline=self.deadline)
        if sub and self.compiled_leading is not None:
            lead = self.compiled_leading.run({_sym(name): t[:sub] for name, t in x64.items()}, keep=keep,
                                             deadline=self.deadline)
            for name in self.leading_only:  # left short: only their leading points are used
                sym = self.syms.get(name)
                if sym is not None and sym in lead and name in self.extra:
                    out[sym] = full(lead[sym], sub)
        return out

    def whole_env(self, x64: dict[str, torch.Tensor], sub: int) -> Env:
        """The second opinion's gradients on the first `sub` points."""
        assert self.whole is not None
        return self.whole.run({_sym(name): t[:sub] for name, t in x64.items()}, deadline=self.deadline)

    def magnitude(self, q: Quantity, x64: dict[str, torch.Tensor], idx: torch.Tensor, key: int) -> torch.Tensor:
        """The magnitude sweep's value for `q` at the points `idx` (0 where it has none).

        `key` identifies the chunk: the sweep is evaluated once per chunk for all quantities.
        """
        if q.hess is not None or q.node_id is None or self.d.magnitudes is None:
            return torch.zeros(len(idx), dtype=torch.float64)
        program, mags = self.d.magnitudes()
        if q.row >= len(mags) or q.node_id not in mags[q.row]:
            return torch.zeros(len(idx), dtype=torch.float64)
        numeric = isinstance(program, NumericProgram)  # its sweep writes every magnitude: no extras to compile
        if self._mag is None:
            extra = {} if numeric else {f"m{row}:{k}": e for row, m in enumerate(mags) for k, e in m.items()}
            # (the forward's steps shared with the reference's)
            self._mag = _compile(program, TORCH, extra, self.deadline, base=self.compiled)
        if self._mag_env_key != key:
            self._mag_env = self._mag.run({_sym(name): t[idx] for name, t in x64.items()}, deadline=self.deadline)
            self._mag_env_key = key
        v = self._mag_env[mags[q.row][q.node_id] if numeric else _sym(f"extra[m{q.row}:{q.node_id}]")]
        return torch.nan_to_num(full(v, len(idx)).abs(), nan=math.inf)

    def high_precision(self, x64: dict[str, torch.Tensor], idx: torch.Tensor, want: torch.Tensor,
                       n_quantities: int) -> tuple[list[torch.Tensor], torch.Tensor] | None:
        """The quantities' references in `tl.MP_DPS`-digit mpmath at the candidates marked in `want`.

        Within the budget of work (`tl.MP_BUDGET` points x steps per check) and time
        (`tl.MP_SECONDS` per check, and the check's deadline); points left out are counted in
        `mp_skipped` with the reason, for the report.

        Returns:
            (one column per quantity over all candidates, then one per output, mask of the candidates
            computed), or None.
        """
        chosen = torch.nonzero(want).flatten().tolist()
        if self.mp_seconds <= 0:
            self._skip(f"its time budget of {tl.MP_SECONDS:g} s was spent", len(chosen))
            return None
        affordable = max(0, self.mp_budget // max(self.steps, 1))
        if len(chosen) > affordable:
            self._skip("the budget of high-precision work was spent", len(chosen) - affordable)
            chosen = chosen[:affordable]
        if not chosen:
            return None
        if self._mp is None:
            try:
                self._mp = _compile(self.d.program, mpmath_backend(tl.MP_DPS), self.extra, None)
            except UnevaluableError:
                self.mp_budget = 0
                self._skip("the program has no high-precision rule", len(chosen))
                return None
        self.mp_budget -= self.steps * len(chosen)
        names = list(x64)
        m = len(idx)
        cols = [torch.full((m,), math.nan, dtype=torch.float64) for _ in range(n_quantities)]
        done = torch.zeros(m, dtype=torch.bool)
        ctx = self._mp.backend.context
        # The quantities' references, then the outputs' exact values (is the point in the domain at all?)
        wanted = [self.syms[f"q{qi}"] for qi in range(n_quantities)]
        wanted += [sym for name, sym in self.syms.items() if name.startswith("out")]
        cols += [torch.full((m,), math.nan, dtype=torch.float64) for _ in range(len(wanted) - n_quantities)]
        program = self._mp

        def compute() -> None:
            for j in chosen:
                p = int(idx[j])
                env = {_sym(name): ctx.mpf(float(x64[name][p])) for name in names}
                env = program.run(env, keep=self.keep, deadline=self.deadline)
                for qi, sym in enumerate(wanted):
                    cols[qi][j] = float(env[sym])
                done[j] = True

        # mpmath is pure Python: a point that takes too long is interrupted (see budget.run_bounded).
        started = time.monotonic()
        try:
            run_bounded(compute, self.deadline.within(self.mp_seconds), name="gradcheck-sym-mpmath")
        except BudgetExceeded:
            self.deadline.check("computing the high-precision reference")
            self._skip(f"its time budget of {tl.MP_SECONDS:g} s was spent", len(chosen) - int(done.sum()))
            self.mp_seconds = 0.0
        finally:
            self.mp_seconds = max(0.0, self.mp_seconds - (time.monotonic() - started))
        self.mp_points += int(done.sum())
        return (cols, done) if bool(done.any()) else None

    def confirm_second_opinion(self, x64: dict[str, torch.Tensor], i: int, name: str, qi: int) -> bool:
        """Whether the sweep's and sympy.diff's d out/d `name` still disagree at point `i` in
        `tl.MP_DPS`-digit arithmetic (False when that cannot be computed within a second)."""
        if self.d.whole is None or self._confirmed >= 10:
            return False
        self._confirmed += 1
        backend = mpmath_backend(tl.MP_DPS)
        ctx = backend.context

        def compute() -> tuple[Any, Any]:
            whole = compile_program(Program(self.d.program.inputs, self.d.constants), backend,
                                    {"w": self.d.whole[name]})
            sweep = compile_program(self.d.program, backend, {"q": self.extra[self._canonical(f"q{qi}")]})
            point = {_sym(v): ctx.mpf(float(t[i])) for v, t in x64.items()}
            return (whole.run(dict(point))[_sym("extra[w]")], sweep.run(dict(point))[_sym("extra[q]")])

        try:
            w, r = run_bounded(compute, self.deadline.within(1.0), name="gradcheck-sym-second-opinion")
        except (BudgetExceeded, UnevaluableError):
            return False
        if not (ctx.isfinite(w) and ctx.isfinite(r)):
            return False
        return abs(w - r) > ctx.mpf(10) ** (-tl.MP_DPS // 2) * (abs(w) + abs(r))

    def _canonical(self, name: str) -> str:
        """The name under which the expression of extra `name` is compiled (identical ones are shared)."""
        sym = self.syms[name]
        return next(k for k in self.extra if self.syms[k] == sym)

    def _skip(self, why: str, count: int) -> None:
        self.mp_skipped[why] = self.mp_skipped.get(why, 0) + count

    def value(self, env: Env, k: int, m: int, j: int) -> float:
        """Node `k`'s reference value at candidate `j` of an environment over `m` points."""
        expr = self.d.values[k]
        if isinstance(expr, sympy.Symbol):
            return float(full(env[expr], m)[j])
        if not expr.is_Number:
            return math.nan
        try:
            return float(expr)
        except OverflowError:
            return math.inf if expr > 0 else -math.inf

