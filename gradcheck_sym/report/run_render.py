"""The report of `gradcheck-sym run`, for people: text that fits the terminal, and HTML for notebooks.

Numbers are never split: every cell is one short token (``0.25``, ``[2x3] -1.2..3.4``) and columns are
dropped, least useful first, until the table fits the width (``full=True`` keeps them all and every
row).  Long tables show their first and last rows.
"""

from __future__ import annotations

import html
import io
import math
import re
import textwrap
from typing import Any

from rich import box
from rich.console import Console
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from .run import RunReport, TensorRow

__all__ = ["render_run_text", "render_run_html", "value_text"]

_SEVERITY_STYLE = {"error": "bold red", "warning": "yellow", "info": "cyan"}
_BAD = ("mismatch", "untracked", "stale-graph", "nonfinite", "hook", "not verified")
# Columns as shown, and the order they are dropped in when the table is too wide.
_COLUMNS = [("tensor", "left"), ("line", "right"), ("leaf", "left"), ("req.", "left"), ("grad_fn", "left"),
            ("retains", "left"), ("value", "right"), (".grad", "right"), ("exact", "right"), ("checks", "right"),
            ("status", "left")]
_DROP = ["retains", "req.", "line", "leaf", "checks", "grad_fn", "value"]
MAX_ROWS = 40
# columns kept whole up to this many characters when the table must shrink
_KEEP_WHOLE = {"tensor": 32, "status": 24}


def _grouped(findings: Any) -> list[list[Any]]:
    """The findings to print, tensors cut at the same place in the same backwards together (a GAN's generator
    behind its fake.detach(), a distillation's teacher under no_grad: one finding per parameter said the same seven
    times), whether untracked, frozen or declared intended."""
    groups: list[list[Any]] = []
    for f in findings:
        first = groups[-1][0] if groups else None
        if first is not None and f.kind == first.kind and f.kind in _CAUSES and f.tensor and first.tensor and \
                (f.severity, f.line, f.count, f.last_line) == (first.severity, first.line, first.count,
                                                               first.last_line) and _cause(f) == _cause(first):
            groups[-1].append(f)
        else:
            groups.append([f])
    return groups


# where a finding's message, past its tensor's name and numbers, says its cause (the cuts, and how often)
_CAUSES = {"untracked": "; the difference is what", "discarded": "; the difference is what",
           "frozen": " hides it, and no optimizer",
           "intended": ": the deviation declared intended"}


def _hanging(text: Text, width: int) -> list[Text]:
    """`text` wrapped at `width` with its later lines indented by 4 (its styles kept on the first line's part)."""
    plain = text.plain
    if len(plain) <= width:
        return [text]
    lines = textwrap.wrap(plain, width=width, subsequent_indent="    ", break_long_words=False,
                          break_on_hyphens=False)
    first = len(lines[0])
    return [text[:first]] + [Text(line) for line in lines[1:]]


def _cause(f: Any) -> str:
    """A finding's message past its numbers: the cuts, and how often."""
    head, _, tail = f.message.partition(_CAUSES[f.kind])
    return head.rsplit(": ", 1)[-1] + tail if f.kind == "frozen" else tail  # (a frozen one's cuts precede it)


def _num(x: float) -> str:
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return f"{x:.4g}"


def value_text(v: Any) -> str:
    """One short token for a summarised value (see `report.run.summary_value`)."""
    if v is None:
        return "None"
    if isinstance(v, (int, float)):
        return _num(float(v))
    if isinstance(v, dict):
        shape = "x".join(str(s) for s in v["shape"])
        return f"[{shape}] {_num(v['min'])}..{_num(v['max'])}"
    flat = _flatten(v)
    return "[" + ", ".join(_num(x) for x in flat[:4]) + (", ...]" if len(flat) > 4 else "]")


def _flatten(v: Any) -> list[float]:
    if isinstance(v, list):
        out: list[float] = []
        for e in v:
            out += _flatten(e)
        return out
    return [float(v)]


def _cells(t: TensorRow) -> dict[str, str]:
    passed, compared = t.checks
    return {"tensor": t.name, "line": str(t.line), "leaf": "yes" if t.is_leaf else "no",
            "req.": "yes" if t.requires_grad else "no", "grad_fn": t.grad_fn or "-",
            "retains": "yes" if t.retains_grad else "no", "value": value_text(t.value),
            ".grad": value_text(t.grad) if t.grad is not None or t.is_leaf or t.retains_grad else "None",
            "exact": value_text(t.exact) if t.exact is not None else "-",
            "checks": f"{passed}/{compared}" if compared else "-", "status": _STATUS.get(t.status, t.status)}


# Statuses said short enough for a table cell (the findings say the rest).
_STATUS = {"grad is None: not a leaf": "not a leaf: no .grad", "made under no_grad: no grad_fn": "no_grad: a constant",
           "detached: a constant for autograd": "detached: a constant",
           "no grad (does not require grad)": "requires_grad=False", "not reached by a backward": "not reached",
           "not among the backward's inputs=": "not in inputs="}


