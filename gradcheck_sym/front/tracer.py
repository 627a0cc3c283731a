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
saw (TorchScript, a C++ extension, another thread) is ``opaque`` too.  Our own
failures never reach the user's code: they become notes and opaque values.
"""

from __future__ import annotations

import linecache
import os
import sys
from dataclasses import dataclass
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from ..ir.program import Program, Site, Var
from ..ops import prims as P
from ..ops.core import interpreting
from ..ops.ew import WHERE
from ..ops.torch import RULES, Refused, bind_args
from ..reference.interpret import UNIT_ROUNDOFF, Recorder, Traced

__all__ = ["Tracer", "Cut", "Note", "internal_file"]

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
# Ops that draw random numbers: the generator state before them is kept, so a rule can replay the draw.
_RANDOM = {"dropout", "dropout1d", "dropout2d", "dropout3d", "feature_dropout", "alpha_dropout",
           "feature_alpha_dropout", "rrelu", "bernoulli", "normal", "native_dropout", "fractional_max_pool2d",
           "fractional_max_pool3d", "fractional_max_pool2d_with_indices", "fractional_max_pool3d_with_indices",
           "scaled_dot_product_attention", "multi_head_attention_forward"}


def internal_file(filename: str) -> bool:
    path = os.path.abspath(filename)
    return path.startswith(_PACKAGE_DIR) or path.startswith(_TORCH_DIR)


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
    """What the tracer knows about one tensor object."""

    tensor: torch.Tensor
    handle: Any
    version: int
    root: _Rec | None = None
    root_handle: Any = None
    index: torch.Tensor | None = None  # flat positions in the root, computed when needed
    cut: str | None = None  # an alias made by .detach() or .data stays cut when re-derived
    used: bool = False  # read by an op since its value was bound


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
        self._site = -1

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
            self._bind(t, handle)
            return handle
        if t.requires_grad and t.grad_fn is not None:
            return self._opaque_tensor(t)
        return self.const(t)

    def _bind(self, t: torch.Tensor, handle: Any, cut: str | None = None) -> _Rec:
        r = self.recs.get(id(t))
        if r is not None and r.tensor is t:  # the same tensor again (an op that returned its input)
            r.handle, r.version, r.cut, r.used = handle, t._version, cut, False
            if r.root is not None:
                r.root_handle = r.root.handle
            return r
        r = _Rec(t, handle, t._version, cut=cut)
        self.recs[id(t)] = r
        key = _storage_key(t)
        if key is not None:
            root = self.roots.get(key)
            if root is None or root.tensor is t:
                self.roots[key] = r
            elif root is not r:
                r.root, r.root_handle = root, root.handle
        return r

    def _root_of(self, t: torch.Tensor) -> _Rec | None:
        key = _storage_key(t)
        return self.roots.get(key) if key is not None else None

    def _index(self, r: _Rec) -> torch.Tensor:
        if r.index is None:
            r.index = _index_map(r.root.tensor, r.tensor)  # type: ignore[union-attr]
        return r.index

    def _view_of(self, root: _Rec, t: torch.Tensor) -> Any:
        if _same_layout(root.tensor, t):
            return root.handle
        index = _index_map(root.tensor, t)
        return P.take(root.handle, index)

    def _rederive(self, r: _Rec) -> None:
        root = r.root
        assert root is not None
        with interpreting(self.rec):
            handle = root.handle if _same_layout(root.tensor, r.tensor) else P.take(root.handle, self._index(r))
            if r.cut is not None:
                handle = P.stop(handle, r.cut, -1)
        r.handle, r.root_handle = handle, root.handle

    def _write(self, t: torch.Tensor, new: Any) -> None:
        """`t` was changed in place to `new` (a handle): change it, its storage's root and (lazily) views."""
        r = self.recs.get(id(t))
        if r is None or r.tensor is not t:
            r = self._bind(t, new)
        root_t = r.root.tensor if r.root is not None else None
        if r.cut == ".data" and root_t is not None and self.sites[self._site].custom is None and (
                root_t.grad_fn is not None or (root_t.requires_grad and r.root.used)):
            self.notes.append(Note("stale-graph", self._site, "in-place change through `.data` of a tensor "
                                   + (f"with a graph ({type(root_t.grad_fn).__name__})" if root_t.grad_fn else
                                      "already used in the graph")))
        r.handle, r.version = new, t._version
        root = r.root
        if root is None:
            return
        with interpreting(self.rec):
            if _same_layout(root.tensor, t):
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
                "torch op the tracer saw (TorchScript, a C++ extension, another thread?): gradients through it are "
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
        custom = _custom_forward() if grad != "on" else None
        if custom and custom not in self.custom:
            self.custom.append(custom)
        self.sites.append(Site(op, file, line, source, grad, custom))
        return len(self.sites) - 1

    # ------------------------------------------------------------ the mode
    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        name = _name(func)
        if name in _PASS:
            return func(*args, **kwargs)
        state = torch.random.get_rng_state() if name.rstrip("_") in _RANDOM else None
        before = None
        in_place = name.endswith("_") or kwargs.get("inplace") is True  # F.dropout(x, inplace=True) too
        if in_place and args and isinstance(args[0], torch.Tensor) and id(args[0]) in self.recs:
            before = args[0].detach().clone()
        out = func(*args, **kwargs)  # the user's computation, exactly as without us
        self.rng_state, self.before = state, before
        try:
            self._record(func, name, args, kwargs, out)
        except Exception as exc:  # noqa: BLE001 - our failure: a note and opaque values, never the user's error
            self._internal(name, exc, out, args, kwargs)
        return out

    def _internal(self, name: str, exc: BaseException, out: Any, args: tuple, kwargs: dict) -> None:
        site = self._new_site(name)
        text = f"internal error while tracing {name} at {self.sites[site].where}: {type(exc).__name__}: {exc}"
        self.notes.append(Note("internal", site, text))
        try:  # the opaque values depend on the op's traced inputs: with none, they would fold to constants
            deps = [h for h in _flat_handles(self, args, kwargs) if isinstance(h, Traced)]
        except Exception:  # noqa: BLE001 - the failure may be in the bookkeeping itself
            deps = []
        for t in _tensors(out):
            if t.is_floating_point():
                with interpreting(self.rec):
                    self.rec.site = site
                    self._bind(t, P.opaque(*deps, value=t.detach(), reason=text))

    def _record(self, func: Any, name: str, args: tuple, kwargs: dict, out: Any) -> None:
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
        self.rec.dtype = _dtype_name(outs[0] if outs else target)
        self.out, self.name, self.func, self.args, self.kwargs = out, base, func, args, kwargs
        handles = self._lower(base, swap, args, kwargs, site)
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
        for t, h in zip(outs, results):
            if h is None or not t.is_floating_point():
                continue
            self._check_value(t, h, site)
            self._bind(t, h, cut="detach" if base == "detach" else None)

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
        with interpreting(self.rec):
            outs = tuple(P.opaque(*deps, value=t.detach(), reason=text) if t.is_floating_point() else None
                         for t in _tensors(self.out))
        return outs if isinstance(self.out, (tuple, list)) else outs[0]

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

        with torch.no_grad():
            return self.func(*sub(self.args), **sub(self.kwargs))

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
        mine, theirs = h.value, t.detach().to(F64)
        u = UNIT_ROUNDOFF.get(_dtype_name(t), 2.0**-53)
        err = self.rec.errs.get(h.var.id) if self.rec.errs is not None else None
        tol = 64 * u * mine.abs() + 1e-300 + (16 * err if err is not None else 0)
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
            r.root_handle = r.root.handle

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
        self._bind(t, h)

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


