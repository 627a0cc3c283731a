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
"""

from __future__ import annotations

import functools
import linecache
import os
import sys
import threading
import weakref
from dataclasses import dataclass
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from ..ir.program import Program, Site, Var
from ..ops import prims as P
from ..ops.core import interpreting
from ..ops.ew import IDENT, WHERE
from ..ops.torch import RULES, Refused, bind_args
from ..reference.interpret import UNIT_ROUNDOFF, Recorder, Traced

__all__ = ["Tracer", "Cut", "Note", "internal_file", "hidden_frame", "dispatching_frame", "foreign_types"]

F64 = torch.float64
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__))
_FUNCTION_PY = os.path.abspath(torch.autograd.function.__file__)
# Calls that read metadata or manage state: never recorded.
_PASS = {"size", "dim", "numel", "stride", "storage_offset", "is_contiguous", "is_floating_point", "is_complex",
         "element_size", "nelement", "ndimension", "data_ptr", "get_device", "untyped_storage", "_is_view",
         "is_set_to", "has_names", "__len__", "__bool__", "__int__", "__float__", "__index__", "__format__",
         "__repr__", "__str__", "__hash__", "__iter__", "__contains__", "__reduce_ex__", "__deepcopy__", "__array__",
         "__setstate__", "_set_grad_enabled", "register_hook", "retain_grad", "backward", "grad", "is_leaf",
         "requires_grad_", "__torch_function__", "equal", "allclose", "isclose", "_version", "is_nonzero",
         "is_same_size", "type", "__dlpack__", "__dlpack_device__", "__array_wrap__", "__array_priority__"}
_PROPERTY_TENSORS = {"T", "mT", "H", "mH", "real", "data"}
_CASTS = {"to", "float", "double", "half", "bfloat16", "type", "type_as", "copy"}
# Ops that draw random numbers: the generator state before them is kept, so a rule can replay the draw.
_RANDOM = {"dropout", "dropout1d", "dropout2d", "dropout3d", "feature_dropout", "alpha_dropout",
           "feature_alpha_dropout", "rrelu", "bernoulli", "normal", "native_dropout", "fractional_max_pool2d",
           "fractional_max_pool3d", "fractional_max_pool2d_with_indices", "fractional_max_pool3d_with_indices",
           "scaled_dot_product_attention", "multi_head_attention_forward"}


@functools.lru_cache(maxsize=4096)
def internal_file(filename: str) -> bool:
    """Ours or torch's (cached: asked for every frame of every traced op)."""
    path = os.path.abspath(filename)
    return path.startswith(_PACKAGE_DIR) or path.startswith(_TORCH_DIR)


OVERRIDES_PY = os.path.abspath(torch.overrides.__file__)
TRAMPOLINE = "<gradcheck-sym call>"
_TEMPLATE = (lambda f, a, k: f(*a, **k)).__code__  # one line: every instruction is on co_firstlineno


def dispatching_frame(frame: Any) -> Any:
    """The frame that called the torch function being handled: the one Python would blame.

    Our own frames are skipped; so are torch.overrides' and the function that delegated to it
    (``F.mse_loss`` calls ``handle_torch_function``): without a mode, the op ran from its caller.
    """
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        frame = frame.f_back
    if frame is not None and frame.f_code.co_filename == OVERRIDES_PY:
        while frame is not None and frame.f_code.co_filename == OVERRIDES_PY:
            frame = frame.f_back
        frame = frame.f_back if frame is not None else None
    return frame


class CallAs:
    """Calls the user's torch function from a frame that looks like its caller's line.

    Warnings raised inside torch (C++ ones point at the innermost Python frame; Python ones at
    ``stacklevel`` frames up) then name the user's file and line, in the user's module's
    warning registry and filters, exactly as without us, instead of a line of the tracer.
    """

    def __init__(self) -> None:
        self._cache: dict[tuple[str, int, int], Any] = {}

    def __call__(self, frame: Any, func: Any, args: tuple, kwargs: dict) -> Any:
        if frame is None:
            return func(*args, **kwargs)
        key = (frame.f_code.co_filename, frame.f_lineno, id(frame.f_globals))
        call = self._cache.get(key)
        if call is None:
            import types

            code = _TEMPLATE.replace(co_filename=key[0], co_firstlineno=max(key[1], 1), co_name=TRAMPOLINE,
                                     co_qualname=TRAMPOLINE)
            call = self._cache[key] = types.FunctionType(code, frame.f_globals, TRAMPOLINE)
        return call(func, args, kwargs)


