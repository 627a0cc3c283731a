"""The script tracer's memory: what it records is let go when no live tensor needs it, and recording stops
before it would not fit.

`ScriptMemory` is the part of `ScriptTracer` that prunes the program after each backward (and every
`MEMORY_STEP` bytes recorded) to what live tensors still need, forgets the floats that left by ``.item()``
after two backwards, and stops recording — letting go of everything it held — when the float64 copies and
their sweep would not fit in the memory available (`allocator.memory_available`): the script must never run
out of memory because of us.
"""

from __future__ import annotations

from typing import Any

import torch

from ..ir.program import Const, Eqn, Program, Var
from ..ops.core import PRIMS, vjp_reads
from ..reference.interpret import COMPACT_FROM, DEFINED_CUTS, UNIT_ROUNDOFF, Traced, own_bytes
from ..reference.lazy import kept_vars, pending
from .allocator import memory_available, release_held, release_if_short

__all__ = ["ScriptMemory", "MEMORY_STEP", "SWEEP_MEMORY", "MEMORY_RESERVE"]

# Memory (see ScriptTracer._check_memory): looked at every MEMORY_STEP bytes of float64 values recorded since the
# last backward.  A conv + batch-norm tutorial's backward at batch 2,048 (5.0 GB recorded: the float64 copies
# and their rounding bounds, those no sweep reads let go) peaked at 1.6x that on top, with what malloc holds freed
# given back as it went (`allocator.relieve`), as at batch 1,024; the forked replay of its custom Function, after the
# sweeps, took about as much.  2x, with the reserve.  (4x, before what malloc held was given back under pressure,
# stopped batch 2,048; 3x before that let a run be killed by the system at 24.4 GB.)
MEMORY_STEP = 256 * 2**20
SWEEP_MEMORY = 2
MEMORY_RESERVE = 2**30


