"""Every expression of the shared corpora (copied into tests/data with their `source` fields): no false alarms."""

import math

import pytest

import gradcheck_sym as gs

from .conftest import corpus_entries

ENTRIES = corpus_entries()


def test_the_corpora_are_all_here_with_sources():
    assert len(ENTRIES) == 290
    assert all(e["source"] for e in ENTRIES)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("entry", ENTRIES, ids=[e["id"] for e in ENTRIES])
def test_no_false_alarm(entry, dtype):
    domain = {k: tuple(v) for k, v in entry["vars"].items()}
    r = gs.check(entry["expr"], domain=domain, variables=list(domain), samples=30, seed=1, dtype=dtype)
    assert r.ok, str(r)


@pytest.mark.parametrize("entry", [e for e in ENTRIES if e["check"].get("grad_finite")], ids=lambda e: e["id"])
def test_gradient_at_the_recorded_point_matches_the_corpus(entry):
    point = entry["check"]["point"]
    r = gs.check(entry["expr"], at=point, variables=list(entry["vars"]))
    got = {row.expression: row.symbolic_grad for row in r.nodes if row.op == "var"}
    for name, want in entry["check"]["grad"].items():
        assert math.isclose(got[name], want, rel_tol=1e-9, abs_tol=1e-12), (name, got[name], want)