def foreign_types(types: Any) -> str:
    """The names of the tensor subclasses among a call's `types` ("" when all are plain tensors)."""
    names = [t.__name__ for t in types or () if t is not torch.Tensor and not issubclass(t, torch.nn.Parameter)]
    return ", ".join(sorted(set(names)))


def hidden_frame(filename: str, name: str) -> bool:
    """Frames a traceback of the user's error leaves out: ours, torch.overrides', the trampoline's."""
    path = os.path.abspath(filename)
    return path.startswith(_PACKAGE_DIR) or path == OVERRIDES_PY or name == TRAMPOLINE


@dataclass(frozen=True)
class Cut:
    """A place where the gradient is cut: kind (no_grad, detach, .data, .item(), .tolist()), the site,
    and the ``stop`` variables it made."""

    kind: str
    site: int
    region: int
    vars: tuple[int, ...]


@dataclass(frozen=True)
class Note:
    """Something the trace could not follow: kind ("opaque", "stale-graph", "leak", "internal"), site, text."""

    kind: str
    site: int
    text: str


@dataclass
class _Rec:
    """What the tracer knows about one tensor object (held weakly: the user's tensors die as they would)."""

    ref: Any  # weakref.ref to the tensor
    handle: Any
    version: int
    root: _Rec | None = None
    root_tensor: torch.Tensor | None = None  # an alias keeps its root alive, as a view keeps its base
    root_handle: Any = None
    index: torch.Tensor | None = None  # flat positions in the root, computed when needed
    cut: str | None = None  # an alias made by .detach() or .data stays cut when re-derived
    used: bool = False  # read by an op since its value was bound
    anc: frozenset = frozenset()  # for pictures: the nearest named tensors it was computed from
    layout: tuple | None = None  # (shape, stride, offset) when it became its storage's root

    @property
    def tensor(self) -> torch.Tensor | None:
        return self.ref()


@dataclass
class _Region:
    id: int = 0
    on: bool = True


