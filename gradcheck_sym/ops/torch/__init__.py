"""Torch ops lowered to primitives: one rule per op, grouped by kind.

Importing this package registers every rule (`RULES`): elementwise functions
(math and arithmetic, piecewise ops, activations, special functions), movement and
indexing, reductions, linear algebra, neural-network layers and losses.
"""

from . import activations, elementwise, linalg, losses, movement, nn, piecewise, reduce, special  # noqa: F401
from .registry import RULES, Args, Ctx, Refused, Rule, bind_args, rule

__all__ = ["RULES", "Rule", "rule", "Ctx", "Args", "Refused", "bind_args"]
