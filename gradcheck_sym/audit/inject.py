"""Error injection: make autograd wrong by a known relative error after one op, and see whether it is caught.

A `TorchFunctionMode` entered *inside* the checked function, so it stacks above the
checker's own tracing mode: each op goes down to the checker unchanged (the
checker sees the clean forward), and on the way back the mode registers a tensor
hook on op k's output that multiplies the incoming gradient by ``1 + eps``. Only
autograd's side changes, by exactly ``eps`` relative, at one op: a checker that
misses it has a blind spot there.

Ops are counted when their output is a floating tensor that requires grad (an op
autograd goes through); the hook is registered with torch functions disabled, so
it is not itself an op of the trace.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from torch.overrides import TorchFunctionMode

from .records import Injection

__all__ = ["InjectError", "differentiable_ops", "injected", "injection_test"]


class InjectError(TorchFunctionMode):
    """Multiply the gradient flowing into the output of the `k`-th differentiable op by ``1 + eps``.

    With ``k = -1`` it only records the ops' names (`names`).
    """

    def __init__(self, k: int, eps: float) -> None:
        super().__init__()
        self.k, self.eps = k, eps
        self.names: list[str] = []

    def __torch_function__(self, func: Any, types: Any, args: Sequence[Any] = (), kwargs: Any = None) -> Any:
        import torch
        import torch.utils._pytree as pytree

        out = func(*args, **(kwargs or {}))
        tensors = [t for t in pytree.tree_leaves(out)
                   if isinstance(t, torch.Tensor) and t.is_floating_point() and t.requires_grad]
        if tensors:
            if len(self.names) == self.k:
                factor = 1.0 + self.eps
                with torch._C.DisableTorchFunction():
                    for t in tensors:
                        t.register_hook(lambda g: None if g is None else g * factor)
            self.names.append(_op_name(func))
        return out


def _op_name(func: Any) -> str:
    from torch.overrides import resolve_name

    name = resolve_name(func) or getattr(func, "__name__", repr(func))
    return name.removeprefix("torch.")


def differentiable_ops(fn: Callable[..., Any], inputs: Sequence[Any], dtype: str = "float64") -> list[str]:
    """The ops of one plain call of `fn` (inputs rounded to `dtype`) that autograd goes through, in call order."""
    from .sample import _leaves

    leaves = _leaves(inputs, dtype)
    mode = InjectError(-1, 0.0)
    with mode:
        fn(*leaves)
    return mode.names


def injected(fn: Callable[..., Any], k: int, eps: float) -> Callable[..., Any]:
    """`fn` with a relative error `eps` in the gradient flowing into its `k`-th differentiable op's output."""

    def with_error(*inputs: Any) -> Any:
        with InjectError(k, eps):
            return fn(*inputs)

    with_error.__name__ = getattr(fn, "__name__", "fn")
    return with_error


def injection_test(fn: Callable[..., Any], inputs: Sequence[Any], names: Sequence[str], eps: float, *,
                   sample: str, dtype: str = "float64", seed: int = 0, gradcheck: bool = True,
                   timeout: float | None = None) -> Injection:
    """Inject `eps` after each differentiable op in turn; record whether gradcheck-sym (and gradcheck) catch it.

    A check that raises or runs past `timeout` counts as not caught.
    """
    import gradcheck_sym as gs

    from ..scale.guard import TaskTimeout, deadline
    from ..scale.pool import beat
    from .sample import run_gradcheck

    ops = differentiable_ops(fn, inputs, dtype)
    caught: list[bool | None] = []
    theirs: list[bool | None] = []
    clean = _gradients(fn, inputs, dtype)
    for k in range(len(ops)):
        beat()
        bad = injected(fn, k, eps)
        if clean is not None and (_negligible(clean, inputs) or _same(clean, _gradients(bad, inputs, dtype))):
            # the error changed nothing autograd computes (or only its rounding noise): nothing to catch
            caught.append(None)
            if gradcheck and dtype == "float64":
                theirs.append(None)
            continue
        try:
            with deadline(timeout):
                caught.append(not gs.check_function(bad, *inputs, names=list(names), seed=seed, dtype=dtype).ok)
        except (Exception, TaskTimeout):  # noqa: BLE001 - a check that cannot run catches nothing
            caught.append(False)
        if gradcheck and dtype == "float64":
            beat()
            theirs.append(run_gradcheck(bad, inputs, 1, timeout=timeout).verdict == "fail")
    return Injection(eps, sample, tuple(ops), tuple(caught), tuple(theirs))


def _gradients(fn: Callable[..., Any], inputs: Sequence[Any], dtype: str = "float64") -> list[Any] | None:
    """Autograd's gradients of a fixed random projection of `fn`'s outputs (None if it cannot say)."""
    import torch
    import torch.utils._pytree as pytree

    from .sample import _leaves

    try:
        leaves = _leaves(inputs, dtype)
        outs = [t for t in pytree.tree_leaves(fn(*leaves)) if isinstance(t, torch.Tensor) and t.requires_grad]
        wrt = [x for x in leaves if isinstance(x, torch.Tensor) and x.requires_grad]
        gen = torch.Generator().manual_seed(0)
        total = sum((o * torch.randn(o.shape, generator=gen, dtype=o.dtype)).sum() for o in outs)
        if not outs or not wrt:
            return None
        return list(torch.autograd.grad(total, wrt, allow_unused=True))
    except Exception:  # noqa: BLE001 - then the check decides, as before
        return None


def _same(a: list[Any], b: list[Any] | None) -> bool:
    import torch

    return b is not None and len(a) == len(b) and all(
        (x is None and y is None) or (x is not None and y is not None and torch.equal(x, y)) for x, y in zip(a, b))


def _negligible(grads: list[Any], inputs: Sequence[Any]) -> bool:
    """Whether autograd's gradient is 0 up to float64 rounding (corrcoef of a vector: exactly 1, gradient
    ~1e-16): a relative error injected into rounding noise is no error anyone could catch."""
    import torch

    scale = max((float(x.detach().abs().max()) for x in inputs
                 if isinstance(x, torch.Tensor) and x.is_floating_point() and x.numel()), default=1.0)
    size = max((float(g.abs().max()) for g in grads if g is not None and g.numel()), default=0.0)
    return size <= 1e-12 * (1.0 + scale)
