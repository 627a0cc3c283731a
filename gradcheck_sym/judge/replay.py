"""A custom Function's backward run again in float64: rounding told apart from a wrong formula.

A gradient that comes through a custom Function's backward in float32 can differ from the exact one by
more than the rounding we measured for our own formulas (the user's formula cancels differently) and
still less than the worst-case bound: the comparison alone cannot tell a rounding error from a wrong
formula there.  As `check_function` does with the whole function, each call on its way is run again —
``cls.apply`` on the float64 values of the very inputs it got, then its backward through autograd from the
exact cotangent of its outputs — and what its backward returns is compared with the exact
vector-Jacobian product of its forward's equations (our sweep, never its backward).  In float64 a right
formula agrees to ~1e-13 of the call's largest gradient entry; a wrong one does not.

The replay runs the script's code once more, so it runs in a forked copy of the process (`isolated`):
what that code prints, counts, stores or draws stays there, and every file, log handler, socket or stream the
script had open is /dev/null in the copy.  What it cannot hide: a file the Function's own code opens and writes
(written twice), and the script's ``os.register_at_fork`` handlers (they run, as at any fork).  No copy is made
where the script handles SIGCHLD or has child processes of its own (a wait for any child could get ours), nor
without ``os.fork``.  A copy that takes longer than its limit (a forward waiting on a thread, which a fork does
not copy) is stopped, and nothing is decided.  The copy sends back what the backward returned; the exact products
are computed here while it runs (a conv + batch-norm Function at batch 256: a second of the copy's five), and the
verdict is given here.
"""

from __future__ import annotations

from typing import AbstractSet, Any

import torch

from ..ir.program import Var
from ..reference.interpret import Traced, sweep
from .isolated import NotRun, child_pids, run_isolated

__all__ = ["Replays", "AGREE", "DIFFER", "REPLAY_SECONDS", "child_pids", "call_results"]

F64 = torch.float64
AGREE = 1e-9  # relative to the call's largest exact entry: float64 rounding of a right formula, with room to spare
DIFFER = 1e-6  # beyond it, a wrong formula (between the two: not decided)
REPLAY_SECONDS = 60.0


