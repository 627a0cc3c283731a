"""front.script_infos: the rows of dead tensors made light (summaries, and nothing python's cycle collector visits)."""

import gc
import weakref

import torch

from gradcheck_sym.front.script_infos import InfoLog, TensorInfo


def _logged(log: InfoLog, t: torch.Tensor, **kw) -> TensorInfo:
    info = log.add(TensorInfo(log.serial(), None, 3, "y = f(x)", False, shape=tuple(t.shape), **kw))
    info.ref = weakref.ref(t, lambda _: log.dead.append(info))
    return info


def test_a_dead_tensor_s_row_keeps_its_checks_as_summaries_and_lets_its_lists_go():
    log = InfoLog()
    t = torch.linspace(0.0, 1.0, 2000, dtype=torch.float64)
    info = _logged(log, t)
    info.checks.append((0, t.clone(), t * 2, "ok"))
    info.checks.append((1, t.clone(), t * 2, "mismatch"))
    info.dropped.append("ok")
    del t
    log.retire()
    assert info.ref() is None and info.serial == 0
    (_, got, exact, status), second = info.checks
    assert status == "ok" and second[3] == "mismatch"
    assert got == {"shape": [2000], "min": 0.0, "max": 1.0, "first": [0.0, 1 / 1999, 2 / 1999]}
    assert exact["max"] == 2.0
    assert info.statuses() == ["ok", "ok", "mismatch"]
    # its empty lists and its weak reference are let go: python's cycle collector visited some 100,000 of them in
    # each full pass by a training loop's 3,000th step
    assert (info.hooks, info.leaf_vars) == ((), ()) and not gc.is_tracked(info.hooks)
    assert not isinstance(info.ref, weakref.ref)


def test_a_dead_intermediate_no_row_shows_is_dropped_at_the_next_compaction():
    log = InfoLog()
    kept = torch.ones(3)
    info_kept = _logged(log, kept)
    infos = []
    for _ in range(1100):  # (compaction is amortised: past 1,024 dropped rows)
        t = torch.zeros(2)
        infos.append(_logged(log, t, hidden=True))
        del t
    log.retire()
    assert all(i.serial < 0 and i.checks == () and i.ref() is None for i in infos)
    assert log.items == [info_kept] and list(log) == [info_kept] and info_kept.ref() is kept
