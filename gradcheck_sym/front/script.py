"""Run a teaching script as ``python lesson.py`` would, and verify every backward it does.

The script runs for real (its output appears, ``__name__ == "__main__"``, its own argv) under
a recorder that extends the tracer of `trace`: every torch op it performs is mirrored as
scalar graph nodes, leaves that require grad become variables, and each ``.backward()`` /
``torch.autograd.grad(...)`` is intercepted: before it runs, the exact gradient of its output
with respect to every tensor is derived (full math and with the cuts as constants); after it
runs, each tensor's ``.grad`` is compared with what it should be (the previous ``.grad`` plus
this contribution, so accumulation, ``zero_()`` and ``grad = None`` need no special case).
Hooks, ``retain_grad()`` and reads of a non-leaf's ``.grad`` are recorded with their line.
"""

from __future__ import annotations

import builtins
import math
import os
import re
import sys
import traceback
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import sympy
import torch

from ..errors import LimitError, UnsupportedError
from ..reference.evaluate import TORCH, compile_program
from ..ir.graph import Graph
from ..ops import OPS
from ..reference.symbolic import derive
from .trace import _Builder, _internal, _map, _Sym, _tensors, _Tracer, _Unsupported

__all__ = ["run_script", "RunReport", "TensorRow", "RunFinding", "EXPLANATIONS"]

RUN_SCHEMA_VERSION = 1

# What each finding means, in plain words, and what to do about it (pinned in tests).
EXPLANATIONS: dict[str, tuple[str, str]] = {
    "mismatch": ("autograd's gradient differs from the exact derivative of what the script computed.",
                 "Check custom autograd Functions and in-place changes; compare with the symbolic value shown."),
    "untracked": ("part of the computation was hidden from autograd (torch.no_grad, .detach(), .data or .item()), "
                  "so its gradient is missing.",
                  "Keep the operation in the graph; use .detach() or no_grad only where a constant is meant."),
    "stale-graph": (".data bypasses autograd: the value changed but grad_fn still describes the old value, so "
                    "backward differentiates a computation that no longer matches the numbers.",
                    "Use .detach() for a constant, or keep the operation in the graph (e.g. z = z * 2)."),
    "hook": ("a hook registered with register_hook changed the gradient on its way back.",
             "This is what the hook does; make sure it is meant (e.g. gradient clipping), or remove it."),
    "nonleaf-grad": ("the script read .grad of a non-leaf tensor: autograd only fills .grad of leaves (tensors "
                     "created by the user with requires_grad=True), so it is None (torch warns about it).",
                     "Call .retain_grad() on the tensor before backward, or read the leaf's .grad."),
    "nondifferentiable": ("the derivative is undefined here (a kink, tie or jump); torch uses a convention.",
                          "Nothing to fix; be aware that another framework may give another value."),
    "nonfinite": ("a gradient is inf or NaN.",
                  "Look for 0 * inf, e.g. the unselected branch of torch.where with sqrt or log."),
    "not-verified": ("the tracer does not know an operation this backward depends on, so its gradients were not "
                     "verified.", "Check that part with gradcheck_sym.check_function(..., expected=...)."),
    "no-autograd": ("the script never called backward() or torch.autograd.grad(), so there was nothing to verify.",
                    "Create a leaf with requires_grad=True, compute a scalar from it and call .backward()."),
}
_SEVERITY = {"mismatch": "error", "untracked": "error", "stale-graph": "error", "hook": "warning",
             "nonleaf-grad": "warning", "nondifferentiable": "info", "nonfinite": "error", "not-verified": "warning",
             "no-autograd": "info"}
