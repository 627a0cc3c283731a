"""Renderers over a `Report`: the text report (rich tables) and the JSON string.

The text report is deterministic for a given report (fixed width, no colour
unless asked), so CLI transcripts can be pinned in tests.
"""

from __future__ import annotations

import html
import io
import math
from typing import Any


from rich.console import Console
from rich.table import Table
from rich.text import Text

from .records import Finding, Report

__all__ = ["render_text", "render_json", "render_html"]

_SEVERITY_STYLE = {"error": "bold red", "warning": "yellow", "info": "cyan"}


def _num(x: float | None) -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and math.isnan(x):
        return "nan"
    if isinstance(x, float) and math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return f"{x:.6g}"


def render_text(report: Report, *, width: int = 110, color: bool = False) -> str:
    """The text report: a header, the per-node table, the findings and a verdict line."""
    buf = io.StringIO()
    console = Console(file=buf, width=width, color_system="standard" if color else None, force_terminal=color,
                      highlight=False, emoji=False, soft_wrap=False)
    head = Text()
    head.append("gradcheck-sym ", style="bold")
    head.append(report.expression if len(report.expression) <= 200 else report.expression[:197] + "...")
    console.print(head)
    sampling = f", seed {report.seed}" if report.seed is not None else ""
    console.print(f"points: {report.n_points}{sampling} | dtype: {report.dtype} | order: {report.order}")
    console.print(f"derivation: {report.derivation}")
    console.print(f"tolerance: {report.tolerance}")
    if report.first_point:
        items = list(report.first_point.items())
        pt = ", ".join(f"{k}={_num(v)}" for k, v in items[:12]) + (f", ... ({len(items)} values)" if len(items) > 12 else "")
        console.print(f"table values at point 0: {pt}")
    table = Table(show_edge=True, header_style="bold", box=None if not color else None, pad_edge=False)
    for col, justify in [("node", "left"), ("grad_fn", "left"), ("leaf", "left"), ("value", "right"),
                         ("autograd grad", "right"), ("symbolic grad", "right"), ("status", "left")]:
        table.add_column(col, justify=justify, overflow="fold")  # type: ignore[arg-type]
    rows = report.nodes
    shown = rows if len(rows) <= 40 else rows[:20] + rows[-20:]
    for i, row in enumerate(shown):
        if len(rows) > 40 and i == 20:
            table.add_row(f"... {len(rows) - 40} more nodes ...", "", "", "", "", "", "")
        status = Text(row.status, style="red" if _bad(row.status) else "")
        table.add_row(row.expression, row.grad_fn or "-", "yes" if row.is_leaf else "no", _num(row.value),
                      _num(row.autograd_grad) if row.requires_grad else "None", _num(row.symbolic_grad), status)
    console.print(table)
    if report.findings:
        console.print(Text("findings:", style="bold"))
        for f in report.findings:
            _finding(console, f)
    errors = len(report.errors())
    verdict = Text()
    if report.ok:
        verdict.append("OK", style="bold green")
        verdict.append(f": autograd matches the exact derivatives ({report.checked} comparisons"
                       f"{', ' + str(report.high_precision_points) + ' points re-checked in high precision' if report.high_precision_points else ''})")
    else:
        verdict.append("FAILED", style="bold red")
        verdict.append(f": {errors} error finding{'s' if errors != 1 else ''} ({report.checked} comparisons)")
    console.print(verdict)
    return buf.getvalue().rstrip() + "\n"


def _bad(status: str) -> bool:
    return any(w in status for w in ("mismatch", "untracked", "nonfinite at"))


def _finding(console: Console, f: Finding) -> None:
    line = Text()
    line.append(f"[{f.severity}] ", style=_SEVERITY_STYLE[f.severity])
    line.append(f"{f.kind}", style="bold")
    if f.node:
        line.append(f" {f.node}")
    if f.count > 1:
        line.append(f" ({f.count} points)" if f.kind != "untracked" or f.examples else f" ({f.count} values)")
    console.print(line)
    console.print(Text("    " + f.message))
    for ex in f.examples[:3] if f.kind in ("mismatch", "untracked", "nonfinite") else ():
        items = list(ex.point.items())
        pt = ", ".join(f"{k}={_num(v)}" for k, v in items[:8]) + (f", ... ({len(items)} values)" if len(items) > 8 else "")
        parts = [f"point {ex.index} ({pt})", f"autograd {_num(ex.autograd)}", f"exact {_num(ex.symbolic)}"]
        if ex.quantity and any(e.quantity != f.quantity for e in f.examples):
            parts.insert(1, ex.quantity)
        if ex.abs_err is not None:
            parts.append(f"abs err {ex.abs_err:.3g}")
        if ex.rel_err is not None:
            parts.append(f"rel err {ex.rel_err:.3g}")
        if ex.tol is not None:
            parts.append(f"tol {ex.tol:.3g}")
        console.print(Text("      - " + ", ".join(parts)))
    if f.examples and f.examples[0].why and f.kind in ("mismatch", "untracked"):
        console.print(Text("      why this tolerance: " + f.examples[0].why))


def render_json(report: Report) -> str:
    return report.to_json()


def _html_table(headers: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _html_findings(findings: Any) -> str:
    items = []
    for f in findings:
        extra = ""
        if getattr(f, "explanation", ""):
            extra = f"<br><i>why:</i> {html.escape(f.explanation)}<br><i>fix:</i> {html.escape(f.fix)}"
        items.append(f"<li><b>[{html.escape(f.severity)}] {html.escape(f.kind)}</b> {html.escape(f.message)}{extra}</li>")
    return "<ul>" + "".join(items) + "</ul>" if items else "<p>No findings.</p>"


def _html_graph(picture: Any) -> str:
    from .picture import svg_or_none

    svg = svg_or_none(picture)
    return f"<div>{svg}</div>" if svg else ""


def render_html(report: Report) -> str:
    """A check's report for Jupyter: header, per-node table, findings, and the graph (with Graphviz)."""
    from .picture import report_picture

    rows = [[r.expression, r.grad_fn or "-", "yes" if r.is_leaf else "no", _num(r.value),
             _num(r.autograd_grad) if r.requires_grad else "None", _num(r.symbolic_grad), r.status] for r in report.nodes]
    verdict = "OK" if report.ok else f"FAILED: {len(report.errors())} error finding(s)"
    return (f"<div><h4>gradcheck-sym {html.escape(report.expression)}</h4>"
            f"<p>{report.n_points} points, {html.escape(report.dtype)}, order {report.order}. "
            f"<b>{html.escape(verdict)}</b></p>"
            + _html_table(["node", "grad_fn", "leaf", "value", "autograd grad", "symbolic grad", "status"], rows)
            + _html_formulas(report) + _html_findings(report.findings) + _html_graph(report_picture(report))
            + "</div>")


def _html_formulas(report: Report) -> str:
    """The exact derivatives as LaTeX (Jupyter typesets $$...$$ in HTML output); intermediate nodes' after
    the variables', at most 12."""
    shown = [f for f in report.derivatives if f.of in report.variables] or list(report.derivatives)
    if not shown:
        return ""
    items = "".join(f"<li>d out / d <code>{html.escape(f.of)}</code>: $${html.escape(f.latex)}$$</li>"
                    for f in shown[:12])
    more = f"<li>... and {len(shown) - 12} more</li>" if len(shown) > 12 else ""
    return (f"<p>exact derivatives (sympy; <code>report.derivative(name)</code> gives the object):</p>"
            f"<ul>{items}{more}</ul>")
