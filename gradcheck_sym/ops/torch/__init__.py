"""Torch ops lowered to primitives: one rule per op, grouped by kind.

Importing this package registers every rule (`RULES`): elementwise functions
(math and arithmetic, piecewise ops, activations, special functions), movement and
indexing, reductions, linear algebra, neural-network layers (convolution, pooling,
normalisation, dropout, embeddings, vector geometry, interpolation, attention) and
losses.
"""

from . import activations, elementwise, linalg, losses, movement, piecewise, reduce, special  # noqa: F401
from . import linalg_decomp, linalg_misc, linalg_ops  # noqa: F401 - registers the rules
# neural-network layers
from . import attention, conv, dropout, embedding, grid_sample, interpolate, norms, pooling, recurrent, vectors  # noqa: F401
# reductions, scans, order statistics, indexed writes, losses
from . import ctc, groups, indexing, margins, order, scans, stats  # noqa: F401
from .registry import RULES, Args, Ctx, Refused, Rule, bind_args, rule

# The factorisations, solves and the like (LAPACK kernels, bounded only normwise); products are not among them.
LINALG_OPS = frozenset(name for name, r in RULES.items() if r.lower.__module__.rsplit(".", 1)[-1].startswith("linalg_"))

__all__ = ["LINALG_OPS", "RULES", "Rule", "rule", "Ctx", "Args", "Refused", "bind_args"]