class Tracer(TorchFunctionMode):
    """Records a function's torch ops as a `Program` (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self.rec = Recorder(0, 0)
        self.rec.errs = {}
        self.recs: dict[int, _Rec] = {}
        self.roots: dict[tuple[int, int], _Rec] = {}
        self.inputs: list[Var] = []
        self.input_names: list[str] = []
        self.sites: list[Site] = []
        self.cuts: list[Cut] = []
        self.notes: list[Note] = []
        self.items: dict[float, Any] = {}
        self.leaks: list[tuple[Traced, int]] = []
        self.custom: list[str] = []
        self.region = _Region()
        self.out: Any = None
        self.name = ""
        self.func: Any = None
        self.args: tuple = ()
        self.kwargs: dict = {}
        self.rng_state: torch.Tensor | None = None
        self.before: torch.Tensor | None = None  # an in-place op's target, before the op
        self._site_index: dict[Site, int] = {}
        self.lock = threading.RLock()
        self.call: int | None = None  # the custom Function call the current op belongs to
        self._calls: dict[int, int] = {}
        self.call_of: dict[int, int] = {}  # equation index -> custom Function call
        self._site = -1
        self.call_as = CallAs()

    # ------------------------------------------------------------ the program so far
    def leaf(self, t: torch.Tensor, name: str) -> Traced:
        """Make `t` a differentiable input of the program."""
        var = Var(self.rec.next_id, tuple(t.shape), str(t.dtype).replace("torch.", ""))
        self.rec.next_id += 1
        value = t.detach().to(F64)
        handle = Traced(value, var)
        self.rec.values[var.id] = value
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

    # ------------------------------------------------------------ handles
    def v(self, x: Any) -> Any:
        """The handle of `x` for rules: traced value, float64 constant, or `x` itself."""
        if isinstance(x, torch.Tensor):
            return self._handle(x)
        if isinstance(x, float) and x in self.items:
            return self.items[x]
        if isinstance(x, (list, tuple)):
            return type(x)(self.v(e) for e in x)
        return x

    def const(self, x: torch.Tensor) -> torch.Tensor:
        return x.detach().to(F64) if x.is_floating_point() else x.detach()

    def user_value(self, x: Any) -> Any:
        """For rules: `x` as the user's run had it when the op started (float64), for decisions."""
        if isinstance(x, torch.Tensor):
            if self.before is not None and self.args and x is self.args[0]:
                x = self.before
            return x.detach().to(F64) if x.is_floating_point() else x.detach()
        return x

    def is_traced(self, x: Any) -> bool:
        return isinstance(self.v(x), Traced)

    def _handle(self, t: torch.Tensor) -> Any:
        r = self.recs.get(id(t))
        if r is not None and r.tensor is t:
            if r.root is not None and r.root.handle is not r.root_handle:
                self._rederive(r)
            r.used = True
            return r.handle
        alias = self._root_of(t)
        if alias is not None:  # shares storage with a known tensor: a view we did not see made
            with interpreting(self.rec):
                handle = self._view_of(alias, t)
                custom = _custom_node(t)
                if custom is not None and isinstance(handle, Traced):
                    # a custom Function that returned its input as it is: one equation, its call
                    self.rec.site = self._new_site(f"{custom}.apply")
                    self.sites[self.rec.site] = Site(f"{custom}.apply", *_user_frame(), "no_grad", custom)
                    handle = P.ew(IDENT, handle)
                    self.call_of[len(self.rec.eqns) - 1] = id(t.grad_fn)
                    if custom not in self.custom:
                        self.custom.append(custom)
            self._bind(t, handle)
            return handle
        return self._unknown(t)

    def _unknown(self, t: torch.Tensor) -> Any:
        """A tensor no recorded op made and no known storage holds: a constant, or opaque if it has a graph
        or came back from numpy after a traced value left for it."""
        if self.before is not None and self.args and t is self.args[0]:
            return self.const(self.before)  # an untracked tensor written in place: its value before the op
        if self.leaks and t.is_floating_point() and _external(t):
            return self.returned_from_numpy(t, "torch.from_numpy")
        if t.requires_grad and t.grad_fn is not None:
            custom = _custom_node(t)
            if custom is not None:
                return self._constant_custom(t, custom)
            return self._opaque_tensor(t)
        return self.const(t)

    def _constant_custom(self, t: torch.Tensor, custom: str) -> Any:
        """The output of a custom Function whose forward computed it from no traced value (a step, a sign of a
        comparison): a constant of its inputs — one equation of its call, so a declaration can apply to it."""
        deps = []
        for fn, _ in t.grad_fn.next_functions:
            h = self._handle_of_node(fn)
            if isinstance(h, Traced):
                deps.append(h)
        with interpreting(self.rec):
            site = self._new_site(f"{custom}.apply")
            self.sites[site] = Site(f"{custom}.apply", *_user_frame(), "no_grad", custom)
            self.rec.site = site
            handle = P.ew(_constant_of(len(deps) + 1), *deps, t.detach().to(F64)) if deps else self.const(t)
            if deps:
                self.call_of[len(self.rec.eqns) - 1] = id(t.grad_fn)
        if custom not in self.custom:
            self.custom.append(custom)
        self._bind(t, handle)
        return handle

    def _handle_of_node(self, fn: Any) -> Any:
        """The traced handle of the tensor an autograd node belongs to (a leaf's, or a recorded output's)."""
        if fn is None:
            return None
        var = getattr(fn, "variable", None)
        if isinstance(var, torch.Tensor):
            return self.v(var)
        for r in list(self.recs.values()):
            t = r.tensor
            if t is not None and t.grad_fn is fn:
                return r.handle
        return None

    def returned_from_numpy(self, t: torch.Tensor, how: str) -> Any:
        """A tensor made from numpy data after traced values left for numpy: it may be computed from them
        where the tracer cannot see, so gradients through it are not verified."""
        site = self._new_site(how)
        left = ", ".join(sorted({self.sites[s].where for _, s in self.leaks}))
        text = (f"a tensor made from numpy data at {self.sites[site].where} ({how}) after traced values left torch "
                f"at {left} (.numpy()): it may be computed from them outside torch, where autograd treats it as a "
                "constant and the tracer cannot see it: gradients through it are not verified")
        self.notes.append(Note("opaque", site, text))
        with interpreting(self.rec):
            self.rec.site = site
            handle = P.opaque(*[h for h, _ in self.leaks], value=t.detach(), reason=text)
        self._bind(t, handle)
        return handle

    def _bind(self, t: torch.Tensor, handle: Any, cut: str | None = None) -> _Rec:
        r = self.recs.get(id(t))
        if r is not None and r.tensor is t:  # the same tensor again (an op that returned its input)
            r.handle, r.version, r.cut, r.used = handle, t._version, cut, False
            if r.root is not None:
                r.root_handle = r.root.handle
            return r
        tid = id(t)
        recs, roots = self.recs, self.roots
        key = _storage_key(t)

        def gone(_: Any, tid: int = tid) -> None:
            if recs.get(tid) is r:
                del recs[tid]
            if key is not None and roots.get(key) is r and r.tensor is None:
                del roots[key]

        r = _Rec(weakref.ref(t, gone), handle, t._version, cut=cut)
        recs[tid] = r
        if key is not None:
            root = self.roots.get(key)
            if root is None or root.tensor is None or root.tensor is t:
                self.roots[key] = r
                r.layout = _layout(t)
            elif root is not r:
                r.root, r.root_handle, r.root_tensor = root, root.handle, root.tensor
        return r

    def _root_of(self, t: torch.Tensor) -> _Rec | None:
        key = _storage_key(t)
        root = self.roots.get(key) if key is not None else None
        if root is not None and root.tensor is None:  # a dead tensor's memory, reused by a new one
            del self.roots[key]
            return None
        return root

    def _index(self, r: _Rec) -> torch.Tensor:
        if r.index is None:
            r.index = _index_map(r.root.layout, r.tensor)  # type: ignore[union-attr]
        return r.index

    def _view_of(self, root: _Rec, t: torch.Tensor) -> Any:
        if root.layout == _layout(t):
            return root.handle
        index = _index_map(root.layout, t)
        return P.take(root.handle, index)

    def _rederive(self, r: _Rec) -> None:
        root = r.root
        assert root is not None
        with interpreting(self.rec):
            handle = root.handle if root.layout == _layout(r.tensor) else P.take(root.handle, self._index(r))
            if r.cut is not None:
                handle = P.stop(handle, r.cut, -1)
        r.handle, r.root_handle = handle, root.handle

    def _write(self, t: torch.Tensor, new: Any) -> None:
        """`t` was changed in place to `new` (a handle): change it, its storage's root and (lazily) views."""
        r = self.recs.get(id(t))
        if r is None or r.tensor is not t:
            r = self._bind(t, new)
        root_t = r.root.tensor if r.root is not None else None
        if r.cut in (".data", "detach") and root_t is not None and self.sites[self._site].custom is None and (
                root_t.grad_fn is not None or (root_t.requires_grad and r.root.used)):
            how = "`.data`" if r.cut == ".data" else "a `.detach()`ed alias"
            self.notes.append(Note("stale-graph", self._site, f"in-place change through {how} of a tensor "
                                   + (f"with a graph ({type(root_t.grad_fn).__name__})" if root_t.grad_fn else
                                      "already used in the graph")))
        r.handle, r.version = new, t._version
        root = r.root
        if root is None:
            return
        with interpreting(self.rec):
            if root.layout == _layout(t):
                root.handle = new
            else:
                index = self._index(r)
                mask = P.segsum(torch.ones(index.shape, dtype=F64), index, tuple(root.tensor.shape)) > 0
                scattered = P.segsum(new, index, tuple(root.tensor.shape))
                root.handle = P.ew(WHERE, mask.to(F64), scattered, root.handle)
        root.version = root.tensor._version
        r.root_handle = root.handle

    def _opaque_tensor(self, t: torch.Tensor) -> Any:
        """A tensor with a graph that no op we saw made: what it depends on, from its grad_fn."""
        deps = [h for h in _graph_leaves(t, self) if isinstance(h, Traced)]
        site = self._new_site("(unseen computation)")
        text = (f"a tensor with grad_fn {type(t.grad_fn).__name__} appeared at {self.sites[site].where} without a "
                "torch op the tracer saw (torch.compile, TorchScript, a C++ extension, another thread?): gradients "
                "through it are "
                "not verified")
        self.notes.append(Note("opaque", site, text))
        with interpreting(self.rec):
            self.rec.site = site
            handle = P.opaque(*deps, value=t.detach(), reason=text)
        self._bind(t, handle)
        return handle

    # ------------------------------------------------------------ sites
    def _new_site(self, op: str) -> int:
        file, line, source = _user_frame()
        grad = "on" if torch.is_grad_enabled() else "no_grad"
        if torch.is_inference_mode_enabled():
            grad = "inference"
        custom, frame = _custom_forward() if grad != "on" else (None, None)
        if custom and custom not in self.custom:
            self.custom.append(custom)
        # One apply() of a custom Function is one call, told apart from the next by its frame.
        self.call = None if frame is None else self._calls.setdefault(frame, len(self._calls))
        site = Site(op, file, line, source, grad, custom)
        found = self._site_index.get(site)  # a loop makes the same site again and again: one record
        if found is None:
            found = self._site_index[site] = len(self.sites)
            self.sites.append(site)
        return found

    # ------------------------------------------------------------ the mode
    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        if torch.compiler.is_compiling():
            # torch.compile is tracing the user's function through this mode: stay out of its graph
            # (the compiled code's outputs are then unseen, and their gradients not verified).
            return func(*args, **(kwargs or {}))
        kwargs = kwargs or {}
        name = _name(func)
        caller = dispatching_frame(sys._getframe(1))
        if name in _PASS:
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

    def _internal(self, name: str, exc: BaseException, out: Any) -> None:
        site = self._new_site(name)
        text = f"internal error while tracing {name} at {self.sites[site].where}: {type(exc).__name__}: {exc}"
        self.notes.append(Note("internal", site, text))
        try:
            deps = [h for h in _flat_handles(self, self.args, self.kwargs) if isinstance(h, Traced)]
        except Exception:  # noqa: BLE001 - no inputs known: the value is opaque on its own
            deps = []
        args = self.args
        inplace = _normalise(name)[1] and args and isinstance(args[0], torch.Tensor)
        for t in [args[0]] if inplace else _tensors(out):  # x[i] = v: the written tensor
            if t.is_floating_point():
                with interpreting(self.rec):
                    self.rec.site = site
                    h = P.opaque(*deps, value=t.detach(), reason=text)
                    self._write(t, h) if inplace else self._bind(t, h)

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
        if kwargs.get("inplace") is True:  # F.relu(x, inplace=True) and friends
            inplace = True
        target = args[0] if inplace and args and isinstance(args[0], torch.Tensor) else None
        traced_in = _any_traced(self, args, kwargs)
        if not traced_in and (target is None or not self.is_traced(target)):
            return  # computed from constants only: a constant, captured when used
        outs = _tensors(out)
        if not any(t.is_floating_point() for t in outs) and target is None:
            return  # integer or boolean results (a comparison, an argmax): constants for autograd
        site = self._new_site(name)
        self._site = site
        self.rec.site = site
        self.rec.dtype = self._working_dtype(base, outs[0] if outs else target, args, kwargs)
        self.out, self.name, self.func, self.args, self.kwargs = out, base, func, args, kwargs
        first_eqn = len(self.rec.eqns)
        handles = self._lower(base, swap, args, kwargs, site)
        if self.call is not None:
            for k in range(first_eqn, len(self.rec.eqns)):
                self.call_of[k] = self.call
        results = handles if isinstance(handles, tuple) else (handles,)
        with interpreting(self.rec):
            if self.sites[site].grad != "on" and self.sites[site].custom is None:
                if self.region.on:
                    self.region.id += 1
                    self.region.on = False
                results = tuple(self._cut("no_grad", h, site, self.region.id) for h in results)
        if torch.is_grad_enabled():
            self.region.on = True
        if target is not None:
            self._write(target, results[0])
            return
        ins = {id(x) for x in _flat_handles(self, args, kwargs)} if self.call is not None else set()
        for t, h in zip(outs, results):
            if h is None or not t.is_floating_point():
                continue
            self._check_value(t, h, site)
            if id(h) in ins:  # inside a custom Function, an input passed on (x.view_as(x)): its own equation
                with interpreting(self.rec):
                    h = P.ew(IDENT, h)
                self.call_of[len(self.rec.eqns) - 1] = self.call  # type: ignore[assignment]
            self._bind(t, h, cut="detach" if base == "detach" else None)
            self._on_output(t, h, site)

    def _on_output(self, t: torch.Tensor, h: Any, site: int) -> None:
        """A hook for subclasses: tensor `t` was made at `site` (the script runner names it)."""

    def _working_dtype(self, base: str, result: torch.Tensor, args: tuple, kwargs: dict) -> str:
        """The dtype the op's rounding is charged in: its result's, or a coarser one a traced input has (torch
        computes part of a mixed op, such as loss(x32, target64), in the input's precision); a cast's is its
        result's."""
        cast = base in _CASTS
        dtypes = [result.dtype] + [x.dtype for x in _walk((args, kwargs)) if not cast and isinstance(x, torch.Tensor)
                                   and x.is_floating_point() and self.is_traced(x)]
        floating = [d for d in dtypes if d.is_floating_point]
        coarsest = max(floating, key=lambda d: torch.finfo(d).eps) if floating else result.dtype
        return _dtype_name(torch.empty(0, dtype=coarsest))

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

    def call_with(self, replace: dict[int, Any]) -> Any:
        """For rules: the op again, with the tensors whose id is in `replace` replaced (a probe)."""

        def sub(x: Any) -> Any:
            if isinstance(x, torch.Tensor):
                return replace.get(id(x), x)
            if isinstance(x, list):
                return [sub(e) for e in x]
            if isinstance(x, tuple) and not isinstance(x, torch.Size):
                return tuple(sub(e) for e in x)
            if isinstance(x, dict):
                return {k: sub(v) for k, v in x.items()}
            return x

        args = sub(self.args)
        with torch.no_grad():
            out = self.func(*args, **sub(self.kwargs))
        # x[i] = v returns None: the result is the written tensor
        return args[0] if out is None and args and isinstance(args[0], torch.Tensor) else out

    def cut(self, kind: str, h: Any) -> Any:
        """For rules: `h` cut (detach)."""
        return self._cut(kind, h, self._site, -self._site - 1)

    def _cut(self, kind: str, h: Any, site: int, region: int) -> Any:
        if not isinstance(h, Traced):
            return h
        out = P.stop(h, kind, region)
        if isinstance(out, Traced):
            self.cuts.append(Cut(kind, site, region, (out.var.id,)))
        return out

    def _check_value(self, t: torch.Tensor, h: Any, site: int) -> None:
        """The rule's float64 value must reproduce torch's: else it is our error (a note, and opaque)."""
        if not isinstance(h, Traced) or tuple(h.value.shape) != tuple(t.shape):
            if isinstance(h, Traced):
                raise RuntimeError(f"rule gave shape {tuple(h.value.shape)}, torch {tuple(t.shape)}")
            return
        mine = h.value
        # Most ops agree to the last bit once the reference is rounded to the user's dtype: one
        # comparison instead of the whole test below.
        if t.is_floating_point() and torch.equal(mine if mine.dtype == t.dtype else mine.to(t.dtype), t.detach()):
            return
        theirs = t.detach().to(F64)
        u = UNIT_ROUNDOFF.get(_dtype_name(t), 2.0**-53)
        err = self.rec.errs.get(h.var.id) if self.rec.errs is not None else None
        # below the dtype's smallest normal number results are subnormal: absolute, not relative, precision
        tol = 64 * u * mine.abs() + torch.finfo(t.dtype).tiny + (16 * err if err is not None else 0)
        both = torch.isfinite(mine) & torch.isfinite(theirs)
        bad = both & ((mine - theirs).abs() > tol)
        nan_mismatch = torch.isnan(theirs) != torch.isnan(mine)
        if bool(bad.any()) or bool((nan_mismatch & (mine.abs() < torch.finfo(t.dtype).max)).any()):
            worst = float(((mine - theirs).abs() / (mine.abs() + 1e-300)).nan_to_num(1.0).max()) if mine.numel() else 0
            raise RuntimeError(f"the rule's value differs from torch's (relative {worst:.3g})")

    # ------------------------------------------------------------ cuts through values
    def _data_get(self, t: torch.Tensor, out: torch.Tensor) -> None:
        if not self.is_traced(t) or not t.is_floating_point():
            return
        site = self._new_site(".data")
        with interpreting(self.rec):
            self.rec.site = site
            h = self._cut(".data", self._handle(t), site, -site - 1)
        r = self._bind(out, h, cut=".data")
        if r.root is None:  # .data shares t's storage
            r.root = self.recs[id(t)].root or self.recs[id(t)]
            r.root_handle, r.root_tensor = r.root.handle, r.root.tensor

    def _data_set(self, t: torch.Tensor, value: torch.Tensor) -> None:
        if not (self.is_traced(t) or self.is_traced(value)):
            return
        site = self._new_site(".data =")
        if t.grad_fn is not None and self.sites[site].custom is None:
            self.notes.append(Note("stale-graph", site, f"`.data` assignment to a tensor with a graph "
                                                        f"({type(t.grad_fn).__name__})"))
        with interpreting(self.rec):
            self.rec.site = site
            h = self._cut(".data", self._handle(value), site, -site - 1)
        # `t` now has `value`'s storage: a new record (its old one stays the root of the old storage, with
        # the old value, for the tensors that still alias it).
        self.recs.pop(id(t), None)
        self._bind(t, h, cut=".data")

    def _leave(self, name: str, t: Any, out: Any) -> None:
        if not isinstance(t, torch.Tensor) or not self.is_traced(t):
            return
        site = self._new_site(f".{name}()")
        if name == "numpy":
            self.leaks.append((self._handle(t), site))
            self.notes.append(Note("leak", site, f"a traced value left torch at {self.sites[site].where} (.numpy())"))
            return
        custom = self.sites[site].custom is not None
        with interpreting(self.rec):
            self.rec.site = site
            h = self._handle(t)
            flat = P.reshape(h, (t.numel(),))
            values = [out] if name == "item" else list(torch.as_tensor(out, dtype=F64).reshape(-1).tolist())
            for i, value in enumerate(values):
                if not isinstance(value, float):
                    continue
                elem = P.take(flat, torch.tensor(i))
                self.items[value] = elem if custom else self._cut(f".{name}()", elem, site, -site - 1)


