"""What the engine checks: the contract every subject (an expression, a traced function) meets.

A subject gives the engine a graph and its `Derivation`, the quantities to compare
(`compare.Quantity`), the places where the gradient is cut (`Region`), and autograd's
numbers for a batch of points (`Run`), plain or perturbed for the noise estimate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Protocol

import torch

from ..ir.graph import Graph
from ..ops import OPS
from ..reference.symbolic import Derivation
from ..report import Finding, NodeRow
from .compare import Quantity

__all__ = ["Region", "Run", "Subject", "kink_ancestry"]


@dataclass(frozen=True)
class Region:
    """One place where the gradient is cut (a detach, a no_grad block, a .data read, ...).

    Attributes:
        key: stable identifier.
        label: what it is, for people ("detach(tanh(x))", "no_grad block").
        where: where it is ("column 3", "model.py:12").
        what: what the cut does, in words.
        nodes: the graph's cut nodes that belong to it.
        source: the source line, for traced code ("" for expressions).
    """

    key: str
    label: str
    where: str
    what: str
    nodes: tuple[int, ...]
    source: str = ""


class Run(Protocol):
    """Torch's numbers for one batch of points."""

    def quantity(self, q: Quantity) -> torch.Tensor:
        """Autograd's value of `q` at every point, float64, shape (n,)."""

    def outputs(self) -> list[torch.Tensor]:
        """The forward value of each output element, float64, shape (n,)."""

    def tensors(self) -> Iterable[tuple[str, torch.Tensor]]:
        """Labelled values and gradients, for the range check of narrow dtypes."""


class Subject(Protocol):
    """What the engine checks: see the module docstring."""

    graph: Graph
    derivation: Derivation
    outputs: tuple[int, ...]
    title: str

    def quantities(self) -> list[Quantity]: ...

    def regions(self) -> list[Region]: ...

    def autograd(self, xd: dict[str, torch.Tensor], order: int, trial: int | None,
                 detail: int | None = None) -> Run: ...

    def trials(self, xd: dict[str, torch.Tensor], order: int, count: int) -> list[Run]: ...

    def rows(self, first: dict[str, Any], n_points: int) -> list[NodeRow]: ...

    def extra_findings(self) -> list[Finding]: ...

    def notes(self) -> list[str]: ...

    def edges(self) -> list[tuple[int, int, str]]: ...


def kink_ancestry(g: Graph) -> dict[int, set[int]]:
    """Kink node -> the nodes whose adjoints flow through it (a where's branches for comparisons)."""
    out: dict[int, set[int]] = {}
    for n in g.nodes:
        op = OPS.get(n.op)
        if op is None or op.kink is None or not g.depends_on_vars[n.id]:
            continue
        # A kink leaves the node's own adjoint alone and makes its arguments' undefined
        # (for a comparison: the branches of the where() that uses it).
        if op.kind == "compare":
            anc: set[int] = set()
            for u in g.consumers[n.id]:
                if g.nodes[u].op == "where":
                    anc |= g.ancestors(u) - {u}
            out[n.id] = anc
        else:
            out[n.id] = g.ancestors(n.id) - {n.id}
    return out
