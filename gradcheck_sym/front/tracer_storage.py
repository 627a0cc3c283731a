"""The tracer's bookkeeping per tensor object, and storage shared between tensors.

Per tensor (`_Rec`): its current handle (a traced float64 value, or a constant), the version it
had then, and — for tensors sharing storage with another (views, ``.detach()``, ``.data``) —
that storage's root and the flat positions it covers, so in-place writes through a view change
the root and the root's other views, as in torch (functionalisation).  `Storage` is the part of
`Tracer` that keeps these records; it works on the attributes `Tracer.__init__` sets (``recs``,
``roots``, ``rec``, ``notes``, ``sites``, ``_site``).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import torch

from ..autograd.attrs import grad_fn, own_leaf
from ..ir.program import Site
from ..ops import prims as P
from ..ops.core import interpreting
from ..ops.ew import WHERE
from ..reference.interpret import Recorder
from .tracer_sites import Note

__all__ = ["Storage"]

F64 = torch.float64


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
    layout: tuple | None = None  # (shape, stride, offset) when it became its storage's root (kept as it changes)
    # `index` was computed for these: (the tensor's layout, its root's layout); an in-place transpose (`t_()`,
    # `squeeze_`) changes a layout, and positions computed for the old one are wrong
    index_for: tuple | None = None

    @property
    def tensor(self) -> torch.Tensor | None:
        return self.ref()


class Storage:
    """Binds tensors to handles and keeps a storage's root and its views in step (a mixin of `Tracer`)."""

    # Set by `Tracer.__init__`.
    rec: Recorder
    recs: dict[int, _Rec]
    roots: dict[tuple[int, int], _Rec]
    sites: list[Site]
    notes: list[Note]
    _site: int

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
            elif root is not r and not (own_leaf(t) and (own_leaf(root.tensor) or grad_fn(root.tensor) is not None)):
                # (two leaves: each its own; a leaf on a computed tensor's storage, `nn.Parameter(y)`, too: autograd
                # ends at it, and holding y from it kept y's whole graph)
                r.root, r.root_handle, r.root_tensor = root, root.handle, root.tensor
        return r

    def _an_alias(self, t: torch.Tensor) -> bool:
        """Whether `t` shares the storage of another traced tensor (a parameter's `.data`)."""
        r = self.recs.get(id(t))
        return r is not None and r.tensor is t and r.root is not None

    def _root_of(self, t: torch.Tensor) -> _Rec | None:
        key = _storage_key(t)
        root = self.roots.get(key) if key is not None else None
        if root is not None and root.tensor is None:  # a dead tensor's memory, reused by a new one
            del self.roots[key]
            return None
        return root

    def _index(self, r: _Rec) -> torch.Tensor:
        key = (_layout(r.tensor), r.root.layout)  # type: ignore[union-attr]
        if r.index is None or r.index_for != key:
            r.index, r.index_for = _index_map(r.root.layout, r.tensor), key  # type: ignore[union-attr]
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

    def _stale(self, note: Note, old: Any, root: torch.Tensor) -> None:
        """`root`'s value changed behind autograd's back; `old` is its handle before (a subclass may wait for a
        backward that reaches its value before the change before saying so)."""
        self.notes.append(note)

    def _written_behind(self, r: _Rec) -> None:
        """`r`'s tensor, an alias made by `.data` or `.detach()`, is written in place: where its root has a graph or
        was used in one, a stale graph may follow (`_stale` says so if a backward reaches the old value)."""
        root_t = r.root.tensor if r.root is not None else None
        if r.cut in (".data", "detach") and root_t is not None and self.sites[self._site].custom is None and (
                grad_fn(root_t) is not None or (root_t.requires_grad and r.root.used)):
            how = "`.data`" if r.cut == ".data" else "a `.detach()`ed alias"
            self._stale(Note("stale-graph", self._site, f"in-place change through {how} of a tensor "
                             + (f"with a graph ({type(grad_fn(root_t)).__name__})" if grad_fn(root_t) else
                                "already used in the graph")), r.root.handle, root_t)

    def _write(self, t: torch.Tensor, new: Any) -> None:
        """`t` was changed in place to `new` (a handle): change it, its storage's root and (lazily) views."""
        r = self.recs.get(id(t))
        if r is None or r.tensor is not t:
            r = self._bind(t, new)
        self._written_behind(r)
        r.handle, r.version = new, t._version
        root = r.root
        if root is None:
            if r.layout is not None:
                r.layout = _layout(t)  # (`d.t_()`: the root's new layout, which its views' positions now refer to)
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


def _external(t: torch.Tensor) -> bool:
    """Whether `t`'s memory belongs to someone else (numpy, DLPack): its storage cannot be resized."""
    try:
        return not t.untyped_storage().resizable()
    except (RuntimeError, NotImplementedError):
        return False