# ---------------------------------------------------------------- helpers
def _name(func: Any) -> str:
    return getattr(func, "__name__", "") or type(func).__name__


def _normalise(name: str) -> tuple[str, bool, bool]:
    """(base op name, in place?, arguments swapped?)."""
    if name.startswith("__i") and name.endswith("__") and name not in ("__index__", "__int__", "__invert__"):
        return name[3:-2], True, False
    if name.startswith("__r") and name.endswith("__") and name not in ("__repr__", "__reduce_ex__"):
        base = name[3:-2]
        return {"div": "true_divide", "truediv": "true_divide", "sub": "sub", "add": "add", "mul": "mul",
                "pow": "pow", "matmul": "matmul", "mod": "remainder", "and": "bitwise_and",
                "or": "bitwise_or", "xor": "bitwise_xor", "floordiv": "floor_divide"}.get(base, base), False, True
    if name == "__setitem__":  # x[i] = v: an in-place write into x
        return name, True, False
    if name.startswith("__") and name.endswith("__"):
        base = name[2:-2]
        known = {"add": "add", "sub": "sub", "mul": "mul", "truediv": "true_divide", "div": "true_divide",
                 "pow": "pow", "matmul": "matmul", "neg": "neg", "pos": "positive", "abs": "abs",
                 "mod": "remainder", "floordiv": "floor_divide", "and": "bitwise_and", "or": "bitwise_or",
                 "xor": "bitwise_xor", "invert": "bitwise_not", "gt": "gt", "ge": "ge", "lt": "lt", "le": "le",
                 "eq": "eq", "ne": "ne"}
        return known.get(base, name), False, False
    if name.endswith("_") and not name.endswith("__") and len(name) > 1:
        return name[:-1], True, False
    return name, False, False


