"""Verify one backward of a script: the reference before it runs, the `.grad` increments after.

`plan` derives, before the script's backward runs, the exact cotangent of every tensor that can
receive a gradient (full math, and with the cuts as constants), from the program recorded so far;
it snapshots their ``.grad``.  `verify` compares, after the backward, each ``.grad`` *increment*
(after minus before) — or each value ``torch.autograd.grad`` returned — with the exact
contribution, through the same verdict ladder as `check_function` (`judge.elements`).  A hook on
the path explains a difference (``hook``); a stale `.data` write explains it (``stale-graph``).
What flows through something the tracer could not model is *not verified*, and so is a tensor
whose earlier gradient was not verified: its total is never vouched for.
"""

from __future__ import annotations

import time
import warnings
from typing import Any

import torch

from ..autograd.attrs import grad_fn_name, is_leaf
from ..ops.quick import all_finite, all_true, any_true
from ..reference.interpret import UNIT_ROUNDOFF, Traced, error_bounds, record_sweep, sweep
from ..reference.lazy import pending
from ..reference.lean_bounds import sweep_bounds
from .backward_plan import Plan, targets_of
from .backward_replay import ReplayDecisions
from .backward_values import (TypicalNoise, accumulation_slack, dense, exact_gradient, hooked_downstream,
                              largest_exact, measured_noise, older_versions, own_scale, same_grad, total_before,
                              within_last_sums)
from .backward_words import cuts_between, info_name, message, unseen, worst
from .elements import SMALL, WIDE, Verdicts, cheap_floats, classify
from .intended import declared, parse_intended
from .kept import kept
from .replay import Replays, child_pids

__all__ = ["BackwardVerifier", "Plan"]

F64 = torch.float64
# A loop line whose backwards nearly always need their rounding bound has its sweep written down with the bounds
# tracked as it goes (one sweep instead of two), while the float64 copies it recorded are below this; above, the
# written sweep held 3x their size at once (a conv + batch-norm tutorial at batch 256: 2.4 GB), and the bounds
# come from `sweep_bounds`, which holds only the compared cotangents'.
WRITTEN_BELOW = 256 * 2**20
FEW_SAMPLED = 16  # a float64 gradient with fewer entries has its measured noise from too few draws (`_classify`)
# From this many bytes of recorded values on, a backward's sweeps keep only the cotangents the judge reads.
KEPT_FROM = 256 * 2**20
# Where the user computed in these alone, a large backward's rounding bounds are computed in float32
# (`sweep_bounds(narrow=True)`).
_NARROW_DTYPES = frozenset({"float32", "float16", "bfloat16"})


def _float32(program: Any) -> bool:
    """Whether every floating value of `program` was computed in float32 or narrower."""
    return all(v.dtype in _NARROW_DTYPES or not v.dtype.startswith(("float", "complex"))
               for e in program.eqns for v in e.outputs)