def _fit(rows: list[dict[str, str]], width: int, full: bool) -> list[tuple[str, str]]:
    """The columns that fit `width` with every cell whole (dropping `_DROP` in order)."""
    cols = list(_COLUMNS)
    if full:
        return cols
    drop = list(_DROP)
    while drop:
        if _need(rows, [c for c, _ in cols]) <= width:
            break
        name = drop.pop(0)
        cols = [c for c in cols if c[0] != name]
    return cols


def _widest(rows: list[dict[str, str]], name: str) -> int:
    return max(len(name), *(len(r[name]) for r in rows))


def _need(rows: list[dict[str, str]], names: list[str]) -> int:
    """The width columns `names` take with every cell whole (and the padding between them)."""
    return sum(_widest(rows, c) + 3 for c in names) if rows else 0


_SHRINK = (".grad", "exact", "value")  # the cells that give way, by whole numbers, when the table is too wide
_PAIRED = (".grad", "exact")  # side by side, read against each other: they give way together


def _tight(x: float, digits: int) -> str:
    """`x` to `digits` significant digits, its exponent without a leading zero (1.4e-06 as 1.4e-6)."""
    return re.sub(r"e([+-])0(\d)", r"e\1\2", f"{x:.{digits}g}")


def _shorten(text: str, budget: int) -> str:
    """`text` (a value cell) in at most `budget` characters without splitting a number: a list keeps its first
    elements, a summary its range to fewer digits, else its shape alone; anything else is left as it is."""
    if len(text) <= budget or not text.startswith("["):
        return text
    if "] " in text:  # "[6x1x5x5] -0.04014..0.02834"
        head, span = text.split("] ", 1)
        try:
            low, high = (float(x) for x in span.split("..", 1))
        except ValueError:
            pass
        else:
            for digits in (3, 2, 1):
                ends = _tight(low, digits), _tight(high, digits)
                if ends[0] == ends[1] and low != high:
                    break  # ("1..1" for 1.04..1.449 would say the entries are equal)
                short = f"{head}] {ends[0]}..{ends[1]}"
                if len(short) <= budget:
                    return short
        return head + "]" if len(head) + 1 <= budget else text
    items = [e for e in text[1:-1].split(", ") if e != "..."]
    for k in range(len(items) - 1, 0, -1):
        short = "[" + ", ".join(items[:k]) + ", ...]"
        if len(short) <= budget:
            return short
    return "[...]" if budget >= 5 else text


def _shrunk(rows: list[dict[str, str]], cols: list[tuple[str, str]], width: int) -> list[dict[str, str]]:
    """`rows` with their value cells shortened (`_shorten`), widest column first, until the columns fit `width`."""
    names = [c for c, _ in cols]
    rows = [dict(r) for r in rows]
    shrinkable = [c for c in _SHRINK if c in names]
    while shrinkable and _need(rows, names) > width:
        col = max(shrinkable, key=lambda c: _widest(rows, c))
        budget = _widest(rows, col) - 1
        group = [c for c in _PAIRED if c in names] if col in _PAIRED else [col]
        changed = False
        for c in group:
            for r in rows:
                short = _shorten(r[c], budget)
                changed = changed or short != r[c]
                r[c] = short
        if not changed:
            break
    return rows