_ASSIGN = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(?:\[[^\]]*\]\s*)?(?:[+\-*/@]|//|\*\*)?=(?!=)")


@dataclass(frozen=True)
class TensorRow:
    """One tensor that took part in autograd.

    Attributes:
        name: the variable it was assigned to (or the source text of its line).
        line: the line that made it.
        is_leaf, requires_grad, grad_fn, retains_grad: what torch says about it.
        value: its value (a float for one element, else a list).
        grad: its `.grad` after each backward (None where it has none).
        symbolic_grad: the exact gradient after each backward (what `.grad` should hold for a
            leaf or a tensor that retains grad; the bare derivative otherwise).
        status: "ok", or what went wrong, in a few words.
    """

    name: str
    line: int
    is_leaf: bool
    requires_grad: bool
    grad_fn: str | None
    retains_grad: bool
    value: Any
    grad: tuple[Any, ...]
    symbolic_grad: tuple[Any, ...]
    status: str


@dataclass(frozen=True)
class RunFinding:
    """One finding of a script run: kind, severity, line, message, and the plain explanation and fix."""

    kind: str
    severity: str
    line: int
    message: str
    explanation: str
    fix: str
    tensor: str = ""


@dataclass(frozen=True)
class RunReport:
    """What `run_script` verified."""

    script: str
    tensors: tuple[TensorRow, ...]
    backwards: tuple[dict[str, Any], ...]
    findings: tuple[RunFinding, ...]
    error: str | None = None
    graph: Any = None  # the recorder's edges, for pictures (not serialised)

    @property
    def ok(self) -> bool:
        return self.error is None and not any(f.severity == "error" for f in self.findings)

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        from ..report.records import _finite_json

        return {"version": RUN_SCHEMA_VERSION, "kind": "run", "script": self.script, "ok": self.ok,
                "error": self.error, "tensors": [_finite_json(asdict(t)) for t in self.tensors],
                "backwards": [_finite_json(b) for b in self.backwards],
                "findings": [asdict(f) for f in self.findings]}

    def to_json(self, indent: int | None = 2) -> str:
        import json

        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    def __str__(self) -> str:
        from ..report.render import render_run_text

        return render_run_text(self)

    def _repr_html_(self) -> str:
        from ..report.render import render_run_html

        return render_run_html(self)


# ---------------------------------------------------------------- the recorder
@dataclass
class _Record:
    tensor: torch.Tensor
    line: int
    source: str
    op: str
    order: int
    leaf: bool = False
    grads: list[Any] = field(default_factory=list)
    symbolic: list[Any] = field(default_factory=list)
    statuses: list[str] = field(default_factory=list)
    inputs: tuple[int, ...] = ()
    cut: str | None = None


class _Recorder(_Tracer):
    """The tracer, plus leaves as variables, and backward / hooks / retain_grad / .grad reads intercepted."""

    def __init__(self, script: str) -> None:
        super().__init__(_Builder(share=False))
        self.script = os.path.abspath(script)
        self.records: dict[int, _Record] = {}
        self.values: dict[str, float] = {}  # variable -> value (each leaf element)
        self.opaque: dict[int, str] = {}  # tensor id -> why it cannot be traced
        self.hooks: list[tuple[int, int]] = []  # (tensor id, line)
        self.findings: list[RunFinding] = []
        self.backwards: list[dict[str, Any]] = []
        self.leaf_versions: dict[int, int] = {}
        self.leaf_index: dict[int, int] = {}  # tensor id -> its number in variable names (t3[0,1], t3v2[0,1])
        self._count = 0
        self.stopped: str | None = None  # set when the recording hit a size limit

    # -- helpers
    def _line(self) -> tuple[int, str]:
        frame = sys._getframe(2)
        while frame is not None and (_internal(frame.f_code.co_filename)):
            frame = frame.f_back  # type: ignore[assignment]
        if frame is None:
            return 0, ""
        import linecache

        return frame.f_lineno, linecache.getline(frame.f_code.co_filename, frame.f_lineno).strip()

    def _leaf(self, t: torch.Tensor) -> np.ndarray:
        """Variables for a leaf that requires grad, seen for the first time (or changed in place)."""
        version = self.leaf_versions.get(id(t), -1) + 1
        self.leaf_versions[id(t)] = version
        if version == 0:
            self.leaf_index[id(t)] = len(self.leaf_index) + 1
        base = f"t{self.leaf_index[id(t)]}" + (f"v{version}" if version else "")
        values = t.detach().cpu().to(torch.float64).numpy()
        m = np.empty(tuple(t.shape), dtype=object)
        for idx in np.ndindex(*t.shape):
            name = base + ("[" + ",".join(map(str, idx)) + "]" if t.dim() else "")
            m[idx] = self.b.var(name)
            self.values[name] = float(values[idx])
        self.mirror[id(t)] = m
        self.alive.append(t)
        if id(t) not in self.records:
            line, source = self._line()
            self._remember(t, line, source, "leaf", leaf=True)
        return m

    def _remember(self, t: torch.Tensor, line: int, source: str, op: str, leaf: bool = False) -> None:
        self._count += 1
        self.records[id(t)] = _Record(t, line, source, op, self._count, leaf)

    def get(self, x: Any) -> Any:
        if isinstance(x, torch.Tensor) and id(x) not in self.mirror and x.requires_grad and x.is_leaf \
                and x.is_floating_point():
            return self._leaf(x)
        return super().get(x)

    # -- the mode
    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name == "backward" and args and isinstance(args[0], torch.Tensor):
            return self._backward(func, args, kwargs)
        if func is torch.autograd.grad:
            return self._autograd_grad(func, args, kwargs)
        if name == "register_hook" and args and isinstance(args[0], torch.Tensor):
            line, _ = self._line()
            self.hooks.append((id(args[0]), line))
            self.alive.append(args[0])
            return func(*args, **kwargs)
        if func == torch.Tensor.grad.__get__ and args:
            t = args[0]
            if not t.is_leaf and not t.retains_grad:
                line, source = self._line()
                self._finding("nonleaf-grad", line, f"line {line} `{source}` reads .grad of a non-leaf tensor "
                              f"({self._name_hint(t)}): it is None", self._name_hint(t))
            return func(*args, **kwargs)
        if name in ("requires_grad_",) and args and isinstance(args[0], torch.Tensor):
            out = func(*args, **kwargs)
            if out.is_leaf and out.requires_grad and id(out) not in self.mirror:
                self._leaf(out)
            return out
        # (torch refuses an in-place op on a leaf that requires grad unless grad mode is off,
        # inside the op too, as in torch.nn.init: when it succeeds, it sets a new value.)
        first = args[0] if args else next(iter(kwargs.values()), None)  # torch.nn.init passes tensor=...
        if name.endswith("_") and not name.startswith("__") and first is not None:
            targets = first if isinstance(first, (list, tuple)) else [first]
            leaves = [t for t in targets if isinstance(t, torch.Tensor) and t.is_leaf and t.requires_grad]
            if leaves and len(leaves) == len(targets):
                # Initialisation (kaiming_uniform_) or an update (`w -= lr * w.grad`, an optimizer's
                # step, also as _foreach_add_) under no_grad: a new leaf value, not a cut.
                out = func(*args, **kwargs)
                for t in leaves:
                    self._leaf(t)
                return out
        if self.stopped:
            return func(*args, **kwargs)
        try:
            out = super().__torch_function__(func, types, args, kwargs)
        except (UnsupportedError, LimitError) as exc:  # the tracer's trouble must not stop the script
            if isinstance(exc, LimitError):
                self.stopped = f"recording stopped: {exc.message}"
            out = func(*args, **kwargs)
            for t in _tensors(out):
                self.opaque[id(t)] = str(exc).split("\n")[0]
                self.alive.append(t)
            return out
        self._after(func, args, kwargs, out)
        return out

    def _record(self, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
        if any(id(a) in self.opaque for a in _flat(args)):
            for t in _tensors(out):
                self.opaque[id(t)] = next(self.opaque[id(a)] for a in _flat(args) if id(a) in self.opaque)
                self.alive.append(t)
            return
        for a in _flat(list(args) + list(kwargs.values())):
            if isinstance(a, torch.Tensor) and id(a) not in self.mirror and a.requires_grad and a.is_leaf \
                    and a.is_floating_point():
                self._leaf(a)  # a leaf the script made with requires_grad=True: its elements are variables
        try:
            super()._record(func, args, kwargs, out)
        except _Unsupported as exc:
            line, source = self._line()
            for t in _tensors(out):
                self.opaque[id(t)] = f"torch op {exc.args[0]} at line {line} (`{source}`)"
                self.alive.append(t)

    def _after(self, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
        for t in _tensors(out):
            if t.is_leaf and t.requires_grad and t.is_floating_point() and id(t) not in self.mirror:
                self._leaf(t)  # made here: torch.tensor(..., requires_grad=True), torch.randn(...), ...
                continue
            if id(t) in self.mirror and id(t) not in self.records and (t.requires_grad or _from_tracked(self, args)):
                line, source = self._line()
                self._remember(t, line, source, getattr(func, "__name__", "op"))
                self.records[id(t)].inputs = tuple(id(a) for a in _flat(args) if id(a) in self.records)
                if not torch.is_grad_enabled():
                    self.records[id(t)].cut = "no_grad"
                elif getattr(func, "__name__", "") in ("detach",) or func == torch.Tensor.data.__get__:
                    self.records[id(t)].cut = "detach" if getattr(func, "__name__", "") == "detach" else ".data"

    def _finding(self, kind: str, line: int, message: str, tensor: str = "") -> None:
        explanation, fix = EXPLANATIONS[kind]
        self.findings.append(RunFinding(kind, _SEVERITY[kind], line, message, explanation, fix, tensor))

    def _name_hint(self, t: torch.Tensor) -> str:
        rec = self.records.get(id(t))
        return f"made at line {rec.line}" if rec else "a tensor"

    # -- backward
    def _backward(self, func: Any, args: tuple, kwargs: dict) -> Any:
        out = args[0]
        line, source = self._line()
        seed = kwargs.get("gradient", args[1] if len(args) > 1 else None)
        plan = self._plan(out, seed, line, source)
        before = {k: _grad_of(r.tensor) for k, r in self.records.items()}
        result = func(*args, **kwargs)  # the script's own backward (errors are the script's)
        after = {k: _grad_of(r.tensor) for k, r in self.records.items()}
        self._verify(plan, before, after, line, source, accumulate=True)
        return result

    def _autograd_grad(self, func: Any, args: tuple, kwargs: dict) -> Any:
        outputs = kwargs.get("outputs", args[0] if args else None)
        inputs = kwargs.get("inputs", args[1] if len(args) > 1 else None)
        seeds = kwargs.get("grad_outputs", args[2] if len(args) > 2 else None)
        outs = [outputs] if isinstance(outputs, torch.Tensor) else list(outputs)
        ins = [inputs] if isinstance(inputs, torch.Tensor) else list(inputs)
        seed = seeds if isinstance(seeds, torch.Tensor) or seeds is None else seeds[0]
        line, source = self._line()
        plan = self._plan(outs[0], seed, line, source)
        result = func(*args, **kwargs)
        got = {id(t): (None if g is None else g.detach().cpu().to(torch.float64).numpy()) for t, g in zip(ins, result)}
        self._verify(plan, {}, got, line, source, accumulate=False, only=[id(t) for t in ins])
        return result

    def _plan(self, out: torch.Tensor, seed: Any, line: int, source: str) -> dict[str, Any] | None:
        """Derive d(out)/d(every recorded tensor), before backward runs (it may free the graph)."""
        if id(out) in self.opaque:
            self._finding("not-verified", line, f"line {line} `{source}`: not verified, it depends on "
                          f"{self.opaque[id(out)]}")
            return None
        if id(out) not in self.mirror:
            return None
        m = np.asarray(self.mirror[id(out)], dtype=object)
        if seed is not None:
            weights = np.asarray(seed.detach().cpu().to(torch.float64).numpy(), dtype=np.float64)
            m = _map(lambda a, w: a * float(w), m, np.broadcast_to(weights, m.shape))
        total = m.flatten()[0] if m.size == 1 else _sum(list(m.flatten()))
        total = self.b.sym(total)
        # Only what this output depends on: a training loop's earlier iterations stay out, so each
        # backward costs what its own graph costs.
        graph, remap = _subgraph(self.b.nodes, total.id)
        derivation = derive(graph, whole_max_nodes=0)
        quantities: dict[str, sympy.Expr] = {}
        targets: dict[int, list[tuple[str, int]]] = {}
        for tid, rec in self.records.items():
            if tid in self.opaque or tid not in self.mirror or not rec.tensor.is_floating_point():
                continue
            mm = np.asarray(self.mirror[tid], dtype=object).flatten()
            keys = []
            for j, s in enumerate(mm):
                nid = remap.get(s.id, -1) if isinstance(s, _Sym) else -1
                if nid in derivation.adjoints:
                    key = f"{tid}:{j}"
                    quantities[f"f{key}"] = derivation.adjoints[nid]
                    if derivation.cut_adjoints is not None:
                        quantities[f"c{key}"] = derivation.cut_adjoints.get(nid, sympy.S.Zero)
                    keys.append((key, nid))
                else:
                    keys.append((f"{tid}:{j}", -1))
            targets[tid] = keys
        mag_program, mag_rows = derivation.magnitudes()  # type: ignore[misc]
        env_in = {sympy.Symbol(v, real=True): torch.tensor([val], dtype=torch.float64) for v, val in self.values.items()}
        env = compile_program(derivation.program, TORCH, quantities).run(dict(env_in))
        mags = compile_program(mag_program, TORCH, {f"m{k}": e for k, e in mag_rows[0].items()}).run(dict(env_in))
        kink = _kinks_hit(graph, derivation, env_in)

        def value(name: str, store: dict[sympy.Symbol, Any]) -> float | None:
            sym = sympy.Symbol(f"extra[{name}]", real=True)
            if sym not in store:
                return None
            v = store[sym]
            return float(v.flatten()[0]) if isinstance(v, torch.Tensor) else float(v)

        return {"targets": targets, "value": value, "env": env, "mags": mags, "has_cuts": graph.has_cuts,
                "graph": graph, "kink": kink, "out": id(out)}

    def _verify(self, plan: dict[str, Any] | None, before: dict[int, Any], after: dict[int, Any], line: int,
                source: str, accumulate: bool, only: list[int] | None = None) -> None:
        event: dict[str, Any] = {"line": line, "source": source, "checked": 0, "errors": 0}
        self.backwards.append(event)
        if plan is None:
            return
        value, env, mags = plan["value"], plan["env"], plan["mags"]
        hooked = {tid for tid, _ in self.hooks}
        for tid, keys in plan["targets"].items():
            if only is not None and tid not in only:
                continue
            rec = self.records[tid]
            t = rec.tensor
            u = 2.0 ** -24 if t.dtype == torch.float32 else 2.0 ** -53 if t.dtype == torch.float64 else 2.0 ** -8
            full = np.array([value(f"f{k}", env) or 0.0 if nid >= 0 else 0.0 for k, nid in keys])
            cut = np.array([value(f"c{k}", env) or 0.0 if nid >= 0 else 0.0 for k, nid in keys]) \
                if plan["has_cuts"] else None
            mag = np.array([abs(value(f"m{nid}", mags) or 0.0) if nid >= 0 else 0.0 for _, nid in keys])
            shape = tuple(t.shape)
            gets_grad = t.requires_grad and (t.is_leaf or t.retains_grad) and not (only is None and rec.cut)
            prev = before.get(tid)
            prev_arr = np.zeros(len(keys)) if prev is None else prev.flatten()
            if only is not None:
                gets_grad = True
                prev_arr = np.zeros(len(keys))
            expected = prev_arr + full if accumulate else full
            got = after.get(tid)
            if only is None:  # .grad after this backward; torch.autograd.grad returns, it does not fill .grad
                rec.symbolic.append(_shape(expected if gets_grad else full, shape))
                rec.grads.append(None if got is None else _shape(got.flatten(), shape))
            else:
                event.setdefault("returned", []).append(
                    {"tensor": tid, "grad": None if got is None else _shape(got.flatten(), shape),
                     "exact": _shape(full, shape)})
            if not gets_grad:
                rec.statuses.append("grad is None: not a leaf" if t.requires_grad and not t.is_leaf else
                                    "no grad (does not require grad)")
                continue
            event["checked"] += 1
            got_arr = np.zeros(len(keys)) if got is None else got.flatten()
            tol = 64 * u * (np.abs(expected) + mag + np.abs(prev_arr)) + 1e-30
            finite = np.isfinite(expected) & np.isfinite(got_arr)
            if not finite.all():
                same = np.all((np.isnan(expected) & np.isnan(got_arr)) | (expected == got_arr))
                if same:
                    rec.statuses.append("nonfinite (agrees)")
                else:
                    rec.statuses.append("nonfinite")
                    event["errors"] += 1
                    self._finding("nonfinite", line, f"backward at line {line}: .grad of {{{tid}}} is "
                                  f"{_fmt(got_arr)} where the exact gradient is {_fmt(expected)}", str(tid))
                continue
            if np.all(np.abs(got_arr - expected) <= tol):
                rec.statuses.append("ok")
                continue
            if plan["kink"]:
                rec.statuses.append("kink")
                self._finding("nondifferentiable", line, f"backward at line {line}: {{{tid}}} .grad {_fmt(got_arr)}"
                              f", sympy {_fmt(expected)} — {plan['kink']}", str(tid))
                continue
            if cut is not None:
                expected_cut = prev_arr + cut if accumulate else cut
                if np.all(np.abs(got_arr - expected_cut) <= tol + 64 * u * np.abs(expected_cut)):
                    rec.statuses.append("untracked")
                    event["errors"] += 1
                    cuts = sorted({(r.cut, r.line) for r in self.records.values() if r.cut})
                    where = ", ".join(f"{c} at line {ln}" for c, ln in cuts) or "a cut"
                    self._finding("untracked", line, f"backward at line {line}: .grad of {{{tid}}} is "
                                  f"{_fmt(got_arr)}, the exact gradient is {_fmt(expected)}; the difference is "
                                  f"what {where} hides from autograd", str(tid))
                    continue
            if self.stale:
                rec.statuses.append("stale graph")
                event["errors"] += 1
                continue
            if hooked and self._hook_on_path(tid, hooked, plan["graph"]):
                rec.statuses.append("changed by a hook")
                lines = sorted({ln for h, ln in self.hooks if h in self._downstream(tid) | {tid}})
                self._finding("hook", lines[0] if lines else line, f"backward at line {line}: .grad of {{{tid}}} "
                              f"is {_fmt(got_arr)}, the plain gradient is {_fmt(expected)}: the hook at line"
                              f"{'s' if len(lines) > 1 else ''} {', '.join(map(str, lines))} changed it", str(tid))
                continue
            rec.statuses.append("mismatch")
            event["errors"] += 1
            self._finding("mismatch", line, f"backward at line {line}: .grad of {{{tid}}} is {_fmt(got_arr)} where "
                          f"the exact gradient is {_fmt(expected)}", str(tid))

    def _downstream(self, tid: int) -> set[int]:
        """Tensors computed from tensor `tid` (by the records' inputs)."""
        out: set[int] = set()
        changed = True
        while changed:
            changed = False
            for k, r in self.records.items():
                if k not in out and (tid in r.inputs or out & set(r.inputs)):
                    out.add(k)
                    changed = True
        return out

    def _hook_on_path(self, tid: int, hooked: set[int], graph: Graph) -> bool:
        return bool(hooked & (self._downstream(tid) | {tid}))


def _subgraph(nodes: list[Any], root: int) -> tuple[Graph, dict[int, int]]:
    """The nodes `root` depends on, renumbered in order, as a graph with output `root`."""
    from ..ir.graph import Node

    needed = {root}
    for node in reversed(nodes[: root + 1]):
        if node.id in needed:
            needed.update(node.args)
    remap = {old: new for new, old in enumerate(sorted(needed))}
    out = [Node(remap[n.id], n.op, tuple(remap[a] for a in n.args), n.span, n.name, n.value, None, n.origin)
           for n in nodes if n.id in needed]
    return Graph(tuple(out), remap[root], tuple(n.name for n in out if n.op == "var")), remap


def _kinks_hit(graph: Graph, derivation: Any, env_in: dict[sympy.Symbol, Any]) -> str:
    """Which kink (if any) the point sits on, in words."""
    kinks = [n for n in graph.nodes if OPS.get(n.op) is not None and OPS[n.op].kink is not None
             and graph.depends_on_vars[n.id]]
    if not kinks:
        return ""
    extra = {f"k{n.id}:{i}": derivation.values[a] for n in kinks for i, a in enumerate(n.args)}
    env = compile_program(derivation.program, TORCH, extra).run(dict(env_in))
    for n in kinks:
        args = [env[sympy.Symbol(f"extra[k{n.id}:{i}]", real=True)] for i in range(len(n.args))]
        args = [a if isinstance(a, torch.Tensor) else torch.tensor(float(a), dtype=torch.float64) for a in args]
        if bool(torch.as_tensor(OPS[n.op].kink(torch, *args)).any()):
            return f"{n.op} is at a kink there: {OPS[n.op].convention}"
    return ""


def _sum(xs: list[Any]) -> Any:
    total = xs[0]
    for x in xs[1:]:
        total = total + x
    return total


def _grad_of(t: torch.Tensor) -> np.ndarray | None:
    if not (t.is_leaf or t.retains_grad):
        return None
    g = t.grad
    return None if g is None else g.detach().cpu().to(torch.float64).numpy().copy()


def _shape(a: np.ndarray, shape: tuple[int, ...]) -> Any:
    arr = np.asarray(a, dtype=np.float64).reshape(shape) if np.asarray(a).size == int(np.prod(shape)) else np.asarray(a)
    return float(arr) if arr.ndim == 0 else arr.tolist()


def _fmt(a: np.ndarray) -> str:
    a = np.asarray(a, dtype=np.float64)
    if a.size == 1:
        return f"{float(a.flatten()[0]):.6g}"
    return "[" + ", ".join(f"{v:.6g}" for v in a.flatten()[:6]) + (", ...]" if a.size > 6 else "]")


def _flat(args: Any) -> list[Any]:
    out = []
    for a in args:
        if isinstance(a, (list, tuple)):
            out += _flat(a)
        else:
            out.append(a)
    return out


def _from_tracked(rec: _Recorder, args: tuple) -> bool:
    return any(isinstance(a, torch.Tensor) and id(a) in rec.records for a in _flat(args))


# ---------------------------------------------------------------- running a script
def run_script(path: str, argv: list[str] | None = None) -> RunReport:
    """Run the script at `path` as ``python path argv...`` would, and verify its autograd.

    Returns:
        A `RunReport` (its `error` holds the script's own traceback if it raised).
    """
    from ..errors import InputError

    if not os.path.isfile(path):
        raise InputError(f"{path!r}: no such file")
    with open(path, encoding="utf-8") as f:
        source = f.read()
    try:
        code = compile(source, path, "exec")
    except SyntaxError as exc:
        raise InputError(f"{path}:{exc.lineno}: the script has a syntax error: {exc.msg}") from None
    namespace: dict[str, Any] = {"__name__": "__main__", "__file__": path, "__builtins__": builtins}
    recorder = _Recorder(path)
    old_argv, old_path = sys.argv, list(sys.path)
    sys.argv = [path] + list(argv or [])
    sys.path.insert(0, os.path.dirname(os.path.abspath(path)))
    error = None
    try:
        with recorder:
            exec(code, namespace)  # noqa: S102 - running the user's script is what was asked
    except SystemExit as exc:
        if exc.code not in (None, 0):
            error = f"the script exited with status {exc.code}"
    except BaseException as exc:  # noqa: BLE001 - the script's error, reported with its traceback
        if isinstance(exc, KeyboardInterrupt):
            raise
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if not _internal(f.filename)
                  and os.path.abspath(f.filename) != os.path.abspath(__file__)]
        error = ("Traceback (most recent call last):\n" + "".join(traceback.format_list(frames))
                 + "".join(traceback.format_exception_only(type(exc), exc))).rstrip()
    finally:
        sys.argv, sys.path[:] = old_argv, old_path
    return _report(path, recorder, namespace, error)


def _report(path: str, rec: _Recorder, namespace: dict[str, Any], error: str | None) -> RunReport:
    names = _names(rec, namespace)
    rows = []
    for tid, r in sorted(rec.records.items(), key=lambda kv: kv[1].order):
        t = r.tensor
        if not (t.requires_grad or r.cut or r.grads):
            continue
        value = t.detach().cpu().to(torch.float64)
        status = "; ".join(sorted(set(r.statuses), key=r.statuses.index)) if r.statuses else (
            "not reached by a backward" if rec.backwards else "no backward")
        if r.cut and not t.requires_grad:
            status = {"no_grad": "made under no_grad: no grad_fn", "detach": "detached: a constant for autograd",
                      ".data": ".data: a constant for autograd"}.get(r.cut, status)
        rows.append(TensorRow(
            name=names.get(tid, f"line {r.line}"), line=r.line, is_leaf=t.is_leaf, requires_grad=t.requires_grad,
            grad_fn=type(t.grad_fn).__name__ if t.grad_fn is not None else None,
            retains_grad=bool(t.requires_grad and not t.is_leaf and t.retains_grad),
            value=float(value) if value.dim() == 0 else value.tolist(),
            grad=tuple(r.grads), symbolic_grad=tuple(r.symbolic), status=status,
        ))
    findings = []
    for f in rec.findings:
        msg = f.message
        for tid, name in names.items():
            msg = msg.replace("{" + str(tid) + "}", name)
        findings.append(RunFinding(f.kind, f.severity, f.line, msg, f.explanation, f.fix,
                                   names.get(int(f.tensor), f.tensor) if f.tensor.isdigit() else f.tensor))
    for cut in rec.stale:
        explanation, fix = EXPLANATIONS["stale-graph"]
        findings.append(RunFinding("stale-graph", "error", cut.line, f"line {cut.line} `{cut.source}`", explanation,
                                   fix))
    if rec.stopped:
        explanation, fix = EXPLANATIONS["not-verified"]
        findings.append(RunFinding("not-verified", "warning", 0, rec.stopped, explanation, fix))
    if not rec.backwards and error is None:
        explanation, fix = EXPLANATIONS["no-autograd"]
        findings.append(RunFinding("no-autograd", "info", 0, "the script did no backward", explanation, fix))
    for event in rec.backwards:
        for item in event.get("returned", []):
            item["tensor"] = names.get(item["tensor"], str(item["tensor"]))
    edges = [(names.get(i, f"line {rec.records[i].line}"), names.get(tid, f"line {r.line}"), r.cut or "")
             for tid, r in rec.records.items() for i in r.inputs if i in rec.records]
    return RunReport(os.path.basename(path), tuple(rows), tuple(rec.backwards), tuple(findings), error,
                     graph={"edges": edges})


def _names(rec: _Recorder, namespace: dict[str, Any]) -> dict[int, str]:
    """Tensor id -> the variable it is bound to at the end, or that its line assigned it to."""
    names: dict[int, str] = {}
    for name, value in namespace.items():
        if isinstance(value, torch.Tensor) and id(value) in rec.records and not name.startswith("_"):
            names.setdefault(id(value), name)
    last_on_line: dict[int, int] = {}
    for tid, r in sorted(rec.records.items(), key=lambda kv: kv[1].order):
        last_on_line[r.line] = tid
    taken = set(names.values())
    for tid, r in rec.records.items():
        if tid in names:
            continue
        m = _ASSIGN.match(r.source)
        if m and last_on_line.get(r.line) == tid:
            name = m.group(1)
            names[tid] = name if name not in taken else f"{name} (line {r.line})"
        else:
            text = r.source if len(r.source) <= 24 else r.source[:21] + "..."
            names[tid] = f"{text} (line {r.line})"
    return names
