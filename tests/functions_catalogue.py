"""Custom autograd Functions after patterns found in public repositories (our own versions), each with the
verdict gradcheck-sym must give in float64, float32 and at second order.

`CASES` rows: (id, function, inputs, options, {"f64": kinds, "f32": kinds, "o2": kinds}) where kinds are the
error findings' kinds expected (sorted), or "raises" for a typed error.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
import torch.nn.functional as F

F64 = torch.float64


def fn(forward, backward, name="Fn", save_input=True):
    """A one-input custom Function from two functions: forward(x), backward(x, y, g)."""

    def fwd(ctx, x):
        y = forward(x)
        ctx.save_for_backward(x, y)
        return y

    def bwd(ctx, g):
        x, y = ctx.saved_tensors
        return backward(x, y, g)

    return type(name, (torch.autograd.Function,), {"forward": staticmethod(fwd), "backward": staticmethod(bwd)})


# -- straight-through estimators, reversal, scaling
STESign = fn(torch.sign, lambda x, y, g: g, "STESign")
STERound = fn(torch.round, lambda x, y, g: g * (x.abs() <= 1).to(g.dtype), "STERound")
GradReverse = type("GradReverse", (torch.autograd.Function,), {
    "forward": staticmethod(lambda ctx, x: x.view_as(x)),
    "backward": staticmethod(lambda ctx, g: -0.3 * g)})
GradScale = type("GradScale", (torch.autograd.Function,), {
    "forward": staticmethod(lambda ctx, x: x.view_as(x)),
    "backward": staticmethod(lambda ctx, g: 0.5 * g)})
Spike = fn(lambda x: (x > 0).to(x.dtype), lambda x, y, g: g / (1 + x.abs()) ** 2, "Spike")


def ste_vq(x, codebook):
    """Vector quantisation with the straight-through trick: x + (q - x).detach()."""
    d = ((x.unsqueeze(1) - codebook.unsqueeze(0)) ** 2).sum(-1)
    q = codebook[d.argmin(dim=1)]
    return (x + (q - x).detach()).pow(2).sum()


def detach_clamp(x):
    return (x + (x.clamp(-0.5, 0.5) - x).detach()).exp().sum()


# -- numerics
EpsSqrt = fn(lambda x: torch.sqrt(x + 1e-6), lambda x, y, g: g * 0.5 / torch.sqrt(x), "EpsSqrt")
GoodGelu = fn(F.gelu, lambda x, y, g: g * (0.5 * (1 + torch.erf(x / math.sqrt(2)))
                                           + x * torch.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)), "GoodGelu")
TanhGelu = fn(F.gelu, lambda x, y, g: g * (0.5 * (1 + torch.tanh(0.7978845608 * (x + 0.044715 * x**3)))
                                           + 0.5 * x * (1 - torch.tanh(0.7978845608 * (x + 0.044715 * x**3)) ** 2)
                                           * 0.7978845608 * (1 + 3 * 0.044715 * x**2)), "TanhGelu")


def _ln_backward(x, y, g, with_mean=True):
    n = x.shape[-1]
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    r = 1 / torch.sqrt(var + 1e-5)
    xh = (x - mu) * r
    gm = g.mean(-1, keepdim=True) if with_mean else 0
    return r * (g - gm - xh * (g * xh).mean(-1, keepdim=True)) * (n / n)


LayerNormFn = fn(lambda x: F.layer_norm(x, x.shape[-1:]), _ln_backward, "LayerNormFn")
LayerNormBug = fn(lambda x: F.layer_norm(x, x.shape[-1:]), lambda x, y, g: _ln_backward(x, y, g, False),
                  "LayerNormBug")


def _rms_forward(x):
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + 1e-6)


def _rms_backward(x, y, g):
    ms = (x * x).mean(-1, keepdim=True) + 1e-6
    r = 1 / torch.sqrt(ms)
    return r * g - x * r**3 * (g * x).mean(-1, keepdim=True)


RMSNormFn = fn(_rms_forward, _rms_backward, "RMSNormFn")
SoftmaxFn = fn(lambda x: torch.softmax(x, -1), lambda x, y, g: y * (g - (g * y).sum(-1, keepdim=True)), "SoftmaxFn")
LogSumExpFn = fn(lambda x: torch.logsumexp(x, -1), lambda x, y, g: g.unsqueeze(-1) * torch.softmax(x, -1),
                 "LogSumExpFn")


class FocalLoss(torch.autograd.Function):
    """Binary focal loss on logits with a hand-derived backward (gamma = 2)."""

    @staticmethod
    def forward(ctx, z, t):
        p = torch.sigmoid(z)
        pt = torch.where(t > 0.5, p, 1 - p)
        ctx.save_for_backward(z, t)
        return (-(1 - pt) ** 2 * torch.log(pt)).sum()

    @staticmethod
    def backward(ctx, g):
        z, t = ctx.saved_tensors
        p = torch.sigmoid(z)
        s = torch.where(t > 0.5, 1.0, -1.0).to(z.dtype)
        pt = torch.where(t > 0.5, p, 1 - p)
        dpt = s * p * (1 - p)  # d pt / d z
        dl = 2 * (1 - pt) * torch.log(pt) - (1 - pt) ** 2 / pt
        return g * dl * dpt, None


class SmoothCE(torch.autograd.Function):
    """Cross entropy with label smoothing (eps = 0.1) and a hand-derived backward."""

    @staticmethod
    def forward(ctx, z, target):
        logp = torch.log_softmax(z, -1)
        q = torch.full_like(z, 0.1 / z.shape[-1]).scatter(-1, target.unsqueeze(-1), 0.9 + 0.1 / z.shape[-1])
        ctx.save_for_backward(z, q)
        return -(q * logp).sum(-1).mean()

    @staticmethod
    def backward(ctx, g):
        z, q = ctx.saved_tensors
        return g * (torch.softmax(z, -1) - q) / z.shape[0], None


class Sparsemax(torch.autograd.Function):
    """sparsemax over the last dim (Martins & Astudillo), forward by sorting, backward on the support."""

    @staticmethod
    def forward(ctx, z):
        zs, _ = torch.sort(z, dim=-1, descending=True)
        k = torch.arange(1, z.shape[-1] + 1, dtype=z.dtype)
        cssv = zs.cumsum(-1) - 1
        support = (zs - cssv / k > 0).to(z.dtype)
        kz = support.sum(-1, keepdim=True)
        tau = torch.gather(cssv, -1, kz.long() - 1) / kz
        out = torch.clamp(z - tau, min=0)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, g):
        (out,) = ctx.saved_tensors
        nz = (out > 0).to(g.dtype)
        v = (g * nz).sum(-1, keepdim=True) / nz.sum(-1, keepdim=True)
        return nz * (g - v)


# -- what the tracer cannot see
class NumpySigmoid(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        y = torch.from_numpy(1 / (1 + np.exp(-x.detach().numpy())))
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        return g * y * (1 - y)


def _cubic(x):
    return x * x * x


with warnings.catch_warnings():  # torch.jit.script is deprecated (still used in real code)
    warnings.simplefilter("ignore", DeprecationWarning)
    scripted_cubic = torch.jit.script(_cubic)


def uses_script(x):
    return scripted_cubic(x).sum() + x.sum()


# -- odd outputs and inputs
def bool_cast(x):
    return (x > 0).float().sum() + (x * 0).sum()


class NoneGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w):
        ctx.save_for_backward(x, w)
        return x * w

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        return g * w, None  # w's gradient forgotten


class NotReentrant(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.y = torch.exp(x)
        return ctx.y.clone()

    @staticmethod
    def backward(ctx, g):
        ctx.y.mul_(1.5)  # changes what it saved: a second backward differs
        return g * ctx.y / 1.5


class TwoOutputs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.sin(x), torch.cos(x)

    @staticmethod
    def backward(ctx, gs, gc):
        (x,) = ctx.saved_tensors
        return gs * torch.cos(x) - gc * torch.sin(x)


class SetupContext(torch.autograd.Function):
    @staticmethod
    def forward(x, k):
        return torch.tanh(x) * k

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, k = inputs
        ctx.save_for_backward(x)
        ctx.k = k

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * ctx.k * (1 - torch.tanh(x) ** 2), None


class ArgmaxAndValue(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        i = x.argmax()
        ctx.mark_non_differentiable(i)
        ctx.save_for_backward(x, i)
        return x[i] * 2, i

    @staticmethod
    def backward(ctx, g, gi):
        x, i = ctx.saved_tensors
        out = torch.zeros_like(x)
        out[i] = 2 * g
        return out


class OnceDiff(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.exp()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * x.exp()


DetachedSaved = fn(lambda x: torch.log1p(torch.exp(x)), lambda x, y, g: g * torch.sigmoid(x.detach()),
                   "DetachedSaved")
MissingFactor = fn(lambda x: x * x, lambda x, y, g: g * x, "MissingFactor")


class ScaledTanhModule(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor([0.7, -0.4, 1.1], dtype=F64))

    def forward(self, x):
        return SetupContext.apply(x * self.w, 2.0).sum()


X = torch.tensor([0.3, -1.2, 2.0], dtype=F64)
XS = torch.tensor([0.4, -0.7, 0.9], dtype=F64)  # |x| < 1: inside the STE window
XP = torch.tensor([0.5, 1.5, 3.0], dtype=F64)
M = torch.tensor([[0.5, -0.3, 0.8, 1.1], [1.1, -0.7, 0.2, -0.4]], dtype=F64)
CODEBOOK = torch.tensor([[0.4, -0.2], [1.0, -0.6], [-1.0, 0.5]], dtype=F64)
T = torch.tensor([1.0, 0.0, 1.0], dtype=F64)



def same(kinds):
    return {"f64": kinds, "f32": kinds, "o2": kinds}


CASES = [
    ("ste_sign", lambda x: (STESign.apply(x) * x.exp()).sum(), (X,), {}, same(["mismatch"])),
    ("ste_sign_declared", lambda x: (STESign.apply(x) * x.exp()).sum(), (X,),
     {"intended": {"STESign": "straight-through"}}, same([])),
    ("ste_round_window", lambda x: STERound.apply(x).pow(2).sum(), (XS,), {}, same(["mismatch"])),
    ("ste_round_window_surrogate", lambda x: (STERound.apply(x) * x).sum(), (XS,),
     {"intended": {"STERound": "surrogate:where(abs(x) <= 1, 1, 0)"}}, same([])),
    ("grad_reverse", lambda x: (GradReverse.apply(x) ** 2).sum(), (X,), {}, same(["mismatch"])),
    ("grad_reverse_declared", lambda x: (GradReverse.apply(x) ** 2).sum(), (X,),
     {"intended": {"GradReverse": "reverse:0.3"}}, same([])),
    ("grad_scale_declared", lambda x: (GradScale.apply(x).sin()).sum(), (X,),
     {"intended": {GradScale: "scale:0.5"}}, same([])),
    ("spike_surrogate", lambda x: (Spike.apply(x) * x).sum(), (X,),
     {"intended": {"Spike": "surrogate:1/(1 + abs(x))**2"}}, same([])),
    ("vq_straight_through", ste_vq, (M[:, :2], CODEBOOK), {}, same(["untracked"])),
    ("detach_clamp", detach_clamp, (X,), {}, same(["untracked"])),
    ("eps_sqrt", lambda x: EpsSqrt.apply(x).sum(), (XP,), {}, {"f64": ["mismatch"], "f32": [], "o2": ["mismatch"]}),
    ("eps_sqrt_accepted", lambda x: EpsSqrt.apply(x).sum(), (XP,), {"rtol": 1e-5}, same([])),
    ("good_gelu", lambda x: GoodGelu.apply(x).sum(), (X,), {}, same([])),
    ("tanh_gelu_backward", lambda x: TanhGelu.apply(x).sum(), (X,), {}, same(["mismatch"])),
    ("layer_norm_backward", lambda x: (LayerNormFn.apply(x) ** 3).sum(), (M,), {}, same([])),
    ("layer_norm_backward_bug",
     lambda x: (LayerNormBug.apply(x) * torch.arange(4.0, dtype=x.dtype)).sum(), (M,), {}, same(["mismatch"])),
    ("rms_norm_backward", lambda x: (RMSNormFn.apply(x) ** 2 * torch.arange(4.0, dtype=x.dtype)).sum(), (M,), {},
     same([])),
    ("softmax_backward", lambda x: (SoftmaxFn.apply(x) * torch.arange(4.0, dtype=x.dtype)).sum(), (M,), {},
     same([])),
    ("logsumexp_backward", lambda x: LogSumExpFn.apply(x).pow(2).sum(), (M,), {}, same([])),
    ("focal_loss", lambda z: FocalLoss.apply(z, T), (X,), {}, same([])),
    ("label_smoothing_ce", lambda z: SmoothCE.apply(z, torch.tensor([1, 3])), (M,), {}, same([])),
    ("sparsemax", lambda z: (Sparsemax.apply(z) * torch.arange(4.0, dtype=z.dtype)).sum(), (M,), {}, same([])),
    ("numpy_round_trip", lambda x: NumpySigmoid.apply(x).sum(), (X,), {}, same(["not-verified"])),
    ("torchscript_helper", uses_script, (X,), {}, same(["not-verified"])),
    ("bool_cast_output", bool_cast, (X,), {}, same([])),
    ("backward_returns_none", lambda x, w: NoneGrad.apply(x, w).sum(), (X, XP), {}, same(["mismatch"])),
    # At second order the broken state shows in the Hessian too.
    ("not_reentrant", lambda x: NotReentrant.apply(x).sum(), (X,), {},
     {"f64": ["not-reentrant"], "f32": ["not-reentrant"], "o2": ["mismatch", "not-reentrant"]}),
    ("two_outputs", lambda x: TwoOutputs.apply(x), (X,), {}, same([])),
    ("setup_context", lambda x: SetupContext.apply(x, 3.0).sum(), (X,), {}, same([])),
    ("module_parameters", ScaledTanhModule(), (X,), {}, same([])),
    ("argmax_non_differentiable", lambda x: ArgmaxAndValue.apply(x)[0], (X,), {}, same([])),
    # second order not verified (a warning): the backward is @once_differentiable
    ("once_differentiable", lambda x: OnceDiff.apply(x).sum(), (X,), {}, same([])),
    ("detached_saved_tensor", lambda x: DetachedSaved.apply(x).sum(), (X,), {}, {"f64": [], "f32": [],
                                                                                  "o2": ["mismatch"]}),
    ("missing_factor", lambda x: MissingFactor.apply(x).sum(), (X,), {}, same(["mismatch"])),
]
