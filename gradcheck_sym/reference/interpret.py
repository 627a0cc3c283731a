"""The tensor program's reference: values, the reverse sweep, its second sweep, error bounds.

* `evaluate` runs a `Program`'s equations in float64 torch (or in mpmath / sympy on numpy
  object arrays): the forward values of the reference.  Torch's *forward* kernels are used
  (sin, matmul, index_add, ...); never autograd.
* `sweep` is the reverse sweep: each equation's VJP rule (`gradcheck_sym.ops`) applied from
  the output back, with full-math semantics or with the cuts as constants.  A primitive
  without a rule (``opaque``) taints what flows into it: those gradients are *not verified*.
* `record_sweep` runs the same sweep under a recorder, which writes its equations down:
  sweeping *that* program gives second derivatives (Hessian-vector products).
* `error_bounds` propagates absolute error bounds forward over the equations (each
  primitive's ``err`` rule: the inputs' bounds through the Jacobian's magnitude, plus its own
  rounding in the user's dtype) — over the forward and the recorded backward together, it
  bounds how far autograd's gradient can be from the exact one by rounding alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from ..ir.program import Const, Eqn, Program, Var
from ..ops.core import PRIMS, Interpreter, TorchEager, interpreting
from ..ops.prims import add
from ..ops.prims_base import _obj

__all__ = ["Traced", "Recorder", "ObjectEager", "evaluate", "sweep", "SweepResult", "record_sweep", "error_bounds",
           "compact_bound", "wide_bound", "narrow_value", "narrow_bound", "COMPACT_FROM",
           "UNIT_ROUNDOFF", "const_value", "AbsEager", "DEFINED_CUTS", "TORCH_NO_GRAD"]

F64 = torch.float64
# Cuts that are part of an op's definition in torch (an output declared non-differentiable): constants in
# every semantics, the full math's included, since no user code put them there.
# A cut torch's own code made (`front.tracer_sites.TorchNoGrad`: spectral_norm's power iteration under no_grad): a
# constant of the gradient by torch's design.  Cuts of these kinds are constants in the exact reference too.
TORCH_NO_GRAD = "no_grad in torch"
DEFINED_CUTS = frozenset({"non-differentiable output", TORCH_NO_GRAD})
UNIT_ROUNDOFF = {"float64": 2.0**-53, "float32": 2.0**-24, "float16": 2.0**-11, "bfloat16": 2.0**-8}


def const_value(c: Any) -> Any:
    """A constant as the reference uses it: floating tensors in float64."""
    if isinstance(c, torch.Tensor) and c.is_floating_point() and c.dtype != F64:
        return c.to(F64)
    return c


class _Consts:
    """The program's constants, converted by `const_value` when first used.

    A long script's program keeps every constant slot it ever made (pruned ones are placeholders);
    converting all of them at every sweep was most of the cost of verifying a training loop.
    """

    def __init__(self, raw: Sequence[Any]) -> None:
        self.raw = raw
        self.done: dict[int, Any] = {}

    def __getitem__(self, i: int) -> Any:
        v = self.done.get(i)
        if v is None:
            v = self.done[i] = const_value(self.raw[i])
        return v


# ---------------------------------------------------------------- interpreters
class ObjectEager(Interpreter):
    """Evaluate on numpy object arrays (mpmath or sympy elements): the high-precision path and
    the tests' per-element oracle.  Torch constants are converted exactly."""

    def process(self, prim: Any, args: tuple[Any, ...], params: dict[str, Any]) -> Any:
        if prim.obj is None:
            raise NotImplementedError(f"primitive {prim.name} has no object-array rule")
        return prim.obj(*args, **params)


class AbsEager(Interpreter):
    """Evaluate with every elementwise result and every matmul operand in absolute value: a sweep
    under it is the *magnitude* sweep (sum over paths of |partials|), with no cancellation — used
    to find which inputs a kink can reach."""

    def process(self, prim: Any, args: tuple[Any, ...], params: dict[str, Any]) -> Any:
        if prim.name == "matmul":
            return prim.impl(*[a.abs() if isinstance(a, torch.Tensor) else abs(a) for a in args], **params)
        out = prim.impl(*args, **params)
        return out.abs() if prim.name == "ew" and isinstance(out, torch.Tensor) else out


