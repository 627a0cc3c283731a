"""``@gradcheck_sym.audited``: mark a function or ``autograd.Function`` for ``gradcheck-sym audit PACKAGE``.

No torch import here: a library can decorate its ops without paying for the checker.

The convention (no input is ever guessed):

- a ``torch.autograd.Function`` subclass is found on its own; its inputs come from a
  ``sample_inputs()`` staticmethod (or classmethod) next to ``forward``/``backward``, or
  from ``@audited(sample_inputs=...)`` on the class;
- a plain function is audited when decorated with ``@audited(sample_inputs=...)`` or
  listed in ``[tool.gradcheck-sym] audit = [...]`` of the project's pyproject.toml;
- ``sample_inputs`` is a callable of no arguments (or a list) giving samples; a sample
  is a tuple of positional arguments, or one tensor. Floating tensors are the
  differentiable inputs; anything else is passed through. It runs with torch's RNG
  seeded from the item's name, so ``torch.randn`` in it gives the same values every run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, TypeVar

__all__ = ["AuditSpec", "audited", "MARK"]

MARK = "__gradcheck_sym_audit__"
T = TypeVar("T")


@dataclass(frozen=True)
class AuditSpec:
    """How to audit one item (what `audited` attaches to it).

    Attributes:
        sample_inputs: a callable of no arguments returning the samples, a list of samples, or None
            (for an autograd.Function: use its ``sample_inputs`` staticmethod).
        order: 1, or 2 to also check the backward's own derivative.
        samples: also check this many random points near each sample.
        dtype: the dtype of the check ("float64", "float32", ...).
    """

    sample_inputs: Callable[[], Iterable[Any]] | Iterable[Any] | None = None
    order: int = 1
    samples: int | None = None
    dtype: str = "float64"


def audited(sample_inputs: Callable[[], Iterable[Any]] | Iterable[Any] | None = None, *, order: int = 1,
            samples: int | None = None, dtype: str = "float64") -> Callable[[T], T]:
    """Mark a function or ``autograd.Function`` subclass for ``gradcheck-sym audit PACKAGE``.

    Args:
        sample_inputs: the samples (see the module docstring); for an autograd.Function it may be
            left out when the class has a ``sample_inputs`` staticmethod.
        order: 2 also checks second derivatives (the backward's own derivative).
        samples: also check this many random points near each sample.
        dtype: "float64" (default; also compared with torch.autograd.gradcheck), "float32", ...

    Returns:
        The decorator; it returns the item unchanged, with an `AuditSpec` attached.

    Example:
        >>> import gradcheck_sym as gs
        >>> @gs.audited(sample_inputs=lambda: [(2.0,)])
        ... def square(x):
        ...     return x * x
    """
    if order not in (1, 2) or isinstance(order, bool):
        from ..errors import InputError

        raise InputError(f"audited: order must be 1 or 2, not {order!r}")
    spec = AuditSpec(sample_inputs, order, samples, dtype)

    def mark(item: T) -> T:
        setattr(item, MARK, spec)
        return item

    return mark
