"""Stage 4: run the graph through torch autograd, node by node, and record everything.

Every node becomes one torch operation on a batch of points; every non-leaf
tensor that requires grad gets `retain_grad()`, so after `backward()` each
node's `.grad` is known, not only the leaves'.  `grad_fn` names, `is_leaf` and
`requires_grad` are recorded per node.  ``no_grad(e)`` regions run under
`torch.no_grad()` and ``detach(e)`` calls `.detach()`, exactly as user code would.

For the rounding-noise estimate (see `tolerance`) the same run can be
repeated with every node's value and incoming gradient multiplied by
``1 + eps``: a small, seeded Monte Carlo arithmetic.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any

import torch

from ..budget import Deadline
from ..errors import UnsupportedError
from ..ir.graph import Graph
from ..ops import OPS

__all__ = ["AutogradRun", "NodeMeta", "run_autograd", "DTYPES"]

DTYPES: dict[str, torch.dtype] = {
    "float64": torch.float64,
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


@dataclass(frozen=True)
class NodeMeta:
    """What torch says about one node's tensor."""

    grad_fn: str | None
    is_leaf: bool
    requires_grad: bool
    retains_grad: bool


@dataclass
class AutogradRun:
    """Torch's values and gradients for one batch of points.

    Attributes:
        values: node id -> forward value (shape (n,) or () for constants).
        grads: node id -> `.grad` after backward (None where autograd did not reach the node).
        meta: node id -> `NodeMeta`.
        hessian: ``hessian[i][j]`` from double backward (order 2), else None.
    """

    values: dict[int, torch.Tensor]
    grads: dict[int, torch.Tensor | None]
    meta: dict[int, NodeMeta]
    hessian: list[list[torch.Tensor]] | None = None

    def __del__(self) -> None:
        # Release the graph from the output backwards.  Each tensor holds its own grad_fn, so
        # each release frees one node.  In the other order the output's tensor goes last and
        # frees the whole chain at once, recursively — through Python where grad_fn objects
        # exist (`meta`, hooks), which overflows the C stack for a chain of ~40,000 nodes
        # (x+x+...+x): a segfault.
        # A finalizer may run in any thread, also in a worker being interrupted (budget.run_bounded):
        # nothing may escape it; whatever is left is then released the usual way.
        try:
            values = self.values
            for k in sorted(values, reverse=True):
                del values[k]
        except BaseException:  # noqa: BLE001, S110
            pass


def _number(value: Any) -> float:
    """A constant's value as a float (pi and e by name; integers beyond the float range are +-inf)."""
    if value == "pi":
        return math.pi
    if value == "E":
        return math.e
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def _const_value(value: Any, dtype: torch.dtype) -> torch.Tensor:
    return torch.tensor(_number(value), dtype=dtype)


def _scalar(value: Any) -> int | float:
    """A constant as the Python number user code would pass: an int where torch takes it (int64),
    else the float it rounds to (torch refuses larger ints)."""
    if isinstance(value, int) and -(2**63) <= value < 2**63:
        return value
    return _number(value)