def _dtype_name(t: Any) -> str:
    return str(getattr(t, "dtype", "float64")).replace("torch.", "")


def _tensors(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for t in out if isinstance(t, torch.Tensor)]
    return []


def _walk(x: Any) -> Any:
    if isinstance(x, (list, tuple)):
        for e in x:
            yield from _walk(e)
    elif isinstance(x, dict):
        for e in x.values():
            yield from _walk(e)
    else:
        yield x


def _any_traced(tr: Tracer, args: tuple, kwargs: dict) -> bool:
    for x in _walk((args, kwargs)):
        if isinstance(x, torch.Tensor) and x.is_floating_point() and tr.is_traced(x):
            return True
        if isinstance(x, float) and x in tr.items:
            return True
    return False


def _flat_handles(tr: Tracer, args: tuple, kwargs: dict) -> list[Any]:
    return [tr.v(x) for x in _walk((args, kwargs)) if isinstance(x, torch.Tensor) and x.is_floating_point()]


def _storage_key(t: torch.Tensor) -> tuple[int, int] | None:
    try:
        ptr = t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):
        return None
    if ptr == 0 or t.device.type == "meta":
        return None
    return (ptr, t.element_size())


def _layout(t: torch.Tensor) -> tuple:
    return (tuple(t.shape), tuple(t.stride()), t.storage_offset())


