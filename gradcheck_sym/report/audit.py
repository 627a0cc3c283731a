"""Renderers of an `AuditResult`: a text table, markdown (for a bug report) and a self-contained HTML page.

All three show the same sections, built once as plain data here:

1. the summary (the sweep's headline numbers);
2. one row per entry: samples, how many traced, verdict, the worst error and where,
   gradcheck's verdicts, the median times of both;
3. why entries are not traced, grouped by reason;
4. every disagreement with gradcheck, with its explanation;
5. every failure, tool error, timeout and crash;
6. the error injection, when it ran.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..audit.records import AuditResult, EntryAudit

__all__ = ["render_text", "render_markdown", "render_html", "entry_rows", "verdict_line", "COLUMNS"]

COLUMNS = ("entry", "dtype", "samples", "traced", "verdict", "worst error (where)", "gradcheck", "ours (median)",
           "gradcheck (median)")


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1e3:.0f} ms" if seconds >= 0.0095 else f"{seconds * 1e3:.1f} ms"


def _err(x: float | None) -> str:
    return "-" if x is None else f"{x:.2g}"


def _gradcheck(entry: "EntryAudit") -> str:
    c = entry.gradcheck_counts()
    parts = [f"{c[k]} {k}" for k in ("pass", "fail", "error") if c.get(k)]
    return ", ".join(parts) or "-"


def entry_rows(result: "AuditResult") -> list[tuple[str, ...]]:
    """One row of `COLUMNS` per entry."""
    rows = []
    for e in result.entries:
        n = e.checkable
        worst = e.worst
        where = "-" if worst is None else f"{_err(worst[1].rel_err)} ({worst[1].quantity}, {worst[0].label})"
        ours, theirs = e.median_seconds()
        verdict = e.status
        rows.append((e.name, e.dtype, str(n), f"{e.count('verified', 'failed')}/{n}" if n else "-", verdict, where,
                     _gradcheck(e), _ms(ours), _ms(theirs)))
    return rows


def _summary_lines(result: "AuditResult") -> list[str]:
    s = result.summary()
    n = s["entries"] or 1
    lines = [
        f"entries: {s['entries']}" + (f" (+{s['skipped_entries']} skipped)" if s["skipped_entries"] else "") + ": "
        + ", ".join(f"{v} {k}" for k, v in s["entries_by_status"].items() if v),
        f"traced on every sample: {s['traced_every_sample']} ({100 * s['traced_every_sample'] / n:.0f}%); "
        f"on some sample: {s['traced_some_sample']} ({100 * s['traced_some_sample'] / n:.0f}%)",
        f"samples: {s['samples']}: " + ", ".join(f"{v} {k}" for k, v in s["samples_by_status"].items() if v),
        f"error findings where gradcheck passes: {s['failed_where_gradcheck_passes']}; gradcheck fails where "
        f"verified: {s['gradcheck_fails_where_verified']}",
        f"tool errors: {s['tool_errors']} samples in {s['entries_with_tool_errors']} entries",
        f"median time per traced sample: gradcheck-sym {_ms(s['median_seconds'])}, gradcheck "
        f"{_ms(s['gradcheck_median_seconds'])}",
    ]
    for eps, inj in s["injection"].items():
        lines.append(f"injected relative error {eps} after each op: caught on {inj['caught']} of {inj['entries']} "
                     f"entries (every op); gradcheck: {inj['gradcheck_caught']} of {inj['entries']}"
                     + (f"; no effect on {inj['no_effect']} (gradient 0 through every op)" if inj.get("no_effect")
                        else ""))
    return lines


def _sections(result: "AuditResult") -> list[tuple[str, list[str]]]:
    """The sections after the table, as (title, lines)."""
    out: list[tuple[str, list[str]]] = []
    reasons = result.summary()["not_traced_reasons"]
    if reasons:
        out.append(("not traced (entries with no traced sample and no error), by reason",
                    [f"{len(names)} x {reason}: " + ", ".join(names[:12]) + (" ..." if len(names) > 12 else "")
                     for reason, names in reasons.items()]))
    partly: dict[str, list[str]] = {}
    for e in result.entries:
        if e.status == "partly-traced":
            for s in e.samples:
                if s.status in ("not-traced", "skipped") and s.reason:
                    partly.setdefault(s.reason.split(":")[0][:200], []).append(f"{e.name} {s.label}")
    if partly:
        out.append(("samples not traced in partly traced entries, by reason",
                    [f"{len(names)} x {reason}: " + ", ".join(names[:8]) + (" ..." if len(names) > 8 else "")
                     for reason, names in partly.items()]))
    skipped = [e for e in result.entries if e.status == "skipped"]
    if skipped:
        out.append((f"not checked ({len(skipped)})", [f"{e.name} {e.dtype}: {e.note}" for e in skipped]))
    dis = result.disagreements()
    out.append((f"disagreements with gradcheck ({len(dis)})",
                [f"{e.name} {s.label} ({s.inputs}): {text}" for e, s, text in dis] or ["none"]))
    for status, title in (("failed", "error findings"), ("tool-error", "tool errors (bugs of gradcheck-sym)"),
                          ("timeout", "timeouts"), ("crashed", "crashed workers")):
        items = [(e, s) for e, s in result.samples() if s.status == status]
        if items:
            out.append((f"{title} ({len(items)})", [f"{e.name} {e.dtype} {s.label} ({s.inputs}): {s.reason} "
                                                    f"[gradcheck: {s.gradcheck.verdict}]" for e, s in items]))
    injected = [e for e in result.entries if e.injections]
    if injected:
        lines = []
        for e in injected:
            for i in e.injections:
                if not i.effective:
                    lines.append(f"{e.name} eps={i.eps:g} ({i.sample}, {len(i.ops)} ops): no effect (autograd's "
                                 "gradient is 0 through every op: nothing to catch)")
                    continue
                missed = "all caught" if i.all_caught else "missed after " + ", ".join(i.missed)
                tried = sum(c is not None for c in i.caught)
                gc = sum(bool(c) for c in i.gradcheck_caught)
                lines.append(f"{e.name} eps={i.eps:g} ({i.sample}, {len(i.ops)} ops): {missed}; gradcheck caught "
                             f"{gc} of {tried}")
        out.append(("error injection", lines))
    return out


def _title(result: "AuditResult") -> str:
    st = result.settings
    what = "torch's OpInfo entries" if result.target == "torch" else f"package {result.target}"
    opts = []
    if "dtypes" in st:
        opts.append(",".join(st["dtypes"]))
        opts.append(f"order {st['order']}")
        if st.get("samples_per_op"):
            opts.append(f"at most {st['samples_per_op']} samples per source")
    if st.get("random_points"):
        opts.append(f"+{st['random_points']} random points per sample")
    return f"gradcheck-sym audit of {what} (torch {result.torch_version}" + (", " + ", ".join(opts) if opts else "") \
        + ")"


def render_text(result: "AuditResult", width: int = 100, color: bool = False) -> str:
    """The table and sections as plain text (colour on a terminal)."""
    rows = [COLUMNS] + [tuple(_clip(c, 60) for c in r) for r in entry_rows(result)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    paint = {"verified": 32, "failed": 31, "tool-error": 35, "crashed": 35, "timeout": 33}  # ANSI colours

    def line(r: tuple[str, ...], header: bool = False) -> str:
        cells = [c.ljust(w) for c, w in zip(r, widths)]
        if color and not header:
            tone = paint.get(r[4].split(":")[0])
            if tone:
                cells[4] = f"\x1b[{tone}m{cells[4]}\x1b[0m"
        return "  ".join(cells).rstrip()

    out = [_title(result), ""]
    out += _summary_lines(result)
    out += ["", line(rows[0], True)] + [line(r) for r in rows[1:]]
    for title, lines in _sections(result):
        out += ["", f"{title}:"] + [f"  {x}" for x in lines]
    out += ["", verdict_line(result)]
    return "\n".join(out) + "\n"


def verdict_line(result: "AuditResult") -> str:
    """The last line: failed, verified, or (a package audit needs every entry verified) not verified."""
    by = result.summary()["samples_by_status"]
    if not result.ok:
        return (f"FAILED: {by['failed']} samples with an error finding, {by['tool-error']} tool errors, "
                f"{by['crashed']} crashed")
    incomplete = sum(e.status != "verified" for e in result.entries)
    if not incomplete:
        return "OK: every entry verified"
    if result.target == "torch":
        return f"OK: no sample failed ({incomplete} entries not fully traced or skipped: see above)"
    return f"NOT VERIFIED: {incomplete} entries not checked or not fully traced (see above)"


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(result: "AuditResult") -> str:
    """Markdown: headline numbers, the entry table and every section (ready to paste into an issue)."""
    out = [f"## {_title(result)}", ""]
    out += [f"- {x}" for x in _summary_lines(result)]
    out += [f"- **{verdict_line(result)}**"]
    out += ["", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    out += ["| " + " | ".join(_md(c) for c in r) + " |" for r in entry_rows(result)]
    for title, lines in _sections(result):
        out += ["", f"### {title[0].upper() + title[1:]}", ""] + [f"- {_md(x)}" for x in lines]
    failing = [(e, s) for e, s in result.samples() if s.status in ("failed", "tool-error") and s.detail]
    if failing:
        out += ["", "### Details", ""]
        for e, s in failing:
            out += [f"**{_md(e.name)} {s.label}** ({_md(s.inputs)})", "", "```", s.detail.strip(), "```", ""]
    return "\n".join(out).rstrip() + "\n"


_CSS = """body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse;margin:1em 0}
td,th{border:1px solid #ccc;padding:2px 8px;text-align:left;vertical-align:top}th{background:#f3f3f3}
.verified{color:#17702a}.failed{color:#b00020;font-weight:bold}.tool-error,.crashed{color:#8a1a8a;font-weight:bold}
.timeout{color:#9a6700}.not-traced,.partly-traced,.skipped{color:#666}pre{background:#f6f6f6;padding:6px}
details{margin:.2em 0}"""


def render_html(result: "AuditResult") -> str:
    """A self-contained HTML page: the table (each entry's samples folded under it) and every section."""
    esc = html.escape
    out = ["<!DOCTYPE html>", "<html><head><meta charset='utf-8'>", f"<title>{esc(_title(result))}</title>",
           f"<style>{_CSS}</style></head><body>", f"<h2>{esc(_title(result))}</h2>", "<ul>"]
    out += [f"<li>{esc(x)}</li>" for x in _summary_lines(result)]
    out += [f"<li><b>{esc(verdict_line(result))}</b></li>", "</ul>", "<table><tr>"]
    out += [f"<th>{esc(c)}</th>" for c in COLUMNS] + ["</tr>"]
    for e, row in zip(result.entries, entry_rows(result)):
        cells = [f"<td>{esc(c)}</td>" for c in row]
        cells[4] = f"<td class='{esc(e.status)}'>{esc(row[4])}</td>"
        if e.samples:
            inner = ["<details><summary>samples</summary><table><tr><th>sample</th><th>inputs</th><th>status</th>"
                     "<th>reason</th><th>worst</th><th>gradcheck</th></tr>"]
            for s in e.samples:
                w = "-" if s.worst is None else f"{_err(s.worst.rel_err)} ({s.worst.quantity})"
                inner.append(f"<tr><td>{esc(s.label)}</td><td>{esc(s.inputs)}</td><td class='{esc(s.status)}'>"
                             f"{esc(s.status)}</td><td>{esc(s.reason)}</td><td>{esc(w)}</td>"
                             f"<td>{esc(s.gradcheck.verdict)}</td></tr>")
            inner.append("</table></details>")
            cells[0] = f"<td>{esc(e.name)}{''.join(inner)}</td>"
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    for title, lines in _sections(result):
        out += [f"<h3>{esc(title[0].upper() + title[1:])}</h3>", "<ul>"]
        out += [f"<li>{esc(x)}</li>" for x in lines] + ["</ul>"]
    failing = [(e, s) for e, s in result.samples() if s.status in ("failed", "tool-error") and s.detail]
    if failing:
        out.append("<h3>Details</h3>")
        for e, s in failing:
            out.append(f"<p><b>{esc(e.name)} {esc(s.label)}</b> ({esc(s.inputs)})</p><pre>{esc(s.detail)}</pre>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"
