"""The tracer's handles: what the op rules see for a tensor, and the cuts made through values.

A tensor the tracer knows has a handle (`Storage`); one it does not know becomes a constant, a
view of a known storage, a custom Function's output, or — with a graph no op we saw made, or
numpy data after a traced value left for numpy — ``opaque``.  Reading ``.data``, ``.item()``,
``.tolist()`` or detaching makes a ``stop`` equation, recorded as a `Cut` with its site.
`Handles` is the part of `Tracer` that does this; it uses the tracer's state and `_new_site`.
"""

from __future__ import annotations

from typing import Any

import torch

from ..autograd.attrs import grad_fn, own_leaf
from ..ir.program import Site
from ..ops import prims as P
from ..ops.core import interpreting
from ..ops.ew import IDENT
from ..reference.interpret import Traced
from ..reference.lazy import pending
from .tracer_calls import _walk
from .tracer_sites import Cut, Note, _user_frame, in_custom_forward
from .tracer_storage import Storage, _external

__all__ = ["Handles"]

F64 = torch.float64


class Handles(Storage):
    """Handles of tensors for the op rules, and cuts through values (a mixin of `Tracer`)."""

    # Set by `Tracer.__init__` (with `Storage`'s); `_new_site` is the tracer's too.
    items: dict[float, Any]
    leaks: list[tuple[Traced, int]]
    cuts: list[Cut]
    custom: list[str]
    complex_nodes: dict[int, Any]
    call_of: dict[int, int]
    before: torch.Tensor | None
    func: Any  # the op being recorded, with its arguments
    args: tuple
    kwargs: dict

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
        if isinstance(x, torch.Tensor):
            r = self.recs.get(id(x))
            if (r is None or r.tensor is not x) and not x.requires_grad and \
                    not (self.leaks and x.is_floating_point() and _external(x)) and self._root_of(x) is None:
                # a plain constant (what `_unknown` makes a float64 copy of): asked about for every argument of
                # every op, and the copy was made twice, here and again by the op's rule
                return False
        return isinstance(self.v(x), Traced)

    def _changed_unseen(self, t: torch.Tensor) -> bool:
        """`t` changed where no op of its own made the new value (``set_``, which torch dispatches to no mode; a leaf's
        ``.data =``): bind its new value as a value of its own if that can be done (True), else keep the handle (the
        value checks then say where it differs)."""
        return False

    def _handle(self, t: torch.Tensor) -> Any:
        r = self.recs.get(id(t))
        if r is not None and r.tensor is t:
            if r.version != t._version and r.root is None and self._changed_unseen(t):
                r = self.recs[id(t)]  # (its new value, bound by `_changed_unseen`)
            elif r.cut == "detach" and own_leaf(t) and not in_custom_forward() and self._changed_unseen(t):
                # `v = a.detach().requires_grad_()` (requires_grad_ is not an op): a leaf of its own from there on,
                # not the cut of `a` it was made as (its gradient was said to be hidden by that detach).  Not inside
                # a custom Function's forward: its own leaves there are its business
                r = self.recs[id(t)]
            if r.root is not None and r.root.handle is not r.root_handle:
                if own_leaf(t) and r.root.tensor is not t and not in_custom_forward() and self._changed_unseen(t):
                    # the storage it shares was written through another tensor (`a.add_(1)` after the line above):
                    # a new value of the leaf, as an update under no_grad makes one, not a function of `a`'s
                    r = self.recs[id(t)]
                else:
                    self._rederive(r)
            r.used = True
            return r.handle
        alias = self._root_of(t)
        if alias is not None and not t.requires_grad and alias.tensor is not None and alias.tensor.requires_grad:
            # shares storage with a tensor autograd follows, but autograd does not follow this one: not a view of it
            # but its base or a sibling (`xr = x.detach().requires_grad_()`, then x used): a constant of its value
            return self._unknown(t)
        if alias is not None and own_leaf(t) and alias.tensor is not None and alias.tensor is not t and \
                (own_leaf(alias.tensor) or grad_fn(alias.tensor) is not None):
            # two leaves autograd follows on one storage (`xb = x.detach().requires_grad_()` in a loop): each its
            # own leaf, never a view of the other (the later one's gradient was the earlier one's: a false mismatch);
            # nor is a leaf made on a computed tensor's storage (`W1 = nn.Parameter(torch.randn(..) * 0.01)`, the
            # product still held) a view of it: autograd ends at the leaf (the product was said to miss a gradient)
            return self._unknown(t)
        if alias is not None:  # shares storage with a known tensor: a view we did not see made
            with interpreting(self.rec):
                handle = self._view_of(alias, t)
                custom = _custom_node(t)
                if custom is not None and isinstance(handle, Traced):
                    # a custom Function that returned its input as it is: one equation, its call
                    self.rec.site = self._new_site(f"{custom}.apply")
                    self.sites[self.rec.site] = Site(f"{custom}.apply", *_user_frame(), "no_grad", custom)
                    handle = P.ew(IDENT, handle)
                    self.call_of[len(self.rec.eqns) - 1] = id(grad_fn(t))
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
        if t.requires_grad and grad_fn(t) is not None:
            custom = _custom_node(t)
            forward_cls = getattr(grad_fn(t), "_forward_cls", None)
            if custom is not None and getattr(forward_cls, "__module__", "").startswith("torch._functorch"):
                # torch.vmap's own wrapper of a custom Function: its forward ran inside the transform, untraced
                # (not a constant of its inputs: taken as one, its exact gradient was 0, a false mismatch)
                return self._opaque_tensor(t, f"the output of {custom}.apply was made by torch.func's transform of a "
                                              "custom Function, whose ops are not traced")
            if custom is not None:
                return self._constant_custom(t, custom)
            return self._opaque_tensor(t)
        return self.const(t)

    def _constant_custom(self, t: torch.Tensor, custom: str) -> Any:
        """The output of a custom Function whose forward computed it from no traced value (a step, a sign of a
        comparison): a constant of its inputs — one equation of its call, so a declaration can apply to it."""
        deps = []
        for fn, _ in grad_fn(t).next_functions:
            h = self._handle_of_node(fn)
            if isinstance(h, Traced):
                deps.append(h)
            elif fn is not None and id(fn) in self.complex_nodes:
                # a complex input computed from traced values (a spectrum: torch.fft's results are complex, which
                # the reference does not trace): not a constant, whatever the forward computed
                return self._opaque_tensor(t, f"the output of {custom}.apply comes from a complex value computed "
                                              f"from traced ones (grad_fn {type(fn).__name__}; complex values are not "
                                              "traced)")
        with interpreting(self.rec):
            site = self._new_site(f"{custom}.apply")
            self.sites[site] = Site(f"{custom}.apply", *_user_frame(), "no_grad", custom)
            self.rec.site = site
            handle = P.ew(_constant_of(len(deps) + 1), *deps, t.detach().to(F64)) if deps else self.const(t)
            if deps:
                self.call_of[len(self.rec.eqns) - 1] = id(grad_fn(t))
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
            if t is not None and grad_fn(t) is fn:
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

    def _opaque_tensor(self, t: torch.Tensor, why: str | None = None) -> Any:
        """A tensor with a graph that no op we saw made (or, `why`, made from one): what it depends on, from its
        grad_fn."""
        deps = [h for h in _graph_leaves(t, self) if isinstance(h, Traced)]
        site = self._new_site("(unseen computation)")
        if why is not None:
            text = f"{why}, used at {self.sites[site].where}: gradients through it are not verified"
        elif getattr(self, "functorch_seen", False):
            text = (f"a tensor with grad_fn {type(grad_fn(t)).__name__} appeared at {self.sites[site].where} without "
                    "a torch op the tracer saw: the script ran torch.func's transforms (vmap, grad, jacrev), whose "
                    "ops are not traced (else torch.compile, TorchScript, a C++ extension, another thread): gradients "
                    "through it are not verified")
        else:
            text = (f"a tensor with grad_fn {type(grad_fn(t)).__name__} appeared at {self.sites[site].where} without "
                    "a torch op the tracer saw (torch.compile, TorchScript, a C++ extension, another thread?): "
                    "gradients through it are not verified")
        self.notes.append(Note("opaque", site, text))
        with interpreting(self.rec):
            self.rec.site = site
            handle = P.opaque(*deps, value=t.detach(), reason=text)
        self._bind(t, handle)
        return handle

    def cut(self, kind: str, h: Any) -> Any:
        """For rules: `h` cut (detach)."""
        return self._cut(kind, h, self._site, -self._site - 1)

    def _cut(self, kind: str, h: Any, site: int, region: int, line: int = 0) -> Any:
        if not isinstance(h, Traced):
            return h
        out = P.stop(h, kind, region)
        if isinstance(out, Traced):
            self.cuts.append(Cut(kind, site, region, (out.var.id,), line))
        return out

    # ------------------------------------------------------------ cuts through values
    def _data_get(self, t: torch.Tensor, out: torch.Tensor) -> None:
        if not self.is_traced(t) or not t.is_floating_point():
            return
        site = self._new_site(".data")
        with interpreting(self.rec):
            self.rec.site = site
            h = self._lazy_cut(".data", self._handle(t), site)  # (most `.data` reads are a statistic's or an update's)
        r = self._bind(out, h, cut=".data")
        if r.root is None:  # .data shares t's storage
            r.root = self.recs[id(t)].root or self.recs[id(t)]
            r.root_handle, r.root_tensor = r.root.handle, r.root.tensor

    def _data_set(self, t: torch.Tensor, value: torch.Tensor) -> None:
        if not (self.is_traced(t) or self.is_traced(value)):
            return
        site = self._new_site(".data =")
        r = self.recs.get(id(t))
        old = r.handle if r is not None and r.tensor is t and r.used else None  # (its value, if an op read it)
        if grad_fn(t) is not None and self.sites[site].custom is None:
            self.notes.append(Note("stale-graph", site, f"`.data` assignment to a tensor with a graph "
                                                        f"({type(grad_fn(t)).__name__})"))
        with interpreting(self.rec):
            self.rec.site = site
            h = self._cut(".data", self._handle(value), site, -site - 1)
        # `t` now has `value`'s storage: a new record (its old one stays the root of the old storage, with
        # the old value, for the tensors that still alias it).
        self.recs.pop(id(t), None)
        self._bind(t, h, cut=".data")
        if own_leaf(t):  # `p.data = v` (vector_to_parameters): p stays a leaf autograd follows, with a new value
            if isinstance(old, Traced) and self.sites[site].custom is None:
                # a graph already built on the old value differentiates the new one (said if a backward reaches it)
                self._stale(Note("stale-graph", site, "`.data` assignment to a leaf already used in the graph"), old, t)
            self._changed_unseen(t)

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
            if name == "item" and not custom and pending(h) and isinstance(out, float):
                return self._lazy_item(h, out, site)  # (a deferred value's float: deferred too)
            flat = P.reshape(h, (t.numel(),))
            values = [out] if name == "item" else list(torch.as_tensor(out, dtype=F64).reshape(-1).tolist())
            for i, value in enumerate(values):
                if not isinstance(value, float):
                    continue
                elem = P.take(flat, torch.tensor(i))
                self.items[value] = elem if custom else self._cut(f".{name}()", elem, site, -site - 1)