class Traced:
    """A value being recorded: the number, and the program variable it is."""

    __slots__ = ("value", "var")

    def __init__(self, value: Any, var: Var) -> None:
        self.value, self.var = value, var

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.value.shape)

    @property
    def dtype(self) -> Any:
        return self.value.dtype


def own_bytes(x: Any) -> int:
    """The bytes of `x`'s own storage: 0 for a view, a sparse or meta tensor, anything without one."""
    if not isinstance(x, torch.Tensor) or x._base is not None or x.layout != torch.strided or x.is_meta:
        return 0
    try:
        return x.untyped_storage().nbytes()
    except (RuntimeError, NotImplementedError):
        return 0


class Recorder(Interpreter):
    """Evaluate eagerly *and* write each primitive application down as an equation."""

    def __init__(self, next_id: int, const_base: int) -> None:
        self.eqns: list[Eqn] = []
        self.consts: list[Any] = []  # numbered from const_base on, after the program's own
        self.const_base = const_base
        self.next_id = next_id
        self.dtype = "float64"  # the user's dtype of what is being recorded (set by the sweep)
        self.site = -1
        self.values: dict[int, Any] = {}
        self.errs: dict[int, Any] | None = None  # error bounds, tracked as it records when a dict
        # With `lazy`, the bounds are computed when asked for (`bounds()`), not as each equation is recorded:
        # a training loop whose comparisons all pass the cheap test never needs them.  Equations
        # [0, bounded) have theirs in `errs`.
        self.lazy = False
        self.bounded = 0
        self.nbytes = 0  # the recorded values' own storage (views not counted): what recording costs in memory
        # variable id -> the value the user's run itself computed (its dtype), where the front end kept it: the
        # forward a measured rounding noise starts from (`reference.rounded`)
        self.user: dict[int, Any] = {}

    def bounds(self) -> dict[int, Any] | None:
        """`errs`, brought up to date with every equation recorded so far (`error_bounds` of the new ones)."""
        if self.errs is None or not self.lazy or self.bounded >= len(self.eqns):
            return self.errs
        recorded = Program((), (), tuple(self.eqns), (), (None,) * self.const_base + tuple(self.consts))
        self.errs.update(error_bounds(recorded, self.values, start=self.errs, skip=self.bounded, compact=True))
        self.bounded = len(self.eqns)
        return self.errs

    def process(self, prim: Any, args: tuple[Any, ...], params: dict[str, Any]) -> Any:
        # (plain loops, not generator expressions: this runs for every op a traced script makes, and for every
        # op of every recorded sweep)
        values = []
        traced_in = False
        for a in args:
            if isinstance(a, Traced):
                values.append(a.value)
                traced_in = True
            else:
                values.append(a)
        out = prim.impl(*values, **params)
        if not traced_in and prim.name != "opaque" and prim.name != "fixed":
            # constants only: folded (an opaque value stays a variable: it must taint; a fixed one is a variable)
            return out
        atoms = tuple([a.var if isinstance(a, Traced) else self._const(a) for a in args])
        outs = out if prim.multiple else (out,)
        vars_ = []
        floating = True
        for o in outs:
            v = Var(self.next_id, tuple(o.shape), self.dtype)
            self.next_id += 1
            vars_.append(v)
            self.values[v.id] = o
            if not any(o is x for x in values):  # (an identity's value is its input's: no new memory)
                self.nbytes += own_bytes(o)
            floating = floating and isinstance(o, torch.Tensor) and o.is_floating_point()
        self.eqns.append(Eqn(prim.name, atoms, tuple(vars_), dict(params), self.site))
        if self.errs is not None and not self.lazy and floating:
            errs = self.errs
            in_errs = [wide_bound(errs.get(a.var.id)) if isinstance(a, Traced) else None for a in args]
            u = UNIT_ROUNDOFF.get(self.dtype, 2.0**-53)
            for v, r in zip(vars_, prim.err(in_errs, values, list(outs), u, **params)):
                if r is not None:
                    errs[v.id] = r
        if not prim.multiple:
            return Traced(out, vars_[0])
        return tuple([Traced(o, v) for o, v in zip(outs, vars_)])

    def _const(self, value: Any) -> Const:
        if not isinstance(value, torch.Tensor):
            value = torch.tensor(float(value), dtype=F64)
        self.consts.append(value)
        self.nbytes += own_bytes(value)  # (a batch of data captured as a constant counts as much as a value)
        return Const(self.const_base + len(self.consts) - 1, tuple(value.shape), str(value.dtype).replace("torch.", ""))


