"""Products: matmul and its family, linear layers, einsum — all lowered to the `matmul` primitive.

``matmul`` is bilinear: its VJP is the transpose rule ``(g @ Bᵀ, Aᵀ @ g)`` with the
broadcast batch dimensions summed back (`gradcheck_sym.ops.prims`).  The family
(mm, bmm, mv, dot, inner, outer, addmm, baddbmm, linear, einsum, tensordot, ...)
reshapes and permutes its operands into batched matrix products, so every one of
them gets the same exact adjoint.
"""

from __future__ import annotations

import math
import string
from typing import Any, Sequence

import torch

from .. import prims as P
from ..ew import ADD, MUL
from .registry import Args, Ctx, Refused, rule

F64 = torch.float64


def matmul(a: Any, b: Any) -> Any:
    """torch.matmul semantics (1-D operands included) on handles."""
    sa, sb = P.shape_of(a), P.shape_of(b)
    if not sa or not sb:
        raise Refused("matmul of a 0-d tensor")
    a2 = P.reshape(a, (1,) + sa) if len(sa) == 1 else a
    b2 = P.reshape(b, sb + (1,)) if len(sb) == 1 else b
    out = P.matmul(a2, b2)
    shape = list(P.shape_of(out))
    if len(sb) == 1:
        shape.pop(-1)
    if len(sa) == 1:
        shape.pop(-2 if len(sb) != 1 else -1)
    return P.reshape(out, tuple(shape))


def scaled(h: Any, s: Any) -> Any:
    return h if s == 1 else P.ew(MUL, h, float(s))


def plus(a: Any, b: Any) -> Any:
    return P.ew(ADD, a, b)


@rule("matmul", "mm", "bmm", "mv", "dot", "vdot", "_sparse_mm", sig=lambda input, other, *, out=None: 0)
def _matmul(c: Ctx, a: Args) -> Any:
    return P.reshape(matmul(c.v(a.input), c.v(a.other)), tuple(c.out.shape))


@rule("inner", sig=lambda input, other, *, out=None: 0)
def _inner(c: Ctx, a: Args) -> Any:
    if a.input.dim() == 0 or a.other.dim() == 0:
        return P.reshape(P.ew(MUL, c.v(a.input), c.v(a.other)), tuple(c.out.shape))
    return P.reshape(matmul(c.v(a.input), P.mT(c.v(a.other)) if a.other.dim() > 1 else c.v(a.other)),
                     tuple(c.out.shape))


@rule("outer", "ger", sig=lambda input, vec2, *, out=None: 0)
def _outer(c: Ctx, a: Args) -> Any:
    n, m = a.input.numel(), a.vec2.numel()
    return P.matmul(P.reshape(c.v(a.input), (n, 1)), P.reshape(c.v(a.vec2), (1, m)))


def _add_product(c: Ctx, a: Args, product: Any) -> Any:
    out = scaled(product, a.alpha)
    if a.beta != 0:
        out = plus(P.broadcast_to(scaled(c.v(a.input), a.beta), P.shape_of(out)), out)
    return P.reshape(out, tuple(c.out.shape))


@rule("addmm", "addmv", "baddbmm", sig=lambda input, mat1, mat2, *, beta=1, alpha=1, out=None: 0)
def _addmm(c: Ctx, a: Args) -> Any:
    return _add_product(c, a, matmul(c.v(a.mat1), c.v(a.mat2)))


@rule("addbmm", sig=lambda input, batch1, batch2, *, beta=1, alpha=1, out=None: 0)
def _addbmm(c: Ctx, a: Args) -> Any:
    return _add_product(c, a, P.sum_(P.matmul(c.v(a.batch1), c.v(a.batch2)), (0,)))


@rule("addr", sig=lambda input, vec1, vec2, *, beta=1, alpha=1, out=None: 0)
def _addr(c: Ctx, a: Args) -> Any:
    n, m = a.vec1.numel(), a.vec2.numel()
    return _add_product(c, a, P.matmul(P.reshape(c.v(a.vec1), (n, 1)), P.reshape(c.v(a.vec2), (1, m))))


@rule("linear", sig=lambda input, weight, bias=None: 0)
def _linear(c: Ctx, a: Args) -> Any:
    w = c.v(a.weight)
    out = matmul(c.v(a.input), P.mT(w) if a.weight.dim() == 2 else w)
    if a.bias is not None:
        out = plus(out, c.v(a.bias))
    return P.reshape(out, tuple(c.out.shape))


@rule("bilinear", sig=lambda input1, input2, weight, bias=None: 0)
def _bilinear(c: Ctx, a: Args) -> Any:
    out = einsum(c, "...i,kij,...j->...k", [a.input1, a.weight, a.input2])
    if a.bias is not None:
        out = plus(out, c.v(a.bias))
    return P.reshape(out, tuple(c.out.shape))


@rule("einsum", sig=lambda equation, *operands: 0)
def _einsum(c: Ctx, a: Args) -> Any:
    ops = list(a.operands[0]) if len(a.operands) == 1 and isinstance(a.operands[0], (list, tuple)) else list(
        a.operands)
    return P.reshape(einsum(c, a.equation, ops), tuple(c.out.shape))