def _positions(t: torch.Tensor) -> torch.Tensor:
    """Storage positions of each element of `t` (in elements), without materialising the storage."""
    pos = torch.full((), t.storage_offset(), dtype=torch.long)
    for d, (n, s) in enumerate(zip(t.shape, t.stride())):
        shape = [1] * t.dim()
        shape[d] = n
        pos = pos + (torch.arange(n) * s).reshape(shape)
    return pos.expand(tuple(t.shape)) if t.dim() else pos


def _same_layout(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and a.stride() == b.stride() and a.storage_offset() == b.storage_offset()


def _index_map(root: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Flat positions in `root` of each element of `t` (both on one storage); -1 where outside."""
    pos = _positions(t)
    if root.is_contiguous():
        flat = pos - root.storage_offset()
        ok = (flat >= 0) & (flat < root.numel())
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


def _custom_forward() -> str | None:
    """The custom autograd.Function whose forward is running, if any (seen on the stack)."""
    frame = sys._getframe(2)
    while frame is not None:
        code = frame.f_code
        if code.co_name == "apply" and os.path.abspath(code.co_filename) == _FUNCTION_PY:
            cls = frame.f_locals.get("cls")
            return getattr(cls, "__name__", "Function")
        frame = frame.f_back  # type: ignore[assignment]
    return None

