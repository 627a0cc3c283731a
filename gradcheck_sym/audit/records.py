"""The results of an audit, as data: one `SampleAudit` per sample, one `EntryAudit` per entry, one `AuditResult`.

Renderers (text, markdown, HTML) live in `gradcheck_sym.report.audit` and read
these records; JSON is ``to_dict``. Records survive a round trip through JSON
(``from_dict``), which is how ``--resume`` rebuilds the report of a run it continues.

A sample's status:

- ``verified``: traced and compared, no error finding;
- ``failed``: traced and compared, an error finding (a wrong or inaccurate gradient);
- ``not-traced``: the checker refused it (an op it does not know, a size limit, a
  ``not-verified`` finding), with the reason;
- ``tool-error``: an exception that is not one of gradcheck-sym's typed errors, or the
  function raising under the checker while plain torch runs it: our bug, counted;
- ``timeout``, ``crashed``: the check ran past its deadline / its worker died;
- ``skipped``: nothing to check (no input needs a gradient, or the sample fails in plain torch).
"""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

__all__ = ["Worst", "Gradcheck", "SampleAudit", "Injection", "EntryAudit", "AuditResult", "AUDIT_VERSION",
           "strip_times", "GRADCHECK_TOLERANCE"]

AUDIT_VERSION = 1
SampleStatus = Literal["verified", "failed", "not-traced", "tool-error", "timeout", "crashed", "skipped"]
EntryStatus = Literal["verified", "partly-traced", "not-traced", "failed", "tool-error", "timeout", "crashed",
                      "skipped"]
# torch.autograd.gradcheck's defaults: what it can and cannot see.
GRADCHECK_TOLERANCE = "finite differences with eps 1e-6, atol 1e-5, rtol 1e-3"
# The statuses that count as traced (the checker compared the gradients).
TRACED = ("verified", "failed")


@dataclass(frozen=True)
class Worst:
    """The largest relative error seen in one sample, and where.

    From the error/warning findings' worst examples, and the table's input rows at the first
    point (gradients of the sum of the outputs).
    """

    rel_err: float | None
    abs_err: float | None
    autograd: float | None
    symbolic: float | None
    quantity: str


@dataclass(frozen=True)
class Gradcheck:
    """torch.autograd.gradcheck (gradgradcheck at order 2) on the same float64 inputs.

    Attributes:
        verdict: "pass", "fail" (a GradcheckError), "error" (it raised something else) or
            "not-run" (not float64, or the sample was skipped).
        message: gradcheck's message (first lines), or why it did not run.
        seconds: its wall time.
    """

    verdict: Literal["pass", "fail", "error", "not-run"]
    message: str = ""
    seconds: float = 0.0