class Replays:
    """The custom Function calls of one backward: which variables' gradients go through which calls (at once),
    and the calls' replays (the first time `of` needs them, all in one forked copy).

    `paths[v]` is the set of calls variable v's gradient goes through; it holds None where an equation of a
    custom Function's forward belongs to no call we kept (then nothing about v is decided by a replay).
    `via[v]` says through which of their arguments: (call, the argument's variable) pairs.  A call's backward
    can be wrong for one argument and right for another (a custom linear layer's weight gradient 2x off, its
    input gradient right): what reaches v through the right one is not made a mismatch by the wrong one.
    """

    def __init__(self, tracer: Any, program: Any, cts: dict[int, Any], seconds: float = 0.0,
                 before: AbstractSet[int] = frozenset(), seeds: AbstractSet[int] = frozenset()) -> None:
        self.tracer, self.program, self.cts, self.before = tracer, program, cts, before
        self.seeds = seeds  # the variables the backward started from
        # each replay's time limit: a float64 forward and backward, single-threaded, of what the script's own
        # backward (`seconds`) went through, with room to spare
        self.limit = min(REPLAY_SECONDS, 10.0 + 30.0 * seconds)
        calls = tracer.custom_calls.calls
        owner_of = {vid: k for k, c in calls.items() for vid in c.made}
        sites = program.sites
        arguments = {k: {h.var.id for h in [*c.args, *c.kwargs.values()] if isinstance(h, Traced)}
                     for k, c in calls.items()}
        self.eqns: dict[int, list[Any]] = {}  # call -> its equations, in order
        self.paths: dict[int, frozenset] = {}
        self.via: dict[int, frozenset] = {}
        empty: frozenset = frozenset()
        for e in reversed(program.eqns):
            label: frozenset = empty.union(*(self.paths.get(v.id, empty) for v in e.outputs))
            pairs: frozenset = empty.union(*(self.via.get(v.id, empty) for v in e.outputs))
            owner = None
            if 0 <= e.site < len(sites) and sites[e.site].custom is not None:
                owner = owner_of.get(e.outputs[0].id) if e.outputs else None
                label = label | {owner}
                if owner is not None:
                    self.eqns.setdefault(owner, []).append(e)
            if label:
                for a in e.inputs:
                    if isinstance(a, Var):
                        self.paths[a.id] = self.paths.get(a.id, empty) | label
                        # leaving the call through one of its arguments: the pair its backward answers for
                        mine = pairs | {(owner, a.id)} if owner is not None and a.id in arguments[owner] else pairs
                        if mine:
                            self.via[a.id] = self.via.get(a.id, empty) | mine
        for mine in self.eqns.values():
            mine.reverse()
        self.verdicts: dict[int, tuple[str, str]] | None = None
        self.per_argument: dict[int, dict[int, tuple[str, str]]] = {}  # call -> argument's variable -> verdict
        self.exact: dict[int, dict[int, Any]] = {}
        self.names = {k: getattr(calls[k].cls, "__name__", "Function") for k in self.eqns}

    def through(self, vid: int) -> bool:
        """Whether variable `vid`'s gradient goes through a custom Function's backward."""
        return bool(self.paths.get(vid))

    def functions(self, vid: int) -> tuple[str, ...]:
        """The names of the custom Functions variable `vid`'s gradient goes through (without replaying them)."""
        return tuple(sorted({self.names[k] for k in self.paths.get(vid, ()) if k is not None and k in self.names}))

    def of(self, vid: int) -> tuple[str, str, tuple[str, ...]]:
        """The verdict on the custom Functions variable `vid`'s gradient goes through: ("agree" | "differ" |
        "unknown", why, the Functions' names)."""
        label = self.paths.get(vid, frozenset())
        if not label:
            return "unknown", "it goes through no custom Function call we kept", ()
        if None in label:
            return "unknown", "it goes through a custom Function call the tracer could not tell apart", ()
        if self.verdicts is None:
            self.verdicts = self._run()
        pairs = self.via.get(vid, frozenset())
        found = []
        for k in sorted(label):
            whole = self.verdicts.get(k, ("unknown", "its call was not replayed"))
            per = self.per_argument.get(k, {})
            mine = [per[a] for call, a in pairs if call == k and a in per]
            found.extend(mine or [whole])  # (a variable made inside the call: the whole call answers for it)
        for wanted in ("differ", "unknown"):
            for verdict, detail in found:
                if verdict == wanted:
                    return verdict, detail, self.functions(vid)
        # (said to match only where the whole call did: a call wrong for another argument is a finding of its own)
        return "agree", "", tuple(n for n in self.functions(vid) if all(
            self.verdicts.get(k, ("",))[0] == "agree" for k in label if self.names.get(k) == n))

    def _run(self) -> dict[int, tuple[str, str]]:
        out: dict[int, tuple[str, str]] = {}
        given_up = self.tracer.custom_calls.given_up
        todo = []
        for k, mine in self.eqns.items():
            if not any(isinstance(self.cts.get(v), torch.Tensor) for v in _outputs(mine)):
                continue
            cls = self.tracer.custom_calls.calls[k].cls
            if cls in given_up:
                out[k] = ("unknown", given_up[cls])
            else:
                todo.append(k)
        if not todo:
            return out

        def exact() -> None:
            # the exact products of the calls' forwards, here, while the copy runs their code (single-threaded)
            readers: dict[int, list[int]] = {}
            for e in self.program.eqns:
                for a in e.inputs:
                    if isinstance(a, Var):
                        readers.setdefault(a.id, []).append(id(e))
            self.exact = {k: self._exact_of(k, readers) for k in todo}
            self.tracer.release()  # (what they freed goes back while the copy still runs: it needs as much)

        # All in one copy (a fork of a process of many GB costs seconds: its page tables, then a fault at the first
        # write to each page); if that one runs out of time, each call alone, so that only the one that hangs is
        # given up.
        self.tracer.release()  # (the fork's copy: what malloc holds freed is not copied, nor written to)
        try:
            got = run_isolated(lambda: {k: self._grads(k) for k in todo}, self.limit * len(todo), self.before,
                            meanwhile=exact)
            out.update({k: self._judge(k, got[k]) for k in todo})
            return out
        except NotRun as exc:
            classes = {self.tracer.custom_calls.calls[k].cls for k in todo}
            if not exc.timed_out or len(classes) == 1:
                if exc.timed_out:
                    given_up[classes.pop()] = f"{exc} (not tried again)"
                out.update({k: ("unknown", str(exc)) for k in todo})
                return out
        if not self.exact:
            exact()
        for k in todo:
            cls = self.tracer.custom_calls.calls[k].cls
            if cls in given_up:
                out[k] = ("unknown", given_up[cls])
                continue
            try:
                out[k] = self._judge(k, run_isolated(lambda: self._grads(k), self.limit, self.before))
            except NotRun as exc:
                out[k] = ("unknown", str(exc))
                if exc.timed_out:
                    given_up[cls] = f"{exc} (not tried again)"
        return out

    def _exact_of(self, k: int, readers: dict[int, list[int]]) -> dict[int, Any]:
        """The exact vector-Jacobian product of call `k`'s forward at its arguments.  Where nothing outside the call
        reads its arguments or what it made inside (its results aside), and no backward starts there, it is what the
        backward's sweep computed already: the same operations on the same cotangents, in the same order (at a conv
        + batch-norm tutorial's batch of 2,048, the sweep again took 10 s beside the copy).  Else the call's
        equations are swept alone."""
        call = self.tracer.custom_calls.calls[k]
        mine = self.eqns[k]
        args = {h.var.id for h in [*call.args, *call.kwargs.values()] if isinstance(h, Traced)}
        own = {id(e) for e in mine}
        inside = set(args) | ({v.id for e in mine for v in e.outputs} - set(_outputs(mine)))
        if args and not (inside & self.seeds) and all(isinstance(self.cts.get(a), torch.Tensor) for a in args) \
                and all(r in own for v in inside for r in readers.get(v, ())):
            return {a: self.cts[a] for a in args}
        return _exact(self.program, self.tracer.rec.values, self.cts, mine)

    def _grads(self, k: int) -> tuple[str, Any]:
        """(In the copy.) Call `k` run again in float64: ("grads", argument -> its backward's gradient), or
        ("unknown", why)."""
        name = self.names[k]
        try:
            return _replay_one(self.tracer, self.cts, self.tracer.custom_calls.calls[k], self.eqns[k], name)
        except Exception as exc:  # noqa: BLE001 - its code in float64 may fail: then nothing is decided
            return "unknown", f"running {name} again in float64 raised {type(exc).__name__}: {exc}"

    def _judge(self, k: int, got: tuple[str, Any]) -> tuple[str, str]:
        """(Here.) The verdict on call `k` from what its replay gave (plain float64 tensors: no code of the
        script's runs here)."""
        status, value = got
        if status != "grads":
            return status, value
        try:
            whole, self.per_argument[k] = _compare(self.tracer.custom_calls.calls[k], self.names[k], self.exact[k],
                                                   value)
            return whole
        except Exception as exc:  # noqa: BLE001 - ours: nothing is decided, and the reason is said
            return "unknown", f"comparing its replay failed in gradcheck-sym ({type(exc).__name__}: {exc})"


