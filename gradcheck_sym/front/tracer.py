"""A real PyTorch function -> a tensor `Program`, by running it and recording every torch op.

A `TorchFunctionMode` sees every torch function, Tensor method, operator and
property access the function performs.  The op runs as it would without us
(the user's values, exceptions and side effects are theirs); then its rule
(`gradcheck_sym.ops.torch`) lowers it to primitives on whole tensors, evaluated
at once in float64: the reference's forward values come out of the trace.

Bookkeeping, per tensor (`_Rec`): its current handle (a traced float64 value, or a
constant), the version it had then, and — for tensors sharing storage with
another (views, ``.detach()``, ``.data``) — that storage's root and the flat
positions it covers, so in-place writes through a view change the root and the
root's other views, as in torch (functionalisation).

Cuts are data: ops run with grad mode off (outside a custom Function's forward),
``.detach()``, ``.data``, ``.item()``/``.tolist()`` values become ``stop``
equations with their kind and site; a ``.numpy()`` of a traced value is a *leak*:
a numpy-backed tensor that appears later is computed from it where we cannot
see, and becomes ``opaque``.  A tensor with a graph that appears without an op we
saw (torch.compile, TorchScript, a C++ extension, another thread) is ``opaque`` too.  Our own
failures never reach the user's code: they become notes and opaque values.

The bookkeeping lives beside this module: `tracer_sites` (where in the user's source),
`tracer_calls` (naming a call), `tracer_storage` (records per tensor, shared storage) and
`tracer_handles` (handles for the rules, cuts through values) and `tracer_values` (the rules' values checked
against torch's); `Tracer` composes them.
"""

from __future__ import annotations

import linecache
import sys
import threading
import weakref
from types import FrameType
from dataclasses import dataclass
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from ..autograd.attrs import grad_fn, is_leaf
from ..ir.program import Program, Site, Var
from ..ops import prims as P
from ..ops.core import interpreting
from ..ops.ew import IDENT
from ..ops.torch import RULES, Refused, bind_args
from ..reference.interpret import TORCH_NO_GRAD, Recorder, Traced, own_bytes
from .tracer_calls import _PASS, _PROPERTY_TENSORS, _QUIET, _RANDOM, _name, _normalise, _tensors, _walk, foreign_types
from .tracer_handles import Handles, _any_traced, _flat_handles
from .tracer_lazy import LazyOps
from .tracer_sites import (CallAs, Cut, Note, TorchNoGrad, _custom_forward, _user_line, dispatching_frame, hidden_frame,
                           internal_file)
from .tracer_storage import _Rec
from .tracer_values import ValueChecks

# Cut, Note and the frame helpers are defined beside this module and stay importable from here.

__all__ = ["Tracer", "Cut", "Note", "internal_file", "hidden_frame", "dispatching_frame", "foreign_types"]

F64 = torch.float64


@dataclass
class _Region:
    id: int = 0
    on: bool = True


_CALL_MARK = "__gradcheck_sym_call__"  # (see Tracer._call_number)


# The values the user's run computed, kept beside ours for the tensors of at most this many entries in a dtype
# coarser than float64: the forward a measured rounding noise starts from (`reference.rounded.evaluate_rounded`).
USER_VALUES_UP_TO = 1 << 16
_ROUNDED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _off_cpu(args: tuple, kwargs: dict) -> str:
    """The device of the first tensor argument that is not on the CPU ("" when all are)."""
    for x in _walk((args, kwargs)):
        if isinstance(x, torch.Tensor) and not x.is_cpu and x.device.type != "meta":
            return str(x.device)
    return ""


