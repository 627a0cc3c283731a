"""The tensor program: one small immutable record of a traced computation, on whole tensors.

Grammar (one line of `str(program)` per input and equation)::

    program  := input* eqn* ; outputs
    input    := %k:f64[2,3] = input NAME
    eqn      := %k:f32[4,2] (, %j:...)* = PRIM atom* {params}   # file.py:12 conv2d
    atom     := %k            (a variable: an input or an earlier equation's output)
              | #c:f64[3]     (a constant tensor: data, a mask, anything not traced)

Each equation applies one *primitive* of `gradcheck_sym.ops.prims` (a closed set:
elementwise functions, movement and sums, matmul, a few linear-algebra kernels,
cuts).  A torch op the user called is lowered to one or more equations that
share its `Site` (the op's name, the user's file:line and source line, the grad
mode and the custom `autograd.Function` whose forward ran it), so a report can
speak of ``conv2d at model.py:12`` while the reference works on primitives.

Values never live on the program: the interpreter (`gradcheck_sym.reference`)
keeps them in an environment keyed by variable id.  Constants are the one
exception — they *are* values (the tensors the trace saw), kept in `consts`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Var", "Const", "Atom", "Site", "Eqn", "Program", "short_dtype"]

_SHORT = {"float64": "f64", "float32": "f32", "float16": "f16", "bfloat16": "bf16", "bool": "b8", "int64": "i64",
          "int32": "i32", "int16": "i16", "int8": "i8", "uint8": "u8", "complex64": "c64", "complex128": "c128"}


def short_dtype(dtype: Any) -> str:
    """``torch.float32`` (or "float32") -> "f32", for printing."""
    name = str(dtype).replace("torch.", "")
    return _SHORT.get(name, name)


@dataclass(frozen=True)
class Var:
    """A variable: an input, or the output of one equation.

    Attributes:
        id: unique in its program.
        shape: the tensor's shape.
        dtype: the dtype the *user's* computation had there ("float32"); the reference
            computes every floating value in float64 whatever this says.
    """

    id: int
    shape: tuple[int, ...]
    dtype: str

    def __str__(self) -> str:
        return f"%{self.id}"


@dataclass(frozen=True)
class Const:
    """A constant tensor: `Program.consts[index]`."""

    index: int
    shape: tuple[int, ...]
    dtype: str

    def __str__(self) -> str:
        return f"#{self.index}"


Atom = Var | Const


@dataclass(frozen=True)
class Site:
    """Where equations came from: one torch call in the user's code.

    Attributes:
        op: the torch op as called ("conv2d", "Tensor.add_", "__mul__").
        file, line, source: the user's file, line and source line (0 / "" when unknown).
        grad: "on", or how grad mode was off: "no_grad" (also set_grad_enabled(False)),
            "inference", "torch" (torch's own code turned it off while it was on).
        custom: the custom `autograd.Function` whose forward ran the op, or None.
    """

    op: str
    file: str = ""
    line: int = 0
    source: str = ""
    grad: str = "on"
    custom: str | None = None

    @property
    def where(self) -> str:
        return f"{os.path.basename(self.file)}:{self.line}" if self.file else "<unknown>"


@dataclass(frozen=True)
class Eqn:
    """One primitive application.

    Attributes:
        prim: the primitive's name (a key of `gradcheck_sym.ops.prims.PRIMS`).
        inputs: its arguments.
        outputs: its results (most primitives have one).
        params: the primitive's parameters (shapes, dims, index maps, the elementwise function).
        site: index into `Program.sites`, or -1 for equations made by code (not traced).
    """

    prim: str
    inputs: tuple[Atom, ...]
    outputs: tuple[Var, ...]
    params: dict[str, Any] = field(default_factory=dict, compare=False)
    site: int = -1


@dataclass(frozen=True)
class Program:
    """A traced computation in topological order.

    Attributes:
        inputs: the differentiable inputs (variables bound by nobody).
        input_names: a name per input ("x", "0.weight", "w (line 12)").
        eqns: every equation; each variable is bound once, before its use.
        outputs: the results the user's function returned (a constant where one does not depend
            on the inputs).
        consts: the constant tensors.
        sites: the torch calls the equations came from.
    """

    inputs: tuple[Var, ...]
    input_names: tuple[str, ...]
    eqns: tuple[Eqn, ...]
    outputs: tuple[Atom, ...]
    consts: tuple[Any, ...] = ()
    sites: tuple[Site, ...] = ()

    def validate(self) -> None:
        """Check the invariants; raise ValueError naming the first broken one."""
        from ..ops.core import PRIMS

        bound: set[int] = set()
        for v in self.inputs:
            if v.id in bound:
                raise ValueError(f"input %{v.id} bound twice")
            bound.add(v.id)
        if len(self.input_names) != len(self.inputs):
            raise ValueError("one name per input")
        for n, e in enumerate(self.eqns):
            if e.prim not in PRIMS:
                raise ValueError(f"equation {n} has unknown primitive {e.prim!r}")
            for a in e.inputs:
                if isinstance(a, Var) and a.id not in bound:
                    raise ValueError(f"equation {n} ({e.prim}) uses %{a.id} before it is bound")
                if isinstance(a, Const) and not 0 <= a.index < len(self.consts):
                    raise ValueError(f"equation {n} ({e.prim}) uses a missing constant #{a.index}")
            for v in e.outputs:
                if v.id in bound:
                    raise ValueError(f"equation {n} ({e.prim}) binds %{v.id} again")
                bound.add(v.id)
            if not -1 <= e.site < len(self.sites):
                raise ValueError(f"equation {n} has no site {e.site}")
        for v in self.outputs:
            if isinstance(v, Var) and v.id not in bound:
                raise ValueError(f"output %{v.id} is never bound")

    def __str__(self) -> str:
        def typed(v: Var) -> str:
            return f"%{v.id}:{short_dtype(v.dtype)}[{','.join(map(str, v.shape))}]"

        lines = [f"{typed(v)} = input {name}" for v, name in zip(self.inputs, self.input_names)]
        for e in self.eqns:
            args = " ".join(str(a) for a in e.inputs)
            shown = {k: v for k, v in e.params.items() if _printable(v)}
            params = (" {" + ", ".join(f"{k}={v}" for k, v in shown.items()) + "}") if shown else ""
            site = self.sites[e.site] if e.site >= 0 else None
            comment = f"   # {site.where} {site.op}" + (f" [{site.grad}]" if site.grad != "on" else "") if site else ""
            lines.append(f"{', '.join(typed(v) for v in e.outputs)} = {e.prim} {args}{params}{comment}")
        lines.append("outputs " + " ".join(str(v) for v in self.outputs))
        return "\n".join(lines)


def _printable(value: Any) -> bool:
    """Parameters shown by the printer: small plain values (not index tensors)."""
    if isinstance(value, (int, float, str, bool)) or value is None:
        return True
    if isinstance(value, tuple):
        return len(value) <= 8 and all(isinstance(x, (int, float, str, bool)) for x in value)
    return hasattr(value, "name") and isinstance(getattr(value, "name"), str)
