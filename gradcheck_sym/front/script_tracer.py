"""The tracer of a whole script: leaves as inputs, every backward verified as it happens.

On top of `Tracer`: a tensor the script made with ``requires_grad=True`` becomes an input of the
program when first used, and a *new* input each time it is changed in place (an optimizer step,
an init): a new value, not a cut.  Each ``.backward()`` / ``torch.autograd.grad(...)`` is
intercepted: the reference's cotangents are computed from the program so far, the real backward
runs (the script's, untouched), and each ``.grad`` *increment* is compared with the exact
contribution — so accumulation, ``zero_()``, ``grad = None`` and gradient clipping between
backwards need no special case, and an earlier unverified gradient is never taken as exact.
``create_graph=True`` records the sweep into the program, so a second backward through the
gradients is verified too.  Hooks, ``retain_grad()`` and reads of a non-leaf's ``.grad`` are
recorded with their lines.  The program is pruned after each backward to what live tensors
still need, so long training loops run in bounded memory.

Beside it: `script_backward` (the backward calls and hooks), `script_optim` (optimizer steps),
`script_memory` (pruning and the memory budget) and `script_infos` (what is kept per tensor and backward).
"""

from __future__ import annotations

import re
import sys
import threading
import time
import weakref
from typing import Any

import torch

from ..autograd.attrs import grad_fn_name, is_leaf, leaf_window
from ..ir.program import Site
from ..judge.backward_words import values_text
from ..ops.core import leaves
from ..reference.interpret import Traced
from .custom_calls import CustomCalls
from .script_backward import BackwardCalls
from .script_discard import DiscardedCuts
from .script_infos import DETACHED, Backward, InfoLog, TensorInfo
from .script_memory import ScriptMemory
from .script_optim import _NOT_FAST, OptimizerSteps, _has_tensor, _in_optimizer, _torch_optim_via_torch
from .tracer import Tracer
from .tracer_calls import _PROPERTY_TENSORS, _QUIET, _name, foreign_types
from .tracer_sites import _TORCH_PREFIX, Note, _user_frame, dispatching_frame, in_custom_forward
from .tracer_storage import _layout

__all__ = ["ScriptTracer", "Backward", "TensorInfo"]

F64 = torch.float64
_ASSIGNS = re.compile(r"^\s*[A-Za-z_][A-Za-z0-9_]*\s*(?:\[[^\]]*\]\s*)?(?:[+\-*/@]|//|\*\*)?=(?!=)")
# How many of a leaf's latest versions a change behind autograd's back may have left a graph using (`_stale`)
_STALE_VERSIONS = 4


def _torch_made() -> bool:
    """Whether the op being recorded was called by torch's own code, not the script's (`module.state_dict()` detaches
    every parameter: a DQN tutorial's target-network update had 8 rows of "detached: a constant" copies)."""
    frame = dispatching_frame(sys._getframe(1))
    return frame is not None and frame.f_code.co_filename.startswith(_TORCH_PREFIX)