class Tracer(LazyOps, ValueChecks, Handles, TorchFunctionMode):
    """Records a function's torch ops as a `Program` (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self.rec = Recorder(0, 0)
        self.rec.errs = {}
        self.rec.lazy = True  # bounds computed when a comparison or a value check asks for them
        # (site, shape, dtype) -> how many values the rules made there were checked against torch's
        # (site, shape, dtype) -> (tensors made, entries compared)
        self.value_checks: dict[tuple[int, tuple[int, ...], torch.dtype], tuple[int, int]] = {}
        self.recs: dict[int, _Rec] = {}
        self.roots: dict[tuple[int, int], _Rec] = {}
        self.inputs: list[Var] = []
        self.input_names: list[str] = []
        self.sites: list[Site] = []
        self.cuts: list[Cut] = []
        self.notes: list[Note] = []
        self.gave_up = ""  # why our recording failed beyond repair, if it did (see _gave_up)
        self.items: dict[float, Any] = {}
        self.leaks: list[tuple[Traced, int]] = []
        self.custom: list[str] = []
        self.probes: dict[Any, Any] = {}  # a movement op's index maps, per op, shapes and other arguments
        # autograd nodes of complex results computed from traced values (torch.fft's): complex values are not
        # traced, and a custom Function fed one is opaque, not a constant (see Handles._constant_custom)
        self.complex_nodes: dict[int, Any] = {}
        self.region = _Region()
        self.out: Any = None
        self.name = ""
        self.func: Any = None
        self.args: tuple = ()
        self.kwargs: dict = {}
        self.rng_state: torch.Tensor | None = None
        self.before: torch.Tensor | None = None  # an in-place op's target, before the op
        self._site_index: dict[tuple[str, str, int, str, str | None], int] = {}  # (op, file, line, grad, custom)
        self._site_at: dict[tuple[str, str, int], int] = {}  # (op, file, line) of a grad-on site -> its index
        self.lock = threading.RLock()
        self.call: int | None = None  # the custom Function call the current op belongs to
        self._calls: dict[int, tuple[Any, int]] = {}  # id of a call's ctx -> (a weak reference to it, its number)
        self._call_count = 0
        self.call_of: dict[int, int] = {}  # equation index -> custom Function call
        self._site = -1
        self.call_as = CallAs()
        # the no_grad blocks torch's own code opened with grad on (entered with the tracer by its callers): a site
        # there has grad "torch", its cuts are defined ones; each site's place in torch, and the sites whose cut a
        # backward reached (`reference.interpret.SweepResult.torch_cuts`)
        self.torch_no_grad = TorchNoGrad()
        self.torch_places: dict[int, list[tuple[str, int, str]]] = {}
        self.torch_reached: set[int] = set()

    # ------------------------------------------------------------ the program so far
    def leaf(self, t: torch.Tensor, name: str) -> Traced:
        """Make `t` a differentiable input of the program."""
        var = Var(self.rec.next_id, tuple(t.shape), str(t.dtype).replace("torch.", ""))
        self.rec.next_id += 1
        value = t.detach().to(F64)
        handle = Traced(value, var)
        self.rec.values[var.id] = value
        if value is not t and value.layout == torch.strided and value.data_ptr() != t.data_ptr():
            self.rec.nbytes += own_bytes(value)  # (a copy of ours, not the user's storage)
        self.inputs.append(var)
        self.input_names.append(name)
        self._bind(t, handle)
        return handle

    def program(self, outputs: list[Any]) -> Program:
        """The program so far, with these handles as its outputs (constants included)."""
        atoms = []
        for h in outputs:
            if isinstance(h, Traced):
                atoms.append(h.var)
            else:
                atoms.append(self.rec._const(h))
        return Program(tuple(self.inputs), tuple(self.input_names), tuple(self.rec.eqns), tuple(atoms),
                       tuple(self.rec.consts), tuple(self.sites))

    def env(self) -> dict[int, Any]:
        return self.rec.values

    # ------------------------------------------------------------ sites
    def _new_site(self, op: str, no_grad: bool = False) -> int:
        """The site of an op the user's line makes now (`no_grad`: the op runs under no_grad whatever the mode)."""
        file, line = _user_line()
        grad = "on" if torch.is_grad_enabled() and not no_grad else "no_grad"
        if torch.is_inference_mode_enabled():
            grad = "inference"
        if grad == "on":  # a loop's site, found at once (a grad-on site never names a custom Function: see below)
            found = self._site_at.get((op, file, line))
            if found is not None:
                self.call = None
                return found
        custom, key, applied = _custom_forward() if grad != "on" else (None, None, None)
        inside = None
        if grad == "no_grad" and not no_grad and custom is None:
            inside = self.torch_no_grad.opened()
            grad = "torch" if inside is not None else grad
        if custom and custom not in self.custom:
            self.custom.append(custom)
        # One apply() of a custom Function is one call, told apart from the next by its ctx (or its frame).
        self.call = None if key is None else self._call_number(key, applied)
        # A loop makes the same site again and again: one record, found by a plain tuple (a Site's source line is
        # its file's and line's; hashing the dataclass and reading the line each time was a tenth of a no_grad op's
        # recording)
        found = self._site_index.get((op, file, line, grad, custom))
        if found is None:
            source = linecache.getline(file, line).strip() if file else ""
            found = self._site_index[(op, file, line, grad, custom)] = len(self.sites)
            self.sites.append(Site(op, file, line, source, grad, custom))
        if grad == "on" and custom is None:
            self._site_at[(op, file, line)] = found
        if inside is not None:
            places = self.torch_places.setdefault(found, [])  # (one line's site: spectral_norm's and a
            if inside not in places:                            # parametrization's normalize at one line)
                places.append(inside)
        return found

    def _call_number(self, key: Any, applied: Any) -> int:
        """The number of the custom Function call `key` (its ctx, or the frame of its apply()) belongs to; a new
        one the first time.  An id is reused once its object is gone: a weak reference tells the ctx it was, and
        a frame (which has none) is marked in its locals, which a new frame at the same address does not have."""
        if isinstance(key, FrameType):
            local = key.f_locals
            n = local.get(_CALL_MARK)
            if n is None:
                n = local[_CALL_MARK] = self._call_count
                self._call_count += 1
                self._call_started(n, *applied)
            return n
        hit = self._calls.get(id(key))
        if hit is None or hit[0]() is not key:
            hit = self._calls[id(key)] = (weakref.ref(key), self._call_count)
            self._call_count += 1
            if self._call_count % 1024 == 0:  # a long loop's calls: the dead ones' entries go
                self._calls = {k: c for k, c in self._calls.items() if c[0]() is not None}
            self._call_started(hit[1], *applied)
        return hit[1]

    # ------------------------------------------------------------ the mode
    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        if torch.compiler.is_compiling():
            # torch.compile is tracing the user's function through this mode: stay out of its graph
            # (the compiled code's outputs are then unseen, and their gradients not verified).
            return func(*args, **(kwargs or {}))
        kwargs = kwargs or {}
        name = _name(func)
        if name in _QUIET:
            return func(*args, **kwargs)
        caller = dispatching_frame(sys._getframe(1))
        if name in _PASS:
            return self.call_as(caller, func, args, kwargs)
        device = _off_cpu(args, kwargs)
        if device:
            # The reference lives on the CPU (its index maps, masks and constants): ops on another device are
            # left alone, as a subclass is, and the gradients through them are not verified.
            self._device_note(device)
            return self.call_as(caller, func, args, kwargs)
        subclass = foreign_types(types)
        if subclass:
            # A tensor subclass (MaskedTensor, a user's wrapper) has its own semantics; even reading
            # its values runs its code (and its warnings).  Left alone: its gradients are not verified.
            self._subclass_note(subclass)
            return self.call_as(caller, func, args, kwargs)
        state = torch.random.get_rng_state() if name.rstrip("_") in _RANDOM else None
        before = None
        in_place = name.endswith("_") or kwargs.get("inplace") is True  # F.elu(x, inplace=True) too
        if in_place and args and isinstance(args[0], torch.Tensor):
            with self.lock:
                if id(args[0]) in self.recs or self._root_of(args[0]) is not None or _any_traced(self, args[1:],
                                                                                                  kwargs):
                    before = args[0].detach().clone()  # an in-place op's target as the op found it, tracked or not
        out = self.call_as(caller, func, args, kwargs)  # the user's computation, exactly as without us
        with self.lock:  # a script's threads share one recording
            self.rng_state, self.before, self.args = state, before, args
            try:
                self._record(func, name, args, kwargs, out)
            except Exception as exc:  # noqa: BLE001 - our failure: a note and opaque values, never the user's error
                self._internal(name, exc, out)
        return out

    def _subclass_note(self, names: str) -> None:
        with self.lock:
            site = self._new_site(names)
            if not any(n.kind == "subclass" and n.site == site for n in self.notes):
                self.notes.append(Note("subclass", site, f"operations on a tensor subclass ({names}) are not traced: "
                                                         "gradients through them are not verified"))

    def _device_note(self, device: str) -> None:
        with self.lock:
            if any(n.kind == "device" for n in self.notes):
                return
            site = self._new_site(device)
            self.notes.append(Note("device", site, f"operations on {device} tensors are not traced (the reference "
                                                   "runs on the CPU): gradients through them are not verified"))

    def _internal_text(self, name: str, site: int, exc: BaseException) -> str:
        # (the exception's first line: torch's own runs to 40 lines of its dispatch keys, a sparse tensor's "Could not
        # run 'aten::equal' with arguments from the 'SparseCPU' backend ...")
        said = str(exc).strip().split("\n", 1)[0]
        said = said if len(said) <= 200 else said[:197] + "..."
        return f"internal error while tracing {name} at {self.sites[site].where}: {type(exc).__name__}: {said}"

    def _internal(self, name: str, exc: BaseException, out: Any) -> None:
        site = self._new_site(name)
        text = self._internal_text(name, site, exc)
        self.notes.append(Note("internal", site, text))
        try:
            deps = [h for h in _flat_handles(self, self.args, self.kwargs) if isinstance(h, Traced)]
        except Exception:  # noqa: BLE001 - no inputs known: the value is opaque on its own
            deps = []
        args = self.args
        inplace = _normalise(name)[1] and args and isinstance(args[0], torch.Tensor)
        try:
            for t in [args[0]] if inplace else _tensors(out):  # x[i] = v: the written tensor
                if t.is_floating_point():
                    with interpreting(self.rec):
                        self.rec.site = site
                        h = P.opaque(*deps, value=t.detach(), reason=text)
                        self._write(t, h) if inplace else self._bind(t, h)
        except Exception:  # noqa: BLE001 - never the user's error: what follows cannot be trusted, so it is not judged
            self._gave_up(text)

    def _gave_up(self, why: str) -> None:
        """Our recording failed beyond repair: nothing after it can be judged (`run_traced` then raises an internal
        error; the script runner stops judging instead)."""
        self.gave_up = self.gave_up or why

    def _record(self, func: Any, name: str, args: tuple, kwargs: dict, out: Any) -> None:
        self.args, self.kwargs = args, kwargs
        if name == "__get__":
            prop = getattr(getattr(func, "__self__", None), "__name__", "")
            if prop not in _PROPERTY_TENSORS:
                return
            if prop == "data":
                return self._data_get(args[0], out)
            name = prop
        if name == "__set__":
            prop = getattr(getattr(func, "__self__", None), "__name__", "")
            if prop == "data":
                self._data_set(args[0], args[1])
            return
        if name in ("item", "tolist", "numpy"):
            return self._leave(name, args[0], out)
        if name in ("tensor", "as_tensor", "asarray") and self.leaks and args and \
                type(args[0]).__module__ == "numpy" and isinstance(out, torch.Tensor) and out.is_floating_point():
            self.returned_from_numpy(out, name)  # numpy data, after traced values left for numpy
            return
        base, inplace, swap = _normalise(name)
        by_init = getattr(func, "__module__", "") == "torch.nn.init" and not args and \
            isinstance(kwargs.get("tensor"), torch.Tensor)
        init = by_init and (not is_leaf(kwargs["tensor"]) or self._an_alias(kwargs["tensor"]))
        # (a whole parameter's init is a new value of it, as an update under no_grad makes one: not a value torch's
        # own no_grad made, which a backward then reached — every nn.Conv2d's reset_parameters was said to be one)
        if by_init and (init or self._rebinds_leaf(kwargs["tensor"])):
            # torch.nn.init's functions pass their tensor to __torch_function__ by keyword, and fill it under no_grad:
            # on a slice of a parameter (`nn.init.normal_(w[1:3])`), or its `.data` (the DCGAN tutorial's
            # `nn.init.normal_(m.weight.data, 0.0, 0.02)`), that is a write into the parameter, as under no_grad
            args, kwargs = (kwargs["tensor"],), {k: v for k, v in kwargs.items() if k != "tensor"}
        if kwargs.get("inplace") is True:  # F.relu(x, inplace=True) and friends
            inplace = True
        target = args[0] if inplace and args and isinstance(args[0], torch.Tensor) else None
        given = kwargs.get("out")
        if target is None and isinstance(given, torch.Tensor) and out is given and given.is_floating_point():
            # f(x, out=buf): the result written into buf, as an in-place op writes its target (spectral_norm's
            # power iteration, F.normalize(..., out=u) under no_grad)
            kwargs = {k: v for k, v in kwargs.items() if k != "out"}
            target = given
        traced_in = _any_traced(self, args, kwargs)
        if not traced_in and (target is None or not self.is_traced(target)):
            return  # computed from constants only: a constant, captured when used
        outs = _tensors(out)
        if any(t.is_inference() for t in ([target] if target is not None else outs)):
            # made in torch.inference_mode: autograd can never use it (torch refuses), and it has no version
            # counter to track; a constant wherever it is read
            return
        if not any(t.is_floating_point() for t in outs) and target is None:
            if any(t.is_complex() and grad_fn(t) is not None for t in outs) and (traced_in or any(
                    isinstance(x, torch.Tensor) and x.is_complex() and id(grad_fn(x)) in self.complex_nodes
                    for x in _walk((args, kwargs)))):
                for t in outs:
                    if t.is_complex() and grad_fn(t) is not None:
                        self.complex_nodes[id(grad_fn(t))] = grad_fn(t)
            return  # integer or boolean results (a comparison, an argmax): constants for autograd
        site = self._new_site(name, no_grad=init)
        self._site = site
        self.rec.site = site
        self.rec.dtype = self._working_dtype(base, outs[0] if outs else target, args, kwargs)
        self.out, self.name, self.func, self.args, self.kwargs = out, base, func, args, kwargs
        if target is not None and self.call is None and (self._rebinds_leaf(target) or
                                                         self._updates_leaf_behind(target)):
            # an update of a leaf autograd follows, in place under no_grad (`w -= lr * w.grad`) or through all of its
            # `.data` (`w.data -= lr * w.grad`): what the op computed is the leaf's next value, a version of its own
            # (`_write`), not a function of the old one; not lowered (a hand-written SGD step's recording was wasted
            # on every parameter of every iteration)
            if self.sites[site].grad != "on" and self.sites[site].custom is None:
                self._cut_region()
            if torch.is_grad_enabled():
                self.region.on = True
            self._write(target, None)
            self._recorded(site)
            return
        if self._deferrable(name, site, target, out, args, kwargs):
            # an op under the script's no_grad: recorded when its value is first read (`tracer_lazy`)
            h = self._defer(func, base, swap, args, kwargs, out, site, "no_grad", self._cut_region(),
                            self.torch_no_grad.statement())
            if torch.is_grad_enabled():
                self.region.on = True
            self._bind(out, h)
            self._on_output(out, h, site)
            self._recorded(site)
            return
        self._ask_args(args, kwargs)
        first_eqn, first_var = len(self.rec.eqns), self.rec.next_id
        handles = self._lower(base, swap, args, kwargs, site)
        if self.call is not None:
            for k in range(first_eqn, len(self.rec.eqns)):
                self.call_of[k] = self.call
            self._call_eqns(self.call, first_eqn)
        results = handles if isinstance(handles, tuple) else (handles,)
        with interpreting(self.rec):
            if self.sites[site].grad != "on" and self.sites[site].custom is None:
                region = self._cut_region()
                kind = TORCH_NO_GRAD if self.sites[site].grad == "torch" else "no_grad"
                line = self.torch_no_grad.statement() if kind == "no_grad" else 0
                results = tuple(self._cut(kind, h, site, region, line) for h in results)
        if torch.is_grad_enabled():
            self.region.on = True
        if target is not None:
            self._write(target, results[0])
            self._recorded(site)
            return
        for t, h in zip(outs, results):
            if h is None or not t.is_floating_point():
                continue
            self._sample_value(t, h, site)
            if isinstance(h, Traced) and h.var.id < first_var and not any(t is a for a in args):
                # a value passed on as a new tensor (a clone, a view of the same layout, a custom Function's
                # x.view_as(x)): its own variable, whose gradient is its own (a retained clone's .grad was compared
                # with its source's whole gradient)
                with interpreting(self.rec):
                    h = P.ew(IDENT, h)
                if self.call is not None:
                    self.call_of[len(self.rec.eqns) - 1] = self.call
                    self._call_eqns(self.call, len(self.rec.eqns) - 1)
            self._bind(t, h, cut="detach" if base == "detach" else None)
            self._keep_user_value(t, h)
            self._on_output(t, h, site)
        self._recorded(site)

    def _cut_region(self) -> int:
        """The no_grad region an op with grad off belongs to: a new one after any op with grad on."""
        if self.region.on:
            self.region.id += 1
            self.region.on = False
        return self.region.id

    def _keep_user_value(self, t: torch.Tensor, h: Any, copied: bool = False) -> None:
        """Keep the user's value of a small result beside ours (a rounding noise is measured from it; `copied`: `t`
        is a copy already)."""
        if isinstance(h, Traced) and t.numel() <= USER_VALUES_UP_TO and t.dtype in _ROUNDED_DTYPES and \
                t.layout == torch.strided:
            own = self.rec.user[h.var.id] = t if copied else t.detach().clone()
            self.rec.nbytes += own_bytes(own)  # (what recording costs: the memory checks count it)

    def _rebinds_leaf(self, t: torch.Tensor) -> bool:
        """A hook for subclasses: whether a write into `t` makes a new leaf version whatever was written (see
        `_write`)."""
        return False

    def _updates_leaf_behind(self, t: torch.Tensor) -> bool:
        """A hook for subclasses: whether a write into `t`, an alias of a leaf, makes a new version of that leaf
        whatever was written (`_write` with no value)."""
        return False

    def _on_output(self, t: torch.Tensor, h: Any, site: int) -> None:
        """A hook for subclasses: tensor `t` was made at `site` (the script runner names it)."""

    def _recorded(self, site: int) -> None:
        """A hook for subclasses: every result of the op at `site` is bound."""

    def _call_started(self, call: int, cls: Any, args: tuple, kwargs: dict, line: int) -> None:
        """A hook for subclasses: custom Function call number `call` began, as `cls.apply(*args, **kwargs)` at
        `line`."""

    def _call_eqns(self, call: int, first: int) -> None:
        """A hook for subclasses: the equations from `first` on belong to custom Function call `call`."""

    def _lower(self, base: str, swap: bool, args: tuple, kwargs: dict, site: int) -> Any:
        rule = RULES.get(base)
        if rule is None:
            return self._opaque_out(f"torch op {base!r} is not in the op table", args, kwargs, site)
        if swap:
            args = (args[1], args[0]) + tuple(args[2:])
        try:
            a = bind_args(rule, args, kwargs)
            with interpreting(self.rec):
                return rule.lower(self, a)
        except Refused as exc:
            return self._opaque_out(str(exc), args, kwargs, site)

    def _opaque_out(self, reason: str, args: tuple, kwargs: dict, site: int) -> Any:
        text = f"{reason} ({self.sites[site].where}): gradients through it are not verified"
        self.notes.append(Note("opaque", site, text))
        deps = [h for h in _flat_handles(self, args, kwargs) if isinstance(h, Traced)]
        # an in-place op that returns nothing (x[i] = v) changed its first argument
        made = _tensors(self.out) or [a for a in args[:1] if isinstance(a, torch.Tensor)]
        with interpreting(self.rec):
            outs = tuple(P.opaque(*deps, value=t.detach(), reason=text) if t.is_floating_point() else None
                         for t in made)
        return outs if isinstance(self.out, (tuple, list)) else (outs[0] if outs else None)
