"""An expression as the subject of the checking engine: its graph run through torch, node by node.

`ExpressionSubject` gives the engine what every subject gives (see `engine.Subject`): the
graph and its `Derivation`, the quantities to compare (every node's adjoint, and the Hessian
entries for ``order=2``), the cut regions (``detach(...)``, ``no_grad(...)``), and autograd's
numbers (`autograd.expression.run_autograd`) for a batch of points, plain or perturbed for
the noise estimate.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch

from . import tolerance as tl
from ..autograd.expression import AutogradRun, run_autograd
from ..budget import Deadline
from ..ir.graph import Graph
from ..ops import OPS
from ..report import Finding, NodeRow
from ..report import messages as msg
from ..reference.symbolic import Derivation
from .compare import Quantity, full
from .subject import Region, Run, kink_ancestry

__all__ = ["ExpressionSubject"]


class _ExpressionRun:
    """Autograd's numbers for a batch of `n` points; intermediate nodes' gradients from `small`,
    a run with retain_grad() on every node over the leading `m` points, when there is one."""

    def __init__(self, run: AutogradRun, graph: Graph, n: int, small: AutogradRun | None = None,
                 m: int = 0) -> None:
        self.run, self.graph, self.n, self.small, self.m = run, graph, n, small, m

    def quantity(self, q: Quantity) -> torch.Tensor:
        if q.hess is not None:
            if self.run.hessian is None:  # the output does not require grad: no Hessian, as no gradient
                return torch.zeros(self.n, dtype=torch.float64)
            return full(self.run.hessian[q.hess[0]][q.hess[1]].to(torch.float64), self.n)
        if self.small is not None and not q.is_input:  # intermediates: the leading points only
            m = self.m
            gr = self.small.grads.get(q.node_id) if q.node_id is not None else None
            return torch.zeros(m, dtype=torch.float64) if gr is None else full(gr.to(torch.float64), m)
        gr = self.run.grads.get(q.node_id) if q.node_id is not None else None
        if gr is None:
            return torch.zeros(self.n, dtype=torch.float64)
        return full(gr.to(torch.float64), self.n)

    def outputs(self) -> list[torch.Tensor]:
        return [full(self.run.values[self.graph.output].detach(), self.n)]

    def tensors(self) -> Iterable[tuple[str, torch.Tensor]]:
        g = self.graph
        for node in g.nodes:
            if not g.requires_grad[node.id]:
                continue
            if node.op != "var":  # a variable's value is exact in the dtype
                yield f"the value of {g.label(node.id)}", self.run.values[node.id]
            gr = self.run.grads.get(node.id)
            if gr is not None:
                yield f"the gradient of {g.label(node.id)}", gr


class _Slice:
    """One trial's share of a batched run."""

    def __init__(self, run: Run, start: int, n: int) -> None:
        self.run, self.start, self.n = run, start, n

    def quantity(self, q: Quantity) -> torch.Tensor:
        return self.run.quantity(q)[self.start : self.start + self.n]

    def outputs(self) -> list[torch.Tensor]:
        return [o[self.start : self.start + self.n] for o in self.run.outputs()]

    def tensors(self) -> Iterable[tuple[str, torch.Tensor]]:
        for label, t in self.run.tensors():
            yield label, t[self.start : self.start + self.n] if t.dim() else t


