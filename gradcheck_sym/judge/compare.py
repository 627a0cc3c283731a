"""Stage 5: verdicts per quantity and per point, accumulated into findings.

A *quantity* is one thing compared at every point: the adjoint d(output)/d(node)
of a node (variables included), or one Hessian entry.  The classification of
a single (quantity, point) follows the policy in `tolerance`; this module keeps
the counts and the worst examples, and turns them into `Finding`s.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field
from typing import Any

import sympy
import torch

from ..report import Example, Finding, Severity

__all__ = ["Quantity", "Accumulator", "example", "finding", "fmt", "full", "point_text"]

MAX_EXAMPLES = 3


@dataclass
class Quantity:
    """One compared quantity.

    Attributes:
        key: stable identifier ("grad:%3" or "hess:x,y").
        label: what it is, for people ("d out/d x", "d out/d (x/y)", "d2 out/dx dy").
        node: the expression text of the node it belongs to ("x/y"; "x, y" for Hessian entries).
        node_id: graph node id (None for Hessian entries).
        ref: the symbolic expression (full-math semantics).
        cut_ref: the symbolic expression with cuts as constants (None without cuts).
        affected_by: node ids whose kinks make this quantity undefined at a point.
        hess: (i, j) variable indices for a Hessian entry, else None.
        row: which output it differentiates (0: the primary; Jacobian rows of traced functions).
        group: findings about several quantities of one group are one finding (an input tensor's
            elements); defaults to `key`.
        is_input: whether it is the gradient of an input (not of an intermediate node).
        counts: verdict -> number of points, filled while checking (for the table's status).
    """

    key: str
    label: str
    node: str
    node_id: int | None
    ref: sympy.Expr
    cut_ref: sympy.Expr | None
    affected_by: frozenset[int] = frozenset()
    hess: tuple[int, int] | None = None
    row: int = 0
    is_input: bool = True
    group: str = ""
    counts: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.group:
            self.group = self.key


@dataclass(order=True)
class _Ranked:
    score: float
    seq: int
    example: Example = field(compare=False)


class Accumulator:
    """Counts and worst examples per (kind, severity, quantity or node), merged over chunks."""

    def __init__(self) -> None:
        self._groups: dict[tuple[str, Severity, str], dict[str, Any]] = {}
        self._seq = 0

    def add(
        self,
        kind: str,
        severity: Severity,
        key: str,
        example: Example,
        score: float,
        **info: Any,
    ) -> None:
        """Add one example; `count` becomes the number of distinct points, `entries` the distinct quantities."""
        group = self._groups.setdefault((kind, severity, key), {"count": 0, "heap": [], "_points": set(),
                                                                "_entries": set(), **info})
        if example.index not in group["_points"]:
            group["_points"].add(example.index)
            group["count"] += 1
        q = info.get("quantity")
        if q is not None:
            group["_entries"].add(q.key)
        self._seq += 1
        item = _Ranked(score if math.isfinite(score) else 1e300, -self._seq, example)
        heap = group["heap"]
        if len(heap) < MAX_EXAMPLES:
            heapq.heappush(heap, item)
        elif item > heap[0]:
            heapq.heapreplace(heap, item)

    def keys(self) -> set[tuple[str, Severity, str]]:
        return set(self._groups)

    def count(self, kind: str, severity: Severity, key: str, n: int, **info: Any) -> None:
        """Add `n` to a group's count without examples (bulk counts)."""
        group = self._groups.setdefault((kind, severity, key), {"count": 0, "heap": [], "_points": set(),
                                                                "_entries": set(), **info})
        group["count"] += n

    def groups(self) -> list[tuple[str, Severity, str, int, tuple[Example, ...], dict[str, Any]]]:
        out = []
        for (kind, severity, key), g in self._groups.items():
            examples = tuple(r.example for r in sorted(g["heap"], reverse=True))
            info = {k: v for k, v in g.items() if k not in ("count", "heap", "_points", "_entries")}
            info["entries"] = len(g["_entries"])
            out.append((kind, severity, key, g["count"], examples, info))
        return out


def example(
    index: int,
    point: dict[str, float],
    autograd: float | None,
    symbolic: float | None,
    tol: float | None = None,
    why: str = "",
    quantity: str = "",
) -> Example:
    """An `Example` with the errors filled in."""
    abs_err = rel_err = None
    if autograd is not None and symbolic is not None and math.isfinite(autograd) and math.isfinite(symbolic):
        abs_err = abs(autograd - symbolic)
        rel_err = abs_err / abs(symbolic) if symbolic != 0 else None
    return Example(index, point, autograd, symbolic, abs_err, rel_err, tol, why, quantity)


def fmt(x: float | None) -> str:
    """A number for messages: 6 significant digits, "None" for missing."""
    if x is None:
        return "None"
    if x != x:
        return "nan"
    return f"{x:.6g}"


def finding(
    kind: str,
    severity: Severity,
    node: str,
    message: str,
    count: int,
    examples: tuple[Example, ...],
    quantity: str = "",
    node_id: int | None = None,
    convention: str = "",
) -> Finding:
    return Finding(kind, severity, node, message, count, examples, quantity, node_id, convention)


def point_text(point: dict[str, float]) -> str:
    """A point for messages: up to 8 values."""
    items = list(point.items())
    text = ", ".join(f"{k}={v:.6g}" for k, v in items[:8])
    return text + (f", ... ({len(items)} values)" if len(items) > 8 else "")


def full(t: Any, n: int) -> torch.Tensor:
    """`t` as a float64 (or bool) tensor of shape (n,), broadcasting scalars."""
    if isinstance(t, bool):
        return torch.full((n,), t, dtype=torch.bool)
    if not isinstance(t, torch.Tensor):
        t = torch.tensor(float(t), dtype=torch.float64)
    if t.dtype != torch.bool and t.dtype != torch.float64:
        t = t.to(torch.float64)
    if t.dim() == 0:
        return t.expand(n)
    return t