class ScriptTracer(BackwardCalls, OptimizerSteps, ScriptMemory, DiscardedCuts, Tracer):
    """Records a script and verifies its backwards (see the module docstring)."""

    def __init__(self, deadline: float | None = None) -> None:
        super().__init__()
        self.infos: dict[int, TensorInfo] = {}  # id(tensor) -> info (alive tensors)
        self.all_infos = InfoLog()  # every info made (dead tensors' made light: see script_infos)
        self.backwards: list[Backward] = []
        self.line_calls: dict[int, int] = {}  # line -> its backward calls so far
        # (kind, line, message, tensor key, which call of its line's backward: 0 for none)
        self.events: list[tuple[str, int, str, str, int]] = []
        self.deadline = deadline
        self.stopped = ""  # why recording stopped (a time budget), if it did
        self.stop_kind = ""  # its explanation's key: the time budget, memory, or our own failure (report.run)
        self.verifier: Any = None  # set by the runner: verifies one backward (judge.backward)
        self.edges: set[tuple[int, int, str]] = set()  # named tensor -> named tensor computed from it
        self.hooks_changed: tuple[int, set[int]] = (-1, set())  # see BackwardCalls.module_hooks
        self.pending_cuts: dict = {}  # leaf id -> its untracked checks, waiting on its next use (script_discard)
        self.hook_owner: dict[int, int] = {}
        self._prunes = 0
        self._item_seen: dict[float, tuple[Any, int]] = {}  # a float that left by .item() -> (its handle, the
        # prune that first saw it)
        self._unseen: list[tuple[int, object]] = []  # see OptimizerSteps
        self.unseen_gaps: list[str] = []  # what was not seen: said in the report as not verified
        self._steps: dict[int, dict[int, tuple[torch.Tensor, int]]] = {}  # thread -> inside its optimizer
        # step: the traced parameters' versions as the step found them (see optimizer_hooks)
        # stale-graph notes waiting for a backward that reaches the value before the change (see _stale)
        self._stale_pending: list[tuple[Note, frozenset[int]]] = []
        self._memory_looked()
        self.custom_calls = CustomCalls()  # kept for a float64 replay of their backward (judge.replay)
        self.namespace: dict[str, Any] | None = None  # the script's globals (set by the runner: names at backwards)
        self.unnamed_leaves: list[TensorInfo] = []  # leaves first seen since the last backward (`name_leaves`)

    # ------------------------------------------------------------ leaves and infos
    def _unknown(self, t: torch.Tensor) -> Any:
        if t.requires_grad and is_leaf(t) and t.is_floating_point() and not t.is_complex():
            return self._new_leaf(t)
        return super()._unknown(t)

    def returned_gradient(self, g: torch.Tensor, of: TensorInfo) -> None:
        """`g`, a gradient `autograd.grad(..., create_graph=True)` returned for the tensor of row `of`, takes part in
        autograd (a gradient penalty, a double backward): a row of its own, drawn as computed from that tensor."""
        info = self._info(g)
        info.grad_fn = grad_fn_name(g)
        info.requires_grad = g.requires_grad
        self.edges.add((of.serial, info.serial, ""))
        self.all_infos.linked.update((of.serial, info.serial))
        r = self.recs.get(id(g))
        if r is not None and r.tensor is g:
            r.anc = frozenset({info.serial})

    def _changed_unseen(self, t: torch.Tensor) -> bool:
        # a leaf autograd follows, changed where torch showed us nothing (orthogonal()'s registration does
        # `W.set_(...)` under no_grad): a new value of it, as an optimizer's step makes one
        if not (is_leaf(t) and t.requires_grad and t.is_floating_point()):
            return False
        return self._new_leaf(t) is not None

    def _new_leaf(self, t: torch.Tensor) -> Traced | None:
        if self.stopped:
            return None  # nothing is recorded any more (an optimizer's step would keep adding float64 copies)
        if self._checking_itself(depth=3):  # gradcheck's perturbed copies: its business, not rows of ours
            return self.leaf(t, f"leaf{len(self.inputs)}")
        info = self.infos.get(id(t))
        if info is not None and info.ref() is not t:
            info = None
        version = 0 if info is None else info.version + 1
        handle = self.leaf(t, f"leaf{len(self.inputs)}")
        if info is None:  # first seen in use: its line is not where it was made
            file, line, source = _user_frame()
            info = TensorInfo(self.all_infos.serial(), None, line, "", True, 0, tuple(t.shape))
            info.ref = self._weak(t, info)
            # a view of a leaf made inside a custom Function's forward (`w.t()` there, which torch makes a leaf):
            # the Function's own, no row of the script's (one per call filled a training loop's table)
            info.internal = t._base is not None and in_custom_forward()
            self.infos[id(t)] = info
            self.all_infos.add(info)
            self.unnamed_leaves.append(info)
        info.version = version
        value = handle.value  # the leaf's float64 copy (never written in place), or an alias of a float64 leaf
        own = value.layout == torch.strided == t.layout and value.data_ptr() != t.data_ptr()
        info.value = value if own else value.clone()
        info.leaf_vars.append(handle.var.id)
        return handle

    def _weak(self, t: torch.Tensor, info: TensorInfo) -> Any:
        tid = id(t)
        infos, dead = self.infos, self.all_infos.dead

        def gone(_: Any) -> None:  # (no torch op here: this runs wherever the tensor is freed)
            if infos.get(tid) is info:
                del infos[tid]
            dead.append(info)

        return weakref.ref(t, gone)

    def _info(self, t: torch.Tensor, where: Site | None = None) -> TensorInfo:
        """`t`'s row, made the first time (named after the user's line: `where`'s, when the caller knows it)."""
        info = self.infos.get(id(t))
        if info is None or info.ref() is not t:
            file, line, source = _user_frame() if where is None else (where.file, where.line, where.source)
            info = TensorInfo(self.all_infos.serial(), None, line, source, is_leaf(t), 0, tuple(t.shape),
                              requires_grad=t.requires_grad)
            info.ref = self._weak(t, info)
            self.infos[id(t)] = info
            self.all_infos.add(info)
        return info

    def _call_started(self, call: int, cls: Any, args: tuple, kwargs: dict, line: int) -> None:
        self.custom_calls.started(call, cls, args, kwargs, line)
        if getattr(cls, "__name__", "") == "BackwardHookFunction":
            self.note_hook_call(call)

    def _call_eqns(self, call: int, first: int) -> None:
        self.custom_calls.made(self, call, self.rec.eqns[first:])

    def _on_output(self, t: torch.Tensor, h: Any, site: int) -> None:
        # Named results that take part in autograd (or were cut) get a row: the lessons' z, w, out.
        inputs = list(_walk_tensors((self.args, self.kwargs)))
        if any(t is a for a in inputs):
            # an input handed back, not made here (torch.broadcast_tensors of same-shaped tensors, `.to` its own
            # dtype): a Normal(self.w_mu, sigma) built under no_grad marked the parameter w_mu as made under
            # no_grad, and its row vanished (a Bayes-by-backprop tutorial's)
            return
        s = self.sites[site]
        anc: set[int] = set()
        for a in inputs:
            info = self.infos.get(id(a))
            if info is not None and info.ref() is a:
                anc.add(info.serial)
                if info.line == s.line and not (info.retains or info.hooks) and (not info.leaf or info.cut):
                    # `out = (a * b).sum()`: the product is not `out`; nor is `fake.detach()` in
                    # `loss = (fake.detach() * 3).sum()` (a cut's result is a leaf, named after no one there)
                    info.hidden = True
                elif info.line == s.line and info.leaf and not info.cut:
                    info.inner = True
            else:
                r = self.recs.get(id(a))
                if r is not None and r.tensor is a:
                    anc |= r.anc
        rec = self.recs.get(id(t))
        cut = "no_grad" if s.grad != "on" and s.custom is None else ("detach" if self.name == "detach" else "")
        if s.custom is None and s.grad != "torch" and (t.requires_grad or s.grad != "on" or self.name == "detach") \
                and _ASSIGNS.match(s.source) and not leaf_window(t) and not (self.name == "detach" and _torch_made()):
            # (not what torch's own code made under its no_grad: spectral_norm's vectors are not the line's)
            info = self._info(t, s)
            if is_leaf(t):
                # made inside a custom Function's forward (x.detach().requires_grad_() under enable_grad there): the
                # Function's own leaf, which no backward of the script fills (the Function's backward answers for it)
                info.internal = in_custom_forward()
            if anc and len(self.edges) < 20_000:  # (a long loop fills the graph's edges early)
                for a in sorted(anc)[:32]:
                    if len(self.edges) < 20_000:
                        self.edges.add((a, info.serial, cut))
                        self.all_infos.linked.update((a, info.serial))
            if rec is not None:
                rec.anc = frozenset({info.serial})
            info.grad_fn = grad_fn_name(t)
            info.requires_grad = t.requires_grad
            info.value = t.detach().to(F64).clone() if t.numel() <= 64 else None
            if s.grad != "on":
                info.cut = "made under no_grad: no grad_fn"
            elif self.name == "detach":
                info.cut = DETACHED
        elif rec is not None:
            rec.anc = frozenset(sorted(anc)[:32])

    def _gave_up(self, why: str) -> None:
        if not self.stopped:
            self.stopped = f"{why}; later backwards are not verified"
            self.stop_kind = "not-verified"

    def _stale(self, note: Note, old: Any, root: torch.Tensor) -> None:
        # `w.data -= lr * w.grad` after the backward (SGD by hand, in many tutorials) makes no stale graph: the
        # graph that used the old value is done with.  Only a backward that still reaches it does.  The values
        # before: its handle, and its latest leaf versions (`w.data[0] += 1` writes the view first, and the
        # handle is already the new value when the write through `.data` comes).  An older version is in the entry
        # its own replacement made (all of them, rebuilt at every write, made a 1,000-step loop quadratic)
        if not isinstance(old, Traced):
            self.notes.append(note)
            return
        info = self.infos.get(id(root))
        before = {old.var.id, *(info.leaf_vars[-_STALE_VERSIONS:] if info is not None and info.ref() is root else ())}
        self._stale_pending.append((note, frozenset(before)))

    def _stale_reached(self, plan: Any) -> None:
        """The stale-graph notes of changes whose old value this backward differentiates through."""
        if plan is None or not self._stale_pending:
            return
        # as autograd differentiates: with the cuts as constants (the new value `w.data -= ...` wrote is, in the
        # math, a function of the old one through `.data`, which autograd does not follow)
        reached = plan.cut if plan.cut is not None else plan.cts
        for item in [p for p in self._stale_pending if any(v in reached for v in p[1])]:
            self._stale_pending.remove(item)
            if item[0] not in self.notes:
                self.notes.append(item[0])

    def _rebinds_leaf(self, t: torch.Tensor) -> bool:
        return is_leaf(t) and t.requires_grad

    def _updates_leaf_behind(self, t: torch.Tensor) -> bool:
        # `w.data -= lr * w.grad` (all of w, through its .data or a .detach()ed alias): as below, w's next value
        r = self.recs.get(id(t))
        if self.stopped or r is None or r.tensor is not t or r.cut not in (".data", "detach") or r.root is None:
            return False
        root = r.root.tensor
        return root is not None and root is not t and is_leaf(root) and root.requires_grad and \
            r.root.layout == _layout(t)

    def _write(self, t: torch.Tensor, new: Any) -> None:
        if self._rebinds_leaf(t):  # an update or an init of a leaf: a new value, not a cut
            # (written through a view taken under no_grad — `w[0].fill_(0)` — the leaf itself changed)
            self._new_leaf(t._base if leaf_window(t) else t)
            return
        if new is None and self._updates_leaf_behind(t):  # (what the op computed was not lowered: `_record`)
            r = self.recs[id(t)]
            self._written_behind(r)
            leaf = self._new_leaf(r.root.tensor)
            self._bind(t, self._lazy_cut(r.cut, leaf, self._site), cut=r.cut)
            return
        super()._write(t, new)
        r = self.recs.get(id(t))
        root = r.root.tensor if r is not None and r.tensor is t and r.root is not None else None
        if root is not None and r.cut in (".data", "detach") and is_leaf(root) and root.requires_grad:
            # `w.data -= lr * g`: a leaf changed behind autograd's back is a new value of it, as an optimizer's step
            # makes one; kept as a function of the old value, every later program would hold all the iterations
            # before it (a backprop lecture's training loop went 78x slower than plain)
            self._new_leaf(root)

    # ------------------------------------------------------------ the mode
    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        if torch.compiler.is_compiling():
            # torch.compile traces the user's code through this mode: stay out of its graph (first
            # thing, before any call dynamo would have to trace).  What it computes is then unseen.
            return func(*args, **(kwargs or {}))
        kwargs = kwargs or {}
        if self.deadline is not None and not self.stopped and time.monotonic() > self.deadline:
            self.stopped = "the time budget (--timeout) ran out: later backwards are not verified"
            self.stop_kind = "not-verified-stopped"
        name = _name(func)
        if name in _QUIET:
            return func(*args, **kwargs)
        if self.pending_cuts and name in ("zero_", "_foreach_zero_"):  # (a waiting leaf's .grad zeroed: a reset)
            self.grads_zeroed(args, _where())
        if self._steps and threading.get_ident() in self._steps:  # see optimizer_hooks
            caller = dispatching_frame(sys._getframe())
            if not torch.is_grad_enabled() and _in_optimizer(caller, depth=1):
                return self.call_as(caller, func, args, kwargs)
            if _has_tensor(args, kwargs) or not _torch_optim_via_torch(caller):
                self.step_ended()  # not torch.optim's own code: the window ends here
            # (torch.optim's own grad-mode switches — `torch.set_grad_enabled(False)` at the start of a step, a
            # helper decorated with `torch.no_grad()` — dispatched from torch's grad_mode.py, leave it open: a call
            # on no tensor cannot read or change a parameter.  One from the script — a hook's `with
            # torch.no_grad()` — ends it.)
        if foreign_types(types) and name != "backward":
            return super().__torch_function__(func, types, args, kwargs)  # left alone there
        if name in _PROPERTIES:
            prop = getattr(getattr(func, "__self__", None), "__name__", "")
            if prop == "requires_grad" and name == "__set__" and args and isinstance(args[0], torch.Tensor):
                out = func(*args, **kwargs)  # `data.requires_grad = True` (FGSM's input): a leaf made on this line
                t = args[0]
                if t.requires_grad and is_leaf(t) and t.is_floating_point() and id(t) not in self.infos:
                    with self.lock:
                        self._info(t).made = True
                return out
            if prop == "grad" and self.pending_cuts and args and id(args[0]) in self.pending_cuts:
                # p.grad = None, torch's zero_grad looking at it (it resets what is there: nothing, where the cut left
                # it None), or the script's own `p.grad.zero_()`: what the backward left is thrown away; any other
                # read is a use
                code = dispatching_frame(sys._getframe()).f_code
                if name == "__set__" or (code.co_name == "zero_grad" and code.co_filename.startswith(_TORCH_PREFIX)) or \
                        _ZEROES.match(_user_frame()[2]):
                    self.grad_reset(args[0], _where())
                else:
                    self.grad_used(args[0])
            if prop not in _WATCHED or (prop == "grad" and (name == "__set__" or (
                    args and isinstance(args[0], torch.Tensor) and is_leaf(args[0])))):
                # p.grad = None (zero_grad: every parameter, every step), x.shape, x.requires_grad: nothing to trace
                # or note (a .grad set by the script is seen by its value at the next backward: `total_before`; only
                # a non-leaf's .grad is a note, and a warning of torch's, named after the script's line: call_as)
                return func(*args, **kwargs)
        try:
            if name == "backward":
                return self._backward(func, args, kwargs)
            if func is torch.autograd.grad:
                return self._grad(func, args, kwargs)
            if name in ("register_hook", "retain_grad") and args and isinstance(args[0], torch.Tensor):
                info = self._info(args[0])
                if name == "retain_grad":
                    info.retains = True
                else:
                    info.hooks.append(_user_frame()[1])
                    if len(args) > 1 and callable(args[1]):
                        args = (args[0], self._watched_hook(args[1], info), *args[2:])
                    elif callable(kwargs.get("hook")):
                        kwargs = {**kwargs, "hook": self._watched_hook(kwargs["hook"], info)}
                return self.call_as(dispatching_frame(sys._getframe()), func, args, kwargs)
            if name == "register_post_accumulate_grad_hook" and len(args) > 1 and callable(args[1]) and \
                    isinstance(args[0], torch.Tensor):
                info = self._info(args[0])
                args = (args[0], self._accumulated_hook(args[1], info), *args[2:])
                return self.call_as(dispatching_frame(sys._getframe()), func, args, kwargs)
            if name == "__get__" and getattr(getattr(func, "__self__", None), "__name__", "") == "grad" and args:
                t = args[0]
                if isinstance(t, torch.Tensor) and not is_leaf(t) and not t.retains_grad:
                    file, line, source = _user_frame()
                    info = self.infos.get(id(t))
                    exact = info.checks[-1][2] if info is not None and info.ref() is t and info.checks else None
                    would = "" if not isinstance(exact, torch.Tensor) else \
                        f" (the gradient it would hold: {values_text(exact)})"
                    self.events.append(("nonleaf-grad", line, f"line {line} `{source}` reads .grad of a non-leaf "
                                        f"tensor: it is None{would}", f"line {line}", 0))
                return self.call_as(dispatching_frame(sys._getframe()), func, args, kwargs)
            if name.startswith("_foreach_") and name.endswith("_") and args and isinstance(args[0], (list, tuple)):
                out = self.call_as(dispatching_frame(sys._getframe()), func, args, kwargs)
                for t in args[0]:
                    if isinstance(t, torch.Tensor) and is_leaf(t) and t.requires_grad and id(t) in self.recs:
                        self._new_leaf(t)
                return out
        except _Ours:
            pass
        if self.stopped or self._checking_itself():
            # (inside torch's gradcheck, torch.autograd.functional or torch.func: its perturbed copies, its .data
            # writes and its probes are its business, not the script's graph; its backward calls were handled above)
            return self.call_as(dispatching_frame(sys._getframe()), func, args, kwargs)
        if not torch.is_grad_enabled() and _in_optimizer(sys._getframe(1)):
            fast = self._optimizer_op(func, args, kwargs)
            if fast is not _NOT_FAST:
                return fast
        out = super().__torch_function__(func, types, args, kwargs)
        if isinstance(out, torch.Tensor) and is_leaf(out) and out.requires_grad and out.is_floating_point() \
                and id(out) not in self.infos and not leaf_window(out):
            # a leaf made here (torch.tensor(..., requires_grad=True), torch.randn(..., requires_grad=True)):
            # its row is named after this line
            with self.lock:
                info = self._info(out)
                info.made, info.internal = True, in_custom_forward()
        return out

# a statement that zeroes a gradient in place, `w.grad.zero_()`
_ZEROES = re.compile(r"^\s*[A-Za-z_][\w.\[\]]*\.grad(?:\.data)?\.zero_\(\)\s*(?:#.*)?$")


def _where() -> str:
    """The script's line that is running, for a message: "line 12 `optG.zero_grad()`"."""
    _, line, source = _user_frame()
    return f"line {line} `{source}`"


_PROPERTIES = ("__get__", "__set__")
# The properties whose access means something here: a tensor made (x.T), a .data read or write, a read of
# .grad (a non-leaf's is None).
_WATCHED = _PROPERTY_TENSORS | {"grad"}


class _Ours(Exception):
    pass


def _walk_tensors(x: Any) -> Any:
    return (t for t in leaves(x) if isinstance(t, torch.Tensor))

