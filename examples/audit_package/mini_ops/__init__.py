"""mini_ops: a few hand-written gradients, some right, one wrong, one without samples.

`gradcheck-sym audit examples/audit_package/mini_ops` checks every one of them.
"""

from .activations import BadSoftplus, ClampUnit, Softplus, SquarePlus
from .extra import cube, scaled_tanh, smooth_abs

__all__ = ["Softplus", "BadSoftplus", "SquarePlus", "ClampUnit", "smooth_abs", "scaled_tanh", "cube"]
