"""Run a script as ``python script.py`` would, and verify every backward it does.

The script is the real ``__main__`` (a module in ``sys.modules``, so multiprocessing and pickling
work), with its own ``sys.argv`` and its directory first on ``sys.path``; its output, its
exceptions (printed as Python prints them, without our frames) and its exit code are its own.
Everything gradcheck-sym does happens in the tracer (`script_tracer`) and the verifier
(`judge.backward`), which never raise into the script: a failure of ours becomes a
*not verified* backward with the reason.  The working directory and ``sys.path`` are restored
afterwards (a script's ``chdir`` does not move our output files).
"""

from __future__ import annotations

import linecache
import os
import re
import sys
import threading
import time
import traceback
import types
from collections.abc import Mapping
from typing import Any

import torch

from ..autograd.attrs import is_leaf
from ..errors import InputError
from ..judge.backward import BackwardVerifier
from ..report.run import EXPLANATIONS, SEVERITY, BackwardRow, RunFinding, RunReport, TensorRow, \
    summary_value
from .script_backward import RAISED
from .script_infos import DETACHED
from .script_names import row_names
from .script_tracer import ScriptTracer
from .tracer_sites import OVERRIDES_PY, hidden_frame

__all__ = ["run_script", "RunReport"]


def run_script(path: str, argv: list[str] | None = None, *, timeout: float | None = None,
               replay: bool = True, intended: Mapping[Any, str] | None = None) -> RunReport:
    """Run the script at `path` as ``python path argv...`` would, and verify its autograd.

    Args:
        path: the script.
        argv: its arguments.
        timeout: seconds after which gradcheck-sym stops recording and verifying (the script runs on).
        replay: whether a custom Function's float32 gradient may be settled by running the Function again in
            float64, in a forked copy of the process (`judge.replay`; off for a Function that writes files itself).
        intended: deviations that are meant, as for `check_function`: ``{"gan.py:41": "cut"}`` (a cut at that
            line, such as a GAN's ``fake.detach()`` in the discriminator's step, or a target network's no_grad),
            ``{STESign: "straight-through"}``; shown as `intended` (info) while everything else is still checked.

    Returns:
        A `RunReport` (``exit_code`` and ``error`` are the script's own).

    Raises:
        InputError: no such file, or a syntax error in it.
    """
    if not os.path.isfile(path):
        raise InputError(f"{path!r}: no such file")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0):
        raise InputError(f"timeout must be a positive number of seconds, not {timeout!r}")
    with open(path, "rb") as f:
        source = f.read()
    # the lines findings quote are read through linecache: a script edited since an earlier run in this process (a
    # notebook's second run) must not be quoted as it was
    linecache.checkcache(os.path.abspath(path))
    try:
        code = compile(source, os.path.abspath(path), "exec")  # python names the script by its absolute path
    except SyntaxError as exc:
        raise InputError(f"{path}:{exc.lineno}: the script has a syntax error: {exc.msg}") from None
    deadline = time.monotonic() + timeout if timeout else None
    tracer = ScriptTracer(deadline)
    tracer.verifier = BackwardVerifier(replay=replay, intended=intended)  # (an InputError for a bad declaration)
    module = types.ModuleType("__main__")
    module.__file__ = os.path.abspath(path)
    module.__builtins__ = __builtins__  # type: ignore[attr-defined]
    tracer.namespace = module.__dict__
    saved = (sys.argv, list(sys.path), sys.modules.get("__main__"), os.getcwd())
    sys.argv = [path] + list(argv or [])
    sys.path.insert(0, os.path.dirname(os.path.abspath(path)))
    sys.modules["__main__"] = module
    exit_code, error = 0, None
    # Threads the script starts record into the same tracer: a torch function mode is per thread, so each
    # new thread enters it on its first call (then stops profiling).
    previous_profile = threading.getprofile()

    def enter_in_thread(frame: Any, event: str, arg: Any) -> None:
        sys.setprofile(None)
        if previous_profile is not None:
            sys.setprofile(previous_profile)
        tracer.__enter__()
        # left as the thread ends: a mode still on a thread's stack when the process exits made C++ abort it
        # (a thread pool's worker, joined at exit: exit code 134 where python gave 0)
        _THREAD.leave = _Leave(tracer)

    threading.setprofile(enter_in_thread)
    try:
        with tracer, tracer.torch_no_grad, tracer.optimizer_hooks(), tracer.module_hooks():
            exec(code, module.__dict__)  # noqa: S102 - running the user's script is what was asked
    except SystemExit as exc:
        exit_code = _exit_code(exc)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001 - the script's error: printed as Python would print it
        error = _traceback(exc)
        print(error, file=sys.stderr)
        exit_code = 1
    finally:
        threading.setprofile(previous_profile)
        sys.argv, sys.path[:] = saved[0], saved[1]
        if saved[2] is not None:
            sys.modules["__main__"] = saved[2]
        try:
            os.chdir(saved[3])
        except OSError:
            pass
    return build_report(os.path.basename(path), tracer, module.__dict__, exit_code, error)


