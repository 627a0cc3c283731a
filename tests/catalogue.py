"""Correct and deliberately wrong PyTorch code, each with the verdict gradcheck-sym must give."""

import math

import torch
import torch.nn.functional as F


def _fn(forward, backward):
    """A custom autograd.Function of one input from two plain functions."""

    class Fn(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return forward(x)

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return backward(x, g)

    return Fn.apply


good_softplus = _fn(lambda x: torch.log1p(torch.exp(x)), lambda x, g: g * torch.sigmoid(x))
sign_error = _fn(torch.sin, lambda x, g: -g * torch.cos(x))
missing_factor = _fn(lambda x: x * x, lambda x, g: g * x)
only_positive = _fn(torch.abs, lambda x, g: g)  # right for x > 0 only
short_constant = _fn(torch.erf, lambda x, g: g * 1.128 * torch.exp(-x * x))  # 2/sqrt(pi) = 1.1283791...
approx_backward = _fn(F.gelu, lambda x, g: g * (0.5 * (1 + torch.tanh(0.7978845608 * (x + 0.044715 * x**3)))
                                                  + 0.5 * x * (1 - torch.tanh(0.7978845608 * (x + 0.044715 * x**3)) ** 2)
                                                  * 0.7978845608 * (1 + 3 * 0.044715 * x**2)))
# First derivative right, second wrong: the saved tensor is detached inside backward.
detached_backward = _fn(lambda x: torch.log1p(torch.exp(x)), lambda x, g: g * torch.sigmoid(x.detach()))


class SwappedMul(torch.autograd.Function):
    """f(x, y) = x * y**2 with the two gradients swapped."""

    @staticmethod
    def forward(ctx, x, y):
        ctx.save_for_backward(x, y)
        return x * y * y

    @staticmethod
    def backward(ctx, g):
        x, y = ctx.saved_tensors
        return g * 2 * x * y, g * y * y


class BroadcastAdd(torch.autograd.Function):
    """x + b with b of shape (1,) broadcast: the gradient of b must be summed, not averaged."""

    @staticmethod
    def forward(ctx, x, b):
        return x + b

    @staticmethod
    def backward(ctx, g):
        return g, g.mean().reshape(1)


def no_grad_norm(x, w):
    h = torch.tanh(x @ w)
    with torch.no_grad():
        scale = h.norm()
    return (h / scale).sum()


def set_grad_disabled(x):
    with torch.set_grad_enabled(False):
        s = x.sum()
    return (x * s).sum()


@torch.no_grad()
def _scale(x):
    return x.abs().max()


def decorated_no_grad(x):
    return (x / _scale(x)).sum()


def detach_cut(x):
    return (x * torch.tanh(x).detach()).sum()


def data_cut(x):
    return (x * x.data.exp()).sum()


def item_cut(x):
    return x * x.sum().item()


def tolist_cut(x):
    a, b = x.tolist()
    return x * a + b


def data_inplace(x):
    y = torch.sigmoid(x)
    y.data.mul_(2)
    return y.sum()


def data_assign(x):
    z = x * x
    z.data = z.data + 1
    return z.sum()


def harmless_logsumexp(x):
    m = x.max().detach()
    return torch.log(torch.exp(x - m).sum()) + m


def harmless_zero(x):
    return (x * x + 0 * x.detach()).sum()


def shapes(x, w):
    y = (x.reshape(3, 2).T @ w.unsqueeze(-1)).squeeze(-1)
    z = torch.cat([y, y.flip(0) if False else y * 2]).view(2, 2).permute(1, 0).flatten()
    s = torch.stack([z, z ** 2], dim=1)[1:, :].sum(dim=0)
    return s.mean() + x.expand(2, 6).sum() / 10 + x[0, 2:4].prod()


def linear_algebra(a, b):
    batch = torch.bmm(a.unsqueeze(0), b.transpose(0, 1).unsqueeze(0))[0]
    return torch.mm(a, b.t()).sum() + batch.sum() * 0.5 + torch.mv(a, b[0]).sum() + torch.dot(a[0], b[1])


def reductions(x):
    return x.amax() + x.logsumexp(0) + x.norm() + torch.softmax(x, 0)[1] + F.log_softmax(x, dim=0).mean() + x.min()


def where_clamp(x):
    return torch.where(x > 0.1, x**2, -x).sum() + x.clamp(-0.5, 0.5).sum() + torch.clamp(x, min=0.0).pow(3).sum()


def losses(x, w):
    logits = F.linear(x, w)
    return F.cross_entropy(logits, torch.tensor([1, 0])) + F.mse_loss(logits, torch.zeros_like(logits))


def elementwise(x, y):
    return torch.sin(x) * torch.exp(y) + torch.hypot(x, y) + torch.atan2(y, x)


def two_outputs(x):
    return x.sum(), torch.tanh(x)


def activations(x):
    return (F.relu(x) + F.silu(x) + F.gelu(x) + F.softplus(x) + torch.sigmoid(x) + F.tanh(x)).sum()


POS = torch.tensor([0.3, 1.2, 2.0], dtype=torch.float64)
MIXED = torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64)
X23 = torch.tensor([[0.5, -0.3, 0.8], [1.1, -0.7, 0.2]], dtype=torch.float64)
W32 = torch.tensor([[0.4, -0.6], [0.9, 0.1], [-0.5, 0.7]], dtype=torch.float64)
X16 = torch.tensor([[0.5, -0.3, 0.8, 1.1, -0.7, 0.2]], dtype=torch.float64)
W3 = torch.tensor([0.4, -0.6, 0.9], dtype=torch.float64)