def render_run_text(report: RunReport, *, width: int = 100, color: bool = False, full: bool = False) -> str:
    """The text report: the teacher's line, the backward calls, the tensors, the findings explained."""
    buf = io.StringIO()
    rows = [_cells(t) for t in report.tensors]
    if full:  # every column whole: as wide as the table needs, past the terminal's width
        width = max(width, _need(rows, [c for c, _ in _COLUMNS]) + 2)
    console = Console(file=buf, width=width, color_system="standard" if color else None, force_terminal=color,
                      highlight=False, emoji=False, soft_wrap=False)
    console.print(Text(f"gradcheck-sym run {report.script}", style="bold"))
    console.print(Text(report.teacher_line()))
    if report.backwards:
        console.print(Text("backward calls:", style="bold"))
        for b in report.backwards:
            calls = f"{b.calls} call{'s' if b.calls != 1 else ''}"
            state = ("raised" if b.raised == b.calls else "verified" if b.not_verified == 0 else
                     "not verified" if b.verified == 0 else f"{b.verified} verified, {b.not_verified} not")
            text = f"  line {b.line}: `{_short(b.source, 40)}` {calls}, {state}, {b.compared} gradient{'s' if b.compared != 1 else ''} compared"
            if b.errors:
                text += f", {b.errors} wrong"
            console.print(Text(text))
            for reason in b.reasons[:2]:  # (wrapped under its own indent, as the findings are)
                console.print(Padding(Text(f"not verified: {reason}"), (0, 0, 0, 4)))
            for name, got, exact in b.returned[:4]:
                console.print(Padding(Text(f"returned d/d {name}: {value_text(got)} (exact {value_text(exact)})"),
                                      (0, 0, 0, 4)))
    if rows:
        shown = rows if full or len(rows) <= MAX_ROWS else rows[: MAX_ROWS // 2] + rows[-MAX_ROWS // 2:]
        cols = _fit(shown, width, full)
        if not full:
            shown = _shrunk(shown, cols, width)
        table = Table(header_style="bold", pad_edge=False, box=box.SIMPLE_HEAD, collapse_padding=True)
        for name, justify in [c for c in _COLUMNS if c in cols]:
            # a row's name and status whole (up to a point): where the width runs short the numbers give way
            # (`net.co…` ten times over told no parameter from another)
            table.add_column(name, justify=justify, no_wrap=True, overflow="ellipsis",  # type: ignore[arg-type]
                             min_width=max(len(name), min(_widest(shown, name), _KEEP_WHOLE.get(name, 0))))
        for i, r in enumerate(shown):
            if len(shown) < len(rows) and i == MAX_ROWS // 2:
                table.add_row(*[f"... {len(rows) - len(shown)} more" if c == "tensor" else "" for c, _ in
                                [c for c in _COLUMNS if c in cols]])
            table.add_row(*[Text(r[c], style="red" if c == "status" and any(w in r[c] for w in _BAD) else "")
                            for c, _ in [c for c in _COLUMNS if c in cols]])
        console.print(table)
    if report.findings:
        console.print(Text("findings:", style="bold"))
        for group in _grouped(report.findings):
            f = group[0]
            head = Text()
            head.append(f"[{f.severity}] ", style=_SEVERITY_STYLE.get(f.severity, ""))
            head.append(f.kind, style="bold")
            if f.tensor and f.tensor != f"line {f.line}":  # (a finding about a line: "(line 40)" says it once)
                head.append(f" {', '.join(g.tensor for g in group)}"
                            + (f" ({len(group)} tensors; the first one's gradient below)" if len(group) > 1 else ""))
            if f.line:
                head.append(f" (line {f.line}" + (")" if f.count < 2 else f", {f.count} times)"
                                                  if f.last_line == f.line else
                                                  f", {f.count} times, last at line {f.last_line})"))
            for part in _hanging(head, width):  # (a long header's next lines under its message, not at column 0)
                console.print(part)
            # (wrapped lines keep the indent: a long finding restarted at column 0, hard to scan)
            console.print(Padding(Text(f.message), (0, 0, 0, 4)))
            if f.explanation:
                console.print(Padding(Text("why: " + f.explanation), (0, 0, 0, 4)))
                console.print(Padding(Text("fix: " + f.fix), (0, 0, 0, 4)))
    if report.error:
        console.print(Text("the script raised (what ran before is verified above):", style="bold red"))
        console.print(Text(report.error), soft_wrap=True)
    verdict = Text()
    errors = sum(1 for f in report.findings if f.severity == "error")
    if report.ok and any(f.kind == "no-autograd" for f in report.findings):
        # (not "OK: 0 gradients checked": nothing was compared, so nothing is vouched for)
        verdict.append("NOTHING TO VERIFY", style="bold yellow")
        verdict.append(": the script did no backward")
    elif report.ok:
        verdict.append("OK", style="bold green")
        n = report.summary.get('gradients', 0)
        verdict.append(f": {n} gradient{'' if n == 1 else 's'} checked, no error")
    else:
        verdict.append("FAILED", style="bold red")
        parts = [f"{errors} error finding{'s' if errors != 1 else ''}"] if errors else []
        if report.error:
            parts.append("the script raised")
        elif report.exit_code:
            parts.append(f"the script exited with status {report.exit_code}")
        verdict.append(": " + " and ".join(parts))
    console.print(verdict)
    return "\n".join(line.rstrip() for line in buf.getvalue().rstrip().splitlines()) + "\n"  # (no trailing blanks)


def _short(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


def render_run_html(report: RunReport) -> str:
    """A script run's report for Jupyter."""
    from .run_picture import run_picture, svg_or_none

    head = "".join(f"<th>{html.escape(c)}</th>" for c, _ in _COLUMNS)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(r[c])}</td>" for c, _ in _COLUMNS) + "</tr>"
                   for r in (_cells(t) for t in report.tensors))
    items = "".join(f"<li><b>[{html.escape(f.severity)}] {html.escape(f.kind)}</b> {html.escape(f.message)}"
                    f"<br><i>why:</i> {html.escape(f.explanation)}<br><i>fix:</i> {html.escape(f.fix)}</li>"
                    for f in report.findings)
    svg = svg_or_none(run_picture(report))
    return (f"<div><h4>gradcheck-sym run {html.escape(report.script)}</h4>"
            f"<p><b>{'OK' if report.ok else 'FAILED'}</b>: {html.escape(report.teacher_line())}</p>"
            f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
            + (f"<ul>{items}</ul>" if items else "<p>No findings.</p>")
            + (f"<pre>{html.escape(report.error)}</pre>" if report.error else "")
            + (f"<div>{svg}</div>" if svg else "") + "</div>")