class ScriptMemory:
    """Pruning and the memory guard (a mixin of `ScriptTracer`, whose state it uses)."""

    # Set by the tracers' __init__.
    rec: Any
    recs: dict
    roots: dict
    items: dict
    leaks: list  # (handle, site) of values that left for numpy (`tracer_handles`)
    inputs: list
    input_names: list
    sites: list
    cuts: list
    stopped: str
    stop_kind: str
    all_infos: Any
    custom_calls: Any
    _item_seen: dict
    _prunes: int
    _mem_base: int
    _mem_next: int
    _stale_pending: list

    # ------------------------------------------------------------ memory
    def _memory_looked(self) -> None:
        """Recorded from here on is what the next look counts (at the start, and at each backward)."""
        self._mem_base, self._mem_next = self.rec.nbytes, MEMORY_STEP

    def _check_memory(self, where: str, backward: bool = False) -> bool:
        """Stop recording, and let go of what was recorded, when the values recorded since the last backward (and,
        at a backward, the leaves' cotangents and bounds) and the sweep they call for would not fit in the memory
        available: the script must not run out of memory because of us.  Looked at every `MEMORY_STEP` bytes
        recorded (after letting go of what died) and before each backward (after its prune).  True if it stopped.
        """
        if self.stopped:
            return False
        grown = max(0, self.rec.nbytes - self._mem_base)
        self._mem_next = grown + MEMORY_STEP
        leaves = 0
        if backward:
            values = self.rec.values
            leaves = sum(own_bytes(values.get(v.id)) for v in self.inputs)
        need = SWEEP_MEMORY * grown + 2 * leaves
        if need < SWEEP_MEMORY * MEMORY_STEP:
            return False  # (small: not worth a look)
        try:
            # the system's own count first (what malloc holds freed comes on top); where that is short, what malloc
            # holds (fragmented) is given back, and the system's count is the whole truth
            available = memory_available(count_held=False)
            if available is None or available < need + MEMORY_RESERVE:
                available = memory_available(count_held=not release_held())
        except Exception:  # noqa: BLE001 - ours, never the script's: no guard this time
            return False
        need += MEMORY_RESERVE
        if available is None or available >= need:
            return False
        if self.items:
            # first let go of the floats that left by .item() (each keeps its whole computation alive: a validation
            # loop printing its losses); one coming back later is then a plain number
            self.items.clear()
            self._item_seen.clear()
            self.prune(forget_items=False)
            self._mem_base = min(self._mem_base, self.rec.nbytes)
            return self._check_memory(where, backward)
        self.stopped = (f"gradcheck-sym stopped recording at {where}: its float64 copies of this iteration's tensors "
                        f"({grown / 2**30:.1f} GB) and their reverse sweep would need about {need / 2**30:.1f} GB, "
                        f"and {available / 2**30:.1f} GB of memory is available; the script ran on without it, and "
                        "later backwards are not verified (check a smaller batch)")
        self.stop_kind = "not-verified-memory"
        for r in [*self.recs.values(), *self.roots.values()]:  # what was recorded is let go (handles hold values)
            r.handle, r.root_handle = None, None
        self.rec.eqns.clear()
        self.rec.values.clear()
        self.rec.user.clear()
        self.rec.consts.clear()
        self.inputs, self.input_names = [], []
        self.rec.errs = {} if self.rec.errs is not None else None
        self.rec.bounded, self.rec.nbytes = 0, 0
        self.items.clear()
        self._item_seen.clear()
        self.custom_calls.calls.clear()
        return True

    def release(self) -> None:
        """Between the phases of a large backward (its sweeps, the bounds' sweep), what malloc holds freed goes back
        to the system where it is short of memory (`allocator.release_if_short`)."""
        if self.rec.nbytes >= MEMORY_STEP:
            release_if_short()

    def _recorded(self, site: int) -> None:
        if self.rec.nbytes - self._mem_base > self._mem_next:
            # let go of what died since the last backward first (a validation loop with grad on, and no backward,
            # records as it goes); only here, once every result of the op is bound (a prune between two outputs
            # of `split` dropped the second's equation)
            self.prune(forget_items=False)
            self.drop_unread()
            self._mem_base = min(self._mem_base, self.rec.nbytes)
            self._check_memory(self.sites[site].where)

    def _held(self) -> set[int]:
        """The variables of what the script still holds (a live tensor and its base), of the floats that left by
        .item() and the values that left for numpy (what comes back from there is made of them), and of the custom
        Functions' arguments (their replays read them)."""
        held: set[int] = set()
        for r in list(self.recs.values()):
            if r.tensor is None:
                continue  # (dead: its record goes at the next prune)
            for h in (r.handle, r.root.handle if r.root is not None else None):
                held.update(kept_vars(h))
        for h in self.items.values():
            held.update(kept_vars(h))
        held.update(h.var.id for h, _ in self.leaks if isinstance(h, Traced))
        for c in self.custom_calls.calls.values():
            held.update(h.var.id for h in [*c.args, *c.kwargs.values()] if isinstance(h, Traced))
        return held

    def drop_unread(self) -> None:
        """Let go of the values no sweep will read: those of large tensors the script no longer holds, whose
        every reader's vjp takes only their shape (a convolution's result, that a batch norm's ``y - mean`` and
        ``y.sum()`` read; the square whose sum is a variance).  Each becomes a placeholder of its shape and dtype
        (a ``meta`` tensor: any use of its numbers raises, never a wrong number).

        Their equations stay, the forward's rounding bounds are brought up to date first (their rules read the
        values), and what a custom Function's replay reads — its arguments and results — stays.  At a conv +
        batch-norm tutorial's batch of 2,048: 1.8 GB of float64 copies, and their bounds."""
        if self.stopped or self.rec.nbytes < MEMORY_STEP or self.rec.errs is None:
            return
        errs = self.rec.bounds()
        if errs is None:
            return
        eqns = self.rec.eqns
        keep = {v.id for v in self.inputs} | self._held()
        if self.custom_calls.calls:
            from ..judge.replay import call_results  # (its replay matches what it returns by their values)

            keep |= call_results(self, self.program_so_far())
        keep.update(v for c in self.cuts for v in c.vars)
        keep.update(v for p in self._stale_pending for v in p[1])
        for e in eqns:
            prim = PRIMS[e.prim]
            read = vjp_reads(prim, len(e.inputs), e.params)
            if read is None:
                keep.update(v.id for v in e.outputs)
                keep.update(a.id for a in e.inputs if isinstance(a, Var))
            else:
                keep.update(e.inputs[i].id for i in read if isinstance(e.inputs[i], Var))
        values = self.rec.values
        for e in eqns:
            for v in e.outputs:
                x = values.get(v.id)
                if v.id in keep or not isinstance(x, torch.Tensor) or x.is_meta or x.numel() < COMPACT_FROM:
                    continue
                values[v.id] = torch.empty(tuple(x.shape), dtype=x.dtype, device="meta")
                errs.pop(v.id, None)
        self.rec.nbytes = sum(own_bytes(v) for v in [*values.values(), *self.rec.consts, *self.rec.user.values()])

    # ------------------------------------------------------------ after a backward that freed its graph
    def spend(self, outs: list[Any], line: int) -> None:
        """Let go of what a ``.backward()`` that freed its graph (no retain_graph, create_graph or inputs) went
        through: torch freed what its nodes saved, so no later backward goes through them again (one that tries
        raises, or — through nodes that saved nothing — is not verified, as said below).

        The script still holds the loss, and often the output: the values of everything behind them were kept
        until they were rebound, after the next iteration's forward, so that two iterations' float64 copies were
        held at once (a conv + batch-norm tutorial at batch 512: 3.2 GB more).  Each tensor the script still holds
        there becomes a value of its own (a ``spent`` equation: its value and its error bound kept, a later
        backward reaching it not verified), the floats that left it by ``.item()`` plain numbers, and the
        rest goes at the prune."""
        if self.stopped:
            return
        eqns = self.rec.eqns
        producer = {v.id: i for i, e in enumerate(eqns) for v in e.outputs}
        # (their records only: looking at a tensor subclass runs its own code, which may warn)
        held_by = [self.recs.get(id(t)) for t in outs]
        todo = [r.handle.var.id for r, t in zip(held_by, outs) if r is not None and r.tensor is t
                and isinstance(r.handle, Traced)]
        # torch's graph ends at a leaf and at what does not require grad (their values may have been made by recorded
        # equations: a parameter's initialisation) and at a cut
        ends = set()
        for r in list(self.recs.values()):
            t = r.tensor
            if t is not None and t.grad_fn is None and isinstance(r.handle, Traced) and not pending(r.handle):
                ends.add(r.handle.var.id)
        # (an op we cannot model may be one torch does not differentiate either — torch.histc, torch.tensor(a) — and
        # a number that is not floating, an index or a mask, is never part of its graph: not gone through; what is
        # left out stays, which costs memory only)
        region: set[int] = set()  # the equations the backward went through
        while todo:
            v = todo.pop()
            i = producer.get(v)
            if i is None or i in region or v in ends or eqns[i].prim in ("stop", "opaque"):
                continue
            region.add(i)
            todo.extend(a.id for a in eqns[i].inputs if isinstance(a, Var) and _floating(a.dtype))
        if not region:
            return
        spent = {v.id for i in region for v in eqns[i].outputs}
        # A deferred value read from the freed graph is recorded now, a cut of it as it would have been (a running
        # mean under no_grad, from each batch's mean): what it reads is then let go as the rest is, not kept for it
        for r in list(self.recs.values()):
            if r.tensor is not None and pending(r.handle) and \
                    any(_comes_from(v, spent, eqns, producer) for v in kept_vars(r.handle)):
                r.handle.force()
        # What the script holds there and torch differentiates (one that does not require grad — a label filled in
        # place — was never part of the freed graph: its computation stays, a later backward may go through it)
        held: set[int] = set()
        for r in list(self.recs.values()):
            root = r.root
            for t, h in ((r.tensor, r.handle), (root.tensor, root.handle) if root is not None else (None, None)):
                if t is not None and t.requires_grad and isinstance(h, Traced) and h.var.id in spent:
                    held.add(h.var.id)
        for k, h in list(self.items.items()):
            # (an item is the cut .item() made, after the element it took: what it comes from, behind them)
            if isinstance(h, Traced) and any(_comes_from(v, spent, eqns, producer) for v in kept_vars(h)):
                del self.items[k]
                self._item_seen.pop(k, None)
        errs = self.rec.errs if self.rec.errs is not None else {}
        reason = (f"it goes back through tensors whose computation was let go after the backward at line {line}, "
                  "which freed that graph (pass retain_graph=True there to have this one verified)")
        for i in sorted(region):
            e = eqns[i]
            if len(e.outputs) != 1 or e.outputs[0].id not in held:
                continue
            v = e.outputs[0]
            value = self.rec.values[v.id]
            bound = errs.get(v.id)
            if bound is None and isinstance(value, torch.Tensor) and value.is_floating_point():
                # (its history is gone: a generous bound, never too small, for what is computed from it)
                bound = UNIT_ROUNDOFF.get(v.dtype, 2.0**-53) ** 0.5 * value.abs()
            eqns[i] = Eqn("spent", (), e.outputs, {"value": value, "reason": reason, "bound": bound}, e.site)
        self._fix_behind_cuts(spent, region)
        self.prune(forget_items=False)
        self._mem_base = min(self._mem_base, self.rec.nbytes)  # (what the next forward records is counted whole)

    def _fix_behind_cuts(self, spent: set[int], region: set[int]) -> None:
        """What a cut alone reads, that no tensor holds, and whose history no compared gradient can reach becomes
        a constant (a ``fixed`` equation: its value and error bound kept, no inputs); the cut stays, and what it
        drops is still said.

        A hand-written batch norm updates its running mean under no_grad from the last one and each batch's
        mean; an EMA of the weights, or a target network's soft update, from the last one and the weights an
        optimizer has since updated.  Each update kept the history of the one before it: the program grew by
        every iteration, and every prune and sweep with it (a makemore MLP with six batch norms: 1,000 steps did
        not finish in ten minutes).  That history ends in the graph this backward freed (a later backward reaching it
        through the cut would find it let go: `spend`) and in values of leaves no tensor holds any more (an
        optimizer's step made new ones): a gradient reaching them is compared nowhere.  So does what only torch's own cuts read (spectral
        norm's power iteration, from the weight the script still holds): no sweep goes through those.  A cut of
        what the script still holds (a no_grad block reading a weight) keeps its history, whose gradient a later
        backward reports as dropped."""
        eqns = self.rec.eqns
        live = self._held()
        # "dead": no gradient reaching it is compared — the freed graph, leaves' old values, what only they make
        dead = set(spent) | {v.id for v in self.inputs if v.id not in live}
        producer: dict[int, int] = {}
        for i, e in enumerate(eqns):
            for v in e.outputs:
                producer[v.id] = i
            if i in region or e.prim == "opaque":
                continue
            if e.prim in ("fixed", "spent") or all(a.id in dead for a in e.inputs if isinstance(a, Var)):
                dead.update(v.id for v in e.outputs)
        # Only what cuts alone read, and no tensor holds, becomes a constant: a value with its gradient that a later
        # backward can go through (torch goes back through nodes that saved nothing, a freed graph's included) keeps
        # its history (found by review: `g = h * 3` after h's backward, `g.detach()`, then a backward through g).
        # A cut torch's own code made (spectral norm's power iteration, under its no_grad) is gone through by no
        # sweep (`DEFINED_CUTS`), so what only such cuts read can be a constant even where it is not dead.
        reads: dict[int, int] = {}
        cuts: dict[int, int] = {}
        defined: dict[int, int] = {}
        for e in eqns:
            for a in e.inputs:
                if isinstance(a, Var):
                    reads[a.id] = reads.get(a.id, 0) + 1
            if e.prim == "stop" and isinstance(e.inputs[0], Var):
                cuts[e.inputs[0].id] = cuts.get(e.inputs[0].id, 0) + 1
                if e.params.get("kind") in DEFINED_CUTS:
                    defined[e.inputs[0].id] = defined.get(e.inputs[0].id, 0) + 1
        errs: dict[int, Any] | None = None
        values = self.rec.values
        for e in eqns:
            if e.prim != "stop" or not isinstance(e.inputs[0], Var):
                continue
            u, v = e.inputs[0].id, e.outputs[0].id
            i = producer.get(u)
            if u in spent or u in live or i is None or len(eqns[i].outputs) != 1 or eqns[i].prim in ("fixed", "spent"):
                continue
            if cuts.get(u, 0) < reads[u] or (u not in dead and defined.get(u, 0) < reads[u]):
                continue
            value = values.get(u)
            if not isinstance(value, torch.Tensor) or value.is_meta:
                value = values.get(v)  # (a cut is the identity: its own value, if the one it reads was let go)
            if value is None or (isinstance(value, torch.Tensor) and value.is_meta):
                continue  # (numbers let go: it keeps its history)
            if errs is None:
                errs = self.rec.bounds() or {}
            bound = errs.get(u)
            if bound is None and isinstance(value, torch.Tensor) and value.is_floating_point():
                bound = UNIT_ROUNDOFF.get(e.inputs[0].dtype, 2.0**-53) ** 0.5 * value.abs()  # (generous: `spend`'s)
            eqns[i] = Eqn("fixed", (), eqns[i].outputs, {"value": value, "bound": bound}, eqns[i].site)

    # ------------------------------------------------------------ the program
    def program_so_far(self) -> Program:
        return Program(tuple(self.inputs), tuple(self.input_names), tuple(self.rec.eqns), (),
                       tuple(self.rec.consts), tuple(self.sites))

    def _forget_items(self) -> None:
        """Floats that left through .item()/.tolist() are recognised when they come back until the second
        backward after they left, then forgotten: a Python float has no lifetime to follow, and each one kept
        the whole computation behind it alive (a loss printed every 2,000 iterations grew a 30,000-iteration
        loop's program, and every sweep and prune with it)."""
        self._prunes += 1
        seen = self._item_seen
        for k, h in self.items.items():
            if k not in seen or seen[k][0] is not h:  # new, or the same number leaving again
                seen[k] = (h, self._prunes)
        for k in [k for k in self.items if seen[k][1] < self._prunes - 1]:
            del self.items[k]
            del seen[k]

    def prune(self, forget_items: bool = True) -> None:
        """Drop the equations no live tensor needs any more (and their values), and lighten dead tensors' rows
        (`forget_items`: and count this prune for the floats that left by .item(), as a backward's does)."""
        self.all_infos.retire()
        live: set[int] = set()
        for r in list(self.recs.values()):
            if r.tensor is not None:
                live.update(kept_vars(r.handle))
            if r.root is not None:
                live.update(kept_vars(r.root.handle))
        if forget_items:
            self._forget_items()
        for h in self.items.values():
            live.update(kept_vars(h))
        # a value that left for numpy: what comes back from there is made of it (`tracer_handles`, found by review)
        live.update(h.var.id for h, _ in self.leaks if isinstance(h, Traced))
        needed = set(live)
        keep = []
        bounded = 0  # kept equations whose bounds were computed (the first ones: order is kept)
        for i in range(len(self.rec.eqns) - 1, -1, -1):
            e = self.rec.eqns[i]
            if any(v.id in needed for v in e.outputs):
                keep.append(e)
                bounded += i < self.rec.bounded
                needed.update(v.id for v in e.outputs)
                for a in e.inputs:
                    if isinstance(a, Var):
                        needed.add(a.id)
        keep.reverse()
        # The constants the kept equations use, renumbered from 0 once the dropped ones are three times as many: a
        # loop makes new constants every iteration, and slots kept for dropped ones made every later prune and sweep
        # longer; until then a dropped one's slot is emptied (renumbering at every prune rebuilt every kept equation
        # that reads a constant, a twentieth of a batch-norm lecture's checked run)
        used = sorted({a.index for e in keep for a in e.inputs if isinstance(a, Const)})
        consts = self.rec.consts
        if 4 * len(used) < len(consts):
            remap = {old: new for new, old in enumerate(used)}
            # (built directly: dataclasses.replace took a tenth of a millisecond per backward of a small loop)
            keep = [e if all(isinstance(a, Var) for a in e.inputs) else Eqn(
                e.prim, tuple(a if isinstance(a, Var) else Const(remap[a.index], a.shape, a.dtype) for a in e.inputs),
                e.outputs, e.params, e.site) for e in keep]
            consts[:] = [consts[i] for i in used]
        else:
            wanted = set(used)
            for i in range(len(consts)):
                if i not in wanted:
                    consts[i] = None
        self.rec.eqns[:] = keep
        self.rec.bounded = bounded
        for vid in [v for v in self.rec.values if v not in needed]:
            del self.rec.values[vid]
        for vid in [v for v in self.rec.user if v not in needed]:
            del self.rec.user[vid]
        self._stale_pending = [p for p in self._stale_pending if any(v in needed for v in p[1])]
        self.custom_calls.prune(needed)
        if forget_items:  # (a backward's prune: the complex values made before it have been used)
            self.complex_nodes.clear()
        self.rec.nbytes = sum(own_bytes(v) for v in [*self.rec.values.values(), *self.rec.consts,
                                                      *self.rec.user.values()])
        if self.rec.errs is not None:
            for vid in [v for v in self.rec.errs if v not in needed]:
                del self.rec.errs[vid]
        alive_inputs = [(v, n) for v, n in zip(self.inputs, self.input_names) if v.id in needed]
        self.inputs = [v for v, _ in alive_inputs]
        self.input_names = [n for _, n in alive_inputs]
        self.cuts = [c for c in self.cuts if any(v in needed for v in c.vars)]


def _comes_from(vid: int, spent: set[int], eqns: list[Eqn], producer: dict[int, int]) -> bool:
    """Whether variable `vid` is computed from one of `spent` (or is one)."""
    seen: set[int] = set()
    todo = [vid]
    while todo:
        v = todo.pop()
        if v in spent:
            return True
        i = producer.get(v)
        if i is None or i in seen:
            continue
        seen.add(i)
        todo.extend(a.id for a in eqns[i].inputs if isinstance(a, Var))
    return False


def _floating(dtype: str) -> bool:
    """Whether a variable of this dtype can carry a gradient in torch."""
    return dtype.startswith(("float", "bfloat", "complex"))
