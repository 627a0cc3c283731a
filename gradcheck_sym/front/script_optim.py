"""torch.optim's steps under `run`: seen once per step, not op by op (mixed into `ScriptTracer`).

An optimizer's step runs under no_grad on leaves and its own state: what it computes carries no gradient, and an
updated parameter is a new leaf version.  Tracing its arithmetic (a dozen ops per parameter per step) was a tenth
of a small training loop's time.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import sys
import threading
import weakref
from typing import Any, Iterator

import torch
from torch.optim import optimizer as optim

from ..autograd.attrs import is_leaf
from ..ops.core import leaves
from .tracer_sites import dispatching_frame

__all__ = ["OptimizerSteps"]

_NOT_FAST = object()
_OPTIM_DIR = os.path.join("torch", "optim", "")
_optimizer_code: dict[Any, bool] = {}


def _in_optimizer(frame: Any, depth: int = 8) -> bool:
    """Whether one of the nearest callers is torch.optim's code (cached per code object)."""
    for _ in range(depth):
        if frame is None:
            return False
        code = frame.f_code
        hit = _optimizer_code.get(code)
        if hit is None:
            hit = _optimizer_code[code] = _OPTIM_DIR in code.co_filename
        if hit:
            return True
        frame = frame.f_back
    return False


_TORCH_DIR = os.path.dirname(torch.__file__) + os.sep


def _torch_optim_via_torch(frame: Any, depth: int = 6) -> bool:
    """Whether `frame` is torch.optim's code, or torch's own code (grad_mode.py, _contextlib.py) that torch.optim
    called: the first frame up the stack that is not torch's own is torch.optim's."""
    for _ in range(depth):
        if frame is None:
            return False
        if _in_optimizer(frame, depth=1):
            return True
        if not frame.f_code.co_filename.startswith(_TORCH_DIR):
            return False  # the script's code (a hook, a custom step) or a library's
        frame = frame.f_back
    return False


_TORCH_STEPS: dict[type, bool] = {}


def _torch_step_alone(opt: Any, ours: list[Any]) -> bool:
    """Whether `opt` is one of torch.optim's own optimizers (not a subclass of the script's: its methods are the
    script's code), not a differentiable one (its step records autograd history), and no step hook but ours runs
    around its step (a hook of the script's is the script's code: it is traced)."""
    cls = type(opt)
    own = _TORCH_STEPS.get(cls)
    if own is None:
        step = inspect.unwrap(cls.step)
        own = _TORCH_STEPS[cls] = cls.__module__.startswith("torch.optim.") and \
            _OPTIM_DIR in getattr(getattr(step, "__code__", None), "co_filename", "")
    if not own or opt.defaults.get("differentiable"):
        return False
    ids = {h.id for h in ours}
    return not opt._optimizer_step_pre_hooks and not opt._optimizer_step_post_hooks and \
        set(optim._global_optimizer_pre_hooks) | set(optim._global_optimizer_post_hooks) <= ids


class _StepEnd(dict):
    """A step's keyword arguments, the same for the step (a dict with the same items): torch.optim's step wrapper
    holds them until it returns, or, after an exception, until the exception is let go (at once when it is not
    caught, at the end of the script's except block when it is).  Then the mode goes back, if the post hook did not
    put it back already: a step that raised never calls that hook."""

    def __init__(self, tracer: Any, kwargs: dict, step: tuple[int, object]) -> None:
        super().__init__(kwargs)
        self.tracer, self.step = tracer, step

    def __del__(self) -> None:
        try:
            self.tracer._step_seen(raised=True, step=self.step)  # (a no-op once the post hook ran)
        except Exception:  # noqa: BLE001 - run wherever the last reference goes: nothing to raise into
            pass


def _has_tensor(args: tuple, kwargs: dict) -> bool:
    return any(isinstance(x, torch.Tensor) for x in leaves((args, kwargs)))