def run_autograd(
    graph: Graph,
    inputs: dict[str, torch.Tensor],
    *,
    order: int = 1,
    perturb: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None,
    retain: bool = True,
    meta: bool = False,
    deadline: Deadline | None = None,
) -> AutogradRun:
    """Evaluate `graph` with torch on a batch and back-propagate from the output.

    Args:
        graph: the graph.
        inputs: variable name -> 1-D tensor of the batch (all the same length and dtype).
        order: 2 also computes the Hessian of the output by double backward.
        perturb: node id -> (value factor, gradient factor) for the noise estimate.
        retain: call `retain_grad()` on every non-leaf (False: only the leaves get `.grad`).
        meta: record `grad_fn`, `is_leaf`, ... per node (`AutogradRun.meta`; empty otherwise).
        deadline: looked at before every node.

    Returns:
        An `AutogradRun`.

    Raises:
        UnsupportedError: torch has no kernel for an op in this dtype, or cannot differentiate it.
        TimeLimitError: the deadline passed.
    """
    dtype = next(iter(inputs.values())).dtype if inputs else torch.float64
    values: dict[int, torch.Tensor] = {}
    leaves: list[torch.Tensor] = []
    for node in graph.nodes:
        k = node.id
        if deadline is not None:
            deadline.check("running autograd")
        if node.op == "var":
            t = inputs[node.name or ""].detach().requires_grad_(True)  # a new leaf; its storage is only read
            leaves.append(t)
        elif node.op == "const":
            t = _const_value(node.value, dtype)
            if perturb is not None and k in perturb:  # constants are rounded to the dtype too
                t = t * perturb[k][0]
        else:
            op = OPS[node.op]
            args = [values[a] for a in node.args]
            if op.kind == "binop" and perturb is None:
                # A constant operand as a Python number takes torch's scalar paths (x**2 is
                # PowBackward0 with an int exponent, as in user code), and they are faster.
                consts = [graph.nodes[a].op == "const" and not isinstance(graph.nodes[a].value, str)
                          for a in node.args]
                if node.op == "mod":  # torch.remainder(number, tensor) has no derivative: a tensor there
                    consts[0] = False
                if any(consts) and not all(consts):
                    args = [_scalar(graph.nodes[a].value) if c else v for a, c, v in zip(node.args, consts, args)]
            ctx = torch.no_grad() if node.region is not None or node.op == "no_grad" else contextlib.nullcontext()
            try:
                with ctx:
                    t = op.torch(torch, *args)
            except (RuntimeError, NotImplementedError) as exc:
                raise UnsupportedError(
                    f"torch cannot compute {graph.label(k)!r} in {dtype}: {str(exc).splitlines()[0]}",
                    "use --dtype float64 or float32",
                ) from None
            if op.kind != "compare" and perturb is not None and k in perturb and t.requires_grad:
                fwd, bwd = perturb[k]
                t = t * fwd
                t.register_hook(lambda g, f=bwd: g * f)
        if retain and t.requires_grad and not t.is_leaf:
            t.retain_grad()
        values[k] = t
    out = values[graph.output]
    if not out.requires_grad:
        grads: dict[int, torch.Tensor | None] = {k: None for k in values}
        return AutogradRun(values, grads, _meta(values) if meta else {}, None)
    total = out.sum() if out.dim() else out
    try:
        total.backward(retain_graph=order >= 2)
        # Read the gradients before the double backward, which adds to retained .grad attributes.
        grads = {k: (t.grad if t.requires_grad and (retain or t.is_leaf) else None) for k, t in values.items()}
        hessian = _hessian(graph, values, total) if order >= 2 else None
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        hint = ("turn torch's anomaly detection off for the check (it stops at the NaN gradients the check is "
                "meant to find)" if torch.is_anomaly_enabled() else "use --dtype float64, or rewrite that part")
        raise UnsupportedError(f"torch's autograd cannot differentiate this expression in {dtype}: {first}",
                               hint) from None
    info = _meta(values) if meta else {}
    if not retain:  # a bulk run: keep the output's value, free the intermediates' memory
        values = {k: v for k, v in values.items() if k == graph.output or graph.nodes[k].op == "var"}
    return AutogradRun(values, grads, info, hessian)


def _meta(values: dict[int, torch.Tensor]) -> dict[int, NodeMeta]:
    return {
        k: NodeMeta(
            grad_fn=type(t.grad_fn).__name__ if t.grad_fn is not None else None,
            is_leaf=t.is_leaf,
            requires_grad=t.requires_grad,
            retains_grad=bool(t.requires_grad and not t.is_leaf and t.retains_grad),
        )
        for k, t in values.items()
    }


def _hessian(graph: Graph, values: dict[int, torch.Tensor], total: torch.Tensor) -> list[list[torch.Tensor]]:
    """Double backward: d/dx_j of the gradient (create_graph=True), one row per variable."""
    xs = [values[graph.var_ids[v]] for v in graph.variables]
    grads = torch.autograd.grad(total, xs, create_graph=True, allow_unused=True, materialize_grads=True)
    rows = []
    for g in grads:
        if g.requires_grad:
            row = torch.autograd.grad(g.sum(), xs, retain_graph=True, allow_unused=True, materialize_grads=True)
            rows.append([r.detach() for r in row])
        else:
            rows.append([torch.zeros_like(x).detach() for x in xs])
    return rows