def _torch_cuts(tracer: ScriptTracer) -> dict[int, tuple[str, list[str]]]:
    """The script's lines where a backward reached a value torch's own code made under its no_grad (`TorchNoGrad`):
    line -> (its source, the torch functions that made one, each once, at the first line seen:
    "torch/nn/utils/spectral_norm.py:103 (compute_weight)")."""
    out: dict[int, tuple[str, list[str]]] = {}
    seen: set[tuple[int, str, str]] = set()
    for site in sorted(tracer.torch_reached):
        s = tracer.sites[site]
        places = out.setdefault(s.line, (s.source, []))[1]
        for path, line, function in tracer.torch_places[site]:
            if (s.line, path, function) not in seen:
                seen.add((s.line, path, function))
                places.append(f"{path}:{line} ({function})")
    return dict(sorted(out.items()))


class _Leave:
    """Takes the tracer off its thread's mode stack when the thread ends (its thread-local value is dropped
    there, in that thread)."""

    def __init__(self, tracer: ScriptTracer) -> None:
        self.tracer = tracer

    def __del__(self) -> None:
        from torch.overrides import _get_current_function_mode

        try:
            if _get_current_function_mode() is self.tracer:  # (else the thread changed modes: left as it is)
                self.tracer.__exit__(None, None, None)
        except Exception:  # noqa: BLE001 - the thread is ending: nothing to tell anyone
            pass


_THREAD = threading.local()


def _exit_code(exc: SystemExit) -> int:
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)  # sys.exit("message") prints it and exits 1, as Python does
    return 1


def _traceback(exc: BaseException) -> str:
    """The traceback Python would print without us: our frames (and the dispatch's) left out, chains kept."""
    te = traceback.TracebackException(type(exc), exc, exc.__traceback__)
    seen: set[int] = set()
    todo = [te]
    while todo:
        t = todo.pop()
        if id(t) in seen:
            continue
        seen.add(id(t))
        frames = list(t.stack)
        keep = []
        for i, f in enumerate(frames):
            delegating = i + 1 < len(frames) and hidden_frame(frames[i + 1].filename, "") and \
                os.path.abspath(frames[i + 1].filename) == OVERRIDES_PY
            if not hidden_frame(f.filename, f.name) and not delegating:
                keep.append(f)
        t.stack = traceback.StackSummary.from_list(keep)
        todo.extend(c for c in (t.__cause__, t.__context__) if c is not None)
    return "".join(te.format()).rstrip()