# (id, function, inputs, options, expected error kinds)
CASES = [
    ("good_softplus", good_softplus, (MIXED,), {}, []),
    ("sign_error", sign_error, (MIXED,), {}, ["mismatch"]),
    ("missing_factor", missing_factor, (MIXED,), {}, ["mismatch"]),
    ("swapped_inputs", SwappedMul.apply, (POS, MIXED), {}, ["mismatch", "mismatch"]),
    ("mean_for_broadcast", BroadcastAdd.apply, (MIXED, torch.tensor([0.5], dtype=torch.float64)), {}, ["mismatch"]),
    ("right_for_positive_only", only_positive, (MIXED,), {}, ["mismatch"]),
    ("right_for_positive_only_ok_there", only_positive, (POS,), {}, []),
    ("constant_with_few_digits", short_constant, (MIXED,), {}, ["mismatch"]),
    ("approximate_backward", approx_backward, (MIXED,), {}, ["mismatch"]),
    ("double_backward_bug_order1", detached_backward, (MIXED,), {}, []),
    ("double_backward_bug_order2", lambda x: detached_backward(x).sum(), (MIXED,), {"order": 2}, ["mismatch"]),
    ("good_order2", lambda x: good_softplus(x).sum(), (MIXED,), {"order": 2}, []),
    ("no_grad", no_grad_norm, (X23, W32), {}, ["untracked"]),
    ("set_grad_enabled", set_grad_disabled, (MIXED,), {}, ["untracked"]),
    ("no_grad_decorator", decorated_no_grad, (MIXED,), {}, ["untracked"]),
    ("detach", detach_cut, (MIXED,), {}, ["untracked"]),
    (".data_read", data_cut, (MIXED,), {}, ["untracked"]),
    (".item", item_cut, (MIXED,), {}, ["untracked"]),
    (".tolist", tolist_cut, (torch.tensor([0.3, 0.5], dtype=torch.float64),), {}, ["untracked"]),
    (".data_inplace", data_inplace, (MIXED,), {}, ["stale-graph", "stale-graph"]),
    (".data_assignment", data_assign, (MIXED,), {}, ["stale-graph"]),
    ("harmless_logsumexp", harmless_logsumexp, (MIXED,), {}, []),
    ("harmless_zero", harmless_zero, (MIXED,), {}, []),
    ("shapes", shapes, (X16, W3), {}, []),
    ("reductions", reductions, (MIXED,), {}, []),
    ("linear_algebra", linear_algebra, (X23, X23.flip(0).contiguous()), {}, []),
    ("where_clamp", where_clamp, (MIXED,), {}, []),
    ("losses", losses, (X23, W32.T.contiguous()), {}, []),
    ("elementwise_jacobian", elementwise, (POS, MIXED), {}, []),
    ("two_outputs", two_outputs, (MIXED,), {}, []),
    ("activations", activations, (MIXED,), {}, []),
    ("mlp_module", torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 8), torch.nn.Tanh(),
                                       torch.nn.Linear(8, 1)).double(),
     (torch.tensor([0.2, -0.4, 0.6, 1.0], dtype=torch.float64),), {}, []),
]
assert math.isfinite(len(CASES))
