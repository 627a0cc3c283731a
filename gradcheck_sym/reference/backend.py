"""What a backend of the symbolic program's compiler is (`evaluate.compile_program`): how each sympy head is
computed.  The torch backend is `torch_backend.TORCH`, the mpmath one `mp_backend.mpmath_backend`; functions beyond
their tables are registered here by the op rules that use them (`register_function`)."""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Any, Callable

import sympy

__all__ = ["Backend", "special_number", "sympy_number", "register_function", "EXTRA_FUNCS", "MP_LOCK"]


@dataclass(frozen=True)
class Backend:
    """How each sympy head is computed: `funcs` maps a sympy class to a function of the evaluated args."""

    name: str
    const: Callable[[sympy.Expr], Any]
    add: Callable[[list[Any]], Any]
    mul: Callable[[list[Any]], Any]
    pow: Callable[[Any, sympy.Expr, Any], Any]
    where: Callable[[Any, Any, Any], Any]
    funcs: dict[type, Callable[..., Any]]
    div: Callable[[Any, Any], Any] = lambda a, b: a / b
    context: Any = None
    sub: Callable[[Any, Any], Any] = lambda a, b: a - b

    def extra(self, cls: type) -> Callable[..., Any] | None:
        """A registered rule for `cls` (see `register_function`), adapted to this backend."""
        fn = EXTRA_FUNCS.get(self.name, {}).get(cls)
        if fn is None or self.context is None:
            return fn
        ctx = self.context

        def in_global_context(*args: Any) -> Any:
            import mpmath

            if ctx is mpmath.mp:
                return fn(*args)
            with MP_LOCK, mpmath.workdps(ctx.dps):
                out = fn(*[mpmath.mpf(a) if isinstance(a, ctx.mpf) else a for a in args])
            return ctx.mpf(out) if isinstance(out, mpmath.mpf) else out

        return in_global_context


def special_number(e: sympy.Expr) -> float | None:
    """The float for sympy's infinities, NaN and non-real constants; None for an ordinary number.

    ``zoo``, an infinity without a sign, is NaN: sympy keeps it only for a constant at a pole
    that floats miss (``cot(pi)``, finite at the rounded pi), where the value is undefined;
    a pole that floats see (``1/0``, ``log2(0)``) is computed as torch computes it (see
    `symbolic.derive`).
    """
    if e is sympy.oo:
        return math.inf
    if e is -sympy.oo:
        return -math.inf
    if e is sympy.zoo or e is sympy.nan or e is sympy.I or isinstance(e, sympy.AccumBounds):
        return math.nan
    return None


def sympy_number(e: sympy.Expr) -> float:
    special = special_number(e)
    if special is not None:
        return special
    try:
        return float(e)
    except OverflowError:
        return math.inf if e > 0 else -math.inf
    except (TypeError, ValueError):  # not a real number
        return math.nan


# Numeric rules for more sympy functions, registered by the op rules that use them (erfinv, Bessel, ...).
# Their mpmath side works in mpmath's global context: it runs holding MP_LOCK, at the precision of the
# backend that calls it (see `mp_backend`), so concurrent checks never see each other's precision.
EXTRA_FUNCS: dict[str, dict[type, Callable[..., Any]]] = {"torch": {}, "mpmath": {}}
MP_LOCK = threading.RLock()


def register_function(cls: type, torch_fn: Callable[..., Any], mp_fn: Callable[..., Any]) -> None:
    """How sympy class `cls` is computed in torch and in mpmath (for functions beyond the tables)."""
    EXTRA_FUNCS["torch"][cls] = torch_fn
    EXTRA_FUNCS["mpmath"][cls] = mp_fn