@dataclass(frozen=True)
class SampleAudit:
    """One sample input of one entry, checked.

    Attributes:
        source: "sample" (sample_inputs), "reference" (reference_inputs) or "hook" (a package's sample_inputs()).
        index: its position in that source.
        inputs: the differentiable inputs and their shapes, e.g. "input (5, 5), arg1 ()".
        status: see the module docstring.
        reason: one line: why it is not traced / the tool error / the failing finding.
        detail: more (the finding's message, a traceback's last frames).
        findings: (kind, severity) of every finding of the report.
        worst: the largest relative error seen.
        points: points checked (the sample plus the random points near it).
        checked: comparisons made.
        seconds: wall time of the check.
        gradcheck: torch's verdict on the same inputs.
        cpu_seconds: CPU time of the whole sample (plain call, check and gradcheck) on its thread:
            what a machine's other load does not inflate, for estimates of a full audit's cost.
    """

    source: str
    index: int
    inputs: str
    status: SampleStatus
    reason: str = ""
    detail: str = ""
    findings: tuple[tuple[str, str], ...] = ()
    worst: Worst | None = None
    points: int = 0
    checked: int = 0
    seconds: float = 0.0
    gradcheck: Gradcheck = Gradcheck("not-run")
    cpu_seconds: float = 0.0

    @property
    def label(self) -> str:
        return f"{self.source} {self.index}"

    @property
    def traced(self) -> bool:
        return self.status in TRACED

    def disagreement(self) -> str | None:
        """Why this sample's verdict differs from gradcheck's, in words; None when they agree (or one is missing)."""
        g = self.gradcheck
        if self.status == "failed" and g.verdict == "pass":
            w = self.worst
            where = ""
            if w is not None and w.rel_err is not None:
                where = (f" The worst is {w.quantity}: autograd {w.autograd:.10g}, exact {w.symbolic:.10g} "
                         f"(relative error {w.rel_err:.2g}).")
                if w.rel_err < 1e-3:
                    where += (f" That is below what gradcheck can see ({GRADCHECK_TOLERANCE}): either torch's "
                              f"formula is inaccurate here, or the checker's rounding allowance for it is too "
                              f"tight; the finding's tolerance line says which reference was used.")
                else:
                    where += (" gradcheck would see an error this large: it compares other quantities, or its "
                              "finite differences straddle a kink here.")
            return f"gradcheck-sym: {self.reason}; gradcheck passes.{where}"
        if self.status == "verified" and g.verdict == "fail":
            kink = any(k == "nondifferentiable" for k, _ in self.findings)
            nonfinite = any(k in ("nonfinite-output", "nonfinite") for k, _ in self.findings) or \
                "nan" in g.message.lower().split("numerical:", 1)[-1][:200]
            cause = ("the point is at a kink: gradcheck's finite differences straddle it, while the exact check "
                     "uses torch's documented convention there" if kink else
                     "the sample holds NaN or infinite values: gradcheck's finite differences are NaN there (it "
                     "compares NaN with NaN and fails), while gradcheck-sym leaves out the entries that are not "
                     "finite on both sides and compares the rest" if nonfinite else
                     "autograd equals the exact derivative at every compared entry, so gradcheck's finite "
                     "differences are the inaccurate side here (cancellation, or a function that is not smooth "
                     "within eps 1e-6 of the point)")
            return f"gradcheck fails ({_first(g.message)}); gradcheck-sym verifies it: {cause}."
        return None


@dataclass(frozen=True)
class Injection:
    """A relative gradient error injected after each op of one verified sample, one op at a time.

    Attributes:
        eps: the relative error (the incoming gradient of op k's output is multiplied by 1 + eps).
        sample: which sample ("sample 0").
        ops: the ops it was injected after, in call order.
        caught: for each op, whether gradcheck-sym reported an error; None where the injected error
            did not change autograd's gradient at all (the op's gradient is 0 there: floor, ceil,
            rounding division), so there was nothing to catch.
        gradcheck_caught: for each op, whether gradcheck failed (empty when not run; None as above).
    """

    eps: float
    sample: str
    ops: tuple[str, ...]
    caught: tuple[bool | None, ...]
    gradcheck_caught: tuple[bool | None, ...] = ()

    @property
    def effective(self) -> bool:
        """Whether the error changed autograd's gradient after some op (else nothing was tested)."""
        return any(c is not None for c in self.caught)

    @property
    def all_caught(self) -> bool:
        return all(c for c in self.caught if c is not None)

    @property
    def gradcheck_all_caught(self) -> bool:
        return bool(self.gradcheck_caught) and all(c for c in self.gradcheck_caught if c is not None)

    @property
    def missed(self) -> list[str]:
        return [f"{k}:{op}" for k, (op, c) in enumerate(zip(self.ops, self.caught)) if c is False]


@dataclass(frozen=True)
class EntryAudit:
    """One audited entry: an OpInfo entry at one dtype and order, or a package's Function.

    Attributes:
        name: the OpInfo full name ("nn.functional.conv2d") or "package.module:Name".
        kind: "opinfo", "autograd.Function" or "function".
        dtype, order: of the checks.
        status: over its samples: "crashed" > "tool-error" > "failed" > "timeout" > "verified" (all
            traced) / "partly-traced" / "not-traced"; "skipped" when nothing could be checked.
        note: why it was skipped, or anything else to know about the entry.
        samples: the samples, checked.
        duplicates: reference inputs equal to a sample input (not checked twice).
        injections: the error-injection results (one per eps), when asked for.
    """

    name: str
    kind: str
    dtype: str
    order: int
    status: EntryStatus
    note: str = ""
    samples: tuple[SampleAudit, ...] = ()
    duplicates: int = 0
    injections: tuple[Injection, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.name}|{self.dtype}|{self.order}"

    def count(self, *statuses: str) -> int:
        return sum(s.status in statuses for s in self.samples)

    @property
    def checkable(self) -> int:
        return sum(s.status != "skipped" for s in self.samples)

    @property
    def worst(self) -> tuple[SampleAudit, Worst] | None:
        best = None
        for s in self.samples:
            if s.worst is not None and s.worst.rel_err is not None:
                if best is None or s.worst.rel_err > best[1].rel_err:  # type: ignore[operator]
                    best = (s, s.worst)
        return best

    def gradcheck_counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self.samples:
            out[s.gradcheck.verdict] = out.get(s.gradcheck.verdict, 0) + 1
        return out

    def median_seconds(self) -> tuple[float | None, float | None]:
        """Median check time over traced samples, and gradcheck's over the samples it ran on."""
        ours = [s.seconds for s in self.samples if s.traced]
        theirs = [s.gradcheck.seconds for s in self.samples if s.gradcheck.verdict in ("pass", "fail")]
        return (statistics.median(ours) if ours else None, statistics.median(theirs) if theirs else None)

    def reasons(self) -> list[str]:
        """The distinct not-traced reasons of its samples, most frequent first."""
        counts: dict[str, int] = {}
        for s in self.samples:
            if s.status == "not-traced":
                counts[s.reason] = counts.get(s.reason, 0) + 1
        return sorted(counts, key=lambda r: -counts[r])


