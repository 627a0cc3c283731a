"""Check many expressions at once: gs.check_many, one result per row, the same on any executor.

Run: python examples/batch_check.py
CLI: gradcheck-sym batch tests/data/strogatz.jsonl --samples 30 -o results.jsonl [--workers N] [--resume]
"""

import gradcheck_sym as gs
from gradcheck_sym.scale import SerialExecutor

rows = [
    {"id": "nguyen-1", "expr": "x**3 + x**2 + x", "domain": {"x": [-1, 1]}, "samples": 50},
    {"id": "cut", "expr": "x*detach(tanh(x))", "at": {"x": 0.5}},
    {"id": "typo", "expr": "sinn(x)", "at": {"x": 1.0}},
]
# executor=None (the default) uses a process pool on all cores; a distributed.Client or any
# concurrent.futures.Executor works the same way. A row without a seed is seeded from its id.
for result in gs.check_many(rows, executor=SerialExecutor()):
    print(result.id, result.status, result.seed, [f.kind for f in result.report.errors()] if result.report else
          result.error.splitlines()[0])
