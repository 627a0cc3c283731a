"""Torch ops lowered to primitives: one rule per op, grouped by kind.

Importing this package registers every rule (`RULES`): elementwise functions,
movement and indexing, reductions, linear algebra, neural-network layers
(convolution, pooling, normalisation, dropout, embeddings, vector geometry) and
losses.
"""

from . import elementwise, linalg, losses, movement, reduce  # noqa: F401 - registers the rules
# neural-network layers
from . import attention, conv, dropout, embedding, grid_sample, interpolate, norms, pooling, vectors  # noqa: F401
from .registry import RULES, Args, Ctx, Refused, Rule, bind_args, rule

__all__ = ["RULES", "Rule", "rule", "Ctx", "Args", "Refused", "bind_args"]
