"""Audit a package's own gradients: every custom autograd.Function, with the inputs its author gives.

Run: python examples/audit_package.py
CLI: gradcheck-sym audit examples/audit_package/mini_ops [--workers N] [--markdown report.md]

The package is examples/audit_package/mini_ops. Its Functions carry their sample inputs in a
`sample_inputs()` staticmethod; plain functions are marked with @gradcheck_sym.audited or listed in
[tool.gradcheck-sym] of examples/audit_package/pyproject.toml. Nothing is guessed: ClampUnit has no
samples, so it is listed as not checked, with what to add.
"""

from pathlib import Path

import gradcheck_sym as gs
from gradcheck_sym.scale import SerialExecutor

package = Path(__file__).parent / "audit_package" / "mini_ops"

# The default runs on a process pool of all cores; here everything runs in this process.
result = gs.audit_package(str(package), executor=SerialExecutor())
print(result)

# BadSoftplus's backward returns exp(x) instead of sigmoid(x): caught, and gradcheck agrees.
bad = next(e for e in result.entries if e.name.endswith(":BadSoftplus"))
assert bad.status == "failed" and bad.samples[0].gradcheck.verdict == "fail"
# SquarePlus is checked to second order (@gs.audited(order=2)): its backward's own derivative.
assert next(e for e in result.entries if e.name.endswith(":SquarePlus")).order == 2
