"""Audits: torch's own op formulas (OpInfo) and a package's custom Functions, checked at scale.

- `opinfo`: torch's OpInfo entries as functions, built as torch's gradient tests build them;
- `package`: discovery of a package's ``autograd.Function`` subclasses and marked functions;
- `marks`: ``@gradcheck_sym.audited`` (no torch import);
- `sample`: one sample checked by gradcheck-sym and by torch.autograd.gradcheck;
- `inject`: error injection (a known relative error after one op, forward untouched);
- `records`: the results as data; `api`: `audit_torch`, `audit_package`; `command`: the CLI.
"""

from .api import audit_package, audit_torch
from .marks import AuditSpec, audited
from .records import AuditResult, EntryAudit, Gradcheck, Injection, SampleAudit, Worst

__all__ = ["audit_torch", "audit_package", "audited", "AuditSpec", "AuditResult", "EntryAudit", "SampleAudit",
           "Gradcheck", "Injection", "Worst"]