def _any_traced(tr: Handles, args: tuple, kwargs: dict) -> bool:
    for x in _walk((args, kwargs)):
        if isinstance(x, torch.Tensor) and x.is_floating_point() and tr.is_traced(x):
            return True
        if isinstance(x, float) and x in tr.items:
            return True
    return False


def _flat_handles(tr: Handles, args: tuple, kwargs: dict) -> list[Any]:
    return [tr.v(x) for x in _walk((args, kwargs)) if isinstance(x, torch.Tensor) and x.is_floating_point()]


def _graph_leaves(t: torch.Tensor, tr: Handles) -> list[Any]:
    """Handles of the known tensors an autograd graph reaches (its leaves), read from grad_fn."""
    out, seen, stack = [], set(), [grad_fn(t)]
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


def _constant_of(n: int) -> Any:
    """The function of n arguments whose value is the last one: a constant of the others (derivative 0)."""
    from ..ops.ew import P as X, ew_fn

    return ew_fn("constant", X[n - 1], n)


def _custom_node(t: torch.Tensor) -> str | None:
    """The custom Function whose backward node made `t`, if one did."""
    fn = grad_fn(t)
    if isinstance(fn, torch.autograd.function.BackwardCFunction):
        name = type(fn).__name__
        return name[: -len("Backward")] if name.endswith("Backward") else name
    return None