def _positions(layout: tuple) -> torch.Tensor:
    """Storage positions of each element of a tensor with this (shape, stride, offset), without
    materialising the storage."""
    shape, stride, offset = layout
    pos = torch.full((), offset, dtype=torch.long)
    for d, (n, s) in enumerate(zip(shape, stride)):
        dims = [1] * len(shape)
        dims[d] = n
        pos = pos + (torch.arange(n) * s).reshape(dims)
    return pos.expand(tuple(shape)) if shape else pos


def _index_map(root: tuple, t: torch.Tensor) -> torch.Tensor:
    """Flat positions in the root (given by its layout) of each element of `t` (both on one storage);
    -1 where outside."""
    pos = _positions(_layout(t))
    shape, stride, offset = root
    numel = int(torch.tensor(shape).prod()) if shape else 1
    contiguous = list(stride) == [int(torch.tensor(shape[i + 1:]).prod()) if i + 1 < len(shape) else 1
                                  for i in range(len(shape))]
    if contiguous:
        flat = pos - offset
        ok = (flat >= 0) & (flat < numel)
        return torch.where(ok, flat, torch.full((), -1, dtype=torch.long))
    rpos = _positions(root).reshape(-1)
    order = torch.argsort(rpos)
    sorted_pos = rpos[order]
    found = torch.searchsorted(sorted_pos, pos.reshape(-1)).clamp(max=max(len(sorted_pos) - 1, 0))
    ok = sorted_pos[found] == pos.reshape(-1)
    return torch.where(ok, order[found], torch.full((), -1, dtype=torch.long)).reshape(pos.shape)


