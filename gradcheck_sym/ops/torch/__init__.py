"""Torch ops lowered to primitives: one rule per op, grouped by kind.

Importing this package registers every rule (`RULES`): elementwise functions
(math and arithmetic, piecewise ops, activations, special functions), movement and
indexing, reductions, linear algebra, neural-network layers and losses.
"""

from . import activations, elementwise, linalg, losses, movement, nn, piecewise, reduce, special  # noqa: F401
from . import linalg_decomp, linalg_misc, linalg_ops  # noqa: F401 - registers the rules
from .registry import RULES, Args, Ctx, Refused, Rule, bind_args, rule

# The factorisations, solves and the like (LAPACK kernels, bounded only normwise); products are not among them.
LINALG_OPS = frozenset(name for name, r in RULES.items() if r.lower.__module__.rsplit(".", 1)[-1].startswith("linalg_"))

__all__ = ["LINALG_OPS", "RULES", "Rule", "rule", "Ctx", "Args", "Refused", "bind_args"]
