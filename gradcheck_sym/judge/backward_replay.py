"""The float64 replays' part in a backward's verdicts (`judge.replay` runs them): which backwards replay a
custom Function whose gradients already passed, what an agreement says, and what a formula found wrong does to
every gradient that went through its call."""

from __future__ import annotations

import time
from typing import Any

from ..ir.program import Var
from .backward_words import message

__all__ = ["ReplayDecisions", "REPLAY_FIRST", "REPLAY_EVERY", "REPLAY_SHARE", "REPLAY_FREE"]

# A line's first REPLAY_FIRST backwards replay a custom Function whose gradients passed under the measured noise, then
# every REPLAY_EVERY-th: each is a fork of the process (seconds at the size of a model; a published tutorial's
# 2,000 iterations spent half their time in 200 of them), and its formula is the same code at every pass.  After
# the first, the next of the first REPLAY_FIRST only while replays took under REPLAY_FREE seconds in all, or at most
# REPLAY_SHARE of the run so far (a conv + batch-norm Function at batch 256: 5 s each, a third of the checked run for
# its 2nd and 3rd).
REPLAY_FIRST, REPLAY_EVERY, REPLAY_SHARE, REPLAY_FREE = 3, 100, 0.1, 2.0


class ReplayDecisions:
    """Mixed into `BackwardVerifier` (which sets `replay` and `replay_counts`)."""

    replay: bool
    replay_counts: dict[int, int]
    replay_spent: float = 0.0  # seconds spent in replays so far
    started: float  # time.monotonic() when the run began (set by the verifier: no default that would mean boot time)

    def _replayed_wrong(self, tr: Any, ev: Any, plan: Any, passed: list[Any]) -> None:
        """Once a replay in this backward found a custom Function's formula wrong, every gradient that passed
        through that call's wrong argument is a mismatch (in float32 the difference hid within rounding: under the
        measured noise, the worst-case bound, or before the replay ran); through its right ones it stays ok."""
        replays = plan.replays
        if replays is None or replays.verdicts is None or not any(
                v[0] == "differ" for v in replays.verdicts.values()):
            return
        for done in passed:
            if done is None:
                continue
            info, var, a, r, cut, t = done
            if var is None or not replays.through(var.id):
                continue
            verdict, detail, _ = replays.of(var.id)
            if verdict != "differ":
                continue
            ev.errors += 1
            tr.events.append(("mismatch", ev.line, message("mismatch", ev, a, r, cut, tr) + f": {detail} (in "
                              f"{str(t.dtype).replace('torch.', '')} the difference hides within rounding)",
                              f"#{info.serial}", ev.call))
            if info.checks and info.checks[-1][0] == ev.index:
                index, got, exact, _ = info.checks[-1]
                info.checks[-1] = (index, got, exact, "mismatch")

    def _sampled(self, ev: Any, plan: Any) -> bool:
        """Whether this backward is one of its line's sample for a replay that can only add a finding: the first
        `REPLAY_FIRST`, then every `REPLAY_EVERY`th."""
        if plan.sampled is None:
            n = self.replay_counts.get(ev.line, 0)
            self.replay_counts[ev.line] = n + 1
            spent, elapsed = self.replay_spent, time.monotonic() - self.started
            cheap = spent < REPLAY_FREE or spent <= REPLAY_SHARE * elapsed
            plan.sampled = n == 0 or (n < REPLAY_FIRST and cheap) or n % REPLAY_EVERY == 0
        return plan.sampled

    def _settle(self, tr: Any, ev: Any, plan: Any, var: Var) -> tuple[str, str]:
        """The custom Functions `var`'s gradient goes through, run again in float64 (`judge.replay`); an
        agreement is said once per Function, as an info."""
        if not self.replay:
            return "unknown", "running it again was turned off (--no-replay)"
        began = time.monotonic()
        try:
            verdict, detail, names = plan.replays.of(var.id)
        finally:
            self.replay_spent += time.monotonic() - began
        if verdict == "agree":
            for name in names:
                if not any(e[0] == "replayed" and e[3] == name for e in tr.events):
                    tr.events.append(("replayed", ev.line, (
                        f"the backward of `{name}` rounds differently from our formulas in "
                        "float32: run again in float64 on the same inputs (in a forked copy of the process, where "
                        "the script's output and open files are /dev/null), it matched the exact gradient of its "
                        "forward, so the float32 differences are rounding"), name, 0))
        return verdict, detail
