"""gradcheck_sym: check torch autograd against exact symbolic derivatives.

    >>> import gradcheck_sym as gs
    >>> gs.check("sin(x)*exp(y)", at={"x": 0.7, "y": 1.3}).ok
    True

The heavy stages (torch, sympy) are imported on first use, so that
``gradcheck-sym --help`` and parsing stay fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import (
    GradcheckSymError,
    InputError,
    InternalError,
    LimitError,
    ParseError,
    TimeLimitError,
    UnknownFunctionError,
    UnsupportedError,
)
from .ir.graph import Graph, Node
from .front.parse import Limits, parse

__version__ = "0.1.0"

__all__ = [
    "check",
    "check_graph",
    "check_function",
    "assert_gradients",
    "run_script",
    "RunReport",
    "parse",
    "Graph",
    "Node",
    "Limits",
    "Report",
    "Finding",
    "Example",
    "NodeRow",
    "GradcheckSymError",
    "ParseError",
    "UnknownFunctionError",
    "LimitError",
    "InputError",
    "UnsupportedError",
    "TimeLimitError",
    "InternalError",
    "audit_torch",
    "audit_package",
    "audited",
    "check_many",
    "__version__",
]

_LAZY = {
    "check": "api",
    "check_graph": "api",
    "check_function": "api",
    "assert_gradients": "api",
    "run_script": "front.script",
    "RunReport": "front.script",
    "Report": "report",
    "Finding": "report",
    "Example": "report",
    "NodeRow": "report",
    "audit_torch": "audit",
    "audit_package": "audit",
    "audited": "audit",
    "check_many": "scale",
}

if TYPE_CHECKING:
    from .api import assert_gradients, check, check_function, check_graph
    from .report import Example, Finding, NodeRow, Report
    from .front.script import RunReport, run_script
    from .audit import audit_package, audit_torch, audited
    from .scale import check_many


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'gradcheck_sym' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
