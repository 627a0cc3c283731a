"""Covariance and correlation, decomposed as torch documents them.

``cov(x, correction, fweights, aweights)``: the weights ``w = fweights * aweights``
(aweights may be traced: they are differentiated too), the weighted mean, the
normalisation ``sum(w) - correction * sum(w * aweights) / sum(w)`` (or its plainer
forms without weights), and ``(x - mean) * w @ (x - mean)^T / norm``.  ``corrcoef``
divides by the standard deviations and clips to [-1, 1] as torch does (the clip
passes the gradient at its bounds).
"""

from __future__ import annotations

from typing import Any

import sympy
import torch

from .. import prims as P
from ..ew import DIV, MUL, SUB, P as X, ew_fn
from .registry import Args, Ctx, rule

F64 = torch.float64


def covariance(c: Ctx, t: torch.Tensor, correction: Any, fweights: Any, aweights: Any) -> Any:
    """cov as a handle of shape (vars, vars), or () for a single variable."""
    x = c.v(t)
    if t.dim() < 2:
        x = P.reshape(x, (1, t.numel()))
    n_obs = P.shape_of(x)[1]
    w: Any = None
    if fweights is not None:
        w = fweights.to(F64)
    if aweights is not None:
        aw = c.v(aweights)
        w = aw if w is None else P.mul(aw, w)
    if w is None:
        mean = P.ew(DIV, P.sum_(x, (1,), keepdim=True), float(n_obs))
        norm: Any = float(n_obs - correction)
    else:
        w_sum = P.sum_(w, (0,)) if not isinstance(w, torch.Tensor) else w.sum()
        mean = P.ew(DIV, P.sum_(P.mul(x, w), (1,), keepdim=True), w_sum)
        if correction == 0:
            norm = w_sum
        elif aweights is None:
            norm = P.ew(SUB, w_sum, float(correction))
        else:
            spread = P.ew(DIV, P.sum_(P.mul(w, c.v(aweights)), (0,)), w_sum)
            norm = P.ew(SUB, w_sum, P.ew(MUL, spread, float(correction)))
    centred = P.ew(SUB, x, mean)
    weighted = centred if w is None else P.mul(centred, w)
    return P.ew(DIV, P.matmul(weighted, P.mT(centred)), norm)


@rule("cov", sig=lambda input, *, correction=1, fweights=None, aweights=None: 0)
def _cov(c: Ctx, a: Args) -> Any:
    return P.reshape(covariance(c, a.input, a.correction, a.fweights, a.aweights), tuple(c.out.shape))


@rule("corrcoef", sig=lambda input: 0)
def _corrcoef(c: Ctx, a: Args) -> Any:
    from .elementwise import table_fn

    cov = covariance(c, a.input, 1, None, None)
    if c.out.dim() == 0:  # one variable: torch returns cov / cov, unclipped
        return P.reshape(P.ew(DIV, cov, cov), tuple(c.out.shape))
    n = P.shape_of(cov)[0]
    std = P.ew(_SQRT, P.take(cov, torch.arange(n) * (n + 1)))
    out = P.ew(DIV, P.ew(DIV, cov, P.reshape(std, (n, 1))), P.reshape(std, (1, n)))
    # the clip's branches: the unclipped values of the user's run, computed as torch does
    user = torch.cov(c.user_value(a.input).to(a.input.dtype))
    spread = user.diagonal().sqrt()
    unclipped = (user / spread.view(-1, 1) / spread.view(1, -1)).to(F64)
    return P.ew(table_fn("clamp", 3).branched, out, -1.0, 1.0, unclipped, -1.0, 1.0)


_SQRT = ew_fn("sqrt", sympy.sqrt(X[0]), 1)