# ---------------------------------------------------------------- the report
def build_report(script: str, tracer: ScriptTracer, namespace: dict[str, Any], exit_code: int,
                 error: str | None) -> RunReport:
    names = row_names(tracer, namespace)
    rows = _rows(tracer, names)
    backwards = _backward_rows(tracer, {f"#{i.serial}": names[i.serial] for i in tracer.all_infos})
    findings = _findings(tracer, names, error)
    calls = len(tracer.backwards)
    verified = sum(1 for b in tracer.backwards if b.verified and not b.skipped)
    raised = sum(1 for b in tracer.backwards if b.raised)
    if calls > raised and not verified:  # (a backward that raised the script's error had nothing to verify)
        stopped = bool(tracer.stopped) and all(tracer.stopped in b.reasons for b in tracer.backwards if not b.raised)
        if stopped:  # (the stop's own warning would say it twice)
            findings = [f for f in findings if not (f.kind == "not-verified" and (
                f.message == tracer.stopped or f.message.endswith(f"was not verified: {tracer.stopped}")))]
        findings.append(RunFinding("not-verified", "error", tracer.backwards[0].line,
                                   ("the backward call could not be verified" if calls == 1 else
                                    f"none of the {calls} backward calls could be verified")
                                   + (f": {tracer.stopped}" if stopped else ""),
                                   *EXPLANATIONS[tracer.stop_kind if stopped else "not-verified"]))
    if not calls and error is None:
        findings.append(RunFinding("no-autograd", "info", 0, "the script did no backward", *EXPLANATIONS["no-autograd"]))
    findings.extend(_unused_declarations(tracer))
    # (counted after the run's own findings: a run that verified nothing is an error in the JSON as in the text)
    summary = {"backward_calls": calls, "verified": verified, "not_verified": calls - verified - raised,
               **({"raised": raised} if raised else {}),
               "gradients": sum(b.checked for b in tracer.backwards),
               "errors": sum(1 for f in findings if f.severity == "error")}
    graph = _graph(tracer, names)
    rank = {"error": 0, "warning": 1, "info": 2}
    findings.sort(key=lambda f: (rank[f.severity], f.line))
    return RunReport(script, tuple(rows), tuple(backwards), tuple(findings), error, exit_code, summary, graph)


def _line_name(name: str) -> str:
    """The script's name a row's name comes from: `W1` for `W1 (line 3)` and for `leaf in W1 (line 3)`."""
    return name.split(" (line ")[0].removeprefix("leaf in ")


_NOT_COMPARED = ("grad is None: not a leaf", "made under no_grad: no grad_fn", DETACHED,
                 "no grad (does not require grad)", "not among the backward's inputs=")


def _shown(info: Any) -> bool:
    """Whether the table (and the picture) shows this tensor: not a line's intermediate, and checked, or a leaf or a
    retained one of the script's own."""
    return not (info.hidden or (not info.checks and (info.internal or not (info.leaf or info.retains))))


_PASSED = ("ok", "nonfinite-agree", "nondifferentiable", "discarded")


def _gone_unused(info: Any, name: str) -> bool:
    """An unnamed leaf that is gone and that nothing ever used: a weight tying's replaced embedding (`wte.weight =
    lm_head.weight` in a GPT showed "unnamed leaves (line 72) not reached" under its parameters)."""
    return name.startswith("leaf #") and not info.checks and info.ref() is None and \
        not (info.cut or info.retains or info.hooks)


