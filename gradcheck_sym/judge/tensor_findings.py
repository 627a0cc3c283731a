"""Verdicts of the tensor judge gathered into findings: counts, the worst elements, the cuts, the prose.

Each element that fails is added once with its kind; a group (kind, severity, input
or cut) keeps how many points and entries it covers and its worst examples, and
becomes one `Finding` at the end.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

from ..reference.interpret import TORCH_NO_GRAD
from ..report.records import CutLocation, Example, Finding
from .compare import fmt

__all__ = ["Accumulator", "element_name", "output_names", "CUT_WORDS"]

MAX_EXAMPLES = 3

CUT_WORDS = {
    "no_grad": "it runs with grad mode off (torch.no_grad / set_grad_enabled(False) / inference_mode), so autograd "
               "never sees it",
    "detach": ".detach() makes autograd treat the value as a constant",
    ".data": ".data reads the value past autograd, which treats it as a constant",
    ".item()": ".item() turns the value into a Python number, a constant for autograd",
    ".tolist()": ".tolist() turns the values into Python numbers, constants for autograd",
    "non-differentiable output": "torch declares this output of the op non-differentiable: autograd never gives it "
                                 "a gradient",
    TORCH_NO_GRAD: "torch's own code runs it with grad mode off on purpose (spectral_norm's power iteration): a "
                   "constant of the gradient by torch's design, in the exact gradient too",
}


def element_name(name: str, shape: tuple[int, ...], flat: int) -> str:
    """``w[1,2]`` for the flat index `flat` of a tensor of `shape` (``x`` for a 0-d one)."""
    if not shape:
        return name
    idx = []
    for s in reversed(shape):
        idx.append(flat % s)
        flat //= s
    return f"{name}[{','.join(str(i) for i in reversed(idx))}]"


def output_names(shapes: Sequence[tuple[int, ...]]) -> list[str]:
    names = []
    multi = len(shapes) > 1
    for i, shape in enumerate(shapes):
        base = f"out{i}" if multi else "out"
        n = math.prod(shape)
        names += [element_name(base, shape, j) for j in range(n)]
    return names


@dataclass
class _Group:
    kind: str
    severity: str
    key: str
    points: set[int] = field(default_factory=set)
    entries: set[str] = field(default_factory=set)
    bulk: int = 0
    heap: list[tuple[float, int, Example]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)


class Accumulator:
    def __init__(self) -> None:
        self.groups: dict[tuple[str, str, str], _Group] = {}
        self.cut_sites: dict[tuple[str, int], dict[str, Any]] = {}
        self.hint_ks: dict[str, list[float | None]] = {}  # per custom Function: the factor fitted per element
        self.problems: list[str] = []  # declarations that could not be applied
        self.declared: list[Any] = []  # the declarations (for the intended findings' words)
        self._seq = 0

    def problem(self, text: str) -> None:
        if text not in self.problems:
            self.problems.append(text)

    def _group(self, kind: str, severity: str, key: str) -> _Group:
        return self.groups.setdefault((kind, severity, key), _Group(kind, severity, key))

    def _example(self, g: _Group, ex: Example, score: float) -> None:
        self._seq += 1
        item = (score if math.isfinite(score) else 1e300, -self._seq, ex)
        if len(g.heap) < MAX_EXAMPLES:
            heapq.heappush(g.heap, item)
        elif item > g.heap[0]:
            heapq.heapreplace(g.heap, item)

    def point(self, kind: str, severity: str, key: str, index: int, point: dict[str, float],
              autograd: float | None = None, symbolic: float | None = None, count: int = 0) -> None:
        g = self._group(kind, severity, key)
        g.points.add(index)
        g.bulk = max(g.bulk, count)
        if len(g.heap) < MAX_EXAMPLES:
            self._example(g, _example(index, point, autograd, symbolic), 0.0)

    def note(self, kind: str, severity: str, key: str, index: int, text: str, site: Any) -> None:
        g = self._group(kind, severity, key)
        g.points.add(index)
        g.info["text"], g.info["site"] = text, site

    def not_verified(self, name: str, index: int, reasons: list[str], n: int) -> None:
        g = self._group("not-verified", "warning", name)
        g.points.add(index)
        g.bulk = max(g.bulk, n)
        g.info.setdefault("reasons", [])
        for r in reasons:
            if r not in g.info["reasons"]:
                g.info["reasons"].append(r)

    def element(self, kind: str, severity: str, group: str, index: int, point: dict[str, float], quantity: str,
                a: float, r: float, tol: float, *, entries_key: str, what: str = "d") -> None:
        g = self._group(kind, severity, group)
        g.points.add(index)
        g.entries.add(entries_key)
        g.info.setdefault("what", what)
        ex = _example(index, point, a, r, tol, quantity)
        self._example(g, ex, ex.abs_err / tol if ex.abs_err is not None and tol > 0 else math.inf)

    def many(self, kind: str, severity: str, group: str, index: int, point: dict[str, float], quantity: Any,
             a: Any, r: Any, tol: Any, mask: Any, *, cut: Any = None, what: str = "d") -> None:
        """All the elements of `mask` at once: counted, and the worst few kept as examples."""
        g = self._group(kind, severity, group)
        g.points.add(index)
        n = int(mask.sum())
        g.bulk += n
        g.info.setdefault("what", what)
        idx = mask.reshape(-1).nonzero().reshape(-1)
        err = (a - r).abs().reshape(-1)[idx]
        score = err / tol.reshape(-1)[idx].clamp(min=1e-300)
        score = score.nan_to_num(1e300, 1e300, 1e300)
        top = idx[score.topk(min(MAX_EXAMPLES, len(idx))).indices] if len(idx) else idx
        for j in top.tolist():
            av, rv, tv = float(a.reshape(-1)[j]), float(r.reshape(-1)[j]), float(tol.reshape(-1)[j])
            ex = _example(index, point, av, rv, tv, quantity(j))
            if cut is not None:
                g.info["cut_value"] = float(cut.reshape(-1)[j])
            self._example(g, ex, ex.abs_err / tv if ex.abs_err is not None and tv > 0 else math.inf)

    def reentrant(self, name: str, index: int, point: dict[str, float], functions: str, element: str, first: float,
                  second: float, raised: str = "") -> None:
        g = self._group("not-reentrant", "error", name)
        g.points.add(index)
        g.info.update(functions=functions, element=element, first=first, second=second, raised=raised)

    def untracked(self, name: str, index: int, point: dict[str, float], quantity: str, a: float, r: float,
                  c: float, tol: float) -> None:
        g = self._group("untracked", "error", name)
        g.points.add(index)
        g.entries.add(quantity)
        g.info["cut_value"] = c
        ex = _example(index, point, a, r, tol, quantity)
        self._example(g, ex, ex.abs_err if ex.abs_err is not None else math.inf)

    # ------------------------------------------------------------ findings
    def findings(self, n_points: int, dtype: str, judged: bool = True) -> list[Finding]:
        out: list[Finding] = []
        cuts = self._cut_locations()
        harmful = [c for c in cuts if c.dropped > 0]
        for (kind, severity, key), g in self.groups.items():
            exs = tuple(e for _, _, e in sorted(g.heap, reverse=True))
            where = f"at {len(g.points)} of {n_points} point{'s' if n_points != 1 else ''}"
            entries = len(g.entries) + (g.bulk if kind != "not-verified" else 0)
            if entries > 1:
                where += f" ({entries} entries)"
            out.append(self._finding(kind, severity, key, g, exs, where, harmful, dtype))
        for p in self.problems:
            out.append(Finding("not-verified", "warning", "intended", p, 1))
        if not any(f.kind == "untracked" for f in out):
            harmful = []
        declared = [d for d in self.declared if getattr(d, "is_cut", False)]
        said = set()  # (a line's cuts of one kind, said once: spectral_norm's power iteration is four ops)
        for c in cuts if judged else ():
            if c not in harmful and not any(d.matches_cut(c.file, c.line) for d in declared) and \
                    (c.kind, c.file, c.line) not in said:
                said.add((c.kind, c.file, c.line))
                label = _cut_label(c.kind)
                out.append(Finding("cut", "info", label, (
                    f"the cut {label} ({c.file_name}:{c.line}){' `' + c.source + '`' if c.source else ''}: "
                    f"{CUT_WORDS.get(c.kind, c.kind)}; it does not change any checked gradient here"),
                    1, (), "", None, "", (c,), c.file, c.line))
        return out

    def _hint(self) -> str:
        """A declaration to suggest, when one custom Function's backward was one constant k times the identity at
        every mismatching element (two at least)."""
        for name, ks in self.hint_ks.items():
            if len(ks) < 2 or any(k is None for k in ks) or max(ks) - min(ks) > 1e-9 * max(1.0, abs(ks[0])):
                continue
            k = ks[0]
            if abs(k - 1) < 1e-9:
                what, decl = f"passes the gradient through {name} unchanged: a straight-through estimator?", \
                    "straight-through"
            elif k < 0:
                what, decl = f"multiplies the gradient through {name} by {k:.6g}: a gradient-reversal layer?", \
                    f"reverse:{-k:.6g}"
            else:
                what, decl = f"multiplies the gradient through {name} by {k:.6g}: a gradient scaling?", \
                    f"scale:{k:.6g}"
            return (f" Autograd {what} If that is meant, declare it: check_function(..., intended={{'{name}': "
                    f"'{decl}'}}) (or --intended {name}={decl}).")
        return ""

    def _cut_locations(self) -> list[CutLocation]:
        out = []
        for (label, _), info in self.cut_sites.items():
            site = info["site"]
            out.append(CutLocation(info["kind"], site.file, site.line, site.source, float(info["dropped"])))
        return out

    def _finding(self, kind: str, severity: str, key: str, g: _Group, exs: tuple[Example, ...], where: str,
                 harmful: list[CutLocation], dtype: str) -> Finding:
        count = len(g.points)
        ex = exs[0] if exs else None
        worst = ""
        if ex is not None and ex.autograd is not None:
            worst = (f"worst at point {ex.index}{_pt(ex.point)}, {ex.quantity}: autograd {fmt(ex.autograd)}, "
                     f"exact {fmt(ex.symbolic)}")
            if ex.abs_err is not None:
                worst += f", error {ex.abs_err:.3g}" + (f" (relative {ex.rel_err:.3g})" if ex.rel_err is not None
                                                        else "")
            if ex.tol is not None:
                worst += f", tolerance {ex.tol:.3g}"
        quantity = ex.quantity if ex is not None else ""
        if kind == "mismatch":
            what = "second derivatives" if g.info.get("what") == "d2" else "gradient"
            name = key.split(":", 1)[-1]
            cut_note = ""
            if harmful:
                cut_note = (" The gradient is cut at " + ", ".join(f"{_cut_label(c.kind)} ({c.file_name}:{c.line})"
                                                                   for c in harmful)
                            + ", but treating the cuts as constants does not explain it either.")
            msg = (f"autograd's {what} for {name} differs from the exact derivative {where}; {worst}.{cut_note}"
                   + self._hint())
            return Finding(kind, severity, name, msg, count, exs, quantity)
        if kind == "intended":
            decls = ", ".join(f"{d.target}: {d.text}" for d in self.declared) or "the declared deviations"
            msg = (f"the gradient for {key} deviates from the exact derivative {where} as declared ({decls}); "
                   f"{worst}; with the declared behaviour the value is {fmt(g.info.get('cut_value'))}, which "
                   "autograd matches")
            return Finding(kind, severity, key, msg, count, exs, quantity)
        if kind == "untracked":
            locs = tuple(harmful)
            first = locs[0] if locs else None
            names = ", ".join(f"{_cut_label(c.kind)} ({c.file_name}:{c.line}){' `' + c.source + '`' if c.source else ''}"
                              for c in locs) or "a cut"
            words = "; ".join(sorted({CUT_WORDS.get(c.kind, c.kind) for c in locs}))
            dropped = ", ".join(f"{fmt(c.dropped)} into {_cut_label(c.kind)} ({c.file_name}:{c.line})" for c in locs)
            msg = (f"the gradient is changed by the cut{'s' if len(locs) > 1 else ''} {names} {where}: "
                   f"{words}, dropping the gradient that flows into it (largest: {dropped}); {worst}; with the cuts "
                   f"treated as constants the exact value is {fmt(g.info.get('cut_value'))}, which autograd matches. "
                   "Remove the cut, or keep it only where the value is meant to be a constant; if it is meant (a "
                   "straight-through estimator x + (f(x) - x).detach(), a target network, a stop-gradient), declare it: "
                   f"intended={{'{first.file_name if first else 'file.py'}:{first.line if first else 'LINE'}': 'cut'}}")
            return Finding(kind, severity, _cut_label(first.kind) if first else key, msg, count, exs, quantity, None,
                           "", locs, first.file if first else "", first.line if first else 0)
        if kind == "nonfinite":
            if severity == "info":
                msg = f"the gradient for {key} is not finite {where}, and autograd agrees ({worst})"
            else:
                msg = (f"the gradient for {key}: autograd and the exact derivative disagree on a non-finite value "
                       f"{where} (look for 0 * inf: the unselected branch of torch.where still back-propagates, "
                       f"e.g. where(x > 0, sqrt(x), 0) at x = 0); {worst}")
            return Finding(kind, severity, key, msg, count, exs, quantity)
        if kind == "nondifferentiable":
            msg = (f"the gradient for {key} passes a kink, tie or jump of the user's run {where} (relu or abs at 0, "
                   f"a tie of max, a clamp bound), where the derivative is undefined and conventions differ; "
                   f"{worst}")
            return Finding(kind, severity, key, msg, count, exs, quantity)
        if kind == "stale-graph":
            if "text" in g.info:
                site = g.info["site"]
                msg = (f"{site.where} `{site.source}`: {g.info['text']}: the tensor's value was changed past "
                       "autograd while its grad_fn still describes the old value, so backward differentiates a "
                       "computation that no longer matches the numbers (an error even where the gradients happen to "
                       "agree). Compute the new value with tensor operations, or use .detach() where a constant is "
                       "meant")
                return Finding(kind, severity, key, msg, count, (), "", None, "", (), site.file, site.line)
            msg = (f"the gradient for {key} differs from the exact derivative {where}, as the stale graph (see the "
                   f"stale-graph finding) makes it: backward differentiates the old value; {worst}")
            return Finding(kind, severity, key, msg, count, exs, quantity)
        if kind == "not-verified":
            reasons = "; ".join(g.info.get("reasons", []))
            entries = f" ({g.bulk} entries)" if g.bulk else ""
            plain = reasons.startswith(("second order", "the rounding bound"))  # reasons that explain themselves
            msg = (f"the gradient for {key}{entries} was not verified {where}: {reasons}" if plain else
                   f"the gradient for {key}{entries} was not verified {where}: it flows through something the "
                   f"tracer could not model — {reasons}")
            return Finding(kind, severity, key, msg, count, (), "")
        if kind == "outside-domain":
            msg = (f"the output is not a finite real number {where} (NaN: outside the real domain; inf: a pole or "
                   f"overflow in {dtype}); these points are not compared")
            return Finding(kind, severity, "", msg, count, exs, "")
        if kind == "nonfinite-output":
            msg = (f"{g.bulk} output element{'s are' if g.bulk != 1 else ' is'} NaN or infinite {where}, alike in torch "
                   "and in the exact value (outside the real domain, or a pole): those elements are left out (with the "
                   "gradient entries that autograd makes NaN from them, by 0 * NaN), the others are compared")
            return Finding(kind, severity, "", msg, count, exs, "")
        if kind == "value":
            msg = (f"the function's value differs from the expected expression {where}; {worst}")
            return Finding("mismatch", severity, "value", msg, count, exs, "value")
        if kind == "trace":
            msg = (f"the traced computation does not reproduce the function's value {where} (its control flow or its "
                   "indexing depends on the values, or it computes somewhere the tracer does not see, e.g. in "
                   "Python on .item() values); these points are not compared: check them one by one, or give the "
                   "math with expected=")
            return Finding(kind, severity, "", msg, count, exs, "value")
        if kind == "not-reentrant":
            i = g.info
            second = (f"the second one raised: {i['raised']}" if i.get("raised") else
                      f"d/d {i['element']}: {fmt(i['first'])}, then {fmt(i['second'])}")
            msg = (f"backward is not reentrant: a second backward pass through the same graph does not repeat the "
                   f"first for {key} {where} ({second}); the backward "
                   f"of {i['functions']} changes something it saved for backward (a tensor in ctx modified in place?). "
                   "Compute into a new tensor instead of modifying a saved one")
            return Finding(kind, severity, key, msg, count, (), "")
        if kind == "leak":
            site = g.info["site"]
            msg = (f"{g.info['text']} `{site.source}`: what is computed from it outside torch and comes back is a "
                   "constant for autograd, and the tracer cannot see it")
            return Finding(kind, severity, key, msg, count, (), "", None, "", (), site.file, site.line)
        return Finding(kind, severity, key, f"{kind} {where}; {worst}", count, exs, quantity)


def _cut_label(kind: str) -> str:
    return "no_grad block" if kind == "no_grad" else kind


def _pt(point: dict[str, float]) -> str:
    if not point:
        return ""
    items = list(point.items())
    text = ", ".join(f"{k}={v:.6g}" for k, v in items[:8])
    return " (" + text + (f", ... ({len(items)} values)" if len(items) > 8 else "") + ")"


def _example(index: int, point: dict[str, float], a: float | None, r: float | None, tol: float | None = None,
             quantity: str = "") -> Example:
    abs_err = rel_err = None
    if a is not None and r is not None and math.isfinite(a) and math.isfinite(r):
        abs_err = abs(a - r)
        rel_err = abs_err / abs(r) if r != 0 else None
    return Example(index, point, a, r, abs_err, rel_err, tol, "", quantity)

