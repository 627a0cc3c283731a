"""The API from several threads: the same reports as one at a time, and no process-wide state changed."""

import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import mpmath
import torch

import gradcheck_sym as gs

CASES = [
    ("x*detach(tanh(x))", {"at": {"x": 0.5}}),                                      # the 50-digit reference decides
    ("(1 - cos(x))/x**2", {"at": {"x": [1e-3, 1e-4, 3e-5]}}),
    ("sigmoid(x)*y", {"domain": {"x": (-60, 60), "y": (-1, 1)}, "samples": 200, "seed": 0}),
    ("+".join(["x"] * 3500), {"at": {"x": 1.0}}),                                   # read without recursion
    ("where(x > 0, sqrt(x), 0)", {"domain": {"x": (-1, 1)}, "samples": 50, "seed": 1, "dtype": "float32"}),
    ("x*digamma(y)", {"at": {"x": 0.3, "y": 2.5}, "order": 2}),
]


def _run(case):
    text, options = case
    return gs.check(text, **options).to_json()


def test_concurrent_checks_give_the_reports_of_one_at_a_time():
    expected = [_run(c) for c in CASES]
    limit, dps = sys.getrecursionlimit(), mpmath.mp.dps
    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(_run, CASES * 3))
    assert results == expected * 3
    assert (sys.getrecursionlimit(), mpmath.mp.dps) == (limit, dps)


def test_a_thread_under_no_grad_does_not_disturb_another():
    done = threading.Event()
    out = {}

    def quiet():
        with torch.no_grad():
            out["quiet"] = gs.check("x*tanh(x)", at={"x": 0.5}).ok
            done.wait(5)

    t = threading.Thread(target=quiet)
    t.start()
    out["main"] = gs.check("x*tanh(x)", at={"x": 0.5}).ok
    done.set()
    t.join()
    assert out == {"quiet": True, "main": True} and torch.is_grad_enabled()
