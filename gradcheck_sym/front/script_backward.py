"""The script's backward calls and tensor hooks, for `ScriptTracer` (it inherits `BackwardCalls`).

Each ``.backward()`` / ``torch.autograd.grad(...)`` is verified around the real call (`_around`): the program is
pruned, the reference's cotangents planned, the script's own backward run untouched, and each gradient compared
(`judge.backward`).  Inside torch's own gradient checkers (gradcheck, torch.autograd.functional, torch.func) the
calls are theirs and are not compared.  A script's tensor hook, and a module's backward hook, is wrapped to note the
backwards in which it changed a gradient.
"""

from __future__ import annotations

import contextlib
import functools
import linecache
import os
import sys
import time
from typing import Any, Iterator

import torch

from ..autograd.attrs import grad_fn_name
from ..judge.backward_values import dense
from ..report.run import BACKWARD_ON as _BACKWARD_ON
from .script_infos import Backward, TensorInfo
from .script_names import name_leaves
from .tracer_sites import _PACKAGE_DIR, _user_frame, dispatching_frame, internal_file

__all__ = ["BackwardCalls", "RAISED"]

RAISED = "raised (the script's own error), so it made no gradient to compare"


def _grad_changed(t: torch.Tensor, before: Any) -> bool:
    """Whether `t.grad` is other than `before` (its float64 copy from before the backward, or None)."""
    g = t.grad
    if g is None or before is None:
        return (g is None) != (before is None)
    try:
        g = dense(g.detach().to(torch.float64))
        return g.shape != before.shape or not torch.equal(g, before)
    except Exception:  # noqa: BLE001 - ours: when it cannot be told, it changed
        return True

# torch's own gradient machinery a script may call: gradcheck, torch.autograd.functional, and torch.func's transforms
# (grad, vjp, jacrev, jacfwd, hessian, vmap), which wrap tensors in levels of their own: inside them, the tensors and
# the backward calls are theirs (a torch.func.grad of sin was compared with an exact 0: the wrapped input is not
# the script's tensor)
_CHECKERS = (os.path.join("torch", "autograd", "gradcheck.py"), os.path.join("torch", "autograd", "functional.py"),
             os.path.join("torch", "_functorch", "eager_transforms.py"), os.path.join("torch", "_functorch", "apis.py"),
             os.path.join("torch", "_functorch", "vmap.py"))
_CHECKER_FILES: dict[str, int] = {}  # a code file name -> 1: one of _CHECKERS, 2: ours, 0: other


def _run_watching(call: Any, given: list[Any]) -> tuple[Any, bool]:
    """`call()`, a hook of the script's on the gradients `given`: what it returned, and whether it changed them (what
    it returned, or them in place).  Our copies and comparisons are not the script's ops, and never its error: what
    cannot be copied or compared (a sparse gradient, a torch.func wrapper) counts as changed."""
    try:
        with torch._C.DisableTorchFunction():
            before = [g.detach().clone() if isinstance(g, torch.Tensor) else g for g in given]
    except Exception:  # noqa: BLE001 - ours
        before = None
    out = call()
    try:
        with torch._C.DisableTorchFunction():
            returned = None if out is None else list(out) if isinstance(out, (tuple, list)) else [out]
            changed = before is None or not _same_all(given, before) or (
                returned is not None and not _same_all(returned, before))
    except Exception:  # noqa: BLE001 - as above
        changed = True
    return out, changed


def _same_all(xs: Any, ys: Any) -> bool:
    """Equal sequences of gradients (tensors or None), NaN equal to NaN."""
    if not isinstance(xs, (tuple, list)) or len(xs) != len(ys):
        return False
    for x, y in zip(xs, ys):
        if x is None or y is None:
            if (x is None) != (y is None):
                return False
        elif not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor) and x.shape == y.shape and bool(
                ((x == y) | (torch.isnan(x) & torch.isnan(y))).all())):
            return False
    return True