def entry_status(samples: tuple[SampleAudit, ...] | list[SampleAudit]) -> EntryStatus:
    """An entry's status from its samples' (see `EntryAudit.status`)."""
    statuses = {s.status for s in samples} - {"skipped"}
    if not statuses:
        return "skipped"
    for s in ("crashed", "tool-error", "failed", "timeout"):
        if s in statuses:
            return s  # type: ignore[return-value]
    if statuses <= {"verified"}:
        return "verified"
    return "partly-traced" if "verified" in statuses else "not-traced"


@dataclass(frozen=True)
class AuditResult:
    """A whole audit.

    Attributes:
        target: "torch" or the package's name.
        torch_version: the torch that was audited / used.
        settings: the options that shape the results (dtypes, order, samples per op, ...).
        entries: one per entry (and dtype), in the order they were selected.
    """

    target: str
    torch_version: str
    settings: dict[str, Any]
    entries: tuple[EntryAudit, ...]

    @property
    def ok(self) -> bool:
        """False when a sample failed or hit a tool error (not-traced entries do not count)."""
        return not any(s.status in ("failed", "tool-error", "crashed") for e in self.entries for s in e.samples)

    def samples(self) -> list[tuple[EntryAudit, SampleAudit]]:
        return [(e, s) for e in self.entries for s in e.samples]

    def disagreements(self) -> list[tuple[EntryAudit, SampleAudit, str]]:
        """Every sample whose verdict differs from gradcheck's, with the explanation (and the entry's note)."""
        out = []
        for e, s in self.samples():
            text = s.disagreement()
            if text:
                out.append((e, s, f"{text} Note: {e.note}." if e.note else text))
        return out

    def summary(self) -> dict[str, Any]:
        """The headline numbers (the sweep's table)."""
        entries = [e for e in self.entries if e.status != "skipped"]
        samples = [s for e in entries for s in e.samples]
        traced = [s for s in samples if s.traced]
        ours = [s.seconds for s in traced]
        theirs = [s.gradcheck.seconds for s in traced if s.gradcheck.verdict in ("pass", "fail")]
        reasons: dict[str, list[str]] = {}
        for e in entries:
            if e.status == "not-traced":  # no sample traced, and none crashed, timed out or hit a tool error
                reasons.setdefault(e.reasons()[0], []).append(e.name)
        injected = [e for e in entries if e.injections]
        inj: dict[str, Any] = {}
        for k, eps in enumerate(self.settings.get("inject") or ()):
            tried = [e for e in injected if len(e.injections) > k]
            with_eps = [e for e in tried if e.injections[k].effective]
            inj[f"{eps:g}"] = {"entries": len(with_eps),
                               "caught": sum(e.injections[k].all_caught for e in with_eps),
                               "gradcheck_caught": sum(e.injections[k].gradcheck_all_caught for e in with_eps),
                               "no_effect": len(tried) - len(with_eps)}
        return {
            "entries": len(entries),
            "skipped_entries": len(self.entries) - len(entries),
            "entries_by_status": {st: sum(e.status == st for e in entries) for st in
                                  ("verified", "partly-traced", "not-traced", "failed", "tool-error", "timeout",
                                   "crashed")},
            "traced_every_sample": sum(e.status in ("verified", "failed") and e.count("not-traced") == 0
                                       for e in entries),
            "traced_some_sample": sum(any(s.traced for s in e.samples) for e in entries),
            "samples": len(samples),
            "samples_traced": len(traced),
            "samples_by_status": {st: sum(s.status == st for s in samples) for st in
                                  ("verified", "failed", "not-traced", "tool-error", "timeout", "crashed",
                                   "skipped")},
            "failed_where_gradcheck_passes": sum(s.status == "failed" and s.gradcheck.verdict == "pass"
                                                 for s in samples),
            "gradcheck_fails_where_verified": sum(s.status == "verified" and s.gradcheck.verdict == "fail"
                                                  for s in samples),
            "tool_errors": sum(s.status == "tool-error" for s in samples),
            "entries_with_tool_errors": sum(any(s.status == "tool-error" for s in e.samples) for e in entries),
            "median_seconds": statistics.median(ours) if ours else None,
            "gradcheck_median_seconds": statistics.median(theirs) if theirs else None,
            "not_traced_reasons": dict(sorted(reasons.items(), key=lambda kv: (-len(kv[1]), kv[0]))),
            "injection": inj,
        }

    def to_dict(self, times: bool = True) -> dict[str, Any]:
        """JSON-ready, with a schema `version`; `times=False` leaves out the wall times."""
        d = {"version": AUDIT_VERSION, "target": self.target, "torch": self.torch_version,
             "settings": self.settings, "entries": [entry_dict(e, times) for e in self.entries],
             "summary": self.summary()}
        return d if times else strip_times(d)

    def to_json(self, indent: int | None = 2, times: bool = True) -> str:
        return json.dumps(self.to_dict(times), indent=indent, allow_nan=False)

    def to_markdown(self) -> str:
        from ..report.audit import render_markdown

        return render_markdown(self)

    def to_html(self) -> str:
        from ..report.audit import render_html

        return render_html(self)

    def __str__(self) -> str:
        from ..report.audit import render_text

        return render_text(self)


