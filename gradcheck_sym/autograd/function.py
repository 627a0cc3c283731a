"""A traced user function as a subject of the checking engine.

The symbolic side is the graph `trace` recorded (or an `expected` expression);
the autograd side is the user's own function, called at every point with fresh
leaf tensors, its gradients (a full Jacobian for tensor outputs) taken with
`torch.autograd.grad` — so custom `autograd.Function` backwards, hooks and
cuts act exactly as in the user's code.  For the rounding-noise estimate the
function is re-run under a mode that multiplies every op's result (and the
gradient flowing back into it) by ``1 + d``.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from torch.overrides import TorchFunctionMode

from ..judge import tolerance as tl
from ..judge.engine import Region, kink_ancestry
from ..judge.compare import Quantity
from ..errors import GradcheckSymError, LimitError
from ..ir.graph import Graph
from ..report import Finding, NodeRow
from ..reference.symbolic import Derivation
from ..front.trace import Cut, FunctionError, Trace, check_outputs

__all__ = ["FunctionSubject", "MAX_QUANTITIES"]

# Jacobian and Hessian entries compared per point.
MAX_QUANTITIES = 20_000

_CUT_WORDS = {
    "no_grad": "it runs with grad mode off (torch.no_grad / set_grad_enabled(False) / inference_mode), "
               "so autograd never sees it",
    "detach": ".detach() makes autograd treat the value as a constant",
    ".data": ".data reads the value past autograd, which treats it as a constant",
    ".item()": ".item() turns the value into a Python number, a constant for autograd",
    ".tolist()": ".tolist() turns the values into Python numbers, constants for autograd",
}


class _Perturb(TorchFunctionMode):
    """Multiplies each op's floating result, and the gradient flowing back into it, by 1 + d (seeded)."""

    # NB: results that are views of an input perturb that input too; the noise stays of the order of u.

    def __init__(self, u: float, trial: int) -> None:
        super().__init__()
        self.m = tl.PERTURB_ULPS * u
        self.gen = torch.Generator().manual_seed(tl.NOISE_SEED + trial)

    def _factor(self, t: torch.Tensor) -> torch.Tensor:
        d = 2 * torch.rand(t.shape, generator=self.gen, dtype=torch.float64) - 1
        return (1 + self.m * d).to(t.dtype)

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        name = getattr(func, "__name__", "")
        if not isinstance(out, torch.Tensor) or not out.is_floating_point() or name.endswith("_") or name in (
                "__get__", "__set__", "detach") or out.dim() > 8:
            return out
        # In place, through .data: the very tensor the function holds (and autograd saved) is
        # perturbed, so code that aliases it (views, .data, in-place ops) behaves as without noise.
        out.data.mul_(self._factor(out))
        if out.requires_grad:
            f = self._factor(out)
            out.register_hook(lambda g: g * f)
        return out


class _FunctionRun:
    def __init__(self, values: dict[str, torch.Tensor], outputs: list[torch.Tensor], grads: dict[str, torch.Tensor]):
        self.values, self._outputs, self.grads = values, outputs, grads

    def quantity(self, q: Quantity) -> torch.Tensor:
        return self.values[q.key]

    def outputs(self) -> list[torch.Tensor]:
        return self._outputs

    def tensors(self) -> Iterable[tuple[str, torch.Tensor]]:
        for name, t in self.grads.items():
            yield f"the gradient {name}", t
        for o, t in enumerate(self._outputs):
            yield f"output element {o}", t


