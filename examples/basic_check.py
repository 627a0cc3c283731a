"""Basic check: a correct expression, a NaN trap and a gradient cut, from Python.

Run: python examples/basic_check.py
"""

import gradcheck_sym as gs

# 1. A correct expression: autograd matches the exact derivatives at every node.
report = gs.check("sin(x)*exp(y) + log(1 + x**2)/y", at={"x": 0.7, "y": 1.3})
print(report)
assert report.ok

# 2. The where() trap: the unselected branch sqrt(x) back-propagates NaN for x <= 0.
report = gs.check("where(x > 0, sqrt(x), 0)", domain={"x": (-1, 1)}, samples=200, seed=0)
print(report)
assert [f.kind for f in report.errors()] == ["nonfinite"]

# 3. A cut that changes the gradient: detach() hides d/dx of tanh(x).
report = gs.check("x*detach(tanh(x))", at={"x": 0.5})
print(report.to_json()[:400], "...")
assert [f.kind for f in report.errors()] == ["untracked"]