def _graph_leaves(t: torch.Tensor, tr: Tracer) -> list[Any]:
    """Handles of the known tensors an autograd graph reaches (its leaves), read from grad_fn."""
    out, seen, stack = [], set(), [t.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is None or id(fn) in seen:
            continue
        seen.add(id(fn))
        var = getattr(fn, "variable", None)
        if isinstance(var, torch.Tensor):
            h = tr.v(var)
            if isinstance(h, Traced):
                out.append(h)
        stack.extend(f for f, _ in getattr(fn, "next_functions", ()))
    return out


def _user_frame() -> tuple[str, int, str]:
    frame = sys._getframe(2)
    while frame is not None and internal_file(frame.f_code.co_filename):
        frame = frame.f_back  # type: ignore[assignment]
    if frame is None:
        return ("", 0, "")
    file, line = frame.f_code.co_filename, frame.f_lineno
    return (file, line, linecache.getline(file, line).strip())


def _constant_of(n: int) -> Any:
    """The function of n arguments whose value is the last one: a constant of the others (derivative 0)."""
    from ..ops.ew import P as X, ew_fn

    return ew_fn("constant", X[n - 1], n)


def _external(t: torch.Tensor) -> bool:
    """Whether `t`'s memory belongs to someone else (numpy, DLPack): its storage cannot be resized."""
    try:
        return not t.untyped_storage().resizable()
    except (RuntimeError, NotImplementedError):
        return False


def _custom_node(t: torch.Tensor) -> str | None:
    """The custom Function whose backward node made `t`, if one did."""
    fn = t.grad_fn
    if isinstance(fn, torch.autograd.function.BackwardCFunction):
        name = type(fn).__name__
        return name[: -len("Backward")] if name.endswith("Backward") else name
    return None


def _custom_forward() -> tuple[str | None, Any]:
    """The custom autograd.Function whose forward is running, if any (seen on the stack), and the frame
    of its apply() (one per call)."""
    frame = sys._getframe(2)
    ctx = None
    while frame is not None:
        code = frame.f_code
        if code.co_name == "apply" and os.path.abspath(code.co_filename) == _FUNCTION_PY:
            cls = frame.f_locals.get("cls")
            # the call's ctx (its backward node, alive as long as its outputs' graph) tells calls apart
            return getattr(cls, "__name__", "Function"), id(ctx) if ctx is not None else id(frame)
        if code.co_name == "forward" and "ctx" in frame.f_locals:
            ctx = frame.f_locals["ctx"]
        frame = frame.f_back  # type: ignore[assignment]
    return None, None