class BackwardCalls:
    """Backward calls and hooks (a mixin of `ScriptTracer`: its lock, memory, verifier and records)."""

    backwards: list[Backward]
    line_calls: dict[int, int]
    events: list[tuple[str, int, str, str, int]]
    infos: dict[int, TensorInfo]
    _info: Any  # (ScriptTracer._info)
    spend: Any  # (ScriptMemory.spend)
    stopped: str
    verifier: Any
    lock: Any
    call_as: Any

    # (backward index, the ids of torch's BackwardHook objects — one per module call — whose hooks changed a gradient
    # in it), and custom Function call (a BackwardHookFunction's) -> its BackwardHook object's id
    hooks_changed: tuple[int, set[int]]
    hook_owner: dict[int, int]

    @contextlib.contextmanager
    def module_hooks(self) -> Iterator[None]:
        """While in it, the backward hooks torch runs for a module call (a module's register_full_backward_hook and
        _pre_hook, and the global ones) are run through a watcher, as tensor hooks are (`_watched_hook`): a hook that
        scales what flows back (gradient clipping, a teaching demo) changes the gradient on its way, which is a
        `hook`, not a mismatch; one that only reads it explains nothing.  The watcher goes into torch's per-call
        BackwardHook, never into the module (a torch.save of the module pickles the script's own functions)."""
        try:
            from torch.utils.hooks import BackwardHook

            init = BackwardHook.__init__
        except (ImportError, AttributeError):  # (torch moved it: a module hook's change is then a mismatch)
            yield
            return
        watched = self._watched_module_hook

        @functools.wraps(init)
        def watching(bw: Any, module: Any, user_hooks: Any, user_pre_hooks: Any, *args: Any, **kwargs: Any) -> None:
            init(bw, module, [watched(h, False, bw) for h in user_hooks],
                 [watched(h, True, bw) for h in user_pre_hooks], *args, **kwargs)

        BackwardHook.__init__ = watching  # type: ignore[method-assign]
        try:
            yield
        finally:
            BackwardHook.__init__ = init  # type: ignore[method-assign]

    def _watched_module_hook(self, hook: Any, pre: bool, owner: Any) -> Any:
        """A module's backward hook, unchanged for the script, noting the backwards in which it changed the gradients
        it was given (grad_input for a hook, grad_output for a pre-hook: what it returned, or them in place), and
        which module call's (`owner`, torch's BackwardHook of that call)."""
        backwards = self.backwards

        @functools.wraps(hook)
        def watched(module: Any, *grads: Any) -> Any:
            out, changed = _run_watching(lambda: hook(module, *grads), list(grads[-1] if pre else grads[0]))
            if changed:
                index = len(backwards) - 1
                if self.hooks_changed[0] != index:
                    self.hooks_changed = (index, set())
                self.hooks_changed[1].add(id(owner))
            return out

        return watched

    def note_hook_call(self, call: int) -> None:
        """Custom Function call `call` is torch's BackwardHookFunction: the module call it belongs to (the
        BackwardHook object in the frames above it)."""
        frame = sys._getframe(1)
        for _ in range(16):
            if frame is None:
                return
            owner = frame.f_locals.get("self")
            if type(owner).__name__ == "BackwardHook":
                self.hook_owner[call] = id(owner)
                return
            frame = frame.f_back  # type: ignore[assignment]

    def _accumulated_hook(self, hook: Any, info: TensorInfo) -> Any:
        """The script's post-accumulate-grad hook, unchanged for the script, first keeping the .grad it is given:
        what the backward made, which the hook may step on and zero (an optimizer fused into the backward)."""
        backwards = self.backwards

        @functools.wraps(hook)
        def watched(p: Any) -> Any:
            g = p.grad
            if isinstance(g, torch.Tensor):
                info.accumulated = (len(backwards) - 1, dense(g.detach().to(torch.float64)).clone())
            return hook(p)

        return watched

    def _watched_hook(self, hook: Any, info: TensorInfo) -> Any:
        """The script's tensor hook, unchanged for the script, noting the backwards in which it changed the gradient
        (what it returned, or its argument in place): only those explain a difference as `hook`.  A hook that only
        reads the gradient (Grad-CAM's) hid a wrong custom backward upstream."""
        backwards = self.backwards

        @functools.wraps(hook)
        def watched(grad: Any) -> Any:
            out, changed = _run_watching(lambda: hook(grad), [grad])
            if changed:
                info.hook_changed = len(backwards) - 1
            return out

        return watched

    def _checking_itself(self, depth: int = 2) -> bool:
        """Whether torch's gradcheck, torch.autograd.functional or torch.func is on the stack between here and our
        runner (looked at for every traced op: one dict lookup per frame, each file name classified once).  The
        walk goes past the tracer's own frames of an outer call (a custom Function's apply under torch.vmap is
        dispatched through us too: stopping there traced the Function's per-sample forward as if it were the
        script's, and its gradient came out 0) to the runner's."""
        frame = sys._getframe(depth)
        known = _CHECKER_FILES
        while frame is not None:
            code = frame.f_code
            name = code.co_filename
            kind = known.get(name)
            if kind is None:
                kind = known[name] = 1 if name.endswith(_CHECKERS) else 2 if name.startswith(_PACKAGE_DIR) else 0
            if kind == 1:
                if "_functorch" in name:
                    self.functorch_seen = True
                return True
            if kind == 2 and code.co_name == "run_script":
                return False  # (the runner's frame: the script is above it, nothing more to look at)
            frame = frame.f_back  # type: ignore[assignment]
        return False

    def _backward(self, func: Any, args: tuple, kwargs: dict) -> Any:
        if args and isinstance(args[0], torch.Tensor):
            # Tensor.backward(gradient, retain_graph, create_graph, inputs)
            tensors = [args[0]]
            grads = [kwargs.get("gradient", args[1] if len(args) > 1 else None)]
            retain = kwargs.get("retain_graph", args[2] if len(args) > 2 else None)
            create = bool(kwargs.get("create_graph", args[3] if len(args) > 3 else False))
            only = kwargs.get("inputs", args[4] if len(args) > 4 else None)
        else:
            # torch.autograd.backward(tensors, grad_tensors, retain_graph, create_graph, grad_variables, inputs)
            first = args[0] if args else kwargs.get("tensors")
            tensors = [first] if isinstance(first, torch.Tensor) else list(first)
            gt = kwargs.get("grad_tensors", args[1] if len(args) > 1 else None)
            grads = [gt] if isinstance(gt, torch.Tensor) or gt is None else list(gt)
            grads = grads + [None] * (len(tensors) - len(grads))
            retain = kwargs.get("retain_graph", args[2] if len(args) > 2 else None)
            create = bool(kwargs.get("create_graph", args[3] if len(args) > 3 else False))
            only = kwargs.get("inputs", args[5] if len(args) > 5 else None)
        self._named_by_backward(tensors)
        # (torch frees the graph a backward went through unless told to keep it: `spend`)
        frees = not create and not (create if retain is None else retain) and only is None
        return self._around(func, args, kwargs, "backward", tensors, grads, create, None, frees=frees, only=only)

    def _named_by_backward(self, tensors: list[Any]) -> None:
        """`loss.backward()` on a loss that got no row where it was made (`loss = nll(...)`: made on the helper's
        `return` line): its row, named at this line after the name the backward is called on."""
        new = [t for t in tensors if isinstance(t, torch.Tensor) and t.requires_grad and t.grad_fn is not None
               and id(t) not in self.infos]
        if len(new) != 1:
            return
        frame = sys._getframe(1)
        while frame is not None and internal_file(frame.f_code.co_filename):
            frame = frame.f_back  # type: ignore[assignment]
        m = None if frame is None else _BACKWARD_ON.match(linecache.getline(frame.f_code.co_filename, frame.f_lineno))
        if m is None or frame.f_locals.get(m.group(1)) is not new[0]:  # (the name must be that tensor, there)
            return
        with self.lock:
            info = self._info(new[0])
            info.grad_fn = grad_fn_name(new[0])
            info.requires_grad = True

    def _grad(self, func: Any, args: tuple, kwargs: dict) -> Any:
        import inspect

        bound = inspect.signature(torch.autograd.grad).bind(*args, **kwargs)
        bound.apply_defaults()
        a = bound.arguments
        outs = [a["outputs"]] if isinstance(a["outputs"], torch.Tensor) else list(a["outputs"])
        inputs = [a["inputs"]] if isinstance(a["inputs"], torch.Tensor) else list(a["inputs"])
        go = a.get("grad_outputs")
        grads = [go] if isinstance(go, torch.Tensor) or go is None else list(go)
        grads = grads + [None] * (len(outs) - len(grads))
        if a.get("is_grads_batched"):
            return self._skip(func, args, kwargs, "autograd.grad", "is_grads_batched=True is not verified")
        return self._around(func, args, kwargs, "autograd.grad", outs, grads, bool(a.get("create_graph")), inputs)

    def _next_call(self, line: int) -> int:
        """The number of this call among its line's backward calls (1 for the first)."""
        self.line_calls[line] = self.line_calls.get(line, 0) + 1
        return self.line_calls[line]

    def _skip(self, func: Any, args: tuple, kwargs: dict, kind: str, why: str) -> Any:
        file, line, source = _user_frame()
        ev = Backward(len(self.backwards), kind, line, source, verified=False, skipped=why, call=self._next_call(line))
        self.backwards.append(ev)
        return self.call_as(dispatching_frame(sys._getframe()), func, args, kwargs)

    def _around(self, func: Any, args: tuple, kwargs: dict, kind: str, outs: list[torch.Tensor],
                grads: list[Any], create: bool, inputs: list[torch.Tensor] | None, frees: bool = False,
                only: Any = None) -> Any:
        if self._checking_itself():
            # torch.autograd.gradcheck's own probes at perturbed inputs: its business, said once per line
            file, line, source = _user_frame()
            if not any(e[0] == "self-check" and e[1] == line for e in self.events):
                self.events.append(("self-check", line, f"line {line} `{source}` computes or checks gradients itself "
                                    "(torch's gradcheck, torch.autograd.functional or torch.func): its internal backward "
                                    "calls are not compared here", f"line {line}", 0))
            return self.call_as(dispatching_frame(sys._getframe()), func, args, kwargs)
        file, line, source = _user_frame()
        ev = Backward(len(self.backwards), kind, line, source, call=self._next_call(line))
        self.backwards.append(ev)
        if self.stopped:
            ev.verified, ev.reasons = False, [self.stopped]
            return self.call_as(dispatching_frame(sys._getframe()), func, args, kwargs)
        plan = None
        with self.lock:
            try:
                # Before the plan, not after the backward: the last iteration's forward is gone by now (its
                # names rebound), and the sweep then goes over this iteration's program only.
                self.prune()
                self.drop_unread()
            except Exception:  # noqa: BLE001 - pruning is an optimisation; a failure keeps everything
                pass
            if self._check_memory(f"the backward at line {line}", backward=True):
                ev.verified, ev.reasons = False, [self.stopped]
                return self.call_as(dispatching_frame(sys._getframe()), func, args, kwargs)
            self._memory_looked()
            try:
                name_leaves(self.unnamed_leaves, self.namespace)
            except Exception:  # noqa: BLE001 - a name is for the report: none is found where this fails
                pass
            try:
                plan = self.verifier.plan(self, ev, outs, grads, inputs, create, only)
                self._stale_reached(plan)
            except Exception as exc:  # noqa: BLE001 - our failure: this backward is not verified, the script goes on
                ev.verified = False
                ev.reasons.append(f"internal error while deriving it ({type(exc).__name__}: {exc}); please report")
        start = time.perf_counter()
        try:
            result = func(*args, **kwargs)  # the script's own backward: its errors are its own
        except BaseException:
            ev.verified = False
            wrote = [info for info, t, before in (plan.targets if plan is not None else []) if _grad_changed(t, before)]
            if wrote:  # torch wrote a .grad before it raised: not vouched for
                names = ", ".join(f"{{#{i.serial}}}" for i in wrote[:3])
                ev.reasons.append(f"it raised (the script's own error) after writing .grad of {names}")
            elif plan is None:  # (no plan: which .grad it wrote cannot be told)
                ev.reasons.append("it raised (the script's own error)")
            else:
                ev.raised = True  # it made no gradient: said as its own finding
            raise
        if plan is not None:
            plan.seconds = time.perf_counter() - start
        with self.lock:
            try:
                if plan is not None:
                    self.verifier.verify(self, ev, plan, result)
            except Exception as exc:  # noqa: BLE001 - as above
                ev.verified = False
                ev.reasons.append(f"internal error while comparing ({type(exc).__name__}: {exc}); please report")
            if frees:
                try:
                    self.spend(outs, line)
                except Exception:  # noqa: BLE001 - letting go is an optimisation; a failure keeps everything
                    pass
        return result