class ExpressionSubject:
    """An expression: its graph is evaluated node by node in torch (see `autograd`)."""

    def __init__(self, graph: Graph, derivation: Derivation, *, deadline: Deadline | None = None) -> None:
        self.graph = graph
        self.deadline = deadline
        self.derivation = derivation
        self.outputs = (graph.output,)
        # Points where torch's value is not the exact one (beyond 100 sqrt(u) relative) are not
        # compared: rounding in the dtype changed the number itself (see engine._diverged).
        self.check_forward = "conditioning"
        self.title = graph.source or str(graph)
        self._first: AutogradRun | None = None
        # Integer constants are exact in every dtype (and perturbing the 2 of x**2 would make
        # x**2 NaN for negative x); other constants are rounded like any value.
        self._perturbable = [n.id for n in graph.nodes if (n.op == "const" and not _is_integer(n.value)) or (
            n.op in OPS and OPS[n.op].kind != "compare")]
        self._approx = {n.id: OPS[n.op].approx_rtol for n in graph.nodes if n.op in OPS and OPS[n.op].approx_rtol > 0}

    def quantities(self) -> list[Quantity]:
        g, d = self.graph, self.derivation
        qs: list[Quantity] = []
        kink_map = kink_ancestry(g)
        for node in g.nodes:
            k = node.id
            # Cut nodes, nodes inside no_grad and nodes fed only through cuts have no .grad
            # in torch by design; what the cuts drop is judged upstream (see the regions).
            if k not in d.adjoints or not g.requires_grad[k]:
                continue
            text = node.name if node.op == "var" else g.label(k)
            label = f"d out/d {text}" if node.op == "var" else f"d out/d ({text})"
            cut = d.cut_adjoints.get(k) if d.cut_adjoints is not None else None
            affected = frozenset(c for c, anc in kink_map.items() if k in anc)
            qs.append(Quantity(f"grad:%{k}", label, str(text), k, d.adjoints[k], cut, affected,
                               is_input=node.op == "var"))
        if d.hessian is not None:
            all_kinks = frozenset(kink_map)
            for i, xi in enumerate(g.variables):
                for j, xj in enumerate(g.variables):
                    cut = d.cut_hessian[i][j] if d.cut_hessian is not None else None
                    qs.append(Quantity(f"hess:{xi},{xj}", f"d2 out/d{xi} d{xj}", f"{xi}, {xj}", None,
                                       d.hessian[i][j], cut, all_kinks, hess=(i, j), group="hessian"))
        return qs

    def regions(self) -> list[Region]:
        out = []
        for node in self.graph.nodes:
            if node.op in ("detach", "no_grad") and self.graph.depends_on_vars[node.args[0]]:
                what = msg.DETACH_DOES if node.op == "detach" else msg.NO_GRAD_DOES
                where = f"column {node.span[1] + 1}" if node.span else f"node %{node.id}"
                out.append(Region(f"cut:%{node.id}", self.graph.label(node.id), where, what, (node.id,)))
        return out

    def autograd(self, xd: dict[str, torch.Tensor], order: int, trial: int | None, detail: int | None = None) -> Run:
        n = len(next(iter(xd.values()))) if xd else 1
        if detail is not None and detail < n:
            # Intermediate nodes are compared on the first `detail` points only: retain_grad()
            # on every node there, and the whole batch run as plain user code would be.
            run = run_autograd(self.graph, xd, order=order, retain=False, deadline=self.deadline)
            small = run_autograd(self.graph, {k: v[:detail] for k, v in xd.items()}, order=order,
                                 meta=self._first is None, deadline=self.deadline) if detail else None
            if self._first is None and small is not None:
                self._first = small
            return _ExpressionRun(run, self.graph, n, small, detail)
        run = run_autograd(self.graph, xd, order=order, meta=self._first is None, deadline=self.deadline)
        if self._first is None:
            self._first = run
        return _ExpressionRun(run, self.graph, n)

    def trials(self, xd: dict[str, torch.Tensor], order: int, count: int) -> list[Run]:
        """`count` perturbed runs in one batch: the points repeated, each copy with its own noise."""
        n = len(next(iter(xd.values()))) if xd else 1
        dtype = next(iter(xd.values())).dtype if xd else torch.float64
        perturb = tl.noise_factors(self._perturbable, n, tl.UNIT_ROUNDOFF[dtype], self._approx, dtype, count)
        run = run_autograd(self.graph, {k: v.repeat(count) for k, v in xd.items()}, order=order, perturb=perturb,
                           deadline=self.deadline)
        whole = _ExpressionRun(run, self.graph, n * count)
        return [_Slice(whole, t * n, n) for t in range(count)]

    def rows(self, first: dict[str, Any], n_points: int) -> list[NodeRow]:
        g = self.graph
        run = self._first
        rows = []
        for node in g.nodes:
            k = node.id
            if node.op == "const" or (node.op in OPS and OPS[node.op].kind == "compare"):
                continue
            q: Quantity | None = first["by_node"].get(k)
            a, r = first.get(q.key, (None, None)) if q else (None, None)
            status = _status(q, n_points) if q else "constant"
            if node.region is not None or node.op in ("detach", "no_grad"):
                status += " (cut)" if node.op in ("detach", "no_grad") else " (in no_grad)"
            md = run.meta.get(k) if run else None
            value = run.values[k] if run else None
            rows.append(NodeRow(
                id=k, expression=g.label(k), op=node.op,
                grad_fn=md.grad_fn if md else None, is_leaf=md.is_leaf if md else True,
                requires_grad=md.requires_grad if md else False, retains_grad=md.retains_grad if md else False,
                cut=node.cut, value=None if value is None or value.dtype == torch.bool else float(value.detach().flatten()[0]),
                autograd_grad=a if (md and md.requires_grad) else None, symbolic_grad=r, status=status,
            ))
        return rows

    def extra_findings(self) -> list[Finding]:
        return []

    def notes(self) -> list[str]:
        return []

    def edges(self) -> list[tuple[int, int, str]]:
        """Argument -> node edges between shown nodes; the edge into a cut carries its name."""
        shown = {n.id for n in self.graph.nodes if n.op != "const" and not (n.op in OPS and OPS[n.op].kind == "compare")}
        out = []
        for n in self.graph.nodes:
            if n.id in shown:
                for a in n.args:
                    if a in shown:
                        out.append((a, n.id, n.op if n.op in ("detach", "no_grad") else ""))
        return out


def _status(q: Quantity, n_points: int) -> str:
    if not q.counts:
        return "ok"
    return ", ".join(f"{name} at {c}/{n_points}" for name, c in q.counts.items())


def _is_integer(value: object) -> bool:
    return isinstance(value, int) or (isinstance(value, float) and value.is_integer())
