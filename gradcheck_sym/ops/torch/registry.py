"""Torch op -> rule: how each torch function, Tensor method or operator lowers to primitives.

A rule is registered under the op's name (``__name__`` of the function torch's
`TorchFunctionMode` hands the tracer: "add", "conv2d", "__getitem__") with the
signature it models, written out in full: the tracer binds the user's arguments
to it, and an argument the signature does not have, or one a rule marks as not
modelled (``refuse=``) with a value other than its default, is refused *by name*
— never silently dropped.  In-place forms ("add_", "__iadd__") and reflected
operators ("__rsub__") are derived from the base op by the tracer.

A rule is ``lower(c, a) -> handle | tuple``: `a` holds the bound arguments as the
user passed them (tensors included: decisions such as a max's index or dropout's
mask come from the user's own run), `c` is the tracer's context (`Ctx`): ``c.v(t)``
is the traced handle of a tensor (or a float64 constant), ``c.out`` the user's
result.  The rule returns handles for the floating outputs (None for integer or
boolean outputs, which are constants).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, Protocol

__all__ = ["Rule", "RULES", "rule", "Ctx", "Refused", "Args", "bind_args"]


class Refused(Exception):
    """The op is known but this use of it is not modelled; the message says what, by name."""


class Ctx(Protocol):
    out: Any  # the user's result of the op
    name: str  # the op's name
    leaks: list[Any]  # traced values that left torch for numpy (.numpy()), with their sites
    probes: dict[Any, Any]  # `movement.probe`'s maps, kept for the next op of the same kind and shapes

    def v(self, x: Any) -> Any:
        """The traced handle of tensor `x` (float64), a constant, or `x` itself for non-tensors."""

    def const(self, x: Any) -> Any:
        """`x` (a tensor computed by the rule from the user's values) as a constant."""

    def is_traced(self, x: Any) -> bool:
        """Whether tensor `x` depends on a traced input."""

    def user_value(self, x: Any) -> Any:
        """`x` as the user's run had it when the op started (float64): for decisions (branches)."""


class Args(dict):
    """The bound arguments, also as attributes (``a.input``, ``a.dim``)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


@dataclass(frozen=True)
class Rule:
    """One op's rule.

    Attributes:
        name: the op name.
        signature: the arguments it models (bound by name; defaults apply).
        lower: ``(c, a) -> handle(s)``.
        refuse: arguments accepted by torch but not modelled here: refused unless at the default.
        doc: one line.
    """

    name: str
    signature: inspect.Signature
    lower: Callable[[Ctx, Args], Any]
    refuse: tuple[str, ...] = ()
    doc: str = ""


RULES: dict[str, Rule] = {}


def rule(*names: str, sig: Callable[..., Any], refuse: tuple[str, ...] = (), doc: str = "") -> Callable[..., Any]:
    """Register `lower` for each op name; `sig` is a lambda whose signature is the op's."""
    signature = inspect.signature(sig)

    def deco(lower: Callable[[Ctx, Args], Any]) -> Callable[[Ctx, Args], Any]:
        for name in names:
            if name in RULES:
                raise ValueError(f"op {name!r} has two rules")
            RULES[name] = Rule(name, signature, lower, refuse, doc)
        return lower

    return deco


# The numpy names torch's argument parser takes for its own (`x.sum(axis=1, keepdims=True)`, as in d2l's softmax and
# makemore): a keyword the rule's signature lacks is read under torch's name.
NUMPY_NAMES = {"axis": "dim", "keepdims": "keepdim", "x": "input", "a": "input", "x1": "input", "x2": "other"}


def bind_args(r: Rule, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Args:
    """The user's arguments bound to the rule's signature; `Refused` naming what is not modelled."""
    if kwargs:
        params = r.signature.parameters
        kwargs = {(NUMPY_NAMES[k] if k not in params and NUMPY_NAMES.get(k) in params and NUMPY_NAMES[k] not in kwargs
                   else k): v for k, v in kwargs.items()}
    a = None if kwargs else _bind_positional(r, args)
    if a is None:
        try:
            bound = r.signature.bind(*args, **kwargs)
        except TypeError as exc:
            names = set(r.signature.parameters)
            extra = [k for k in kwargs if k not in names]
            if extra:
                raise Refused(f"argument {extra[0]}= of {r.name} is not modelled") from None
            raise Refused(f"this call of {r.name} is not modelled ({exc})") from None
        bound.apply_defaults()
        a = Args(bound.arguments)
    for name in r.refuse:
        if name in a and not _is_default(a[name], r.signature.parameters[name].default):
            raise Refused(f"argument {name}={_short(a[name])} of {r.name} is not modelled")
    return a


def _bind_positional(r: Rule, args: tuple[Any, ...]) -> Args | None:
    """`inspect`'s binding of positional arguments alone, without its generality (most calls, on the tracer's
    hot path); None where inspect must do it (too many arguments, a required one missing, ``*args``)."""
    found = _PARAMS.get(r.name, False)
    if found is False:
        found = _PARAMS[r.name] = _positional(r.signature)
    if found is None:
        return None
    positional, params = found
    if len(args) > len(positional):
        return None
    a = Args(zip(positional, args))
    for p in params:  # the rest take their defaults, in the signature's order (as apply_defaults does)
        if p.name not in a:
            if p.default is p.empty:
                return None
            a[p.name] = p.default
    return a


def _positional(sig: inspect.Signature) -> tuple[tuple[str, ...], tuple[inspect.Parameter, ...]] | None:
    """(the names that can be given by position, every parameter), or None for ``*args``/``**kwargs``."""
    params = tuple(sig.parameters.values())
    if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params):
        return None
    return tuple(p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)), params


_PARAMS: dict[str, Any] = {}  # rule name -> _positional(its signature)


def _is_default(value: Any, default: Any) -> bool:
    if value is default:
        return True
    try:
        return bool(value == default)
    except Exception:  # noqa: BLE001 - tensors and other values that do not compare to a bool
        return False


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
