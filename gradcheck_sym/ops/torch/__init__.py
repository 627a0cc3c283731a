"""Torch ops lowered to primitives: one rule per op, grouped by kind.

Importing this package registers every rule (`RULES`): elementwise functions,
movement and indexing, reductions, linear algebra, neural-network layers and
losses.
"""

from . import elementwise, linalg, losses, movement, nn, reduce  # noqa: F401 - registers the rules
from . import linalg_decomp, linalg_misc, linalg_ops  # noqa: F401 - registers the rules
from .registry import RULES, Args, Ctx, Refused, Rule, bind_args, rule

__all__ = ["RULES", "Rule", "rule", "Ctx", "Args", "Refused", "bind_args"]