class BackwardVerifier(ReplayDecisions):
    """Plans and verifies backwards for a `ScriptTracer` (see the module docstring)."""

    def __init__(self, replay: bool = True, intended: Any = None) -> None:
        self.replay = replay  # whether custom Functions may be run again in float64 (judge.replay)
        self.intended = parse_intended(intended)  # the deviations the user declared (judge.intended)
        self.children = child_pids() if replay else set()  # the process's children before the script: not its own
        # line -> how often its backwards needed a rounding bound lately (a moving average of 0s and 1s)
        self.bounded: dict[int, float] = {}
        self.replay_counts: dict[int, int] = {}  # line -> its backwards asked whether to replay (see _sampled)
        self.noise = TypicalNoise()  # a loop's measured noises, per line and gradient (`_classify`)
        self.started = time.monotonic()

    def plan(self, tr: Any, ev: Any, outs: list[torch.Tensor], grads: list[Any], inputs: list[torch.Tensor] | None,
             create: bool, only: Any = None) -> Plan | None:
        seeds: dict[int, Any] = {}
        for out, g in zip(outs, grads):
            if (type(out) is not torch.Tensor and not isinstance(out, torch.nn.Parameter)) or out.device.type != "cpu":
                ev.verified = False  # a subclass (even looking at it runs its code), or a GPU's tensor
                ev.reasons.append(unseen(out))
                return None
            h = tr.v(out)
            if not isinstance(h, Traced):
                ev.verified = False
                ev.reasons.append(unseen(out))
                return None
            if g is None:
                if out.numel() != 1:
                    return None  # torch raises: "grad can be implicitly created only for scalar outputs"
                g = torch.ones(tuple(out.shape), dtype=F64)
            elif isinstance(g, torch.Tensor):
                g = g.detach().to(F64).expand(tuple(out.shape))
            else:
                g = torch.full(tuple(out.shape), float(g), dtype=F64)
            seeds[h.var.id] = g if h.var.id not in seeds else seeds[h.var.id] + g
        prog = tr.program_so_far()
        targets = [] if inputs is not None else targets_of(tr, only)
        keep = reads = None
        if not create and tr.rec.nbytes >= KEPT_FROM:
            # a large backward: only the cotangents the judge reads are kept as the sweeps go (`judge.kept`)
            keep, reads = kept(tr, prog, inputs if inputs is not None else [t for _, t, _ in targets])
        if create:  # record the sweep into the script's own program: the gradients get handles
            env = {v.id: Traced(tr.rec.values[v.id], v) for v in prog.inputs}
            for e in prog.eqns:
                for v in e.outputs:
                    env[v.id] = Traced(tr.rec.values[v.id], v)
            res = sweep(prog, env, seeds, recorder=tr.rec)
            recorded = None
            cts = dict(res.cts)
        else:
            values = tr.rec.values
            if self.bounded.get(ev.line, 0.0) > 0.7 and tr.rec.nbytes < WRITTEN_BELOW:
                # this line's backwards (a loop's) nearly always need their rounding bound: the sweep is
                # written down at once, its bounds tracked as it records (else a plain sweep is cheaper)
                done = record_sweep(prog, values, seeds, errs=tr.rec.bounds())
                res = done[2]
                cts = {k: c.value if isinstance(c, Traced) else c for k, c in res.cts.items()}

                def recorded() -> Any:
                    return done
            else:
                # the rounding bounds are tracked by a second sweep only if a comparison needs them (`_classify`)
                res = sweep(prog, values, seeds, keep=keep)
                cts = dict(res.cts)
                recorded = None
        tr.torch_reached.update(res.torch_cuts)  # (said in the report: torch's own no_grad, reached)
        # A value whose computation was let go (`ScriptMemory.spend`), reached as autograd goes: where its gradients
        # would have gone from there is not known, and nothing of this backward is compared (`verify` says why; the
        # targets are still found, for a backward that raises).
        spent = sorted({why for n, why in res.blocked if prog.eqns[n].prim == "spent"})
        # the cotangents with the cuts as constants: the same as the plain ones unless a cut is reached
        cut_res = sweep(prog, tr.rec.values, seeds, cut=True, keep=keep) if res.cut_reached and (
            tr.cuts or spent) else None
        cut = (cut_res.cts if cut_res is not None else cts) if tr.cuts else None
        if spent and cut_res is not None:
            # one reached only through a cut is a constant in the full math too: torch freed what is behind it, so
            # the cut hides nothing it could still compute (a truncated BPTT's h.detach(), an actor-critic's advantage)
            spent = sorted({why for n, why in cut_res.blocked if prog.eqns[n].prim == "spent"})
        if self.intended and not create:
            # the cotangents as the declarations say autograd should give them: a declared cut a constant, a
            # declared Function its declared derivative (a GAN's fake.detach() in the discriminator's step)
            # (a declaration that cannot be applied leaves the exact reference: the difference stays a mismatch)
            prog_declared, cut_pred, _ = declared(prog, tr.call_of, tr.sites, self.intended)
            intended_cts = sweep(prog_declared, tr.rec.values, seeds, cut=cut_pred, keep=keep).cts
        else:
            intended_cts = None
        tr.release()  # (a large backward: what its sweeps freed goes back before the next phase)
        plan = Plan(seeds, recorded, cts, cut, res.tainted, res.blocked, inputs=inputs, create=create, why=res.why,
                    intended=intended_cts,
                    program=None if create else prog, targets=targets, reads=reads, spent=spent)
        for t in plan.inputs if plan.inputs is not None else [t for _, t, _ in plan.targets]:
            h = tr.recs.get(id(t))
            if h is not None and h.tensor is t and isinstance(h.handle, Traced):
                plan.target_vars[id(t)] = h.handle.var
        return plan

    # ------------------------------------------------------------ after the backward
    def verify(self, tr: Any, ev: Any, plan: Plan, result: Any) -> None:
        if plan.spent:
            ev.verified = False
            ev.reasons.extend(plan.spent)
            return
        try:
            self._verify(tr, ev, plan, result)
        finally:
            # the line's first backward sets the average (a loop of 6 steps that all need it starts at once)
            needed = float(plan.bounds is not None)
            before = self.bounded.get(ev.line)
            self.bounded[ev.line] = needed if before is None else 0.8 * before + 0.2 * needed

    def _verify(self, tr: Any, ev: Any, plan: Plan, result: Any) -> None:
        passed: list[Any] = []  # what passed, in case a replay later in this backward finds its Function wrong
        if plan.inputs is not None:
            scale = largest_exact(tr, plan, plan.inputs)
            for t, got in zip(plan.inputs, result):
                passed.append(self._one(tr, ev, plan, None, t, None, got, returned=True, scale=scale))
            self._replayed_wrong(tr, ev, plan, passed)
            return
        targets = set()
        scale = largest_exact(tr, plan, [t for _, t, _ in plan.targets])
        for info, t, before in plan.targets:
            targets.add(info.serial)
            # (a post-accumulate-grad hook's optimizer may have stepped on .grad and zeroed it: what it was given)
            after = info.accumulated[1] if info.accumulated and info.accumulated[0] == ev.index else t.grad
            passed.append(self._one(tr, ev, plan, info, t, before, after, returned=False, scale=scale))
        self._replayed_wrong(tr, ev, plan, passed)
        for info in list(tr.infos.values()):  # named non-leaf tensors: the gradient they would hold
            t = info.ref()
            if t is None or info.serial in targets or info.internal:
                continue
            r = tr.recs.get(id(t))
            if r is None or r.tensor is not t or not isinstance(r.handle, Traced):
                continue
            # (a value not recorded yet, made under no_grad, is in no program: no cotangent; not recorded for this)
            ct = None if pending(r.handle) else plan.cts.get(r.handle.var.id)
            if ct is None and not info.cut:
                continue
            if not t.requires_grad and is_leaf(t) and t.grad is not None:
                continue  # a frozen parameter's .grad, left from before: untouched here, its row shows what it holds
            ct = ct.value if isinstance(ct, Traced) else ct
            status = info.cut or ("not among the backward's inputs=" if is_leaf(t) and t.requires_grad else
                                  "grad is None: not a leaf" if t.requires_grad else "no grad (does not require grad)")
            info.checks.append((ev.index, None, ct, status))

    def _one(self, tr: Any, ev: Any, plan: Plan, info: Any, t: torch.Tensor, before: Any, after: Any,
             returned: bool, scale: float | None = None) -> Any:
        exact, var = exact_gradient(tr, plan, t)
        exact_t = exact.value if isinstance(exact, Traced) else exact
        got = None if after is None else dense(after.detach().to(F64))
        if id(t) in getattr(tr, "pending_cuts", ()) and not same_grad(before, got):
            tr.grad_used(t)  # a backward added to a .grad a cut left short: that cut's finding stands
        base = before if before is not None else None
        incr = got if base is None or got is None else got - base
        # .grad entries already NaN or infinite before this backward and the same after it: what autograd added
        # there cannot be seen (NaN + anything is NaN)
        stuck = None
        if base is not None and got is not None and got.shape == base.shape and not all_finite(base):
            stuck = ~torch.isfinite(base) & ((got == base) | (torch.isnan(got) & torch.isnan(base)))
            stuck = stuck if any_true(stuck) else None
        if exact_t is None and (incr is None or (stuck is not None and all_true(stuck | (incr == 0)))):
            return  # no gradient on either side (a NaN left in .grad by an earlier backward is not this one's)
        if exact_t is None and not returned and info is not None and info.checks and all_true(incr == 0) and not (
                var is not None and var.id in plan.tainted):
            # nothing on either side again, after an earlier backward that reached it: its row keeps that one (a
            # GRU's parameters, while an LSTM trained after them, showed .grad 0 and twice their checks).  (Where
            # the tracer lost the way, below, it is not verified; where nothing ever reached it, 0 is compared.)
            return
        if info is None:
            info = tr._info(t)
        shape = tuple(t.shape)
        r = torch.zeros(shape, dtype=F64) if exact_t is None else exact_t.to(F64).expand(shape)
        if not r.is_contiguous() and r.stride() and min(r.stride()) > 0:
            r = r.contiguous()  # a transpose's view (a conv weight's): every pass over it below is 10x slower
        a = torch.zeros(shape, dtype=F64) if incr is None else incr
        if var is not None and var.id in plan.tainted:
            reasons = sorted(plan.why.get(var.id, ())) or sorted({reason for _, reason in plan.blocked}) or [
                "a value the tracer could not follow"]
            return self._not_verified(ev, info, got, t, returned, reasons)
        if stuck is not None:
            if bool((stuck & (r != 0)).any()):
                return self._not_verified(ev, info, got, t, returned, [
                    f"{info_name(tr, t)}.grad was already NaN or infinite before this backward: what it added there "
                    "cannot be seen"])
            a = torch.where(stuck, torch.zeros((), dtype=F64), a)  # nothing was to be added there, nothing seen
        ev.checked += 1
        u = UNIT_ROUNDOFF.get(str(t.dtype).replace("torch.", ""), 2.0**-53)
        tiny = torch.finfo(t.dtype).tiny if t.is_floating_point() else 0.0
        cut = None
        if plan.cut is not None:
            c = plan.cut.get(var.id) if var is not None else None
            c = c.value if isinstance(c, Traced) else c  # (a recorded sweep's, with create_graph=True)
            for older in older_versions(tr, plan, t, var, plan.cut) if not isinstance(exact, Traced) else ():
                c = older if c is None else c + older  # (as `exact_gradient` sums them)
            cut = torch.zeros(shape, dtype=F64) if c is None else c.to(F64).expand(shape)
        if a.numel() <= SMALL and cheap_floats(a, r, u):
            # every entry passes the ladder's cheap test: decided before the ladder's set-up (its bound, scale and
            # declared values: a training loop's 0-d parameters paid some 30 kernel launches per gradient for it)
            verdicts, used = Verdicts({}, None, a.numel()), []
        elif a.numel() <= SMALL and (done := within_last_sums(tr, plan, t, var, exact, a, r, base, cut, u, tiny,
                                                              scale, lambda: self._foreign(tr, plan, var))) is not None:
            verdicts, used = done, []
        else:
            verdicts, used = self._classify(tr, plan, t, var, a, r, base, cut, u, tiny, shape, scale, ev.line)
        if verdicts.ok and (verdicts.unmeasured or (used and self._sampled(ev, plan))) and self._foreign(tr, plan, var):
            # left undecided, or passed, under a noise measured on our formulas, not on the custom backward's: its
            # formula is checked in float64 (a backward 1e-4 off hid in that noise).  Where it passed, on a sample
            # of a line's backwards: each replay forks the process, seconds at the size of a model.  A formula found
            # wrong makes this gradient, and every other one through that call, a mismatch (`_replayed_wrong`).
            verdict, detail = self._settle(tr, ev, plan, var)
            if verdict not in ("agree", "differ") and verdicts.unmeasured:
                return self._undecided(tr, ev, info, got, t, returned, verdicts.unmeasured, (
                    f" in {str(t.dtype).replace('torch.', '')} but less than its worst-case rounding bound; the "
                    "gradient comes through a custom Function's backward, whose own formula rounds differently (under "
                    f"cancellation, 100x ours), and running it again in float64 did not settle it ({detail}); check "
                    "that part in float64"))
        if verdicts.ok and verdicts.unmeasured and not self._foreign(tr, plan, var):
            # (a float64 gradient of a few entries, beyond its measured noise but within its worst case: `_classify`)
            return self._undecided(tr, ev, info, got, t, returned, verdicts.unmeasured, (
                f" (a float32 recomputation, scaled to float64, of only {a.numel()} "
                f"{'entry' if a.numel() == 1 else 'entries'}) but less than its worst-case rounding bound: one such "
                "sample says too little there; check that part in higher precision (mpmath) or at other points"))
        if verdicts.loose and verdicts.ok:
            # compared, but under a tolerance that says little: this gradient is not vouched for
            ev.checked -= 1
            return self._not_verified(ev, info, got, t, returned, [
                f"the rounding bound in {str(t.dtype).replace('torch.', '')} exceeds the largest entry of the "
                f"gradient at {verdicts.loose} entries of {info_name(tr, t)} (a long chain of ill-conditioned "
                "operations): a comparison says nothing there; check that part in float64"])
        known_before = None if returned else total_before(info, before, u)
        status = "ok"
        if not verdicts.ok:
            kinds = list(verdicts.masks)
            status = worst(kinds)
            if status == "mismatch":
                if any(n.kind == "stale-graph" for n in tr.notes):
                    status = "stale-graph"
                elif hooked_downstream(tr, var, ev.index) or self._module_hooked(tr, plan, var, ev.index):
                    status = "hook"
            elif status == "untracked" and got is None and is_leaf(t) and tr.optimized(t) is False and \
                    self._trained_by_optimizers(tr, plan):
                # no gradient reached it at all, no optimizer of the script's updates it, and every parameter that
                # did get a gradient is an optimizer's: a frozen network (a distillation's teacher, a target
                # network) used under no_grad, as meant.  (Where the script trains some parameters by hand, one in
                # no optimizer may be meant to learn: an encoder left under no_grad by mistake stays untracked.)
                status = "frozen"
            if status in ("mismatch", "untracked", "nonfinite", "stale-graph"):
                ev.errors += 1
            text = message(status, ev, a, r, cut, tr, verdicts.masks.get(status), absent=got is None,
                           cuts=cuts_between(tr, plan, var) if status in ("untracked", "frozen") else None)
            if status == "mismatch" and tr.call_of and self._foreign(tr, plan, var):
                # the backward that computed it is the script's own: say which (the .backward() line is only where
                # the sweep started)
                names = plan.replays.functions(var.id)
                text += f"; it comes through {', '.join(n + '.backward' for n in names)}" if names else ""
            tr.events.append((status, ev.line, text, f"#{info.serial}", ev.call))
        if returned:
            ev.returned.append((f"#{info.serial}", got, r))
            if plan.create and isinstance(exact, Traced) and isinstance(after, torch.Tensor):
                tr._bind(after, exact)  # the gradient has a graph: later ops on it are traced
                made = getattr(tr, "returned_gradient", None)
                if made is not None:
                    made(after, info)  # (its row, and its place in the picture: computed from `t`)
        # The exact .grad now (what autograd should hold), when the exact value before is known.  (A gradient
        # torch.autograd.grad returned is not added to .grad: a PINN's du/dx and d2u/dx2 each step, beside its
        # loss.backward() filling x.grad; taken for .grad's total, they made that total unknown.)
        if not returned:
            info.exact_total = None if known_before is False else (r if known_before is None else known_before + r)
        self._status(info, ev, got, r if returned else info.exact_total, status, t, returned)
        if status == "untracked" and not returned and is_leaf(t) and hasattr(tr, "cut_pending") and not (
                info.hooks or getattr(t, "_backward_hooks", None) or getattr(t, "_post_accumulate_grad_hooks", None)):
            # whether it matters is what the script does with .grad next (a gradient autograd.grad returned, or one
            # a hook saw, was used whatever becomes of .grad)
            tr.cut_pending(t, info, ev)
        if plan.create and got is not None and var is not None and isinstance(exact, Traced):
            self._bind_grad(tr, t, before, exact)
        return (info, var, a, r, cut, t) if status == "ok" else None

    def _classify(self, tr: Any, plan: Plan, t: torch.Tensor, var: Any, a: Any, r: Any, base: Any, cut: Any,
                  u: float, tiny: float, shape: tuple[int, ...], scale: float | None,
                  line: int) -> tuple[Any, list[bool]]:
        """The verdict ladder (`judge.elements.classify`) for one gradient, with this backward's rounding bound, its
        measured noise and its custom Functions; and whether the measured noise was used."""
        slack = accumulation_slack(base, a, u)

        def bound() -> Any:
            if var is None:
                return None
            if plan.bounds is None:
                if plan.create:  # the sweep was recorded into the script's own program: bounded with it
                    e = tr.rec.bounds() or {}
                    plan.bounds = {k: e.get(c.var.id) for k, c in plan.cts.items() if isinstance(c, Traced)}
                elif plan.recorded is None:  # not written down: the compared cotangents' bounds alone
                    errs = tr.rec.bounds()
                    plan.bounds = sweep_bounds(plan.program, tr.rec.values, plan.seeds, keep=plan.compared(tr),
                                               errs=errs if errs is not None else error_bounds(plan.program,
                                                                                               tr.rec.values),
                                               narrow=tr.rec.nbytes >= KEPT_FROM and _float32(plan.program))
                    tr.release()
                else:
                    whole, values, res = plan.written()
                    e = res.errs if res.errs is not None else error_bounds(whole, values)
                    plan.bounds = {k: e.get(c.var.id) for k, c in res.cts.items() if isinstance(c, Traced)}
            b = plan.bounds.get(var.id)
            return None if b is None else b * (1.0 + 2.0**-53 / u)

        used: list[bool] = []  # whether a measured noise was used (`measured` says so)

        def measured() -> Any:
            m = measured_noise(tr, plan, t, var, r)  # (the user's dtype recomputed: a sample of its rounding)
            if m is not None:
                used.append(True)
                m = self.noise.floor((line, id(t), shape, t.dtype), m, r)
            return m

        # A float64 gradient of a few entries: its measured noise is a float32 recomputation's, scaled, drawn once per
        # entry, and one draw can sit far below the rounding torch's float64 run shows (a Gaussian process's 0-d
        # hyperparameters through a 50x50 Cholesky: 8x to 160x of it, at 1e-12 of the gradient).  Beyond it but within
        # the worst case, as through a custom Function, an entry is left undecided (`_one`), never a mismatch.
        few = t.dtype == torch.float64 and a.numel() < FEW_SAMPLED
        context = scale
        scale, zero_below = own_scale(r, scale, u)
        intended = None
        if plan.intended is not None:
            iv = plan.intended.get(var.id) if var is not None else None
            iv = iv.value if isinstance(iv, Traced) else iv
            intended = torch.zeros(shape, dtype=F64) if iv is None else iv.to(F64).expand(shape)
        return classify(a, r, u=u, tiny=tiny, bound=bound, cut=cut, slack=slack, scale=scale, measured=measured,
                        foreign=lambda: few or self._foreign(tr, plan, var), zero_below=zero_below, intended=intended,
                        context=context, wide_at=WIDE), used

    def _foreign(self, tr: Any, plan: Plan, var: Any) -> bool:
        """Whether `var`'s gradient comes through a custom Function's backward (asked only where a measured noise
        decides)."""
        if plan.program is None or var is None:
            return False
        if plan.replays is None:
            plan.replays = Replays(tr, plan.program, plan.cts, plan.seconds, self.children, set(plan.seeds))
        return plan.replays.through(var.id)

    def _trained_by_optimizers(self, tr: Any, plan: Plan) -> bool:
        """Whether every leaf this backward gave a gradient to is updated by an optimizer of the script's."""
        if plan.trained is None:
            plan.trained = all(tr.optimized(u) for _, u, _ in plan.targets if u.grad is not None)
        return plan.trained

    def _module_hooked(self, tr: Any, plan: Plan, var: Any, index: int) -> bool:
        """Whether a module's backward hook that changed a gradient in backward `index` sits on `var`'s way back:
        its gradient goes through the BackwardHookFunction of the very module call whose hook changed it (a hook
        that changed another branch's gradient, or only read this one, explains nothing)."""
        at, changed = tr.hooks_changed
        if at != index or not changed or var is None or not self._foreign(tr, plan, var):
            return False
        return any(tr.hook_owner.get(k) in changed for k in plan.replays.paths.get(var.id, ()) if k is not None)

    def _undecided(self, tr: Any, ev: Any, info: Any, got: Any, t: torch.Tensor, returned: bool, n: int,
                   why: str) -> None:
        """`n` entries of `t`'s gradient beyond their measured noise but within the worst case: not compared after
        all, not verified (`why` ends the reason)."""
        ev.checked -= 1
        return self._not_verified(ev, info, got, t, returned, [
            f"{n} {'entry' if n == 1 else 'entries'} of {info_name(tr, t)} {'differs' if n == 1 else 'differ'} from the "
            f"exact gradient by more than the rounding measured for our own formulas{why}"])

    def _not_verified(self, ev: Any, info: Any, got: Any, t: torch.Tensor, returned: bool, reasons: list[str]) -> None:
        """This tensor's gradient in this backward is not vouched for, for `reasons`; nor is its .grad's total after
        it (where the gradient went there: one torch.autograd.grad returned leaves .grad alone)."""
        ev.verified = False
        for reason in reasons:
            if reason not in ev.reasons:
                ev.reasons.append(reason)
        if not returned:
            info.exact_total = None
        self._status(info, ev, got, None, "not verified", t, returned)

    def _status(self, info: Any, ev: Any, got: Any, exact: Any, status: str, t: torch.Tensor,
                returned: bool) -> None:
        info.checks.append((ev.index, None if got is None else got.clone(), exact, status))
        if not returned:
            info.grad_seen = info.checks[-1][1]
        if len(info.checks) > 8:  # keep the first and the latest few (and every one's status, to count)
            info.dropped.append(info.checks.pop(1)[3])
        info.grad_fn = grad_fn_name(t)

    def _bind_grad(self, tr: Any, t: torch.Tensor, before: Any, ct: Traced) -> None:
        if is_leaf(t) or t.retains_grad:
            g = t.grad
        else:  # a .grad the script set on a non-leaf: torch warns at a read where there is none, and it is our read
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                g = t.grad
        if g is None:
            return
        handle = ct
        prev = tr.recs.get(id(before)) if before is not None else None
        if prev is not None and isinstance(prev.handle, Traced):
            from ..ops import prims as P
            from ..ops.core import interpreting

            with interpreting(tr.rec):
                handle = P.add(prev.handle, ct)
        tr._bind(g, handle)
