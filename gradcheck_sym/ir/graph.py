"""The graph: one small immutable record of a computation, as the user wrote it.

Grammar (one node per line of `str(graph)`)::

    graph  := node* ; output %k
    node   := %k = var NAME
            | %k = const NUMBER
            | %k = OP %i %j ...        (i, j < k: nodes are in topological order)

Each operator and function call of the text is one node, so reports speak of
``x/y`` rather than sympy's ``x*y**-1``.  Identical subexpressions are shared.
A node inside ``no_grad(...)`` carries the id of that call as its `region`, so
shared nodes never cross a cut.  Values and gradients live in results keyed
by node id, never on the nodes.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from ..ops import OPS

__all__ = ["Node", "Graph"]


@dataclass(frozen=True)
class Node:
    """One node of the graph.

    Attributes:
        id: position in `Graph.nodes` (topological order).
        op: "var", "const", or an op name of `gradcheck_sym.ops.OPS`.
        args: ids of the argument nodes.
        span: (line, col, end_line, end_col) of the node in the source text (1-based
            lines, 0-based character columns), or None for nodes built by code.
        name: the variable's name (for "var").
        value: the number (for "const"; int or float), or the constant's name ("pi", "E").
        region: id of the enclosing ``no_grad(...)`` node, or None.
        origin: where a traced node comes from (``"model.py:12 torch.tanh"``), or None.
    """

    id: int
    op: str
    args: tuple[int, ...] = ()
    span: tuple[int, int, int, int] | None = None
    name: str | None = None
    value: int | float | str | None = None
    region: int | None = None
    origin: str | None = None

    @property
    def is_leaf(self) -> bool:
        return self.op in ("var", "const")

    @property
    def cut(self) -> str | None:
        """How this node cuts the gradient: "detach", "no_grad" (the call), "no_grad region", or None."""
        if self.op in ("detach", "no_grad"):
            return self.op
        if self.region is not None:
            return "no_grad region"
        return None


@dataclass(frozen=True)
class Graph:
    """A computation graph in topological order with one output.

    Attributes:
        nodes: every node, node ``k`` at index ``k``.
        output: id of the output node.
        variables: variable names in order (first appearance, or as declared).
        source: the text the graph was parsed from ("" when built by code).
    """

    nodes: tuple[Node, ...]
    output: int
    variables: tuple[str, ...]
    source: str = ""

    def validate(self) -> None:
        """Check the invariants; raise ValueError naming the first broken one."""
        seen_vars: set[str] = set()
        for k, node in enumerate(self.nodes):
            if node.id != k:
                raise ValueError(f"node {k} has id {node.id}")
            if any(a >= k or a < 0 for a in node.args):
                raise ValueError(f"node %{k} uses a later node: {node.args}")
            if node.op == "var":
                if node.name is None or node.name in seen_vars:
                    raise ValueError(f"variable {node.name!r} bound twice or unnamed")
                seen_vars.add(node.name)
            elif node.op == "const":
                if node.value is None:
                    raise ValueError(f"constant %{k} has no value")
            elif node.op not in OPS:
                raise ValueError(f"node %{k} has unknown op {node.op!r}")
            else:
                lo, hi = OPS[node.op].arity
                if not lo <= len(node.args) <= hi:
                    raise ValueError(f"node %{k} ({node.op}) has {len(node.args)} arguments")
        if not 0 <= self.output < len(self.nodes):
            raise ValueError("output is not a node")
        if seen_vars != set(self.variables):
            raise ValueError("variables do not match the var nodes")

    @cached_property
    def var_ids(self) -> dict[str, int]:
        """Variable name -> node id."""
        return {n.name: n.id for n in self.nodes if n.op == "var" and n.name is not None}

    @cached_property
    def consumers(self) -> tuple[tuple[int, ...], ...]:
        """For each node, the ids of the nodes that use it (with repeats for repeated use)."""
        users: list[list[int]] = [[] for _ in self.nodes]
        for node in self.nodes:
            for a in node.args:
                users[a].append(node.id)
        return tuple(tuple(u) for u in users)

    @cached_property
    def depends_on_vars(self) -> tuple[bool, ...]:
        """For each node, whether its value depends on some variable (so it has a gradient)."""
        dep: list[bool] = []
        for node in self.nodes:
            dep.append(node.op == "var" or any(dep[a] for a in node.args))
        return tuple(dep)

    @cached_property
    def tracked(self) -> tuple[bool, ...]:
        """For each node, whether autograd tracks it: it depends on a variable through no cut."""
        out: list[bool] = []
        for node in self.nodes:
            if node.op == "var":
                out.append(True)
            elif node.cut is not None:
                out.append(False)
            else:
                out.append(any(out[a] for a in node.args))
        return tuple(out)

    @cached_property
    def requires_grad(self) -> tuple[bool, ...]:
        """For each node, whether torch's tensor for it requires grad (has a gradient at all).

        A variable does; an op does when an argument does, through no cut — except that a
        comparison never does (its value is boolean) and `where` only through its two branches
        (its condition is boolean).  So ``where(x > 0, 2, 3)`` is a constant for autograd: its
        gradient is "none" on both sides, never 0 against a symbolic adjoint.
        """
        out: list[bool] = []
        for node in self.nodes:
            if node.op == "var":
                out.append(True)
            elif node.op == "const" or node.cut is not None or OPS[node.op].kind == "compare":
                out.append(False)
            elif node.op == "where":
                out.append(out[node.args[1]] or out[node.args[2]])
            else:
                out.append(any(out[a] for a in node.args))
        return tuple(out)

    @cached_property
    def reaches_output(self) -> tuple[bool, ...]:
        """For each node, whether the output uses it."""
        used = [False] * len(self.nodes)
        used[self.output] = True
        for node in reversed(self.nodes):
            if used[node.id]:
                for a in node.args:
                    used[a] = True
        return tuple(used)

    @property
    def has_cuts(self) -> bool:
        return any(n.cut for n in self.nodes)

    def ancestors(self, k: int) -> set[int]:
        """Ids of the nodes `k` depends on, `k` included."""
        out = {k}
        stack = [k]
        while stack:
            for a in self.nodes[stack.pop()].args:
                if a not in out:
                    out.add(a)
                    stack.append(a)
        return out

    def text(self, k: int) -> str:
        """The source text of node `k` as written, or "" when it has none."""
        span = self.nodes[k].span
        if span is None or not self.source:
            return ""
        line, col, end_line, end_col = span
        lines = self._source_lines
        if line == end_line:
            return lines[line - 1][col:end_col]
        parts = [lines[line - 1][col:]] + lines[line : end_line - 1] + [lines[end_line - 1][:end_col]]
        return " ".join(p.strip() for p in parts)

    @cached_property
    def _source_lines(self) -> list[str]:
        return self.source.splitlines()

    def label(self, k: int, width: int = 60) -> str:
        """A short human name for node `k`: its source text (shortened to `width`), else its op."""
        node = self.nodes[k]
        span = node.span
        if span is not None and self.source and span[0] == span[2] and span[3] - span[1] > width:
            # the two ends only: a 10,000-node expression's nodes are long, and copying each was 10 us
            line, half = self._source_lines[span[0] - 1], (width - 3) // 2
            return line[span[1] : span[1] + half] + "..." + line[span[3] - half : span[3]]
        text = self.text(k)
        if text:
            if len(text) > width:
                half = (width - 3) // 2
                text = text[:half] + "..." + text[-half:]
            return text
        if node.op == "var":
            return str(node.name)
        if node.op == "const":
            return _const_text(node.value)
        if node.origin:
            return f"{node.op} at {node.origin}"
        return f"{node.op}(" + ", ".join(f"%{a}" for a in node.args) + ")"

    def __str__(self) -> str:
        lines = []
        for n in self.nodes:
            if n.op == "var":
                rhs = f"var {n.name}"
            elif n.op == "const":
                rhs = f"const {_const_text(n.value)}"
            else:
                rhs = f"{n.op} " + " ".join(f"%{a}" for a in n.args)
            text = self.label(n.id) if n.op not in ("var", "const") and n.span else ""
            extra = f"   # {text}" if text else ""
            region = f"  [in no_grad %{n.region}]" if n.region is not None else ""
            lines.append(f"%{n.id} = {rhs}{region}{extra}")
        lines.append(f"output %{self.output}")
        return "\n".join(lines)


def _const_text(value: int | float | str | None) -> str:
    """A constant for people: integers of more than 50 digits shortened (Python refuses str() of
    one beyond 4,300 digits)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 166:
        magnitude = abs(value)
        digits = _digits(magnitude)
        head = str(magnitude // 10 ** (digits - 10))
        return f"{'-' if value < 0 else ''}{head}...({digits:,} digits)"
    return str(value)


def _digits(value: int) -> int:
    """The number of decimal digits of a large positive integer, without str()."""
    import math

    estimate = int(value.bit_length() * math.log10(2))
    return estimate + 1 if value >= 10**estimate else estimate
