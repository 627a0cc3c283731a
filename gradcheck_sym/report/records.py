"""Stage 6: the results, as data.  Rendering (text, JSON) reads these records.

A `Report` holds frozen `Finding`s (each with its kind, severity, node and the
worst `Example`s behind it) and one `NodeRow` per graph node.  `report.ok` is
False exactly when a finding of severity "error" exists.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Callable, Literal

__all__ = ["SCHEMA_VERSION", "Severity", "Example", "CutLocation", "Finding", "NodeRow", "Formula", "Report",
           "KIND_SEVERITY"]

SCHEMA_VERSION = 1
Severity = Literal["error", "warning", "info"]

# The finding kinds and their usual severity (nonfinite depends on agreement).
KIND_SEVERITY: dict[str, Severity] = {
    "mismatch": "error",
    "untracked": "error",
    "nonfinite": "error",
    "nondifferentiable": "info",
    "outside-domain": "info",
    "nonfinite-output": "info",
    "cut": "info",
    "second-opinion": "warning",
    "range": "warning",
    "trace": "warning",
    "stale-graph": "error",
    "not-verified": "error",
    "not-reentrant": "error",
    "intended": "info",
    "leak": "info",
    "ill-conditioned": "info",
}


@dataclass(frozen=True)
class Example:
    """One point behind a finding.

    Attributes:
        index: the point's index in the batch.
        point: variable -> value (as rounded to the dtype).
        autograd: torch's value (None when torch has none there).
        symbolic: the exact reference value (None when not defined).
        abs_err: |autograd - symbolic|.
        rel_err: abs_err / |symbolic| (None when symbolic is 0 or not finite).
        tol: the tolerance used (None where no tolerance applies).
        why: how the tolerance and reference were obtained, in words.
        quantity: what was compared there ("d out[2]/d x[2]"), when a finding covers several.
    """

    index: int
    point: dict[str, float]
    autograd: float | None
    symbolic: float | None
    abs_err: float | None = None
    rel_err: float | None = None
    tol: float | None = None
    why: str = ""
    quantity: str = ""


@dataclass(frozen=True)
class CutLocation:
    """Where the gradient is cut, as data.

    Attributes:
        kind: "no_grad", "detach", ".data", ".item()", ".tolist()".
        file, line, source: the user's file, line and source line.
        dropped: the largest full-math gradient that flows into the cut (0: harmless).
    """

    kind: str
    file: str
    line: int
    source: str
    dropped: float = 0.0

    @property
    def file_name(self) -> str:
        return self.file.replace("\\", "/").rsplit("/", 1)[-1] if self.file else "<unknown>"


@dataclass(frozen=True)
class Finding:
    """One verdict about one node (or Hessian entry), over all the points where it holds.

    Attributes:
        kind: "mismatch", "untracked", "nondifferentiable", "nonfinite", "outside-domain", "ill-conditioned", "cut",
            "second-opinion", ... (see `KIND_SEVERITY`).
        severity: "error", "warning" or "info".
        node: the node's expression as written (or ``d2/dx dy`` for Hessian entries; "" for the whole point).
        message: one paragraph in words.
        count: the number of points where it holds.
        examples: the worst points (at most a few).
        quantity: what was compared ("d out/d x/y", "d2 out/dx dy", "value"), "" when nothing was.
        node_id: the graph node id, or None.
        convention: torch's convention at a kink (nondifferentiable), else "".
        cuts: for traced code, the cuts the finding is about (`CutLocation`s).
        file, line: where in the user's code (the cut's line for `untracked`), when known.
    """

    kind: str
    severity: Severity
    node: str
    message: str
    count: int = 1
    examples: tuple[Example, ...] = ()
    quantity: str = ""
    node_id: int | None = None
    convention: str = ""
    cuts: tuple[CutLocation, ...] = ()
    file: str = ""
    line: int = 0


@dataclass(frozen=True)
class NodeRow:
    """One row of the per-node table, at the first point (and a status over all points)."""

    id: int
    expression: str
    op: str
    grad_fn: str | None
    is_leaf: bool
    requires_grad: bool
    retains_grad: bool
    cut: str | None
    value: float | None
    autograd_grad: float | None
    symbolic_grad: float | None
    status: str


@dataclass(frozen=True)
class Formula:
    """An exact derivative as a formula, d(output)/d(`of`), written in the variables.

    `expr` is the sympy object (not in the JSON: `text` and `latex` are its printed forms).
    """

    of: str
    node: int
    text: str
    latex: str
    expr: Any = field(default=None, compare=False, repr=False, metadata={"json": False})


class LazyFormulas(Sequence):
    """`Report.derivatives` computed on first use: writing out a traced call's formulas costs sympy work
    that a check which never looks at them should not pay (it doubled the median check of a small op)."""

    def __init__(self, compute: Callable[[], tuple[Formula, ...]]) -> None:
        self._compute: Callable[[], tuple[Formula, ...]] | None = compute
        self._value: tuple[Formula, ...] = ()

    def _get(self) -> tuple[Formula, ...]:
        if self._compute is not None:
            compute, self._compute = self._compute, None
            self._value = tuple(compute())
        return self._value

    def __getitem__(self, i: Any) -> Any:
        return self._get()[i]

    def __len__(self) -> int:
        return len(self._get())

    def __eq__(self, other: object) -> bool:
        return self._get() == (tuple(other) if isinstance(other, Sequence) else other)

    def __repr__(self) -> str:
        return repr(self._get())

    def __reduce__(self) -> tuple[Any, ...]:
        # a report sent to another process (a pool or Dask worker's result) carries the formulas
        # themselves, not the closure that computes them
        return (tuple, (self._get(),))


@dataclass(frozen=True)
class Report:
    """The result of one check.

    Attributes:
        expression: the text checked.
        variables: the variables, in order.
        dtype: torch dtype name of the autograd run.
        order: 1 (gradients) or 2 (also the Hessian).
        n_points: points checked.
        seed: the sampling seed (None for explicit points).
        derivation: how the symbolic reference was derived, in words.
        tolerance: the tolerance model, in one line.
        findings: every verdict other than plain agreement.
        nodes: the per-node table.
        checked: number of (point, quantity) comparisons made.
        high_precision_points: points whose reference was recomputed in mpmath.
        first_point: the first point (the table's values are there).
        edges: (from node id, to node id, cut) between the table's nodes, for pictures; cut
            names the cut ("detach", "no_grad") on an edge autograd does not follow.
        derivatives: the exact derivatives as formulas (sympy objects, text and LaTeX): of the
            output with respect to each variable, then to each intermediate node, where the
            written-out formula is small (see `reference.formulas`).
    """

    expression: str
    variables: tuple[str, ...]
    dtype: str
    order: int
    n_points: int
    seed: int | None
    derivation: str
    tolerance: str
    findings: tuple[Finding, ...]
    nodes: tuple[NodeRow, ...]
    checked: int = 0
    high_precision_points: int = 0
    first_point: dict[str, float] = field(default_factory=dict)
    edges: tuple[tuple[int, int, str], ...] = ()
    derivatives: Sequence[Formula] = ()

    @property
    def ok(self) -> bool:
        """False exactly when a finding of severity "error" exists."""
        return not any(f.severity == "error" for f in self.findings)

    def derivative(self, of: str) -> Any:
        """The exact d(output)/d(`of`) as a sympy expression (`of`: a variable or a node's text)."""
        for f in self.derivatives:
            if f.of == of:
                return f.expr
        known = ", ".join(f.of for f in self.derivatives) or "none (the formulas were too large to write out)"
        raise KeyError(f"no derivative formula for {of!r}; there are: {known}")

    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    def by_kind(self, kind: str) -> list[Finding]:
        return [f for f in self.findings if f.kind == kind]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict with a schema `version`."""
        d = _finite_json(self)
        d["ok"] = self.ok
        return {"version": SCHEMA_VERSION, **d}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    def __str__(self) -> str:
        from .render import render_text

        return render_text(self)

    def _repr_html_(self) -> str:
        from .render import render_html

        return render_html(self)


def _finite_json(obj: Any) -> Any:
    """Records as plain JSON data, in one pass (`dataclasses.asdict` deep-copies: 8 s for a table of
    45,000 rows).  JSON has no NaN or infinity: they are written as the strings "nan", "inf", "-inf"."""
    if isinstance(obj, float):
        if obj != obj:
            return "nan"
        if obj in (float("inf"), float("-inf")):
            return "inf" if obj > 0 else "-inf"
        return obj
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    if isinstance(obj, dict):
        return {k: _finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, LazyFormulas)):
        return [_finite_json(v) for v in obj]
    if is_dataclass(obj):
        return {f.name: _finite_json(getattr(obj, f.name)) for f in _fields(type(obj)) if f.metadata.get("json", True)}
    return obj


@functools.cache
def _fields(cls: type) -> tuple[Any, ...]:
    return fields(cls)