def call_results(tracer: Any, program: Any) -> set[int]:
    """The results (`_outputs`) of every custom Function call kept in `program`: the variables whose cotangents
    seed the calls' replays."""
    calls = tracer.custom_calls.calls
    if not calls:
        return set()
    owner_of = {vid: k for k, c in calls.items() for vid in c.made}
    sites = program.sites
    mine: dict[int, list[Any]] = {}
    for e in program.eqns:
        if e.outputs and 0 <= e.site < len(sites) and sites[e.site].custom is not None:
            k = owner_of.get(e.outputs[0].id)
            if k is not None:
                mine.setdefault(k, []).append(e)
    return {v for eqns in mine.values() for v in _outputs(eqns)}


def _outputs(mine: list[Any]) -> list[int]:
    """The call's variables no other equation of it reads: its results (what it returned, or dead ends)."""
    read = {a.id for e in mine for a in e.inputs if isinstance(a, Var)}
    return [v.id for e in mine for v in e.outputs if v.id not in read]


def _exact(program: Any, values: dict[int, Any], cts: dict[int, Any], mine: list[Any]) -> dict[int, Any]:
    """The exact vector-Jacobian product of a call's forward equations `mine` from the cotangents of its results."""
    seeds = {v: cts[v] for v in _outputs(mine) if isinstance(cts.get(v), torch.Tensor)}
    return sweep(mine, values, seeds, consts=program.consts).cts