class FunctionSubject:
    """A user function: traced (or `expected`) math against the function's own autograd."""

    def __init__(
        self,
        call: Callable[[list[torch.Tensor]], Any],
        trace: Trace,
        derivation: Derivation,
        *,
        title: str,
        input_specs: Sequence[tuple[str, tuple[int, ...], list[str]]],
        order: int,
        expected: str | None = None,
    ) -> None:
        self.call = call
        self.trace = trace
        self.graph: Graph = trace.graph
        self.derivation = derivation
        self.outputs = tuple(trace.outputs)
        self.title = title
        self.specs = list(input_specs)
        self.order = order
        self.expected = expected
        # Compare the function's value with the math: a trace must reproduce it, an expected
        # expression must equal it.
        self.check_forward = "value" if expected else "trace"
        self.looped = False
        self.vmapped = False
        self.vmap_error: str | None = None
        self._first: _FunctionRun | None = None
        n_vars = len(self.graph.variables)
        n_q = len(self.outputs) * n_vars + (n_vars * n_vars if order >= 2 else 0)
        if n_q > MAX_QUANTITIES:
            raise LimitError(f"{n_q:,} Jacobian/Hessian entries to compare; the limit is {MAX_QUANTITIES:,}",
                             "max_quantities", n_q, MAX_QUANTITIES,
                             hint="check a smaller input, or reduce the output to a scalar")
        self.out_names = _output_names(trace.output_shapes)

    # -- what is compared
    def quantities(self) -> list[Quantity]:
        g, d = self.graph, self.derivation
        rows = [(d.adjoints, d.cut_adjoints)] + list(d.extra_rows)
        kink_map = kink_ancestry(g)
        qs = []
        owner = {e: name for name, _, elements in self.specs for e in elements}
        for o, (adj, cut) in enumerate(rows):
            for name in g.variables:
                k = g.var_ids[name]
                affected = frozenset(c for c, anc in kink_map.items() if k in anc)
                out = self.out_names[o]
                qs.append(Quantity(f"jac:{o}:{name}", f"d {out}/d {name}", owner[name], k, adj.get(k, 0),
                                   cut.get(k, 0) if cut is not None else None, affected, row=o,
                                   group=f"input:{owner[name]}"))
        if d.hessian is not None:
            all_kinks = frozenset(kink_map)
            for i, xi in enumerate(g.variables):
                for j, xj in enumerate(g.variables):
                    qs.append(Quantity(f"hess:{xi},{xj}", f"d2 {self.out_names[0]}/d{xi} d{xj}", f"{xi}, {xj}",
                                       None, d.hessian[i][j], None, all_kinks, hess=(i, j), group="hessian"))
        self._quantities = qs
        return qs

    def regions(self) -> list[Region]:
        out = []
        for i, cut in enumerate(self.trace.cuts):
            label = "no_grad block" if cut.kind == "no_grad" else cut.kind
            out.append(Region(f"cut{i}", label, cut.where, _CUT_WORDS.get(cut.kind, cut.kind), cut.nodes, cut.source))
        return out

    # -- the user's autograd
    def autograd(self, xd: dict[str, torch.Tensor], order: int, trial: int | None,
                 detail: int | None = None) -> _FunctionRun:
        names = self.graph.variables
        n = len(next(iter(xd.values()))) if xd else 1
        dtype = next(iter(xd.values())).dtype if xd else torch.float64
        qs = self._quantities
        values = {q.key: torch.empty(n, dtype=torch.float64) for q in qs}
        outs = [torch.empty(n, dtype=torch.float64) for _ in self.outputs]
        grads = {f"d {self.out_names[0]}/d {v}": torch.empty(n, dtype=torch.float64) for v in names}
        if trial is None and order == 1 and n > 1 and self.vmap_error is None:
            batched = self._vmapped(xd, dtype, n)
            if batched is not None:
                if self._first is None:
                    self._first = batched
                return batched
        self.looped = True
        for p in range(n):
            leaves = []
            for name, shape, elements in self.specs:
                flat = torch.stack([xd[e][p] for e in elements]) if elements else torch.zeros(0, dtype=dtype)
                leaves.append(flat.reshape(shape).detach().clone().requires_grad_(True))
            mode = _Perturb(tl.UNIT_ROUNDOFF[dtype], trial * 100_003 + p) if trial is not None else None
            try:
                if mode is not None:
                    with mode:
                        result = self.call(leaves)
                else:
                    result = self.call(leaves)
            except GradcheckSymError:
                raise
            except Exception as exc:  # noqa: BLE001 - the user's error, with the user's traceback
                raise FunctionError(exc) from None
            flat_out = torch.cat([t.reshape(-1) for t in check_outputs(result)])
            for o in range(len(self.outputs)):
                outs[o][p] = float(flat_out[o].detach())
            for o in range(len(self.outputs)):
                row = self._grad(flat_out[o], leaves, create_graph=order >= 2 and o == 0)
                for v, name in enumerate(names):
                    values[f"jac:{o}:{name}"][p] = float(row[v].detach())
                if o == 0:
                    for v, name in enumerate(names):
                        grads[f"d {self.out_names[0]}/d {name}"][p] = float(row[v].detach())
                    if order >= 2:
                        for i, xi in enumerate(names):
                            hrow = self._grad(row[i], leaves, create_graph=False) if row[i].requires_grad else \
                                torch.zeros(len(names), dtype=dtype)
                            for j, xj in enumerate(names):
                                values[f"hess:{xi},{xj}"][p] = float(hrow[j])
        run = _FunctionRun(values, outs, grads)
        if trial is None and self._first is None:
            self._first = run
        return run

    def trials(self, xd: dict[str, torch.Tensor], order: int, count: int) -> list[_FunctionRun]:
        """`count` perturbed runs (one call per point each: the perturbation acts on real tensors)."""
        return [self.autograd(xd, order, t) for t in range(count)]

    def _vmapped(self, xd: dict[str, torch.Tensor], dtype: torch.dtype, n: int) -> _FunctionRun | None:
        """All points at once with torch.func.vmap(jacrev(fn)); None (and a note) where fn does not allow it."""
        from torch.func import jacrev, vmap

        batched = []
        for name, shape, elements in self.specs:
            cols = torch.stack([xd[e] for e in elements], dim=1) if elements else torch.zeros(n, 0, dtype=dtype)
            batched.append(cols.reshape((n,) + tuple(shape)))

        def flat(*leaves: torch.Tensor) -> torch.Tensor:
            return torch.cat([t.reshape(-1) for t in check_outputs(self.call(list(leaves)))])

        argnums = tuple(range(len(batched)))
        try:
            outs = vmap(flat)(*batched)
            jac = vmap(jacrev(flat, argnums=argnums))(*batched)
        except GradcheckSymError:
            raise
        except Exception as exc:  # noqa: BLE001 - vmap cannot batch this function: loop instead
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            self.vmap_error = text.split(". ")[0].rstrip(".")[:160]
            return None
        names = self.graph.variables
        columns = torch.cat([j.reshape(n, len(self.outputs), -1) for j in jac], dim=2).to(torch.float64)
        values = {}
        for o in range(len(self.outputs)):
            for v, name in enumerate(names):
                values[f"jac:{o}:{name}"] = columns[:, o, v]
        grads = {f"d {self.out_names[0]}/d {name}": columns[:, 0, v] for v, name in enumerate(names)}
        self.vmapped = True
        return _FunctionRun(values, [outs[:, o].detach().to(torch.float64) for o in range(len(self.outputs))], grads)

    def _grad(self, out: torch.Tensor, leaves: list[torch.Tensor], create_graph: bool) -> torch.Tensor:
        """d out / d (every input element), flattened in variable order; 0 where out does not depend on it."""
        if not out.requires_grad:
            return torch.zeros(sum(t.numel() for t in leaves), dtype=out.dtype)
        gs = torch.autograd.grad(out, leaves, retain_graph=True, create_graph=create_graph, allow_unused=True,
                                 materialize_grads=True)
        return torch.cat([g.reshape(-1) for g in gs])

    # -- the report
    def rows(self, first: dict[str, Any], n_points: int) -> list[NodeRow]:
        rows = []
        qs = {q.key: q for q in self._quantities}
        point = first.get("point", {})
        n_out = len(self.outputs)
        for name in self.graph.variables:
            # With several output elements the table shows the gradient of their sum (what
            # out.sum().backward() gives) and a status over the whole Jacobian column.
            a = r = 0.0
            counts: dict[str, int] = {}
            for o in range(n_out):
                q = qs[f"jac:{o}:{name}"]
                ao, ro = first.get(q.key, (0.0, 0.0))
                a, r = a + ao, r + ro
                for k, c in q.counts.items():
                    counts[k] = counts.get(k, 0) + c
            status = ", ".join(f"{k} in {c} of {n_points * n_out} entries" if n_out > 1 else f"{k} at {c}/{n_points}"
                               for k, c in counts.items())
            rows.append(NodeRow(id=self.graph.var_ids[name], expression=name, op="input", grad_fn=None, is_leaf=True,
                                requires_grad=True, retains_grad=False, cut=None, value=point.get(name),
                                autograd_grad=a, symbolic_grad=r, status=status or "ok"))
        run = self._first
        for o, k in enumerate(self.outputs):
            value = float(run.outputs()[o][0]) if run is not None else None
            rows.append(NodeRow(id=k, expression=self.out_names[o], op="output", grad_fn=None, is_leaf=False,
                                requires_grad=True, retains_grad=False, cut=None, value=value, autograd_grad=None,
                                symbolic_grad=None, status="output"))
        return rows

    def extra_findings(self) -> list[Finding]:
        out = []
        for cut in self.trace.stale:
            out.append(Finding(
                "stale-graph", "error", cut.where,
                f"{cut.where} `{cut.source}`: the tensor's value was changed past autograd while its grad_fn still "
                "describes the old value, so backward differentiates a computation that no longer matches the "
                "numbers (an error even where the gradients happen to agree). Compute the new value with tensor "
                "operations, or use .detach() where a constant is meant", 1, (), "", None))
        return out

    def edges(self) -> list[tuple[int, int, str]]:
        return _edges(self.graph, self.outputs)

    def notes(self) -> list[str]:
        notes = []
        if self.expected:
            notes.append(f"symbolic side: the expected expression {self.expected!r}, elementwise")
        else:
            notes.append(f"symbolic side: the trace of the function ({len(self.graph.nodes)} scalar nodes)")
        if self.trace.custom_functions:
            notes.append("custom autograd.Function " + ", ".join(self.trace.custom_functions)
                         + ": math from its forward, autograd from its backward")
        if self.vmapped:
            notes.append("autograd: all points at once with torch.func.vmap(jacrev(fn))")
        if self.looped and self.vmap_error:
            notes.append(f"autograd: the function called once per point (vmap cannot batch it: {self.vmap_error})")
        elif self.looped and not self.vmapped:
            notes.append("autograd: the function called once per point")
        if len(self.outputs) > 1:
            notes.append(f"table: gradients of the sum of the {len(self.outputs)} output elements")
        return notes


