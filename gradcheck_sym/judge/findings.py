"""From accumulated verdicts to `Finding`s and the `Report`: the judge's last step.

The words come from `report.messages`; this module only chooses the template and fills in
the numbers (the worst example, the count, the cut region, the dtype).
"""

from __future__ import annotations

from typing import Any, Sequence

from ..ir.graph import Graph
from ..ops import OPS
from ..report import Example, Finding, Severity
from ..report import messages as msg
from . import tolerance as tl
from .compare import Quantity, finding, fmt, point_text
from .subject import Region

__all__ = ["build_finding", "cut_findings", "tolerance_line", "sort_findings"]

_SEVERITY_ORDER = {"error": 0, "warning": 1, "info": 2}


def tolerance_line(dtype_name: str, high_precision: bool) -> str:
    """The tolerance model in one line, for the report's header."""
    reference = f" ({tl.MP_DPS} digits)" if high_precision else " (float64)"
    return msg.TOLERANCE_LINE.format(dtype=dtype_name, cheap=tl.CHEAP_ULPS, safety=tl.NOISE_SAFETY,
                                     floor=tl.FLOOR_ULPS, reference=reference)


def sort_findings(findings: list[Finding]) -> list[Finding]:
    """Errors first, then warnings, then infos; by kind and node within each."""
    return sorted(findings, key=lambda f: (_SEVERITY_ORDER[f.severity], f.kind,
                                           f.node_id if f.node_id is not None else -1))


def _worst(ex: Example, label: str, entries: int) -> str:
    text = msg.WORST.format(index=ex.index, point=point_text(ex.point), label=f", {label}" if entries > 1 else "",
                            autograd=fmt(ex.autograd), symbolic=fmt(ex.symbolic))
    if ex.abs_err is not None:
        text += msg.WORST_ERROR.format(abs_err=ex.abs_err)
        text += f" (relative {ex.rel_err:.3g})" if ex.rel_err is not None else ""
        text += msg.WORST_TOL.format(tol=ex.tol) if ex.tol is not None else ""
    return text


def build_finding(kind: str, severity: Severity, key: str, count: int, examples: tuple[Example, ...],
                  info: dict[str, Any], *, graph: Graph, n_points: int, dtype_name: str,
                  regions: Sequence[Region]) -> Finding:
    """One `Finding` from one group of the `compare.Accumulator`."""
    g = graph
    n = n_points
    q: Quantity | None = info.get("quantity")
    where = f"at {count} of {n} point{'s' if n != 1 else ''}"
    if kind == "outside-domain":
        return finding(kind, "info", "", msg.OUTSIDE_DOMAIN.format(where=where, dtype=dtype_name), count, examples)
    if kind == "trace":
        return finding(kind, "warning", "", msg.TRACE_DIVERGED.format(where=where), count, examples)
    if kind == "ill-conditioned":
        return finding(kind, "info", "", msg.ILL_CONDITIONED.format(where=where, dtype=dtype_name), count, examples)
    if info.get("value"):
        ex = examples[0]
        return finding(kind, "error", "value", msg.VALUE_DIFFERS.format(
            where=where, index=ex.index, point=point_text(ex.point), autograd=fmt(ex.autograd),
            symbolic=fmt(ex.symbolic)), count, examples, "value")
    if kind == "nondifferentiable":
        k = info["kink"]
        op = OPS[g.nodes[k].op]
        text = g.label(k)
        ex = examples[0] if examples else None
        detail = (msg.NONDIFFERENTIABLE_EXAMPLE.format(label=q.label, autograd=fmt(ex.autograd),
                                                       symbolic=fmt(ex.symbolic)) if ex and q else "")
        return finding(kind, "info", text, msg.NONDIFFERENTIABLE.format(
            text=text, where=where, convention=op.convention, example=detail),
            count, examples, q.label if q else "", k, op.convention)
    if kind == "second-opinion":
        name = info["name"]
        ex = examples[0]
        return finding(kind, "warning", name, msg.SECOND_OPINION.format(
            name=name, where=where, whole=fmt(ex.autograd), sweep=fmt(ex.symbolic)),
            count, examples, f"d out/d {name}", g.var_ids.get(name))
    assert q is not None, kind
    ex = examples[0]
    entries = info.get("entries", 1)
    if entries > 1:
        where += f" ({entries} entries)"
    what = q.label if entries == 1 else "the Hessian" if q.hess is not None else f"d out/d {q.node}"
    label = ex.quantity or q.label
    worst = _worst(ex, label, entries)
    if kind == "mismatch":
        cuts = ""
        if regions:
            cuts = msg.MISMATCH_CUTS.format(cuts=", ".join(f"{r.label} ({r.where})" for r in regions))
        message = msg.MISMATCH.format(what=what, where=where, worst=worst, cuts=cuts)
    elif kind == "untracked":
        region: Region = info["region"]
        if len(region.nodes) == 1:
            dropped = msg.DROPPED_ONE.format(label=region.label, dropped=fmt(info.get("dropped")))
        else:
            dropped = msg.DROPPED_MANY.format(dropped=fmt(info.get("dropped")), count=len(region.nodes))
        if entries > 1:
            tail = msg.UNTRACKED_TAIL_MANY.format(worst=worst)
        else:
            tail = msg.UNTRACKED_TAIL_ONE.format(label=label, worst=worst, cut_value=fmt(info.get("cut_value")))
        message = msg.UNTRACKED.format(label=region.label, where_cut=region.where,
                                       source=f" `{region.source}`" if region.source else "", where=where,
                                       does=region.what, dropped=dropped, tail=tail)
        return finding(kind, "error", region.label, message, count, examples, q.label, region.nodes[0])
    elif kind == "nonfinite":
        if severity == "info":
            message = msg.NONFINITE_AGREE.format(what=what, where=where, autograd=fmt(ex.autograd))
        elif severity == "warning":
            message = msg.NONFINITE_RANGE.format(what=what, where=where, why=info.get("overflow"), worst=worst)
        else:
            hint = msg.WHERE_NAN_HINT if any(nd.op == "where" for nd in g.nodes) else ""
            message = msg.NONFINITE.format(what=what, autograd=fmt(ex.autograd), symbolic=fmt(ex.symbolic),
                                           where=where, hint=hint, worst=worst)
    elif kind == "stale-graph":
        message = msg.STALE_GRAPH.format(what=what, where=where, worst=worst)
    elif kind == "range":
        message = msg.RANGE.format(what=what, where=where, why=info.get("overflow"), dtype=dtype_name, worst=worst,
                                   in_float64=msg.RANGE_IN_FLOAT64 if dtype_name != "float64" else "")
    else:
        message = f"{q.label}: {worst}"
    node = "hessian" if q.hess is not None and entries > 1 else q.node
    return finding(kind, severity, node, message, count, examples, q.label, q.node_id)


def cut_findings(regions: Sequence[Region], used: set[str]) -> list[Finding]:
    """Each cut that changed no checked gradient (its key not in `used`): a harmless cut (info)."""
    return [finding("cut", "info", r.label, msg.CUT_HARMLESS.format(
        label=r.label, where_cut=r.where, source=" `" + r.source + "`" if r.source else "", does=r.what),
        1, (), "", r.nodes[0]) for r in regions if r.key not in used]
