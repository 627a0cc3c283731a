"""The picture of a script run: one node per tensor (or per loop line, when there are many), Graphviz.

Leaves are blue ellipses, other tensors boxes; an edge autograd does not follow (made under
no_grad, .detach()) is dashed red and labelled; a tensor whose gradient was not verified is grey
and dashed; a wrong one red; gradient seeds (``ones_like``) are not tensors of the computation and
are not drawn.  A legend says so.
"""

from __future__ import annotations

import graphviz

from .picture import svg_or_none
from .run import RunReport

__all__ = ["run_picture", "svg_or_none", "MAX_NODES"]

MAX_NODES = 60
_RED = ("mismatch", "untracked", "stale-graph", "nonfinite")


def run_picture(report: RunReport) -> graphviz.Digraph:
    g = graphviz.Digraph("gradcheck_sym_run", graph_attr={"rankdir": "LR", "fontsize": "10"},
                         node_attr={"fontsize": "10", "fontname": "Helvetica"})
    data = report.graph or {"nodes": [], "edges": []}
    nodes = data["nodes"]
    collapse = len(nodes) > MAX_NODES
    key = {}
    shown: dict[str, tuple[str, bool, str, int]] = {}
    for serial, name, leaf, line, status in nodes:
        k = f"{name}" if collapse else f"t{serial}"
        key[serial] = k
        count = shown[k][3] + 1 if k in shown else 1
        shown[k] = (name, leaf, status, count)
    for k, (name, leaf, status, count) in shown.items():
        label = name + (f" ×{count}" if count > 1 else "") + (f"\n{status}" if status else "")
        style, fill, color = "filled", "#cfe2f3" if leaf else "white", "black"
        if any(w in status for w in _RED):
            fill = "#f4a6a6"
        elif "not verified" in status:
            style, fill, color = "filled,dashed", "#e0e0e0", "grey40"
        elif "hook" in status:
            fill = "#fbe8a6"
        g.node(k, label, shape="ellipse" if leaf else "box", style=style, fillcolor=fill, color=color)
    seen = set()
    for a, b, cut in data["edges"]:
        if a not in key or b not in key or (key[a], key[b], cut) in seen:
            continue
        seen.add((key[a], key[b], cut))
        if cut:
            g.edge(key[a], key[b], label=cut, style="dashed", color="red", fontcolor="red", fontsize="9")
        else:
            g.edge(key[a], key[b])
    with g.subgraph(name="cluster_legend") as leg:
        leg.attr(label="legend", fontsize="9", style="dashed")
        leg.node("legend_leaf", "leaf (requires_grad)", shape="ellipse", style="filled", fillcolor="#cfe2f3",
                 fontsize="8")
        leg.node("legend_bad", "gradient wrong", shape="box", style="filled", fillcolor="#f4a6a6", fontsize="8")
        leg.node("legend_nv", "not verified", shape="box", style="filled,dashed", fillcolor="#e0e0e0",
                 color="grey40", fontsize="8")
        leg.edge("legend_leaf", "legend_bad", label="cut (not followed by autograd)", style="dashed", color="red",
                 fontcolor="red", fontsize="8")
    return g