def _rows(tracer: ScriptTracer, names: dict[int, str]) -> list[TensorRow]:
    returned = {b.index for b in tracer.backwards if b.kind == "autograd.grad"}
    groups: dict[tuple[str, int, str], list[Any]] = {}
    # the tensors a loop's line made: one row, named as the last one is bound (`pred`, not `pred (line 24)`)
    plain = {(names[i.serial], i.line) for i in tracer.all_infos if "(" not in names[i.serial]}
    # the name's own tensor, where it is a leaf a backward trained (`W1 = nn.Parameter(...)`)
    trained = {names[i.serial] for i in tracer.all_infos if "(" not in names[i.serial] and i.leaf and i.requires_grad
               and i.checks}
    for info in tracer.all_infos:
        if not _shown(info):
            continue
        name = names[info.serial]
        if info.leaf and info.requires_grad and not info.cut and not info.checks and info.ref() is None and \
                not (info.retains or info.hooks) and " (line " in name and \
                (_line_name(name), info.line) not in plain and _line_name(name) in trained:
            # a leaf its line's name went past to a leaf that was trained, gone, that no backward reached:
            # `torch.randn(.., requires_grad=True)` inside `W1 = nn.Parameter(...)` (a textbook's MLP showed `W1 (line
            # 22) not reached` beside W1's row).  Where the name went to a constant (`W = W * 0.01` under no_grad: W
            # is never trained) the row stays: it is the hint
            continue
        if _gone_unused(info, name):
            continue
        if name.startswith("leaf #") and not info.checks:
            # leaves no name reaches and no backward reached (the layer nn.TransformerEncoder copies, a module made
            # and dropped, while alive): one row per line, not one each
            name = f"unnamed leaves (line {info.line})"
        base = name.split(" (line ")[0]
        if (base, info.line) in plain:
            name = base
        # (a leaf made on a loop's line, `x = (...).requires_grad_()` each iteration, is one row too, as is a constant
        # a loop's no_grad block makes at a line each iteration; a parameter is its own, whatever its line; and a
        # line's tensors made under no_grad — a validation pass through the training step's function — are a row
        # apart from the ones it made for autograd)
        groups.setdefault((name, info.line if "(line" in name or name.startswith("line ") or not info.leaf
                           or info.made or info.cut else -info.serial, info.cut), []).append(info)
    rows = []
    for (name, _, _), infos in groups.items():
        last = infos[-1]
        t = last.ref()
        checks = [c for i in infos for c in i.checks]
        statuses = [st for i in infos for st in i.statuses()]  # (a loop's middle mismatch counts)
        compared = [st for st in statuses if st not in _NOT_COMPARED]
        # (`discarded`: a cut's short gradient thrown away before any use, a GAN's fake.detach() in the
        # discriminator's step: passed, and beside the generator step's checks the row says ok, not `discarded`)
        passed = sum(1 for st in compared if st in _PASSED)
        bad = [st for st in compared if st not in _PASSED]
        # a leaf holding a .grad that no check recorded, or other than its last check saw while a later backward was
        # not verified as a whole (recording stopped: the time or memory budget): that backward reached it
        # (.grad read only where torch keeps one: reading a non-leaf's warns, on the script's stderr)
        unjudged = last.leaf and t is not None and (is_leaf(t) or t.retains_grad) and \
            isinstance(t.grad, torch.Tensor) and (not checks or _changed_since(tracer, last, t.grad, returned))
        if unjudged:
            status = "not verified"
        elif bad:
            status = bad[-1]
        elif compared:  # (`discarded` alone where no check of its own passed beside it)
            status = "ok" if any(st != "discarded" for st in compared) else "discarded"
        elif checks:
            status = checks[-1][3]
        else:
            status = (last.cut or "not reached by a backward") if last.leaf else "no backward"
        count = len(infos)
        display = name if count == 1 else f"{name} ×{count}"
        own = [c for c in last.checks if c[0] not in returned]  # torch.autograd.grad does not fill .grad
        grads = tuple(summary_value(c[1]) for c in own)
        exacts = tuple(summary_value(c[2]) for c in own)
        rows.append(TensorRow(
            name=display, line=last.line, count=count, is_leaf=last.leaf,
            requires_grad=bool(t.requires_grad) if t is not None else last.requires_grad,
            grad_fn=last.grad_fn, retains_grad=last.retains, shape=last.shape,
            value=summary_value(last.value if last.value is not None else (t.detach().to(torch.float64)
                                                                           if t is not None else None)),
            grad=summary_value(t.grad.detach().to(torch.float64)) if unjudged else grads[-1] if grads else None,
            exact=None if unjudged else exacts[-1] if exacts else None,
            checks=(passed, len(compared)), status=status, grads=grads, exacts=exacts))
    # what no backward reached after what they did (a table cut to the terminal's height hid real parameters below
    # a dozen of them)
    rows.sort(key=lambda r: r.status == "not reached by a backward")
    return rows


def _changed_since(tracer: ScriptTracer, info: Any, grad: torch.Tensor, returned: set[int]) -> bool:
    """Whether a backward after `info`'s last check of .grad was not verified and `.grad` is no longer what that
    check saw (`returned`: the torch.autograd.grad calls, whose checks saw a returned gradient, not .grad)."""
    own = [c for c in info.checks if c[0] not in returned]
    if not own:
        return False
    last, seen = own[-1][0], own[-1][1]
    if not any(b.index > last and not b.verified and not b.skipped for b in tracer.backwards):
        return False
    return not (isinstance(seen, torch.Tensor) and seen.shape == grad.shape
                and torch.equal(seen, grad.detach().to(seen.dtype)))


