"""Graph pictures of reports (a renderer, like `render`): DOT always, SVG/PNG through Graphviz.

Leaves are blue ellipses, intermediates boxes, outputs double octagons; a cut (no_grad,
detach, .data) is drawn as a dashed red edge labelled with the cut — the edge autograd does
not follow; nodes with an error are filled red, with a kink or a warning yellow.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

import graphviz

from ..errors import UnsupportedError

__all__ = ["report_picture", "run_picture", "write_picture", "check_picture_path", "svg_or_none", "dot_available"]

_FORMATS = ("dot", "gv", "svg", "png", "pdf")

_BAD = ("mismatch", "untracked", "stale", "nonfinite at", "nonfinite,")
_WARN = ("kink", "hook", "overflow", "range", "not a leaf")


def _fill(status: str) -> str:
    if any(w in status for w in _BAD) or status == "nonfinite":
        return "#f4a6a6"
    if any(w in status for w in _WARN):
        return "#fbe8a6"
    return "white"


def _num(x: Any) -> str:
    if x is None:
        return "None"
    if isinstance(x, list):
        import numpy as np

        flat = np.asarray(x, dtype=float).flatten()
        return "[" + ", ".join(f"{v:.4g}" for v in flat[:3]) + (", ...]" if flat.size > 3 else "]")
    return f"{x:.4g}"


def report_picture(report: Any) -> graphviz.Digraph:
    """The graph of a `check` / `check_function` report."""
    g = graphviz.Digraph("gradcheck_sym", graph_attr={"rankdir": "LR", "fontsize": "10"},
                         node_attr={"fontsize": "10", "fontname": "Helvetica"})
    rows = {r.id: r for r in report.nodes}
    outputs = {e[1] for e in report.edges} - {e[0] for e in report.edges}
    for r in report.nodes:
        if r.op in ("input", "var") or r.is_leaf and r.op not in ("detach", "no_grad"):
            shape, fill = "ellipse", "#cfe2f3" if _fill(r.status) == "white" else _fill(r.status)
        elif r.id in outputs or r.op == "output":
            shape, fill = "doubleoctagon", _fill(r.status)
        else:
            shape, fill = "box", _fill(r.status)
        lines = [r.expression]
        if r.grad_fn:
            lines.append(r.grad_fn)
        lines.append(f"value {_num(r.value)}")
        if r.requires_grad or r.symbolic_grad is not None:
            lines.append(f"grad {_num(r.autograd_grad)} (exact {_num(r.symbolic_grad)})")
        style = "filled,dashed" if r.cut else "filled"
        g.node(str(r.id), "\n".join(lines), shape=shape, style=style, fillcolor=fill)
    for a, b, cut in report.edges:
        if a in rows and b in rows:
            if cut:
                g.edge(str(a), str(b), label=cut, style="dashed", color="red", fontcolor="red", fontsize="9")
            else:
                g.edge(str(a), str(b))
    return g


def run_picture(report: Any) -> graphviz.Digraph:
    """The tensors of a script run and the ops between them."""
    g = graphviz.Digraph("gradcheck_sym_run", graph_attr={"rankdir": "LR", "fontsize": "10"},
                         node_attr={"fontsize": "10", "fontname": "Helvetica"})
    names = [t.name for t in report.tensors]
    used_as_input = {a for a, _, _ in (report.graph or {}).get("edges", [])}
    for i, t in enumerate(report.tensors):
        if t.is_leaf and t.requires_grad:
            shape, fill = "ellipse", "#cfe2f3" if _fill(t.status) == "white" else _fill(t.status)
        elif t.name not in used_as_input:
            shape, fill = "doubleoctagon", _fill(t.status)
        else:
            shape, fill = "box", _fill(t.status)
        lines = [f"{t.name} (line {t.line})", t.grad_fn or ("leaf" if t.is_leaf else "no grad_fn"),
                 f"value {_num(t.value)}"]
        if t.grad:
            lines.append(f".grad {_num(t.grad[-1])}")
        if t.symbolic_grad:
            lines.append(f"exact {_num(t.symbolic_grad[-1])}")
        style = "filled" if t.requires_grad else "filled,dashed"
        g.node(f"t{i}", "\n".join(lines), shape=shape, style=style, fillcolor=fill)
    index = {n: i for i, n in enumerate(names)}
    for a, b, cut in (report.graph or {}).get("edges", []):
        if a in index and b in index:
            if cut:
                g.edge(f"t{index[a]}", f"t{index[b]}", label=cut, style="dashed", color="red", fontcolor="red",
                       fontsize="9")
            else:
                g.edge(f"t{index[a]}", f"t{index[b]}")
    return g


def dot_available() -> bool:
    """Whether Graphviz's `dot` program is installed."""
    return shutil.which("dot") is not None


def check_picture_path(path: str) -> None:
    """Refuse, before any work is done, a picture path with an unknown suffix or no folder to go in."""
    from ..errors import InputError

    ext = os.path.splitext(path)[1].lower().lstrip(".")
    if ext not in _FORMATS:
        raise InputError(f"--graph {path}: unknown picture format {ext!r}: use a .dot, .svg, .png or .pdf file name")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise InputError(f"--graph {path}: the folder {folder} does not exist")


def write_picture(picture: graphviz.Digraph, path: str) -> str:
    """Write `picture` to `path`: .dot (or .gv) as text; .svg / .png / .pdf through Graphviz's `dot`.

    Returns:
        A line saying what was written.

    Raises:
        UnsupportedError: an image format was asked for and `dot` is not installed (the .dot
            file is written beside it all the same), or the suffix is unknown.
    """
    check_picture_path(path)
    root, ext = os.path.splitext(path)
    ext = ext.lower().lstrip(".")
    try:
        return _write(picture, path, root, ext)
    except OSError as exc:
        from ..errors import InputError

        raise InputError(f"--graph {path}: cannot write it: {exc.strerror or exc}") from None


def _write(picture: graphviz.Digraph, path: str, root: str, ext: str) -> str:
    if ext in ("dot", "gv"):
        with open(path, "w", encoding="utf-8") as f:
            f.write(picture.source)
        return f"wrote {path}"
    if not dot_available():
        with open(root + ".dot", "w", encoding="utf-8") as f:
            f.write(picture.source)
        raise UnsupportedError(f"Graphviz's `dot` program is not installed, so {path} cannot be drawn; "
                               f"wrote {root}.dot instead",
                               "install Graphviz (e.g. apt-get install graphviz) or ask for a .dot file")
    with open(path, "wb") as f:
        f.write(picture.pipe(format=ext))
    return f"wrote {path}"


def svg_or_none(picture: graphviz.Digraph) -> str | None:
    """The picture as inline SVG, or None without Graphviz."""
    if not dot_available():
        return None
    return picture.pipe(format="svg").decode("utf-8")
