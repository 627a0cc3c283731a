"""What a backward's findings say: the messages and reasons `judge.backward` writes (the names of tensors are
filled in by the report, which knows them only after the script ends)."""

from __future__ import annotations

from typing import Any

import torch

from ..autograd.attrs import grad_fn_name
from ..ir.program import Var
from ..ops.quick import any_true
from ..reference.interpret import DEFINED_CUTS

__all__ = ["info_name", "unseen", "worst", "message", "cuts_between"]


def info_name(tr: Any, t: torch.Tensor) -> str:
    """A name for `t` in a reason: ``{#serial}``, which the report replaces by the tensor's row name (names are
    made after the script ends: a parameter's attribute path, an assignment's target)."""
    info = tr.infos.get(id(t))
    serial = getattr(info, "serial", None)
    return f"{{#{serial}}}" if serial is not None else "a tensor"


def unseen(out: torch.Tensor) -> str:
    """Why an output has no trace, as precisely as its type and grad_fn tell."""
    if type(out) is not torch.Tensor and not isinstance(out, torch.nn.Parameter):
        return f"its output is a {type(out).__name__} (a tensor subclass), whose operations are not traced"
    fn = grad_fn_name(out) or ""
    if out.device.type != "cpu":
        return (f"its output is on {out.device}: operations on {out.device.type} tensors are not traced (the "
                "reference runs on the CPU)")
    if "Compiled" in fn:
        return f"its output was computed inside torch.compile ({fn}), which the tracer cannot see into"
    return "its output was not computed by torch ops the tracer saw"


def worst(kinds: list[str]) -> str:
    for k in ("nonfinite", "mismatch", "untracked", "nondifferentiable", "nonfinite-agree"):
        if k in kinds:
            return k
    return kinds[0]


def values_text(t: Any) -> str:
    """A few entries of a tensor, and its shape: "[1, 2, 3, 4, ...] (shape (3, 2))" (a number alone as one)."""
    if t is None:
        return "None"
    flat = t.reshape(-1)
    if flat.numel() == 1:
        return f"{float(flat[0]):.6g}"
    shown = ", ".join(f"{float(v):.6g}" for v in flat[:4])
    return f"[{shown}{', ...' if flat.numel() > 4 else ''}] (shape {tuple(t.shape)})"


def _first(mask: Any, a: Any, r: Any) -> str:
    """Where the first failing entry of a tensor is, with both values, unless `values_text` shows it visibly different:
    the entries it shows may all agree."""
    if mask is None or a.numel() <= 1 or not any_true(mask):
        return ""
    flat = int(mask.reshape(-1).nonzero()[0])
    x, y = float(a.reshape(-1)[flat]), float(r.reshape(-1)[flat])
    if flat < 4 and f"{x:.6g}" != f"{y:.6g}":
        return ""  # shown, and visibly different
    at = ", ".join(str(int(i)) for i in torch.unravel_index(torch.tensor(flat), tuple(a.shape)))
    return f" (first at [{at}]: {x:.9g} vs {y:.9g})"


def cut_line(tr: Any, c: Any) -> int:
    """The line a report names for cut `c`: a no_grad's is the statement inside the script's `with torch.no_grad():`
    that ran it, where known (the op itself may be a module's forward, lines away from any no_grad), else the op's
    own line."""
    return c.line or tr.sites[c.site].line


def message(status: str, ev: Any, a: Any, r: Any, cut: Any, tr: Any, mask: Any = None, cuts: Any = None,
            absent: bool = False) -> str:
    """A finding's text (`cuts`: the cuts to name for an untracked gradient, default every cut of the trace;
    `absent`: autograd gave no gradient at all, `a` is its zeros)."""
    what = "returned" if ev.kind == "autograd.grad" else "added to .grad"
    if absent:  # (its .grad stayed None: "is [0, 0, ...]" read as if autograd had written zeros)
        got = "it returned None" if ev.kind == "autograd.grad" else "its .grad is None"
        head = f"{ev.kind} at line {ev.line}: autograd gave {{tensor}} no gradient ({got})"
    else:
        head = f"{ev.kind} at line {ev.line}: the gradient {what} of {{tensor}} is {values_text(a)}"
    if status in ("untracked", "frozen"):
        places = sorted({(c.kind, cut_line(tr, c)) for c in (tr.cuts if cuts is None else cuts)})
        where = ", ".join(f"{k} at line {ln}" for k, ln in places) or "a cut"
        if status == "frozen":
            return (f"{head}, the exact gradient is {values_text(r)}: {where} hides it, and no optimizer of the "
                    "script's updates it: a frozen network (a teacher, a target network)")
        return f"{head}, the exact gradient is {values_text(r)}; the difference is what {where} hides from autograd"
    if status == "intended":
        return f"{head}, the exact gradient is {values_text(r)}: the deviation declared intended accounts for it"
    if status == "hook":
        return f"{head}, the plain gradient is {values_text(r)}: a hook on its way back changed it"
    if status == "nondifferentiable":
        return f"{head}, sympy {values_text(r)}: a kink, tie or jump of the run, where torch follows a convention"
    return f"{head} where the exact gradient is {values_text(r)}{_first(mask, a, r)}"


def cuts_between(tr: Any, plan: Any, var: Any) -> list[Any]:
    """The cuts between this backward's output and `var`: those whose value depends on `var` and that the sweep
    reached (a GAN's discriminator step names its `fake.detach()`, not the `.item()` of a printed loss or the
    no_grad of a module's construction); every cut where that cannot be told or none is found."""
    if var is None or plan.program is None:
        return list(tr.cuts)
    depends = {var.id}
    for e in plan.program.eqns:
        for a in e.inputs:
            if isinstance(a, Var) and a.id in depends:
                depends.update(v.id for v in e.outputs)
                break
    named = {v: c for c in tr.cuts for v in c.vars}
    found: dict[int, Any] = {}
    for e in plan.program.eqns:
        if e.prim != "stop" or e.params.get("kind") in DEFINED_CUTS:
            continue
        for v in e.outputs:
            if v.id in depends and plan.cts.get(v.id) is not None:
                if v.id not in named:
                    return list(tr.cuts)  # a cut made by the tracer itself (an alias's root written): not told apart
                found[id(named[v.id])] = named[v.id]
    return list(found.values()) or list(tr.cuts)