def _edges(graph: Graph, outputs: tuple[int, ...]) -> list[tuple[int, int, str]]:
    """Input element -> output element where the output depends on it (at most 500 edges)."""
    out = []
    for k in outputs:
        anc = graph.ancestors(k)
        for name in graph.variables:
            v = graph.var_ids[name]
            if v in anc:
                out.append((v, k, ""))
                if len(out) >= 500:
                    return out
    return out


def _output_names(shapes: list[tuple[int, ...]]) -> list[str]:
    names = []
    multi = len(shapes) > 1
    for i, shape in enumerate(shapes):
        base = f"out{i}" if multi else "out"
        if not shape:
            names.append(base)
        else:
            names += [f"{base}[{','.join(map(str, idx))}]" for idx in np.ndindex(*shape)]
    return names


def describe_call(fn: Any, names: Sequence[str]) -> str:
    """A title such as ``f(x, w)`` or ``MySoftplus.apply(x)``."""
    qual = getattr(fn, "__qualname__", None) or type(fn).__name__
    owner = getattr(fn, "__self__", None)
    if isinstance(owner, type):  # MyFunction.apply: a classmethod bound to the user's class
        qual = f"{owner.__name__}.{getattr(fn, '__name__', 'apply')}"
        fn = owner
    if isinstance(fn, torch.nn.Module):
        qual = type(fn).__name__
    file = getattr(getattr(fn, "__code__", None), "co_filename", None)
    if file is None and isinstance(fn, type):
        file = getattr(sys.modules.get(fn.__module__), "__file__", None)
    where = f" ({os.path.basename(file)})" if file else ""
    return f"{qual}({', '.join(names)}){where}"


__all__ += ["describe_call", "Cut"]