def _backward_rows(tracer: ScriptTracer, names: dict[str, str]) -> list[BackwardRow]:
    groups: dict[tuple[int, str], list[Any]] = {}
    for b in tracer.backwards:
        groups.setdefault((b.line, b.kind), []).append(b)
    rows = []
    for (line, kind), bs in groups.items():
        reasons = tuple(dict.fromkeys(_named(r, names) for b in bs
                                      for r in b.reasons + ([b.skipped] if b.skipped else [])))
        rows.append(BackwardRow(line, bs[0].source, kind, len(bs), sum(1 for b in bs if b.verified and not b.skipped),
                                sum(1 for b in bs if (not b.verified or b.skipped) and not b.raised),
                                sum(b.checked for b in bs), sum(b.errors for b in bs), reasons,
                                tuple((names.get(name, name), summary_value(g), summary_value(e))
                                      for name, g, e in bs[-1].returned), sum(1 for b in bs if b.raised)))
    return rows


def _unused_declarations(tracer: ScriptTracer) -> list[RunFinding]:
    """A warning for each declaration that matched nothing the script did (a mistyped line said nothing)."""
    out = []
    for d in tracer.verifier.intended:
        if d.is_cut:
            if any(d.matches_cut(s.file, s.line) for s in tracer.sites):
                continue
            why = (f"no operation of the script ran at {d.target} (a cut is declared at the line of the operation it "
                   "makes a constant: the statement inside a no_grad block, the line of a .detach())")
        else:
            if d.target in tracer.custom:
                continue
            why = f"no custom Function named {d.target} ran"
        out.append(RunFinding("intended-unused", "warning", 0, f"the declaration {d.target}={d.text or d.behaviour} "
                              f"matched nothing: {why}", *EXPLANATIONS["intended-unused"]))
    return out


def _which_calls(items: list[tuple[int, str, int]], line_calls: dict[int, int], before: str, after: str = "") -> str:
    """Which calls of a loop's backward a finding came from ("call 41 of 250", "calls 41, 52 and 60 of 250"), where
    its line ran more often than the finding came (every call: the count says it) and all of it is of one line."""
    line = items[0][0]
    calls = [c for ln, _, c in items if ln == line and c]
    total = line_calls.get(line, 0)
    if len(calls) != len(items) or len(calls) >= total:
        return ""
    if len(calls) == 1:
        return f"{before}call {calls[0]} of {total}{after}"
    shown = ", ".join(str(c) for c in calls[:-1]) + f" and {calls[-1]}" if len(calls) <= 6 else \
        f"{calls[0]} to {calls[-1]}"
    return f"{before}calls {shown} of {total}{after}"