@rule("tensordot", sig=lambda a, b, dims=2, out=None: 0)
def _tensordot(c: Ctx, a: Args) -> Any:
    x, y, dims = a.a, a.b, a.dims
    if isinstance(dims, torch.Tensor):
        dims = dims.tolist()
    if isinstance(dims, int):
        da, db = list(range(x.dim() - dims, x.dim())), list(range(dims))
    else:
        da, db = [list(d) if isinstance(d, (list, tuple)) else [d] for d in dims]
    letters = iter(string.ascii_letters)
    la = [next(letters) for _ in range(x.dim())]
    lb = [next(letters) for _ in range(y.dim())]
    for i, j in zip(da, db):
        lb[j % y.dim()] = la[i % x.dim()]
    out = [l for i, l in enumerate(la) if i not in [d % x.dim() for d in da]] + \
          [l for j, l in enumerate(lb) if j not in [d % y.dim() for d in db]]
    return P.reshape(einsum(c, f"{''.join(la)},{''.join(lb)}->{''.join(out)}", [x, y]), tuple(c.out.shape))


@rule("chain_matmul", "multi_dot", "linalg_multi_dot", sig=lambda *matrices, out=None: 0)
def _multi_dot(c: Ctx, a: Args) -> Any:
    mats = list(a.matrices[0]) if len(a.matrices) == 1 and isinstance(a.matrices[0], (list, tuple)) else list(
        a.matrices)
    out = c.v(mats[0])
    for m in mats[1:]:
        out = matmul(out, c.v(m))
    return P.reshape(out, tuple(c.out.shape))


# ---------------------------------------------------------------- einsum
def einsum(c: Ctx, equation: str, operands: Sequence[torch.Tensor]) -> Any:
    """einsum lowered to diagonals (take), sums and batched matmuls, contracting left to right."""
    equation = equation.replace(" ", "")
    lhs, arrow, rhs = equation.partition("->")
    specs = lhs.split(",")
    if len(specs) != len(operands):
        raise Refused("einsum: operands do not match the equation")
    ell = max((t.dim() - len(s.replace("...", "")) for s, t in zip(specs, operands) if "..." in s), default=0)
    free = [ch for ch in string.ascii_letters if ch not in equation][:ell]
    specs = [s.replace("...", "".join(free[ell - (t.dim() - len(s.replace('...', ''))):])) for s, t in
             zip(specs, operands)]
    if not arrow:
        counts = {ch: "".join(specs).count(ch) for ch in "".join(specs)}
        rhs = "".join(free) + "".join(sorted(ch for ch, n in counts.items() if n == 1 and ch not in free))
    else:
        rhs = rhs.replace("...", "".join(free))
    terms = []
    for s, t in zip(specs, operands):
        h, s = _diagonal(c.v(t), tuple(t.shape), s)
        terms.append((h, s))
    h, s = terms[0]
    for i in range(1, len(terms)):
        h2, s2 = terms[i]
        later = set(rhs) | {ch for _, sp in terms[i + 1:] for ch in sp}
        h, s = _contract(h, s, h2, s2, later)
    # sum what the output does not keep, then order as the output
    drop = tuple(i for i, ch in enumerate(s) if ch not in rhs)
    h = P.sum_(h, drop)
    s = "".join(ch for ch in s if ch in rhs)
    return P.permute(h, tuple(s.index(ch) for ch in rhs))


def _diagonal(h: Any, shape: tuple[int, ...], spec: str) -> tuple[Any, str]:
    """Repeated letters in one operand ('ii') take its diagonal."""
    if len(set(spec)) == len(spec):
        return h, spec
    letters = list(dict.fromkeys(spec))
    sizes = {ch: shape[spec.index(ch)] for ch in letters}
    grids = torch.meshgrid(*[torch.arange(sizes[ch]) for ch in letters], indexing="ij")
    strides = [math.prod(shape[i + 1:]) for i in range(len(shape))]
    index = torch.zeros(grids[0].shape if grids else (), dtype=torch.long)
    for i, ch in enumerate(spec):
        index = index + grids[letters.index(ch)] * strides[i]
    return P.take(h, index), "".join(letters)


def _contract(a: Any, sa: str, b: Any, sb: str, keep: set[str]) -> tuple[Any, str]:
    """Contract two operands: batch letters (in both, kept), contracted (in both, not kept)."""
    # letters only in one operand and not kept are summed first
    a, sa = _sum_out(a, sa, keep | set(sb))
    b, sb = _sum_out(b, sb, keep | set(sa))
    batch = [ch for ch in sa if ch in sb and ch in keep]
    con = [ch for ch in sa if ch in sb and ch not in keep]
    left = [ch for ch in sa if ch not in sb]
    right = [ch for ch in sb if ch not in sa]
    size = {**{ch: P.shape_of(a)[i] for i, ch in enumerate(sa)}, **{ch: P.shape_of(b)[i] for i, ch in enumerate(sb)}}
    pa = P.permute(a, tuple(sa.index(ch) for ch in batch + left + con))
    pb = P.permute(b, tuple(sb.index(ch) for ch in batch + con + right))
    nb = [size[ch] for ch in batch]
    m, k, n = (math.prod(size[ch] for ch in left), math.prod(size[ch] for ch in con),
               math.prod(size[ch] for ch in right))
    out = P.matmul(P.reshape(pa, tuple(nb) + (m, k)), P.reshape(pb, tuple(nb) + (k, n)))
    out = P.reshape(out, tuple(nb + [size[ch] for ch in left] + [size[ch] for ch in right]))
    return out, "".join(batch + left + right)


def _sum_out(h: Any, s: str, keep: set[str]) -> tuple[Any, str]:
    drop = tuple(i for i, ch in enumerate(s) if ch not in keep)
    if not drop:
        return h, s
    return P.sum_(h, drop), "".join(ch for ch in s if ch in keep)
