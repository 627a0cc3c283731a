"""What `gradcheck-sym run` verified, as data: compact rows, backwards, de-duplicated findings.

Tensors are named as a student names them: a module's parameter by its attribute path
(``model.0.weight``), a tensor still bound to a global name by that name, any other by the
variable its line assigned it to (``h (line 12)``) — and tensors made by the same line in a
loop are one row (``line 61 ×2000``: the last values, how many checks passed).  Findings of one
kind about one tensor are one finding with a count and the first and last line.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["RUN_SCHEMA_VERSION", "BACKWARD_ON", "EXPLANATIONS", "SEVERITY", "TensorRow", "BackwardRow", "RunFinding",
           "RunReport", "summary_value"]

RUN_SCHEMA_VERSION = 2

# What each finding means, in plain words, and what to do about it (pinned in tests).
EXPLANATIONS: dict[str, tuple[str, str]] = {
    "mismatch": ("autograd's gradient differs from the exact derivative of what the script computed.",
                 "Check custom autograd Functions and in-place changes; compare with the exact value shown."),
    "untracked": ("part of the computation was hidden from autograd (torch.no_grad, .detach(), .data or .item()), "
                  "so its gradient is missing.",
                  "Keep the operation in the graph; use .detach() or no_grad only where a constant is meant, and "
                  "declare such a cut (a GAN's fake.detach(), a target network) with --intended FILE:LINE=cut."),
    "stale-graph": (".data bypasses autograd: the value changed but grad_fn still describes the old value, so "
                    "backward differentiates a computation that no longer matches the numbers.",
                    "Use .detach() for a constant, or keep the operation in the graph (e.g. z = z * 2)."),
    "hook": ("a hook (a tensor's register_hook, a module's register_full_backward_hook or _pre_hook) changed the "
             "gradient on its way back.",
             "This is what the hook does; make sure it is meant (e.g. gradient clipping), or remove it."),
    "nonleaf-grad": ("the script read .grad of a non-leaf tensor: autograd only fills .grad of leaves (tensors "
                     "created by the user with requires_grad=True), so it is None (torch warns about it).",
                     "Call .retain_grad() on the tensor before backward, or read the leaf's .grad."),
    "nondifferentiable": ("the derivative is undefined here (a kink, tie or jump); torch uses a convention.",
                          "Nothing to fix; be aware that another framework may give another value."),
    "nonfinite": ("a gradient is inf or NaN where the exact derivative is not (or the other way round).",
                  "Look for 0 * inf, e.g. the unselected branch of torch.where with sqrt or log."),
    "not-verified": ("gradcheck-sym could not verify this backward: it depends on something the tracer could not "
                     "model, or gradcheck-sym itself failed there.",
                     "Check that part with gradcheck_sym.check_function(..., expected=...), or report it."),
    "frozen": ("a parameter that no optimizer of the script's updates was used under no_grad or through a detach, "
               "so autograd gave it no gradient: a frozen network (a distillation's teacher, a target network).",
               "Nothing to fix if it is meant to stay as it is (teacher.requires_grad_(False) says so); if it should "
               "learn, keep it out of no_grad and give it to an optimizer."),
    "discarded": ("a cut (a .detach(), no_grad) kept part of a parameter's gradient from autograd in this backward, "
                  "but the script then reset the parameter's .grad (zero_grad) before any optimizer step, read or "
                  "later backward used it: the cut changed nothing the script used (a GAN's fake.detach() in the "
                  "discriminator's step).",
                  "Nothing to fix. (Had a step used that .grad — the same detach in the generator's step — it "
                  "would be an untracked error.)"),
    "intended-unused": ("a declared deviation (--intended, intended=) matched nothing the script did, so it "
                        "changed nothing.",
                        "Check the declaration's file and line — the line of the operation a cut makes constant, "
                        "inside the no_grad block — or the custom Function's name."),
    # (the same kind, where the recording was stopped on purpose: a time budget, or memory)
    "not-verified-stopped": ("gradcheck-sym stopped verifying there: the time budget given with --timeout ran out; "
                             "the script ran those backwards, they were not compared.",
                             "Give a larger --timeout, or run fewer iterations; a model can also be checked on its "
                             "own with gradcheck_sym.check_function."),
    "not-verified-memory": ("gradcheck-sym stopped recording there: its float64 copies of the script's tensors and "
                            "their reverse sweep would not fit in the memory available, so it let go of them rather "
                            "than risk the script; the script ran those backwards, they were not compared.",
                            "Run the script with a smaller batch (the same code is checked the same way), or check "
                            "the model on its own with gradcheck_sym.check_function."),
    "backward-raised": ("the script's own backward raised an error (torch's, or one of the script's hooks or custom "
                        "Functions), so it made no gradient and there was nothing to compare.",
                        "Fix what the error names (the traceback shows it, unless the script caught it); for 'modified "
                        "by an inplace operation', write the step out of place (y = y * 2, not y *= 2)."),
    "no-autograd": ("the script never called backward() or torch.autograd.grad(), so there was nothing to verify.",
                    "Create a leaf with requires_grad=True, compute a scalar from it and call .backward()."),
    "self-check": ("the script checks or computes gradients with torch's own tools (torch.autograd.gradcheck, "
                   "gradgradcheck, torch.autograd.functional or torch.func): their internal backward calls are "
                   "theirs, not compared here.",
                   "Nothing to fix."),
    "intended": ("the gradient differs from the exact derivative as a declared deviation says it should (a cut or "
                 "a custom Function declared with intended=... / --intended).",
                 "Nothing to fix: it is meant; everything else is still checked."),
    "torch-cut": ("torch's own code computed part of this line under no_grad on purpose, while the script had grad "
                  "on (spectral_norm's power iteration): those values are constants of the gradient by torch's "
                  "design, in the exact gradient as in autograd's.",
                  "Nothing to fix."),
    "replayed": ("a custom Function's backward rounds differently from our formulas in float32; run again in "
                 "float64 on the same inputs, it matched the exact gradient, so the float32 differences are rounding.",
                 "Nothing to fix."),
}
SEVERITY = {"mismatch": "error", "untracked": "error", "stale-graph": "error", "hook": "warning",
            "nonleaf-grad": "warning", "nondifferentiable": "info", "nonfinite": "error", "not-verified": "warning",
            "no-autograd": "info", "self-check": "info", "backward-raised": "info",
            "replayed": "info", "intended": "info", "frozen": "info", "intended-unused": "warning",
            "discarded": "info", "torch-cut": "info"}


def summary_value(t: Any) -> Any:
    """A value for people and JSON: a number, a short list, or shape/min/max/first elements."""
    if t is None or not hasattr(t, "reshape"):
        return t  # (already a summary: a number, a list, a dict)
    if str(getattr(t, "layout", "torch.strided")) != "torch.strided":  # a sparse .grad (nn.Embedding(sparse=True))
        try:
            t = t.to_dense()
        except (RuntimeError, NotImplementedError):
            return {"layout": str(t.layout).replace("torch.", ""), "shape": list(t.shape)}
    flat = t.reshape(-1)
    n = flat.numel()
    if t.dim() == 0:
        return float(t)
    if n <= 6:
        return [float(v) for v in flat] if t.dim() == 1 else t.tolist()
    first = [float(v) for v in flat[:3].tolist()]
    if flat.is_floating_point():  # one pass for both ends (a training loop summarises tensors by the thousand)
        low, high = (float(v) for v in flat.aminmax())
        if low == low and high == high:
            return {"shape": list(t.shape), "min": low, "max": high, "first": first}
    finite = flat[flat == flat]  # (NaN entries left out)
    return {"shape": list(t.shape), "min": float(finite.min()) if finite.numel() else float("nan"),
            "max": float(finite.max()) if finite.numel() else float("nan"), "first": first}


@dataclass(frozen=True)
class TensorRow:
    """One row of the table: a tensor, or the tensors one line made in a loop.

    Attributes:
        name: the name a student would use (see the module docstring).
        line: the line that made it (or first used it, for a leaf).
        count: how many tensors the row stands for (loop iterations).
        is_leaf, requires_grad, grad_fn, retains_grad: what torch says (of the last one).
        shape: its shape.
        value: its value (summarised), when known.
        grad: its ``.grad`` after the last backward that reached it (summarised).
        exact: the exact value ``.grad`` should hold then (None where an earlier gradient was not verified).
        checks: (passed, compared) over every backward that reached the row's tensors.
        status: "ok" or what went wrong, in a few words.
        grads: ``.grad`` after each backward that reached it (the first and the latest few).
        exacts: the exact gradient after each of those backwards.
    """

    name: str
    line: int
    count: int
    is_leaf: bool
    requires_grad: bool
    grad_fn: str | None
    retains_grad: bool
    shape: tuple[int, ...]
    value: Any
    grad: Any
    exact: Any
    checks: tuple[int, int]
    status: str
    grads: tuple[Any, ...] = ()
    exacts: tuple[Any, ...] = ()


@dataclass(frozen=True)
class BackwardRow:
    """The backward calls of one line: how many, how many verified, what was compared."""

    line: int
    source: str
    kind: str
    calls: int
    verified: int
    not_verified: int
    compared: int
    errors: int
    reasons: tuple[str, ...] = ()
    returned: tuple[tuple[str, Any, Any], ...] = ()
    raised: int = 0  # calls that raised the script's own error (not counted in not_verified)


@dataclass(frozen=True)
class RunFinding:
    """One finding of a run, de-duplicated: kind, severity, the first and last line, how often."""

    kind: str
    severity: str
    line: int
    message: str
    explanation: str
    fix: str
    tensor: str = ""
    count: int = 1
    last_line: int = 0


@dataclass(frozen=True)
class RunReport:
    """What `run_script` verified."""

    script: str
    tensors: tuple[TensorRow, ...]
    backwards: tuple[BackwardRow, ...]
    findings: tuple[RunFinding, ...]
    error: str | None = None
    exit_code: int = 0
    summary: dict[str, int] = field(default_factory=dict)
    graph: Any = None  # nodes and edges for pictures (not serialised)

    @property
    def ok(self) -> bool:
        return self.error is None and self.exit_code == 0 and not any(f.severity == "error" for f in self.findings)

    def to_dict(self) -> dict[str, Any]:
        from .records import _finite_json

        return {"version": RUN_SCHEMA_VERSION, "kind": "run", "script": self.script, "ok": self.ok,
                "exit_code": self.exit_code, "error": self.error, "summary": dict(self.summary),
                "tensors": [_finite_json(asdict(t)) for t in self.tensors],
                "backwards": [_finite_json(asdict(b)) for b in self.backwards],
                "findings": [asdict(f) for f in self.findings]}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    def __str__(self) -> str:
        from .run_render import render_run_text

        return render_run_text(self)

    def _repr_html_(self) -> str:
        from .run_render import render_run_html

        return render_run_html(self)

    def teacher_line(self) -> str:
        """The summary line a teacher can read aloud."""
        s = self.summary
        calls = s.get("backward_calls", 0)
        if not calls:
            return "The script never called backward, so there was nothing to verify."
        parts = [f"{s.get('verified', 0)} of {calls} backward call{'s' if calls != 1 else ''} verified"]
        if s.get("not_verified"):
            parts.append(f"{s['not_verified']} not verified")
        if s.get("raised"):
            parts.append(f"{s['raised']} raised the script's error")
        n = s.get("gradients", 0)
        parts.append(f"{n} gradient{'s' if n != 1 else ''} compared")
        errors = sum(1 for f in self.findings if f.severity == "error")
        verdict = (f"{errors} problem{'s' if errors != 1 else ''} found" if errors else
                   "every gradient matched the exact derivative" if n else "nothing was compared")
        return ", ".join(parts) + f": {verdict}."


_ASSIGN = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_.]*)\s*(?:\[[^\]]*\]\s*)?(?:[+\-*/@]|//|\*\*)?=(?!=)")


def assigned_name(source: str) -> str | None:
    """The name a line's statement binds (``x = ...``, ``x += ...``), or the tensor whose requires_grad it sets
    (``data.requires_grad = True``, ``data.requires_grad_()``: the leaf made there is ``data``), or whose gradient
    it retains (``layer.out.retain_grad()``, in a loop over hand-written layers)."""
    m = _ASSIGN.match(source)
    if m:
        name = m.group(1)
        return name[: -len(".requires_grad")] if name.endswith(".requires_grad") else name
    m = _MARKED.match(source) or BACKWARD_ON.match(source)
    return m.group(1) if m else None


# `data.requires_grad_()`, `layer.out.retain_grad()`: the tensor a line marks
_MARKED = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_.]*)\.(?:requires_grad_|retain_grad)\(")
# `loss.backward(...)`: the tensor a backward line names (a loss made elsewhere, on a helper's return line); a plain
# name only (`torch.autograd.backward(...)`, `accelerator.backward(loss)` name no tensor)
BACKWARD_ON = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\.backward\(")