def _replay_one(tracer: Any, cts: dict[int, Any], call: Any, mine: list[Any], name: str) -> tuple[str, Any]:
    values = tracer.rec.values
    given = [*call.args, *call.kwargs.values()]
    if call.pending or any(h is None for h in given):
        return "unknown", f"{name} got a tensor the tracer could not follow"
    arg_vars = {h.var.id for h in given if isinstance(h, Traced)}
    made = {v.id for e in mine for v in e.outputs}
    if {a.id for e in mine for a in e.inputs if isinstance(a, Var) and a.id not in made} - arg_vars:
        return "unknown", f"{name}'s forward used a tracked tensor it was not given as an argument"
    leaves: dict[int, torch.Tensor] = {}

    def arg(h: Any) -> Any:
        if isinstance(h, Traced):
            return leaves.setdefault(h.var.id, values[h.var.id].detach().to(F64).clone().requires_grad_(True))
        return h.clone() if isinstance(h, torch.Tensor) else h

    args = [arg(h) for h in call.args]
    kwargs = {key: arg(h) for key, h in call.kwargs.items()}
    with torch.enable_grad():
        got = call.cls.apply(*args, **kwargs)
    got = [got] if isinstance(got, torch.Tensor) else [g for g in got if isinstance(g, torch.Tensor)] \
        if isinstance(got, (tuple, list)) else []
    # each result of the replay is one of the call's results: the one of its shape whose values it has (our forward
    # and theirs agree to rounding in float64); two candidates with the same values cannot be told apart
    outs = _outputs(mine)
    pairs: list[tuple[torch.Tensor, int]] = []
    for g in got:
        if not g.is_floating_point() or not g.requires_grad:
            continue
        match = [v for v in outs if v in values and tuple(values[v].shape) == tuple(g.shape)
                 and _close(g.detach(), values[v])]
        if not match:
            continue  # a result no later op kept (no gradient can reach it; checked below for those that do)
        if len(match) != 1 or any(match[0] == v for _, v in pairs):
            return "unknown", (f"the results of {name} run again in float64 could not be matched one to one with "
                               "those it gave in the script")
        if isinstance(cts.get(match[0]), torch.Tensor):
            pairs.append((g, match[0]))
    if any(isinstance(cts.get(v), torch.Tensor) and v not in {m for _, m in pairs} for v in outs):
        return "unknown", f"a result of {name} that the gradient reaches was not among its replay's results"
    seeds = {v: cts[v] for _, v in pairs}
    inputs = list(leaves.items())
    with torch.enable_grad():
        grads = torch.autograd.grad([g for g, _ in pairs], [t for _, t in inputs],
                                    grad_outputs=[seeds[v].to(F64).expand(g.shape) for g, v in pairs],
                                    allow_unused=True)
    return "grads", {vid: (None if g is None else _plain(g), tuple(t.shape)) for (vid, t), g in zip(inputs, grads)}


def _plain(g: torch.Tensor) -> torch.Tensor:
    """(In the copy.) A gradient as a plain, dense float64 tensor of its own: what is pickled back to the script's
    process must run none of the script's code there (a subclass's would) and carry no more than its entries (a view
    of a workspace would carry the whole storage)."""
    if g.layout != torch.strided:
        g = g.to_dense()
    out = torch.empty(tuple(g.shape), dtype=F64)
    with torch.no_grad():
        out.copy_(g.real if g.is_complex() else g)
    return out


def _compare(call: Any, name: str, exact: dict[int, Any],
             grads: dict[int, Any]) -> tuple[tuple[str, str], dict[int, tuple[str, str]]]:
    """The verdict on a replayed call, its float64 backward's gradients against the exact ones: the whole call's
    (its worst argument's), and each argument's (by its variable)."""
    # one scale for the whole call (its largest exact entry): an argument whose exact gradient is 0 (a bias before
    # batch norm) gets rounding noise from both sides, which is nothing next to the others'
    pairs_eg = []
    for vid, (g, shape) in grads.items():
        e = exact.get(vid)
        e = torch.zeros(shape, dtype=F64) if e is None else e.to(F64).expand(shape)
        pairs_eg.append((vid, e, torch.zeros(shape, dtype=F64) if g is None else g))  # (g: float64, see _plain)
    scale = max((float(e.abs().max()) for _, e, _ in pairs_eg if e.numel()), default=0.0)
    at = f" (its call at line {call.line})" if call.line else ""

    def verdict(rel: float, where: str) -> tuple[str, str]:
        if rel <= AGREE:
            return "agree", ""
        if scale == 0:
            return "unknown", f"the exact gradient of {name}'s forward is 0 here: there is nothing to compare against"
        return "differ" if rel > DIFFER else "unknown", (
            f"{name}'s backward{at}, run again in float64 on the same inputs, differs from the exact gradient of its "
            f"forward for its {where} by {rel:.3g} of its largest entry")

    per: dict[int, tuple[str, str]] = {}
    worst, where = 0.0, ""
    for vid, e, g in pairs_eg:
        err = float((g - e).abs().max()) if e.numel() else 0.0
        rel = err / scale if scale > 0 else (0.0 if err == 0 else float("inf"))
        per[vid] = verdict(rel, f"argument {_position(call, vid)}")
        if rel > worst:
            worst, where = rel, f"argument {_position(call, vid)}"
    return verdict(worst, where), per


def _position(call: Any, vid: int) -> str:
    for i, h in enumerate(call.args):
        if isinstance(h, Traced) and h.var.id == vid:
            return str(i + 1)
    return next((k for k, h in call.kwargs.items() if isinstance(h, Traced) and h.var.id == vid), "?")


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    b = b.to(F64)
    scale = float(b.abs().max()) if b.numel() else 0.0
    return bool(((a - b).abs() <= 1e-6 * (scale + b.abs()) + 1e-300).all())