# ---------------------------------------------------------------- forward
def evaluate(program: Program, inputs: Sequence[Any], *, interp: Interpreter | None = None) -> dict[int, Any]:
    """The value of every variable, the inputs given (float64 tensors, or object arrays)."""
    env: dict[int, Any] = {}
    obj = isinstance(interp, ObjectEager)
    consts = _Consts(program.consts)
    for v, x in zip(program.inputs, inputs):
        env[v.id] = x
    with interpreting(interp or TorchEager()):
        for e in program.eqns:
            ins = [env[a.id] if isinstance(a, Var) else consts[a.index] for a in e.inputs]
            if obj:
                ins = [_obj(x) for x in ins]
            out = PRIMS[e.prim].impl(*ins, **e.params) if not obj else PRIMS[e.prim].obj(*ins, **e.params)
            outs = out if PRIMS[e.prim].multiple else (out,)
            for v, o in zip(e.outputs, outs):
                env[v.id] = o
    return env


# the dtypes a variable can have in the user's run (`Var.dtype`): `reference.rounded` recomputes in them
_DTYPES = {"float64": torch.float64, "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


# ---------------------------------------------------------------- reverse
@dataclass
class SweepResult:
    """Cotangents of every variable reached, and the variables whose cotangent is unknown."""

    cts: dict[int, Any]
    tainted: set[int] = field(default_factory=set)
    # opaque equations that received a cotangent: (eqn index, reason)
    blocked: list[tuple[int, str]] = field(default_factory=list)
    # whether a cut (a ``stop`` equation) received a cotangent: if none did, cutting changes nothing
    cut_reached: bool = False
    # error bounds of every recorded variable, when `record_sweep` was asked to track them
    errs: dict[int, Any] | None = None
    # the reasons (of `blocked`) behind each tainted variable: the ones on its own way to the output
    why: dict[int, set[str]] = field(default_factory=dict)
    # the sites of the cuts torch's own code made (`TORCH_NO_GRAD`) that received a cotangent
    torch_cuts: set[int] = field(default_factory=set)


def sweep(
    program: Program | Sequence[Eqn],
    env: dict[int, Any],
    seeds: dict[int, Any],
    *,
    cut: bool | Any = False,
    consts: Sequence[Any] = (),
    recorder: Recorder | None = None,
    interp: Interpreter | None = None,
    keep: Any = None,
) -> SweepResult:
    """The reverse sweep from `seeds` (variable id -> cotangent).

    Args:
        program: the program (or its equations, for recorded sweeps).
        env: every variable's value (from `evaluate`; `Traced` values when recording).
        seeds: the output cotangents.
        cut: treat ``stop`` equations (detach, no_grad, .data, .item()) as constants; or a predicate
            ``(eqn) -> bool`` saying which ones.
        consts: the program's constants (when `program` is a list of equations).
        recorder: record the sweep's own equations (for second order).
        keep: if given, the variables whose cotangent the result holds: any other is dropped once its equation
            is swept (a large program's cotangents are not all kept at once).
    """
    eqns = program.eqns if isinstance(program, Program) else program
    consts = _Consts(program.consts if isinstance(program, Program) else consts)
    cts: dict[int, Any] = dict(seeds)
    tainted: set[int] = set()
    blocked: list[tuple[int, str]] = []
    why: dict[int, set[str]] = {}
    reached = False
    torch_cuts: set[int] = set()
    interp = recorder if recorder is not None else interp or TorchEager()
    rounding = getattr(interp, "per_equation_dtype", False)
    with interpreting(interp):
        for n in range(len(eqns) - 1, -1, -1):
            e = eqns[n]
            if len(e.outputs) == 1:  # (most equations: no generator expressions, the sweep's per-equation cost)
                v0 = e.outputs[0].id
                g0, h0 = cts.get(v0), v0 in tainted
                if g0 is None and not h0:
                    continue
                gs, hit = [g0], [h0]
                if keep is not None and g0 is not None and v0 not in keep:
                    del cts[v0]
            else:
                gs = [cts.get(v.id) for v in e.outputs]
                hit = [v.id in tainted for v in e.outputs]
                if all(g is None for g in gs) and not any(hit):
                    continue
                if keep is not None:
                    for v in e.outputs:
                        if v.id not in keep:
                            cts.pop(v.id, None)
            in_vars = [a for a in e.inputs if isinstance(a, Var)]
            if e.prim == "stop":
                reached = True
                kind = e.params.get("kind")
                if kind == TORCH_NO_GRAD:
                    torch_cuts.add(e.site)
                if (cut and (cut is True or cut(e))) or kind in DEFINED_CUTS:
                    continue
            prim = PRIMS[e.prim]
            if rounding:  # (reference.rounded's interpreter: each equation in its own dtype)
                interp.dtype = _DTYPES.get(e.outputs[0].dtype)
            if prim.vjp is None or any(hit):
                reasons: set[str] = set()
                if prim.vjp is None and any(g is not None for g in gs):
                    blocked.append((n, str(e.params.get("reason", e.prim))))
                    reasons.add(blocked[-1][1])
                for v, h in zip(e.outputs, hit):
                    if h:
                        reasons |= why.get(v.id, set())
                tainted.update(a.id for a in in_vars)
                for a in in_vars:
                    why.setdefault(a.id, set()).update(reasons)
                if prim.vjp is None:
                    continue
            if all(g is None for g in gs):
                continue
            if recorder is not None:
                recorder.dtype = e.outputs[0].dtype
                recorder.site = e.site
            ins = [env[a.id] if isinstance(a, Var) else consts[a.index] for a in e.inputs]
            outs = [env[v.id] for v in e.outputs]
            # a constant's cotangent would be thrown away below: a vjp that can is told not to compute it
            needed = {"needed": [isinstance(a, Var) for a in e.inputs]} if prim.needs else {}
            res = prim.vjp(gs if prim.multiple else [gs[0]], ins, outs, **needed, **e.params)
            for a, r in zip(e.inputs, res):
                if r is None or not isinstance(a, Var):
                    continue
                prev = cts.get(a.id)
                cts[a.id] = r if prev is None else add(prev, r)
    return SweepResult(cts, tainted, blocked, reached, why=why, torch_cuts=torch_cuts)


def traced_values(program: Program, env: dict[int, Any], seeds: dict[int, Any],
                  errs: dict[int, Any] | None = None) -> tuple[int, dict[int, Traced]]:
    """(the first variable id free after the program, the seeds and the bounds `errs` has, every variable's value as
    `Traced`).  (`errs` may hold bounds of values recorded after `program` was taken, a deferred one's: their ids are
    not reused.)"""
    next_id = 1 + max([v.id for v in program.inputs] + [v.id for e in program.eqns for v in e.outputs]
                      + [a.id for e in program.eqns for a in e.inputs if isinstance(a, Var)] + list(seeds)
                      + list(errs or ()) + [0])
    traced_env = {v.id: Traced(env[v.id], v) for v in program.inputs}
    for e in program.eqns:
        for v in e.outputs:
            traced_env[v.id] = Traced(env[v.id], v)
        for a in e.inputs:  # a seed of an earlier recorded sweep
            if isinstance(a, Var) and a.id not in traced_env:
                traced_env[a.id] = Traced(env[a.id], a)
    return next_id, traced_env


def record_sweep(program: Program, env: dict[int, Any], seeds: dict[int, Any], *, cut: bool | Any = False,
                 errs: dict[int, Any] | None = None) -> tuple[Program, dict[int, Any], SweepResult]:
    """The sweep, written down.

    With `errs` (the error bounds of the program's variables, as `error_bounds` gives them), the bounds
    of the sweep's own variables are tracked as it records, into the result's ``errs``: the same numbers
    as `error_bounds` of the whole, without going over the forward program again.

    Returns:
        (the program extended by the sweep's equations and constants, the value of every
        variable of it, the result — its cotangents are `Traced`: ``.var`` names them).
    """
    next_id, traced_env = traced_values(program, env, seeds, errs)
    rec = Recorder(next_id, len(program.consts))
    if errs is not None:
        rec.errs = dict(errs)
    # each seed a value of its own (not an input), so what the sweep computes from a seed alone — the sum
    # that transposes a broadcast — is recorded, and its rounding bounded
    traced_seeds = {}
    for vid, s in seeds.items():
        var = Var(rec.next_id, tuple(s.shape), traced_env[vid].var.dtype if vid in traced_env else "float64")
        rec.next_id += 1
        rec.values[var.id] = s
        traced_seeds[vid] = Traced(s, var)
    result = sweep(program, traced_env, traced_seeds, cut=cut, recorder=rec)
    result.errs = rec.errs
    whole = Program(program.inputs, program.input_names, program.eqns + tuple(rec.eqns), program.outputs,
                    program.consts + tuple(rec.consts), program.sites)
    return whole, {**env, **rec.values}, result


# ---------------------------------------------------------------- error bounds
# A bound of at least this many entries is kept in float32 by `compact_bound`.
COMPACT_FROM = 1 << 16


def compact_bound(r: Any) -> Any:
    """An error bound kept in float32, rounded up (still a bound), where it is a float64 tensor of COMPACT_FROM
    entries or more that is the whole of its storage (a rule's result, or a view of all of one: a bound read wide
    and reshaped); else `r` (a broadcast or a slice shares its base's storage).

    The bounds of a recorded forward are nearly as large as its float64 values (1.4 GB beside 1.7 GB at a conv +
    batch-norm tutorial's batch of 512): half of that is part of what lets batch 1,024 fit in memory here.  A bound is used
    with a safety factor of several times its size: its last float32 bit is not what decides."""
    if not isinstance(r, torch.Tensor) or r.dtype != F64 or r.numel() < COMPACT_FROM or (
            r._base is not None and not (r.is_contiguous() and r.numel() == r._base.numel())):
        return r
    # (to nearest, r (1 + 2**-23) is at least r: rounding costs at most 2**-24 of it, where float32 is normal)
    return torch.mul(r, 1.0 + 2.0**-23).to(torch.float32)


def wide_bound(e: Any) -> Any:
    """A bound as the rules read it: float64 (a compact one made wide again, for convolutions and products that
    take one dtype)."""
    return e.to(F64) if isinstance(e, torch.Tensor) and e.dtype == torch.float32 else e


def narrow_value(x: Any) -> Any:
    """A float64 tensor as float32, for bounds computed in float32."""
    return x.to(torch.float32) if isinstance(x, torch.Tensor) and x.dtype == F64 else x


def narrow_bound(e: Any) -> Any:
    """A float64 bound as float32, rounded up (see `compact_bound`)."""
    return torch.mul(e, 1.0 + 2.0**-23).to(torch.float32) if isinstance(e, torch.Tensor) and e.dtype == F64 else e


def error_bounds(program: Program, env: dict[int, Any], *, start: dict[int, Any] | None = None,
                 u: float | None = None, skip: int = 0, compact: bool = False) -> dict[int, Any]:
    """Absolute error bounds of every variable of `program`, for a computation in each
    equation's output dtype (float32 rounding where the user computed in float32).

    Args:
        program: the forward program, or one extended by `record_sweep`.
        env: every variable's float64 value.
        start: bounds of the inputs (default: exact).
        u: one unit roundoff for every equation (the float64 reference's own: 2**-53), instead of
            each equation's dtype.
        skip: the first `skip` equations are already bounded in `start` (the forward program, whose
            bounds the tracer tracked as it recorded).
        compact: large bounds kept in float32 (`compact_bound`).
    """
    errs: dict[int, Any] = dict(start or {})
    consts = _Consts(program.consts)
    for e in program.eqns[skip:]:
        outs = [env[v.id] for v in e.outputs]
        if any(isinstance(o, torch.Tensor) and not o.is_floating_point() for o in outs):
            continue
        ins = [env[a.id] if isinstance(a, Var) else consts[a.index] for a in e.inputs]
        in_errs = [wide_bound(errs.get(a.id)) if isinstance(a, Var) else None for a in e.inputs]
        ue = u if u is not None else UNIT_ROUNDOFF.get(e.outputs[0].dtype, 2.0**-53)
        for v, r in zip(e.outputs, PRIMS[e.prim].err(in_errs, ins, outs, ue, **e.params)):
            if r is not None:
                errs[v.id] = compact_bound(r) if compact else r
    return errs
