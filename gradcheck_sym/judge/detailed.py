"""The detailed test: for the (quantity, point) pairs that failed the cheap test.

1. Autograd is re-run at those points, plainly and `tolerance.NOISE_TRIALS` times perturbed;
   the spread is the measured rounding noise, to which the magnitude sweep's bound on the
   rounding inside kernels is added.
2. Phase 1: against the float64 reference with that tolerance (doubled in float64 checks,
   where that reference is no more precise than autograd).
3. Phase 2, float64 checks only: what still disagrees gets the reference in
   `tolerance.MP_DPS`-digit mpmath (within its budget of work and time, `programs`).
4. Each remaining pair is judged by `verdict.classify` and recorded in the accumulator.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import sympy
import torch

from ..ops import OPS
from ..reference.evaluate import TORCH, UnevaluableError, _compile
from ..reference.sympy_functions import S
from ..reference.templates import _P, _TEMPLATES
from ..report import messages as msg
from . import tolerance as tl
from .compare import Quantity, example, full
from .subject import Run
from .verdict import classify

if TYPE_CHECKING:
    from .chunk import Chunk
    from .engine import Checker

__all__ = ["Detailed"]


@dataclass
class _Candidates:
    """What the detailed test computed once for all candidate points of a chunk."""

    idx: torch.Tensor
    run64: Run | None
    base: Run
    env_all: dict[sympy.Symbol, Any] | None = field(default=None)


class Detailed:
    """The detailed test of one `Checker` (it reads the checker's quantities, references and accumulator)."""

    def __init__(self, checker: Checker) -> None:
        # (a proxy: the checker holds this object, and a cycle kept a check's tensors until a full collection)
        self.c = weakref.proxy(checker)

    def notes(self) -> list[str]:
        """What the high-precision reference skipped, and why, for the report's derivation line."""
        return [msg.HIGH_PRECISION_SKIPPED.format(dps=tl.MP_DPS, count=count, why=why)
                for why, count in self.c.refs.mp_skipped.items()]

    def run(self, ch: Chunk, candidates: torch.Tensor, per_q_bad: list[torch.Tensor | None],
            kinks: dict[int, torch.Tensor]) -> None:
        c = self.c
        is64 = c.dtype == torch.float64
        idx = torch.nonzero(candidates).flatten()
        m = len(idx)
        sub_xd = {name: t[idx] for name, t in ch.xd.items()}
        # Every point of the chunk a candidate, and the chunk's run retained every node there: that run is the base
        # (a gathered chunk has none: see `deferred`).
        whole = ch.autograd is not None and m == ch.n and ch.start + ch.n <= tl.NODE_POINTS
        base = ch.autograd if whole else c.s.autograd(sub_xd, c.order, None)
        trials = c.s.trials(sub_xd, c.order, tl.NOISE_TRIALS)
        run64 = None if is64 else c.s.autograd({k: v.to(torch.float64) for k, v in sub_xd.items()}, c.order, None)
        cands = _Candidates(idx, run64, base)
        tiny = torch.finfo(c.dtype).tiny
        pending: list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]] = []
        need_hp = torch.zeros(m, dtype=torch.bool)
        for qi, q in enumerate(c.quantities):
            bad = per_q_bad[qi]
            if bad is None:
                continue
            c.deadline.check("measuring rounding noise")
            a = base.quantity(q)
            noise = torch.zeros(m, dtype=torch.float64)
            for tr in trials:
                noise = torch.maximum(noise, (tr.quantity(q) - a).abs())
            # A NaN in a perturbed run means one ulp of rounding can change the result
            # arbitrarily (e.g. sqrt near 0): the noise there is unbounded.
            noise = torch.nan_to_num(noise, nan=math.inf)
            r64 = c.ref_at(ch, f"q{qi}", idx)
            kinked = c.kinked(q, kinks)
            still = bad[idx].clone()
            # The magnitude sweep's allowance only widens the tolerance: asked for only where the measured noise alone
            # settles less than every point (at 10,000 nodes, deriving and compiling that sweep was a third of a check).
            still &= ~self._settled(ch, q, idx, a, r64, noise, kinked, is64, tiny)
            if bool(still.any()):
                noise = noise + c.refs.magnitude(q, ch.x64, idx, ch.key) * (tl.MAGNITUDE_ULPS * c.u / tl.NOISE_SAFETY)
                still &= ~self._settled(ch, q, idx, a, r64, noise, kinked, is64, tiny)
            if bool(still.any()):
                pending.append((qi, a, r64, noise, kinked, still))
                need_hp |= still
        if not pending:
            return
        # The exact reference where float64's disagrees (for narrow dtypes too: float64 itself can be
        # garbage, e.g. 0/0 at a removable singularity); where the exact output is not a real number
        # the point is outside the domain after all.
        hp = c.refs.high_precision(ch.x64, idx, need_hp, len(c.quantities))
        undefined = torch.zeros(m, dtype=torch.bool)
        if hp is not None:
            for col in hp[0][len(c.quantities):]:
                undefined |= hp[1] & ~torch.isfinite(col)
            for j in torch.nonzero(undefined).flatten().tolist():
                i = int(idx[j])
                auto = float(base.outputs()[0][j])
                c.acc.add("outside-domain", "info", "", example(ch.point_index(i), c.point(ch, i), auto,
                                                                 float(hp[0][len(c.quantities)][j])), 0.0)
        for qi, a, r64, noise, kinked, still in pending:
            still = still & ~undefined
            q = c.quantities[qi]
            has_hp = hp is not None
            r = torch.where(hp[1], hp[0][qi], r64) if hp is not None else r64
            ref_is_64 = (~hp[1]) if hp is not None else torch.full((m,), is64)
            tol = self._tolerance(ch, q, idx, noise, r, False, tiny)
            tol = torch.where(ref_is_64 & is64, tol + tl.NOISE_SAFETY * noise, tol)
            cut = c.ref_at(ch, f"c{qi}", idx) if q.cut_ref is not None else None
            for j in torch.nonzero(still).flatten().tolist():
                i = int(idx[j])
                precise = has_hp and bool(hp[1][j])  # type: ignore[index]
                reference = (msg.REFERENCE_MP.format(dps=tl.MP_DPS) if precise else
                             msg.REFERENCE_64_SPENT if bool(ref_is_64[j]) and is64 else msg.REFERENCE_64)
                self._judge(ch, q, i, j, float(a[j]), float(r[j]), float(tol[j]), float(noise[j]),
                            None if cut is None else float(cut[j]), kinked is not None and bool(kinked[i]),
                            reference, cands)

    def _settled(self, ch: Chunk, q: Quantity, idx: torch.Tensor, a: torch.Tensor, r64: torch.Tensor,
                 noise: torch.Tensor, kinked: torch.Tensor | None, is64: bool, tiny: float) -> torch.Tensor:
        """The candidates where autograd's value `a` is within the tolerance of `noise` of the float64 reference."""
        tol64 = self._tolerance(ch, q, idx, noise, r64, is64, tiny)
        settled = torch.isfinite(a) & torch.isfinite(r64) & (((a - r64).abs() <= tol64) | (a == r64))
        return settled if kinked is None else settled & ~kinked[idx]

    def _tolerance(self, ch: Chunk, q: Quantity, idx: torch.Tensor, noise: torch.Tensor, r: torch.Tensor,
                   ref_is_64: bool, tiny: float) -> torch.Tensor:
        c = self.c
        tol = tl.tolerance(noise, r, c.u, ref_is_64, tiny)
        if q.hess is not None:  # a Hessian entry: see tolerance.HESSIAN_ULPS
            g = c.graph
            # The first-order gradients' scale: their exact values, or the magnitude of their terms
            # where those cancel (sigmoid's out*(1 - out) is 0 in torch once out rounds to 1).
            scale = 0
            for v in q.hess:
                qi = c.qindex(g.var_ids[g.variables[v]])
                if qi < 0:
                    continue
                grad = c.ref_at(ch, f"q{qi}", idx).abs()
                scale = scale + torch.maximum(grad, c.refs.magnitude(c.quantities[qi], ch.x64, idx, ch.key))
            # A NaN gradient leaves the rounding bound of the Hessian entry unknown there.
            scale = torch.nan_to_num(torch.as_tensor(scale, dtype=torch.float64), nan=math.inf)
            tol = tol + tl.HESSIAN_ULPS * c.u * (scale + r.abs())
        return tol

    def _judge(self, ch: Chunk, q: Quantity, i: int, j: int, a: float, r: float, tol: float, noise: float,
               cut: float | None, kinked: bool, reference: str, cands: _Candidates) -> None:
        """Classify quantity `q` at point `i` of the chunk (`j` among the candidates); record the verdict."""
        c = self.c
        point = c.point(ch, i)
        index = ch.point_index(i)
        v = classify(a, r, tol, u=c.u, cut=cut, kinked=kinked, stale=c._stale,
                     range_issue=lambda: self._range_issue(ch, j, cands))
        counts = q.counts
        if v.kind == "ok":
            return
        if v.kind == "kink":  # the finding is recorded per kink node by the engine
            counts["kink"] = counts.get("kink", 0) + 1
            return
        if v.kind == "nonfinite":
            ex = example(index, point, a, r, None, reference, q.label)
            c.acc.add("nonfinite", v.severity, q.group, ex, v.score, quantity=q,  # type: ignore[arg-type]
                      **({"overflow": v.why} if v.why else {}))
            label = {"info": "nonfinite (agree)", "warning": "overflow"}.get(v.severity or "", "nonfinite")
            counts[label] = counts.get(label, 0) + 1
            return
        why = msg.TOLERANCE_WHY.format(safety=tl.NOISE_SAFETY, noise=noise, trials=tl.NOISE_TRIALS,
                                       floor=tl.FLOOR_ULPS, reference=reference)
        ex = example(index, point, a, r, tol, why, q.label)
        counts[v.kind] = counts.get(v.kind, 0) + 1
        if v.kind == "untracked":
            if not q.is_input:
                return  # intermediate nodes: counted in the table; the finding is per cut region
            for region in c.regions:
                dropped = max((abs(float(c.ref(ch, f"a{q.row}:{n}")[i])) for n in region.nodes), default=0.0)
                if dropped != 0:
                    c.acc.add("untracked", "error", region.key, ex, v.score, quantity=q, region=region,
                              cut_value=cut, dropped=dropped)
            return
        if v.kind == "range":
            c.acc.add("range", "warning", q.group, ex, v.score, quantity=q, overflow=v.why)
            return
        c.acc.add(v.kind, "error", q.group, ex, v.score, quantity=q)

    def _range_issue(self, ch: Chunk, j: int, cands: _Candidates) -> str | None:
        """Why the dtype cannot represent the computation at candidate `j`, or None.

        Narrow dtypes: some value or gradient of the float64 re-run lies outside the dtype's
        normal range (overflows to inf or underflows to 0).  Any dtype: a node's exact value
        became inf from finite, non-zero arguments (overflow, e.g. exp(909); 1/0 is a pole).
        """
        c = self.c
        info = torch.finfo(c.dtype)
        for label, t in cands.base.tensors():  # gradual underflow: rounding is absolute below `tiny`
            if t is None or t.dtype == torch.bool:
                continue
            v = abs(float(full(t.detach(), len(cands.idx))[j]))
            if 0 < v < info.tiny:
                return (f"{label} ({v:.3g}) is below the smallest normal number of {c.dtype_name}, where "
                        "rounding loses relative precision")
        if cands.run64 is not None:
            for label, t in cands.run64.tensors():
                if t is None or t.dtype == torch.bool:
                    continue
                v = abs(float(full(t.detach(), len(cands.idx))[j]))
                if math.isfinite(v) and (v > info.max or 0 < v < info.tiny):
                    return f"{label} ({v:.3g}) is outside the range of {c.dtype_name}"
        if cands.env_all is None:  # every value of the reference program at the candidates
            x64 = {name: t[cands.idx] for name, t in ch.x64.items()}
            cands.env_all = c.refs.env(x64, None)
        env, g, m = cands.env_all, c.graph, len(cands.idx)
        for node in g.nodes:
            if node.op in ("var", "const", "where") or OPS[node.op].kind == "compare":
                continue
            if not math.isinf(c.refs.value(env, node.id, m, j)):
                continue
            args = [c.refs.value(env, a, m, j) for a in node.args]
            if all(math.isfinite(x) and x != 0 for x in args):
                return f"{g.label(node.id)} overflows {c.dtype_name}"
        return self._kernel_range(env, m, j)

    def _kernel_range(self, env: dict[sympy.Symbol, Any], m: int, j: int) -> str | None:
        """A term inside some op's derivative that leaves the dtype's range at candidate `j`, or None.

        A kernel computes its derivative in the dtype: asinh's ``1/sqrt(x*x + 1)`` squares x, which
        overflows bfloat16 beyond 1.8e19 (and float64 beyond 1.3e154), so the gradient is 0 where
        the exact one is 1/|x|.  Each term of each op's partial derivatives is evaluated in float64
        at the node's arguments.
        """
        c = self.c
        info = torch.finfo(c.dtype)
        for node in c.graph.nodes:
            if node.op in ("var", "const", "where") or OPS[node.op].kind not in ("function", "binop"):
                continue
            if not c.graph.requires_grad[node.id]:
                continue
            args = [c.refs.value(env, a, m, j) for a in node.args]
            if not all(math.isfinite(x) for x in args):
                continue
            for text, term in _partial_terms(node.op, len(args)):
                value = abs(float(term({p: torch.tensor(x, dtype=torch.float64) for p, x in zip(_P, args)})))
                if value > info.max or 0 < value < info.tiny:
                    shown = "inf" if math.isinf(value) else f"{value:.3g}"
                    return (f"the derivative of {c.graph.label(node.id)} computes {text} = {shown} there, outside "
                            f"the range of {c.dtype_name}")
        return None


_TERMS: dict[tuple[str, int], list[tuple[str, Any]]] = {}


def _partial_terms(opname: str, nargs: int) -> list[tuple[str, Any]]:
    """The products, powers and sums inside an op's partial derivatives, compiled for torch (cached)."""
    key = (opname, nargs)
    if key not in _TERMS:
        expr, partials = _TEMPLATES.get(opname, nargs)
        kernel = OPS[opname].kernel
        if kernel is not None:  # the form torch's backward computes
            partials = tuple(partials) + tuple(kernel(S, expr, *_P[:nargs]))
        terms: dict[sympy.Expr, None] = {}
        for d in partials:
            for sub in sympy.preorder_traversal(d):
                if isinstance(sub, (sympy.Mul, sympy.Pow, sympy.Add)) and sub.free_symbols <= set(_P[:nargs]):
                    terms[sub] = None
        found = []
        for sub in terms:
            try:
                found.append((str(sub).replace("p[0]", "x").replace("p[1]", "y").replace("p[2]", "z"),
                              _compile(sub, TORCH, {})))
            except UnevaluableError:
                continue
        _TERMS[key] = found
    return _TERMS[key]