def _findings(tracer: ScriptTracer, names: dict[int, str], error: str | None) -> list[RunFinding]:
    """Events of one kind about one tensor (or line), de-duplicated: the first message, a count, first/last line."""
    by_serial = {f"#{i.serial}": names[i.serial] for i in tracer.all_infos}
    groups: dict[tuple[str, str], list[tuple[int, str, int]]] = {}
    stale_note = any(n.kind == "stale-graph" for n in tracer.notes)
    for kind, line, message, key, call in tracer.events:
        # (a script's own gradient checks, one per line, are one finding: seven jacrev/hessian lines were seven
        # identical explanations)
        name = "" if kind == "self-check" else by_serial.get(key, key)
        if kind == "stale-graph" and stale_note:
            continue  # the stale-graph finding of the .data line says it
        groups.setdefault((kind, name), []).append((line, message.replace("{tensor}", name), call))
    out = []
    for (kind, name), items in groups.items():
        explanation, fix = EXPLANATIONS.get(kind, ("", ""))
        first, last = items[0], items[-1]
        message = first[1] + (f" (and {len(items) - 1} more time{'s' if len(items) > 2 else ''}, last at line "
                              f"{last[0]}{_which_calls(items, tracer.line_calls, '; ')})" if len(items) > 1 else
                              _which_calls(items, tracer.line_calls, " (", ")"))
        out.append(RunFinding(kind, SEVERITY.get(kind, "warning"), first[0], message, explanation, fix, name,
                              len(items), last[0]))
    for line, (source, places) in _torch_cuts(tracer).items():
        more = f" and {len(places) - 2} more" if len(places) > 2 else ""
        out.append(RunFinding("torch-cut", "info", line, f"line {line} `{source}`: torch's own code ran part of it "
                              f"under no_grad ({', '.join(places[:2])}{more})", *EXPLANATIONS["torch-cut"],
                              last_line=line))
    for note in tracer.notes:
        site = tracer.sites[note.site]
        if note.kind == "stale-graph":
            out.append(RunFinding("stale-graph", "error", site.line, f"line {site.line} `{site.source}`: {note.text}",
                                  *EXPLANATIONS["stale-graph"]))
    for b in tracer.backwards:
        if b.raised:
            key = ("backward-raised", f"line {b.line}")
            if key not in groups:
                groups[key] = []
                out.append(RunFinding("backward-raised", "info", b.line, f"{b.kind} at line {b.line} {RAISED}"
                                      + (" (its traceback follows the report)" if error else ""),
                                      *EXPLANATIONS["backward-raised"], last_line=b.line))
            continue
        if not b.verified and not b.skipped and b.reasons:
            kind = "not-verified"
            key = (kind, f"line {b.line}")
            if key in groups:
                continue
            groups[key] = []
            stopped = bool(tracer.stopped) and tracer.stopped in b.reasons
            out.append(RunFinding(kind, "warning", b.line, f"{b.kind} at line {b.line} was not verified: "
                                  + "; ".join(_named(r, by_serial) for r in b.reasons[:3]),
                                  *EXPLANATIONS[tracer.stop_kind if stopped else kind],
                                  count=sum(1 for c in tracer.backwards if c.line == b.line and not c.verified),
                                  last_line=b.line))
    if tracer.stopped:
        out.append(RunFinding("not-verified", "warning", 0, tracer.stopped, *EXPLANATIONS[tracer.stop_kind]))
    for gap in dict.fromkeys(tracer.unseen_gaps):  # (each said once, with how many times)
        count = tracer.unseen_gaps.count(gap)
        out.append(RunFinding("not-verified", "warning", 0, gap + (f" ({count} times)" if count > 1 else ""),
                              *EXPLANATIONS["not-verified"]))
    return _dedupe(out)


def _named(text: str, names: dict[str, str]) -> str:
    """`text` with each ``{#serial}`` a verifier wrote replaced by that tensor's name."""
    return re.sub(r"\{(#\d+)\}", lambda m: names.get(m.group(1), "a tensor"), text) if "{#" in text else text


def _dedupe(findings: list[RunFinding]) -> list[RunFinding]:
    seen: dict[tuple[str, str, str], RunFinding] = {}
    for f in findings:
        key = (f.kind, f.tensor, f.message if not f.tensor else "")
        if key not in seen:
            seen[key] = f
    return list(seen.values())


def _graph(tracer: ScriptTracer, names: dict[int, str]) -> dict[str, Any]:
    """Nodes (one per tensor the table shows) and the edges between them, for `report.run_picture`."""
    used = {x for a, b, _ in tracer.edges for x in (a, b)}
    shown = {i.serial for i in tracer.all_infos if not (i.hidden or i.internal) and not (
        i.serial not in used and _gone_unused(i, names[i.serial]))}  # (named by the script's lines)
    nodes = [(i.serial, names[i.serial], i.leaf, i.line, i.checks[-1][3] if i.checks else (i.cut or ""))
             for i in tracer.all_infos if i.serial in shown]
    # an edge through a line's intermediates (no row of their own) joins the named tensors at its ends, labelled
    # with the first cut on the way (a loop line's count is then its rows', not its operations')
    out: dict[int, list[tuple[int, str]]] = {}
    for a, b, cut in tracer.edges:
        out.setdefault(a, []).append((b, cut))
    edges = set()
    for a in shown:
        stack, seen = list(out.get(a, ())), set()
        while stack:
            b, cut = stack.pop()
            if b in shown:
                edges.add((a, b, cut))
            elif b not in seen:
                seen.add(b)
                stack.extend((c, cut or cut2) for c, cut2 in out.get(b, ()))
    return {"nodes": nodes, "edges": sorted(edges)}