class OptimizerSteps:
    """The optimizer-step window of a `ScriptTracer` (which sets `_steps`, `recs`, `lock`, `stopped` and provides
    `_new_leaf` and `call_as`)."""

    _steps: dict[int, dict[int, tuple[torch.Tensor, int]]]
    # id -> weak reference of every parameter an optimizer of the script's was given (while `optimizer_hooks`; kept
    # when the optimizer is gone, and without keeping the parameter alive)
    optimized_params: dict[int, Any] | None = None
    pending_cuts: dict  # (script_discard.DiscardedCuts)
    grad_used: Any

    def optimized(self, t: torch.Tensor) -> bool | None:
        """Whether an optimizer of the script's updates `t`; None where the script made none (nothing to tell)."""
        known = self.optimized_params
        if not known:
            return None
        ref = known.get(id(t))
        return ref is not None and ref() is t

    def _optimizes(self, opt: Any) -> None:
        """Note the parameters `opt` updates (its param groups now)."""
        known = self.optimized_params
        if known is None:
            known = self.optimized_params = {}
        for group in getattr(opt, "param_groups", ()):
            for p in group.get("params", ()):
                if isinstance(p, torch.Tensor):
                    known[id(p)] = weakref.ref(p)

    # ------------------------------------------------------------ optimizer steps
    @contextlib.contextmanager
    def optimizer_hooks(self) -> Iterator[None]:
        """While in it, torch.optim's own code inside a step (without a closure) runs untraced, and each traced
        parameter the step changed becomes a new leaf value when the step ends.

        A step runs under no_grad on leaves and the optimizer's own state: what it computes carries no
        gradient, and an updated parameter is a new leaf version.  Seeing that once per step, instead of
        at each of its dozen ops per parameter, was a tenth of a small training loop's time.  Only ops
        called from torch.optim's files take that path, in the thread whose step it is: the first other op
        (a step hook of the script's, a closure, a custom step, anything after a step that raised) ends the
        window at once — what changed so far becomes new values — and the rest of the step is followed op by
        op, as everything was before.
        """
        def pre(opt: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
            self._optimizes(opt)  # (a param group added since it was made)
            if self.pending_cuts:  # a step over a leaf whose cut left it short: the cut's finding stands
                for group in opt.param_groups:
                    for p in group["params"]:
                        self.grad_used(p)
            self._step_seen(raised=True)  # (only if the last step left the mode off and never ended)
            self.step_ended()  # one that raised before its end: what it changed is still a new value
            if len(args) > 1 or kwargs.get("closure") is not None or self.stopped:
                return None
            with torch._C.DisableTorchFunction():  # our own reads: not the script's ops
                self._steps[threading.get_ident()] = {
                    id(p): (p, p._version) for group in opt.param_groups for p in group["params"]
                    if isinstance(p, torch.Tensor) and id(p) in self.recs}
            if _torch_step_alone(opt, handles) and self._step_unseen():
                return args, _StepEnd(self, kwargs, self._unseen[-1])  # (the same arguments; see _StepEnd)
            return None

        handles = [optim.register_optimizer_step_pre_hook(pre),
                   optim.register_optimizer_step_post_hook(lambda opt, args, kwargs: self._step_ended_here())]
        # which parameters an optimizer updates (a network in none, used under no_grad, is frozen: a teacher, a
        # target network); torch.optim's optimizers all call Optimizer.__init__
        init = optim.Optimizer.__init__
        optimizes = self._optimizes

        @functools.wraps(init)
        def registering(opt: Any, *args: Any, **kwargs: Any) -> None:
            init(opt, *args, **kwargs)
            try:
                optimizes(opt)
            except Exception:  # noqa: BLE001 - ours: never the script's error (its parameters then look unoptimized)
                pass

        optim.Optimizer.__init__ = registering  # type: ignore[method-assign]
        try:
            yield
        finally:
            optim.Optimizer.__init__ = init  # type: ignore[method-assign]
            for h in handles:
                h.remove()
            # (the script ending with the step's exception ran nothing unseen: only its unwinding)
            self._step_seen(raised=sys.exc_info()[1] is None)

    # torch.optim's own step, with no hook of anyone else's around it, runs with this mode off the main thread's
    # mode stack: its ops never reach us (each cost ~12 us in the window's fast path, a fifth of a small training
    # loop's step).  The post hook puts the mode back where it was.  A step that raises never calls it: then the
    # mode goes back when the step's wrapper lets go of its kwargs (`_StepEnd`: at once when the exception is not
    # caught, at the end of the script's except block when it is, where what ran is said as not seen); failing that,
    # the next step puts it back and says so.
    _unseen: list[tuple[int, object]]  # while a step runs unseen: the mode's place in the stack, and the step's token

    def _step_unseen(self) -> bool:
        if torch.compiler.is_compiling() or threading.current_thread() is not threading.main_thread():
            return False  # (a step in another thread keeps the window: a thread that ends there would keep it off)
        n = torch._C._len_torch_function_stack()
        if n and torch._C._get_function_stack_at(n - 1) is self:
            torch._C._pop_torch_function_stack()
            self._unseen.append((n - 1, object()))
            return True
        return False

    def _step_seen(self, raised: bool, step: tuple[int, object] | None = None) -> None:
        """The mode back where it was (`step`: only if that step is the one running unseen)."""
        if not self._unseen or threading.current_thread() is not threading.main_thread() or \
                (step is not None and self._unseen[-1] is not step):
            return  # (an old step's kwargs let go later, by the garbage collector inside another step: not ours)
        place, _ = self._unseen.pop()
        # (a mode the script entered since goes back above ours, as it was entered above it)
        above = [torch._C._pop_torch_function_stack() for _ in range(max(0, torch._C._len_torch_function_stack()
                                                                             - place))]
        torch._C._push_on_torch_function_stack(self)
        for mode in reversed(above):
            torch._C._push_on_torch_function_stack(mode)
        if raised:
            self.unseen_gaps.append("an optimizer step raised an exception: what the script did while handling it "
                                    "was not seen (backward calls there are not counted)")

    def _step_ended_here(self) -> None:
        self._step_seen(raised=False)
        self.step_ended()

    def step_ended(self) -> None:
        """The parameters this thread's step changed become new leaf values (see optimizer_hooks)."""
        stepping = self._steps.pop(threading.get_ident(), None) if self._steps else None
        if stepping:
            with torch._C.DisableTorchFunction(), self.lock:
                for p, version in stepping.values():
                    if p._version != version and p.requires_grad and is_leaf(p):
                        self._new_leaf(p)

    def _optimizer_op(self, func: Any, args: tuple, kwargs: dict) -> Any:
        """An op inside a torch.optim step, run without tracing.

        An optimizer's step runs under no_grad on leaves and its own state: what it computes
        never carries a gradient, and an updated parameter is a new leaf version.  Tracing its
        arithmetic (a dozen ops per parameter per step) was most of the cost of a training loop.
        Anything else (a non-leaf tensor that requires grad) takes the traced path.
        """
        tensors = [t for t in leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        if any(t.requires_grad and not is_leaf(t) for t in tensors):
            return _NOT_FAST
        before = {id(t): t._version for t in tensors if t.requires_grad and id(t) in self.recs}
        out = self.call_as(dispatching_frame(sys._getframe()), func, args, kwargs)
        for t in tensors:
            if id(t) in before and t._version != before.pop(id(t)):
                with self.lock:
                    self._new_leaf(t)
        return out
