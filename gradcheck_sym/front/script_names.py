"""The names of a run's rows: a parameter's module path, the script's variable, the line's name for it.

A tensor the script still holds at its end is named by that variable (``w``, ``p[0]``, ``sd['weight']``), for a
parameter of a module it holds by the module path (``model.0.weight``), for an attribute of one of its own objects
by the attribute path (``layers[0].weight``: a hand-written layer); any other by its line: the name the line
assigns (``loss (line 12)``), the ``y.detach()`` made inside the line's expression, the tensor the line sets
``requires_grad`` on or calls ``.backward()`` on (`report.run.assigned_name`).
"""

from __future__ import annotations

import re
import types
from typing import Any

import torch

from ..report.run import assigned_name
from .script_infos import DETACHED

__all__ = ["row_names", "name_leaves"]


def _module_paths(namespace: dict[str, Any]) -> dict[int, str]:
    """id(parameter) -> ``model.0.weight`` for the modules in the script's namespace, in `named_parameters`' order
    (a parameter two modules share is named after the first), read from the modules' own dicts of parameters and
    submodules: asked while the script runs too (`name_leaves`), where no code of the script's may run (a module's
    own `named_parameters` could print)."""
    out: dict[int, str] = {}

    def walk(prefix: str, module: torch.nn.Module, depth: int) -> None:
        own = vars(module)
        for pname, p in (own.get("_parameters") or {}).items():
            if isinstance(p, torch.Tensor):
                out.setdefault(id(p), f"{prefix}.{pname}")
        for cname, child in (own.get("_modules") or {}).items():
            if isinstance(child, torch.nn.Module) and depth < 32:  # (a module that holds itself ends here)
                walk(f"{prefix}.{cname}", child, depth + 1)

    for name, value in list(namespace.items()):
        if not name.startswith("_") and isinstance(value, torch.nn.Module):
            walk(name, value, 0)
    return out


def name_leaves(infos: list[Any], namespace: dict[str, Any] | None) -> None:
    """Give the leaves first seen since the last backward (`infos`, emptied) their paths in the modules the script
    holds now: a network the script rebinds later (a tutorial's `model` for each of its sections) keeps its
    parameters' names (`model.lin.weight (line 25)`), not `leaf #0`."""
    pending, infos[:] = list(infos), []
    if not namespace or not pending:
        return
    paths = _module_paths(namespace)
    for info in pending:
        t = info.ref()
        if t is not None and info.path is None and id(t) in paths:
            info.path = paths[id(t)]


_NOT_PLAIN = (torch.Tensor, torch.nn.Module, type, types.ModuleType, types.FunctionType, types.MethodType,
              types.BuiltinFunctionType)


def _attributes(value: Any) -> dict[str, Any]:
    """The instance attributes of one of the script's own objects (a hand-written layer); {} for anything else.

    Read through the instance dictionary's own descriptor only: never the class's __getattr__ or a __dict__
    property of its own (a proxy's, which runs the script's code; one that raises ended the run: found by
    review) — the script's code does not run for a name."""
    try:
        if isinstance(value, _NOT_PLAIN):
            return {}
        for cls in type(value).__mro__:
            slot = vars(cls).get("__dict__")
            if slot is None:
                continue
            if not isinstance(slot, types.GetSetDescriptorType):
                return {}  # (a __dict__ of the class's own making)
            attrs = slot.__get__(value, type(value))
            return attrs if type(attrs) is dict else {}
    except Exception:  # noqa: BLE001 - a name is not worth the run: none from this object
        return {}
    return {}


def _attribute_paths(path: str, obj: Any, bound: dict[int, str]) -> None:
    """Name the tensors held by attributes of one of the script's own objects (makemore's hand-written Linear and
    BatchNorm1d layers: ``layers[0].weight``; a textbook's RNN from scratch: ``net.params[0]``), where not named
    already."""
    for attr, value in list(_attributes(obj).items()):
        if not isinstance(attr, str) or attr.startswith("_"):
            continue
        if isinstance(value, torch.Tensor):
            bound.setdefault(id(value), f"{path}.{attr}")
        elif type(value) in (list, tuple) and len(value) <= 64:
            for i, e in enumerate(value):
                if isinstance(e, torch.Tensor):
                    bound.setdefault(id(e), f"{path}.{attr}[{i}]")


_DETACH = re.compile(r"([A-Za-z_][\w.]*(?:\[[^\]]*\])?)\.detach\(\)")


def _detached_expression(info: Any) -> str:
    """`x.detach()` for a detached tensor made inside its line's expression (`z = f(x, y.detach())`: the row is
    `y.detach()`, not `z`), if the line has one such expression; else ""."""
    if info.cut != DETACHED:
        return ""
    found = _DETACH.findall(info.source)
    if len(found) != 1:
        return ""
    text = f"{found[0]}.detach()"
    rhs = info.source.split("=", 1)[-1].split("#", 1)[0].strip()
    while rhs.startswith("(") and rhs.endswith(")"):  # `a = (y.detach())`
        rhs = rhs[1:-1].strip()
    return "" if rhs == text else text


def row_names(tracer: Any, namespace: dict[str, Any]) -> dict[int, str]:
    """Info serial -> display name: a parameter's module path (``model.0.weight``), the script's variable bound to
    the tensor at its end, else the name its line gives it (``loss (line 12)``), else where it was first seen."""
    params = _module_paths(namespace)
    bound: dict[int, str] = {}
    for k, v in namespace.items():  # (in the order the script first bound them: the first name a tensor got)
        if k.startswith("_"):
            continue
        if isinstance(v, torch.Tensor):
            bound.setdefault(id(v), k)
        elif isinstance(v, (list, tuple)) and len(v) <= 256:  # p = [w1, w2]: p[0], p[1]; layers[0].weight
            for i, e in enumerate(v):
                if isinstance(e, torch.Tensor):
                    if len(v) <= 64:
                        bound.setdefault(id(e), f"{k}[{i}]")
                else:
                    _attribute_paths(f"{k}[{i}]", e, bound)
        elif isinstance(v, dict) and len(v) <= 64:
            for key, e in v.items():
                if isinstance(e, torch.Tensor):
                    bound.setdefault(id(e), f"{k}[{key!r}]")
        else:
            _attribute_paths(k, v, bound)
    names: dict[int, str] = {}
    for info in tracer.all_infos:
        t = info.ref()
        if t is not None and id(t) in params:
            names[info.serial] = params[id(t)]
        elif t is not None and id(t) in bound:
            names[info.serial] = bound[id(t)]
        else:
            target = assigned_name(info.source)
            detached = _detached_expression(info)
            if detached:
                names[info.serial] = f"{detached} (line {info.line})"
            elif info.path is not None:
                names[info.serial] = f"{info.path} (line {info.line})"
            elif target and info.inner:
                names[info.serial] = f"leaf in {target} (line {info.line})"
            elif target:
                names[info.serial] = f"{target} (line {info.line})"
            elif info.leaf:
                # (the script's line where it was first seen: its first use, or where a module made and initialised it)
                names[info.serial] = f"leaf #{info.serial} (first seen at line {info.line})"
            else:
                names[info.serial] = f"line {info.line}"
    return names