# -- JSON round trip ---------------------------------------------------------------------------------------------


def _finite(x: Any) -> Any:
    if isinstance(x, float) and (x != x or x in (float("inf"), float("-inf"))):
        return "nan" if x != x else ("inf" if x > 0 else "-inf")
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def _unfinite(x: Any) -> Any:
    return float(x) if x in ("nan", "inf", "-inf") else x


def entry_dict(entry: EntryAudit, times: bool = True) -> dict[str, Any]:
    d = _finite(asdict(entry))
    return d if times else strip_times(d)


def strip_times(d: Any) -> Any:
    """A copy without the time fields ("seconds", "cpu_seconds"): what must be equal across executors and resumes."""
    if isinstance(d, dict):
        return {k: strip_times(v) for k, v in d.items() if k not in ("seconds", "cpu_seconds", "median_seconds",
                                                                      "gradcheck_median_seconds")}
    if isinstance(d, list):
        return [strip_times(v) for v in d]
    return d


def entry_from_dict(d: dict[str, Any]) -> EntryAudit:
    """The inverse of `entry_dict` (for --resume)."""

    def sample(s: dict[str, Any]) -> SampleAudit:
        w = s.get("worst")
        worst = None if w is None else Worst(*(_unfinite(w[f.name]) for f in fields(Worst)))
        return SampleAudit(
            s["source"], s["index"], s["inputs"], s["status"], s.get("reason", ""), s.get("detail", ""),
            tuple(tuple(f) for f in s.get("findings", ())), worst, s.get("points", 0), s.get("checked", 0),
            s.get("seconds", 0.0), Gradcheck(**s.get("gradcheck", {"verdict": "not-run"})), s.get("cpu_seconds", 0.0))

    return EntryAudit(
        d["name"], d["kind"], d["dtype"], d["order"], d["status"], d.get("note", ""),
        tuple(sample(s) for s in d.get("samples", ())), d.get("duplicates", 0),
        tuple(Injection(i["eps"], i["sample"], tuple(i["ops"]), tuple(i["caught"]), tuple(i["gradcheck_caught"]))
              for i in d.get("injections", ())))


def _first(text: str) -> str:
    line = (text or "").strip().splitlines()[0] if (text or "").strip() else ""
    return line[:200]
