"""Neural-network layers: each rule against sympy on tiny shapes, checked clean in float64 and float32,
not blind to a wrong gradient, and two real blocks (ResNet, transformer) end to end."""

import inspect
import warnings

import pytest
import torch
import torch.nn.functional as F

import gradcheck_sym as gs

from .op_checks import injected
from .oracle import assert_matches_oracle

F64 = torch.float64


def t(*shape, seed=0, low=-1.0, high=1.0):
    gen = torch.Generator().manual_seed(seed + 17 * len(shape) + sum(shape))
    return low + (high - low) * torch.rand(shape, dtype=F64, generator=gen)


def seeded(fn, seed=0):
    """`fn` with the global generator seeded first: dropout and friends draw the same mask every run."""

    def run(*xs):
        torch.manual_seed(seed)
        return fn(*xs)

    return run


def quiet(fn):
    """`fn` with torch's performance warnings silenced (pytest turns warnings into errors)."""

    def run(*xs):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return fn(*xs)

    return run


IDX = torch.tensor([[1, 0, 3], [2, 2, 4]])
BAG_IDX, BAG_OFF = torch.tensor([1, 4, 4, 0, 3, 2]), torch.tensor([0, 2, 2, 5])
KEEP = torch.tensor([[True, True, False, True], [True, False, True, True], [False, False, False, False]])

# (name, function, inputs): correct torch code; each must check clean
CASES = [
    ("conv1d", lambda x, w, b: F.conv1d(x, w, b, stride=2, padding=1), (t(2, 2, 7), t(3, 2, 3), t(3))),
    ("conv2d groups dilation", lambda x, w: F.conv2d(x, w, groups=2, padding=1, dilation=2),
     (t(1, 2, 3, 4), t(2, 1, 2, 2))),
    ("conv2d same", quiet(lambda x, w: F.conv2d(x, w, padding="same")), (t(1, 2, 4, 5), t(2, 2, 2, 3))),
    ("conv3d unbatched", lambda x, w: F.conv3d(x, w, stride=(1, 2, 1)), (t(2, 3, 4, 3), t(2, 2, 2, 2, 2))),
    ("conv_transpose1d", lambda x, w, b: F.conv_transpose1d(x, w, b, stride=2, padding=1, output_padding=1),
     (t(2, 2, 4), t(2, 3, 3), t(3))),
    ("conv_transpose2d groups dilation", lambda x, w: F.conv_transpose2d(x, w, groups=2, dilation=2, stride=2),
     (t(1, 4, 3, 3), t(4, 1, 2, 2))),
    ("conv_transpose3d", lambda x, w: F.conv_transpose3d(x, w, padding=1), (t(1, 2, 3, 3, 2), t(2, 2, 2, 2, 2))),
    ("unfold", lambda x: F.unfold(x, (2, 3), dilation=(1, 2), padding=1, stride=2), (t(2, 2, 4, 5),)),
    ("fold", lambda x: F.fold(x, (4, 5), (2, 2), padding=1, stride=(2, 1)), (t(2, 8, 18),)),
    ("max_pool2d ceil", lambda x: F.max_pool2d(x, 3, 2, padding=1, ceil_mode=True), (t(2, 2, 5, 6),)),
    ("max_pool1d indices", lambda x: F.max_pool1d(x, 2, return_indices=True)[0], (t(2, 3, 7),)),
    ("avg_pool2d divisor", lambda x: F.avg_pool2d(x, 3, 2, 1, ceil_mode=True, divisor_override=4), (t(1, 2, 5, 5),)),
    ("avg_pool3d no pad count", lambda x: F.avg_pool3d(x, 2, 1, 1, count_include_pad=False), (t(1, 1, 3, 3, 2),)),
    ("adaptive_avg_pool2d", lambda x: F.adaptive_avg_pool2d(x, (3, 2)), (t(2, 2, 5, 7),)),
    ("adaptive_max_pool1d", lambda x: F.adaptive_max_pool1d(x, 3), (t(2, 2, 7),)),
    ("max_unpool2d", lambda x: F.max_unpool2d(*F.max_pool2d(x, 2, return_indices=True), 2), (t(1, 2, 4, 4),)),
    ("fractional_max_pool2d", seeded(lambda x: F.fractional_max_pool2d(x, 2, output_size=3)), (t(2, 2, 6, 5),)),
    ("max_pool2d_with_indices_backward", lambda g, x: torch.ops.aten.max_pool2d_with_indices_backward(
        g, x, [2, 2], [2, 2], [0, 0], [1, 1], False, F.max_pool2d(x.detach(), 2, return_indices=True)[1]),
     (t(1, 2, 2, 2), t(1, 2, 4, 4))),
    ("layer_norm", lambda x, w, b: F.layer_norm(x, (2, 2), w, b), (t(2, 2, 2), t(2, 2), t(2, 2))),
    ("rms_norm", lambda x, w: F.rms_norm(x, (4,), w, eps=1e-6), (t(2, 3, 4), t(4))),
    ("batch_norm train", lambda x, w, b: F.batch_norm(x, torch.zeros(3, dtype=x.dtype), torch.ones(3, dtype=x.dtype),
                                                      w, b, training=True), (t(3, 3, 1), t(3), t(3))),
    ("batch_norm eval", lambda x, w: F.batch_norm(x, torch.full((3,), 0.1, dtype=x.dtype), torch.full(
        (3,), 2.0, dtype=x.dtype), w, training=False), (t(4, 3, 2), t(3))),
    ("group_norm", lambda x, w, b: F.group_norm(x, 2, w, b), (t(1, 4, 2), t(4), t(4))),
    ("instance_norm", lambda x: F.instance_norm(x), (t(2, 3, 4),)),
    ("native_group_norm", lambda x: torch.native_group_norm(x, None, None, 1, 4, 2, 2, 1e-5), (t(1, 4, 2),)),
    ("local_response_norm", lambda x: F.local_response_norm(x, 3, alpha=0.3, beta=0.7, k=1.5), (t(2, 5, 3),)),
    ("dropout", seeded(lambda x: F.dropout(x, 0.4)), (t(4, 5),)),
    ("dropout2d", seeded(lambda x: F.dropout2d(x, 0.5)), (t(3, 4, 2, 2),)),
    ("dropout3d unbatched", seeded(lambda x: F.dropout3d(x, 0.5)), (t(4, 2, 2, 2),)),
    ("alpha_dropout", seeded(lambda x: F.alpha_dropout(x, 0.3, training=True)), (t(4, 5),)),
    ("feature_alpha_dropout", seeded(lambda x: F.feature_alpha_dropout(x, 0.5, training=True)), (t(3, 4, 2),)),
    ("gumbel_softmax", seeded(lambda x: F.gumbel_softmax(x, tau=0.5)), (t(4, 5),)),
    ("gumbel_softmax hard", seeded(lambda x: F.gumbel_softmax(x, tau=0.7, hard=True, dim=0) * x), (t(4, 5),)),
    ("embedding padding_idx", lambda w: F.embedding(IDX, w, padding_idx=2), (t(5, 3),)),
    ("embedding_bag mean", lambda w: F.embedding_bag(BAG_IDX, w, BAG_OFF, mode="mean", padding_idx=4), (t(5, 3),)),
    ("embedding_bag max", lambda w: F.embedding_bag(IDX, w, mode="max"), (t(5, 3),)),
    ("embedding_bag weights", lambda w, p: F.embedding_bag(BAG_IDX, w, BAG_OFF, mode="sum", per_sample_weights=p),
     (t(5, 3), t(6))),
    ("normalize", lambda x: F.normalize(x, p=3, dim=0), (t(3, 4),)),
    ("_weight_norm", lambda v, g: torch._weight_norm(v, g, 0), (t(3, 4), t(3, 1, seed=1))),
    ("_weight_norm dim 1", lambda v, g: torch._weight_norm(v, g, 1), (t(3, 4, 2), t(1, 4, 1, seed=1))),
    ("_weight_norm whole", lambda v, g: torch._weight_norm(v, g, -1), (t(3, 4), t(seed=1))),
    ("cosine_similarity", lambda a, b: F.cosine_similarity(a, b, dim=-1), (t(3, 4), t(1, 4))),
    ("pairwise_distance", lambda a, b: F.pairwise_distance(a, b, p=1.5), (t(3, 4), t(3, 4, seed=1))),
    ("pdist", lambda x: F.pdist(x), (t(4, 3),)),
    ("interpolate nearest", lambda x: F.interpolate(x, scale_factor=1.7, mode="nearest"), (t(1, 2, 3, 4),)),
    ("interpolate nearest-exact", lambda x: F.interpolate(x, size=5, mode="nearest-exact"), (t(1, 2, 3),)),
    ("interpolate linear", lambda x: F.interpolate(x, size=5, mode="linear", align_corners=True), (t(1, 2, 3),)),
    ("interpolate bilinear", lambda x: F.interpolate(x, scale_factor=0.6, mode="bilinear"), (t(1, 2, 5, 4),)),
    ("interpolate bicubic", lambda x: F.interpolate(x, size=(4, 3), mode="bicubic", align_corners=False),
     (t(1, 1, 3, 5),)),
    ("interpolate trilinear", lambda x: F.interpolate(x, size=(3, 2, 3), mode="trilinear"), (t(1, 1, 2, 3, 2),)),
    ("interpolate area", lambda x: F.interpolate(x, size=(2, 3), mode="area"), (t(1, 2, 5, 4),)),
    ("interpolate antialias", lambda x: F.interpolate(x, size=(3, 2), mode="bilinear", antialias=True),
     (t(1, 1, 6, 5),)),
    ("grid_sample bilinear reflection", lambda x, g: F.grid_sample(
        x, g, mode="bilinear", padding_mode="reflection", align_corners=False),
     (t(1, 2, 3, 4), t(1, 2, 3, 2, low=-1.6, high=1.6))),
    ("grid_sample bicubic border", lambda x, g: F.grid_sample(
        x, g, mode="bicubic", padding_mode="border", align_corners=True),
     (t(1, 1, 4, 4), t(1, 1, 2, 2, low=-1.3, high=1.3))),
    ("grid_sample nearest 3d", lambda x, g: F.grid_sample(
        x, g, mode="nearest", padding_mode="zeros", align_corners=True), (t(1, 1, 2, 3, 2), t(1, 2, 1, 2, 3))),
    ("affine_grid", quiet(lambda th: F.affine_grid(th, (2, 3, 3, 4))), (t(2, 2, 3),)),
    ("affine_grid 3d align_corners", lambda th: F.affine_grid(th, (1, 1, 2, 3, 2), align_corners=True),
     (t(1, 3, 4),)),
    ("affine_grid into grid_sample", lambda x, th: F.grid_sample(
        x, F.affine_grid(th, (1, 2, 3, 3), align_corners=False), align_corners=False),
     (t(1, 2, 4, 5), t(1, 2, 3, seed=1, low=-0.8, high=0.8))),
    ("sdpa causal", lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
     (t(2, 3, 4), t(2, 3, 4), t(2, 3, 4))),
    ("sdpa bool mask", lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=KEEP),
     (t(1, 3, 2), t(1, 4, 2), t(1, 4, 3))),
    ("sdpa float mask gqa",
     lambda q, k, v, m: F.scaled_dot_product_attention(q, k, v, attn_mask=m, enable_gqa=True, scale=0.7),
     (t(1, 4, 3, 2), t(1, 2, 4, 2), t(1, 2, 4, 2), t(3, 4))),
    ("sdpa dropout", seeded(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, dropout_p=0.3)),
     (t(2, 3, 4), t(2, 3, 4), t(2, 3, 4))),
    # a nanoGPT's heads: (B, T, H, E) transposed to (B, H, T, E), head size = sequence length (the mask was drawn in
    # the transposed query's memory order)
    ("sdpa dropout transposed heads", seeded(lambda q, k, v: F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), dropout_p=0.3, is_causal=True)),
     (t(2, 4, 2, 4), t(2, 4, 2, 4, seed=1), t(2, 4, 2, 4, seed=2))),
    ("_softmax_backward_data", lambda g, y: torch._softmax_backward_data(g, y, 1, g.dtype),
     (t(2, 3), t(2, 3, seed=1))),
    # recurrent layers as nn.LSTM / nn.GRU / nn.RNN call them: (input, hx, weights, has_biases, layers, dropout,
    # train, bidirectional, batch_first); gates i, f, g, o (LSTM) and r, z, n (GRU)
    ("lstm", lambda x, h, c, wi, wh, bi, bh: torch.lstm(x, (h, c), [wi, wh, bi, bh], True, 1, 0.0, False, False,
                                                         False)[0],
     (t(3, 2, 2), t(1, 2, 2, seed=1), t(1, 2, 2, seed=2), t(8, 2, seed=3), t(8, 2, seed=4), t(8, seed=5),
      t(8, seed=6))),
    ("lstm bidirectional batch_first c_n", lambda x, wi, wh, vi, vh: torch.lstm(
        x, (torch.zeros(2, 2, 3, dtype=x.dtype), torch.zeros(2, 2, 3, dtype=x.dtype)), [wi, wh, vi, vh], False, 1,
        0.0, False, True, True)[2], (t(2, 3, 2), t(12, 2), t(12, 3, seed=1), t(12, 2, seed=2), t(12, 3, seed=3))),
    ("gru two layers", lambda x, h, w0, u0, b0, c0, w1, u1, b1, c1: torch.gru(
        x, h, [w0, u0, b0, c0, w1, u1, b1, c1], True, 2, 0.5, False, False, False)[0],
     (t(3, 2, 2), t(2, 2, 2, seed=1), t(6, 2, seed=2), t(6, 2, seed=3), t(6, seed=4), t(6, seed=5),
      t(6, 2, seed=6), t(6, 2, seed=7), t(6, seed=8), t(6, seed=9))),
    ("rnn_tanh h_n", lambda x, h, wi, wh: torch.rnn_tanh(x, h, [wi, wh], False, 1, 0.0, True, False, False)[1],
     (t(4, 1, 3), t(1, 1, 2, seed=1), t(2, 3, seed=2), t(2, 2, seed=3))),
    ("lstm_cell", lambda x, h, c, wi, wh, bi, bh: torch.lstm_cell(x, (h, c), wi, wh, bi, bh)[1],
     (t(2, 3), t(2, 2, seed=1), t(2, 2, seed=2), t(8, 3, seed=3), t(8, 2, seed=4), t(8, seed=5), t(8, seed=6))),
    ("gru_cell", lambda x, h, wi, wh: torch.gru_cell(x, h, wi, wh), (t(2, 3), t(2, 2, seed=1), t(6, 3, seed=2),
                                                                     t(6, 2, seed=3))),
    ("rnn_tanh_cell", lambda x, h, wi, wh, bi: torch.rnn_tanh_cell(x, h, wi, wh, bi, None),
     (t(2, 3), t(2, 2, seed=1), t(2, 3, seed=2), t(2, 2, seed=3), t(2, seed=4))),
]
IDS = [c[0] for c in CASES]
# the per-element sympy oracle differentiates every element: the tiny cases, one per rule
ORACLE = {"conv1d", "conv2d groups dilation", "conv_transpose2d groups dilation", "fold", "max_pool2d ceil",
          "avg_pool2d divisor", "adaptive_avg_pool2d", "max_unpool2d", "layer_norm", "rms_norm", "batch_norm train",
          "group_norm", "local_response_norm", "alpha_dropout", "gumbel_softmax hard", "embedding_bag weights", "embedding_bag max",
          "normalize", "_weight_norm", "cosine_similarity", "pairwise_distance", "pdist", "interpolate bicubic",
          "interpolate antialias", "grid_sample bilinear reflection", "grid_sample bicubic border", "sdpa bool mask",
          "_softmax_backward_data", "max_pool2d_with_indices_backward", "native_group_norm", "lstm_cell", "gru_cell",
          "rnn_tanh h_n", "affine_grid", "affine_grid 3d align_corners"}


def _clean(report):
    return report.ok and not [f for f in report.findings if f.severity in ("error", "warning")]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_correct_layer_checks_clean(case, dtype):
    name, fn, inputs = case
    report = gs.check_function(fn, *inputs, dtype=dtype)
    assert _clean(report), str(report)
    assert report.n_points == 1


@pytest.mark.parametrize("case", [c for c in CASES if c[0] in ORACLE], ids=lambda c: c[0])
def test_rule_matches_the_per_element_sympy_oracle(case):
    name, fn, inputs = case
    assert_matches_oracle(fn, *inputs)


def _scaled(fn, factor=1.0001):
    """`fn` with a wrong backward: the gradient reaching its first floating output scaled by `factor`."""

    def wrong(*xs):
        out = fn(*xs)
        first = out[0] if isinstance(out, tuple) else out
        first.register_hook(lambda g: g * factor)
        return out

    return wrong


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_a_wrong_gradient_is_caught(case):
    name, fn, inputs = case
    report = gs.check_function(_scaled(fn), *inputs)
    assert not report.ok and "mismatch" in {f.kind for f in report.errors()}, str(report)


@pytest.mark.parametrize("case", [c for c in CASES if c[0] in (
    "conv1d", "conv_transpose1d", "layer_norm", "batch_norm train", "local_response_norm", "cosine_similarity",
    "interpolate bicubic", "grid_sample bilinear reflection", "sdpa causal")], ids=lambda c: c[0])
def test_second_derivatives_check_clean(case):
    name, fn, inputs = case
    assert _clean(gs.check_function(fn, *inputs, order=2))


# ---------------------------------------------------------------- behaviours with words
def test_native_layer_norm_statistics_are_declared_non_differentiable_by_torch():
    # part of the op's definition, not a cut anyone wrote: the statistics' gradient is 0 in the reference too
    report = gs.check_function(lambda x: torch.native_layer_norm(x, (3,), None, None, 1e-5), t(2, 3))
    assert report.ok and report.checked > 0
    (f,) = report.findings
    assert (f.kind, f.severity, f.node) == ("cut", "info", "non-differentiable output")
    assert "torch declares this output of the op non-differentiable" in f.message
    # the normalised output alone is checked clean
    assert _clean(gs.check_function(lambda x: torch.native_layer_norm(x, (3,), None, None, 1e-5)[0], t(2, 3)))


def test_unmodelled_arguments_are_refused_by_name():
    report = gs.check_function(lambda w: F.embedding(IDX, w, max_norm=1.0), t(5, 3))
    assert not report.ok
    assert "argument max_norm=1.0 of embedding is not modelled" in str(report)


def test_max_unpool_with_duplicate_indices_is_torchs_gradient_error():
    # overlapping windows pick the same element twice: the forward keeps one copy, torch's backward
    # sends the gradient to both (which is why torch's own OpInfo skips this gradient test)
    x = torch.tensor([[[1.0, 3.0, 2.0, 0.0]]], dtype=F64)

    def fn(x):
        values, indices = F.max_pool1d(x, 2, stride=1, return_indices=True)
        return F.max_unpool1d(values, indices, 2, stride=1, output_size=(4,))

    report = gs.check_function(fn, x)
    (f,) = report.errors()
    assert f.kind == "mismatch"


def test_a_failing_rule_is_not_verified_never_a_mismatch(monkeypatch):
    from gradcheck_sym.ops.torch import RULES

    def broken(c, a):
        # (torch's own errors run to 40 lines of dispatch keys: the note keeps the first, at most 200 characters)
        raise RuntimeError("a bug in a rule" + " (details)" * 30 + "\n" + "a dispatch key\n" * 40)

    monkeypatch.setitem(RULES, "layer_norm", RULES["layer_norm"].__class__(
        "layer_norm", RULES["layer_norm"].signature, broken))
    report = gs.check_function(lambda x: F.layer_norm(x, (3,)), t(2, 3))
    assert [f.kind for f in report.errors()] == ["not-verified"]
    assert "internal error while tracing layer_norm" in str(report)
    said = " ".join(str(report).split())
    assert "a bug in a rule (details) (details)" in said and "(details) (..." in said and "a dispatch key" not in said


# ---------------------------------------------------------------- real blocks
def _bn(x, w, b):
    return F.batch_norm(x, torch.zeros(w.shape, dtype=x.dtype), torch.ones(w.shape, dtype=x.dtype), w, b, training=True)


def resnet_block(x, w1, g1, b1, w2, g2, b2, w3, g3, b3, fc_w, fc_b, *, detach_residual=False):
    h = F.relu(_bn(F.conv2d(x, w1, padding=1), g1, b1))
    h = F.max_pool2d(h, 2)
    identity = h.detach() if detach_residual else h
    out = F.relu(_bn(F.conv2d(h, w2, padding=1), g2, b2))
    out = _bn(F.conv2d(out, w3, padding=1), g3, b3)
    out = F.relu(out + identity)  # the residual connection
    out = F.adaptive_avg_pool2d(out, 1).flatten(1)
    return F.cross_entropy(F.linear(out, fc_w, fc_b), torch.tensor([1, 3]))


def resnet_inputs():
    c = 4
    shapes = [(2, 3, 6, 6), (c, 3, 3, 3), (c,), (c,), (c, c, 3, 3), (c,), (c,), (c, c, 3, 3), (c,), (c,), (5, c), (5,)]
    return [t(*s, seed=i) for i, s in enumerate(shapes)]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_resnet_block_checks_clean(dtype):
    report = gs.check_function(resnet_block, *resnet_inputs(), dtype=dtype)
    assert _clean(report), str(report)


def test_resnet_block_with_a_detached_residual_names_the_line():
    report = gs.check_function(lambda *xs: resnet_block(*xs, detach_residual=True), *resnet_inputs())
    (f,) = report.errors()
    assert f.kind == "untracked" and f.node == "detach"
    lines, start = inspect.getsourcelines(resnet_block)
    line = start + next(i for i, s in enumerate(lines) if "h.detach()" in s)
    assert f.line == line and f"test_ops_nn.py:{line}" in f.message


TOKENS = torch.tensor([[1, 4, 0, 2, 4], [3, 3, 1, 0, 2]])


def transformer_block(emb, ln1_w, ln1_b, wq, wk, wv, wo, ln2_w, ln2_b, w1, b1, w2, b2, *, sdpa):
    x = F.embedding(TOKENS, emb)  # (2, 5, 8)
    h = F.layer_norm(x, (8,), ln1_w, ln1_b)
    q, k, v = ((h @ w.T).view(2, 5, 2, 4).transpose(1, 2) for w in (wq, wk, wv))  # 2 heads of 4
    if sdpa:
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    else:
        scores = (q @ k.transpose(-2, -1)) / 2.0
        scores = scores.masked_fill(~torch.ones(5, 5, dtype=torch.bool).tril(), float("-inf"))
        a = torch.softmax(scores, dim=-1) @ v
    x = x + a.transpose(1, 2).reshape(2, 5, 8) @ wo.T
    h = F.layer_norm(x, (8,), ln2_w, ln2_b)
    x = x + F.linear(F.gelu(F.linear(h, w1, b1)), w2, b2)
    return x.pow(2).mean()


def transformer_inputs():
    shapes = [(6, 8), (8,), (8,), (8, 8), (8, 8), (8, 8), (8, 8), (8,), (8,), (16, 8), (16,), (8, 16), (8,)]
    return [t(*s, seed=i) for i, s in enumerate(shapes)]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("sdpa", [False, True], ids=["matmul-softmax", "sdpa"])
def test_transformer_block_checks_clean(sdpa, dtype):
    report = gs.check_function(lambda *xs: transformer_block(*xs, sdpa=sdpa), *transformer_inputs(), dtype=dtype)
    assert _clean(report), str(report)


@pytest.mark.parametrize("norm", [
    lambda x, w, b: F.layer_norm(x, (24,), w, b),
    lambda x, w, b: F.group_norm(x.reshape(8, 4, 6), 2, w[:4], b[:4]),
    lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True),
    lambda x, w, b: F.batch_norm(x, x.mean(0), x.var(0), w, b, training=False),
], ids=["layer_norm", "group_norm", "batch_norm train", "batch_norm eval"])
def test_a_norm_of_data_with_an_offset_is_verified_in_float32(norm):
    # Only the weight and bias are traced: the normalised data was folded in float64 and taken as exact, where
    # torch's float32 kernel computes x * rstd - mean * rstd.  Near its mean an entry's value was then 400 times
    # outside its bound: "the rule's value differs from torch's", and the gradients not verified.
    x = (0.05 * torch.randn(8, 24, generator=torch.Generator().manual_seed(0)) + 3).float()
    report = gs.check_function(lambda w, b: norm(x, w, b), torch.ones(24) + 0.1, torch.zeros(24) + 0.2,
                               dtype="float32")
    assert _clean(report), str(report)
    assert "internal error" not in str(report)
    # the exact gradient still decides: the output's gradient scaled by 1 + 1e-4 is caught
    wrong = gs.check_function(injected(lambda w, b: norm(x, w, b)), torch.ones(24) + 0.1, torch.zeros(24) + 0.2,
                              dtype="float32")
    assert "mismatch" in {f.kind for f in wrong.errors()}, str(wrong)


def test_a_conv_bias_before_batch_norm_in_float32_is_no_false_alarm():
    # The bias's gradient is 0 in the math (batch norm takes the mean out); torch's float32 and float64 runs
    # both give exactly 0, the float64 reference 1e-16: the measured allowance was 0 and flagged it.
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1))
    x = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    report = gs.check_function(net, x, dtype="float32")
    assert report.ok and report.checked > 0
    # a wrong bias gradient is still found: the allowance added is float64 rounding at the gradients' scale
    class Bump(torch.autograd.Function):
        @staticmethod
        def forward(ctx, t):
            return t.clone()

        @staticmethod
        def backward(ctx, g):
            return g + 1e-4

    class Wrong(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.rest = net[0], net[1:]

        def forward(self, t):
            return self.rest(Bump.apply(self.conv(t)))

    wrong = gs.check_function(Wrong(), x, dtype="float32")
    assert not wrong.ok and "0.bias" not in {f.node for f in report.findings}
    assert any(f.node == "conv.bias" for f in wrong.errors())


@pytest.mark.parametrize("kind, reason", [
    ("relu", "a relu RNN is not modelled (the kink inside the recurrence has no value of the user's to take its side "
             "from)"),
    ("proj_size", "an LSTM with proj_size is not modelled"),
])
def test_recurrent_layers_refused_say_why(kind, reason):
    torch.manual_seed(0)
    module, run = {
        "relu": (torch.nn.RNN(2, 3, nonlinearity="relu"), lambda m, x: m(x)[0].sum()),
        "proj_size": (torch.nn.LSTM(2, 3, proj_size=2), lambda m, x: m(x)[0].sum()),
    }[kind]
    report = gs.check_function(quiet(lambda x: run(module, x)), torch.randn(4, 2, 2), dtype="float32")
    (finding,) = report.findings
    assert finding.kind == "not-verified" and not report.ok
    assert f"could not model — {reason}" in finding.message, finding.message


def _dropped_between_layers(kind, bidirectional, batch_first, packed, dtype=torch.float32):
    """A 3-layer recurrent layer with dropout 0.4 between its layers, training: (x -> its output's loss)."""
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    torch.manual_seed(0)
    cls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[kind]
    m = cls(2, 3, num_layers=3, dropout=0.4, bidirectional=bidirectional, batch_first=batch_first).to(dtype)

    def f(x):
        if not packed:
            return m(x)[0].pow(2).sum()
        out, _ = m(pack_padded_sequence(x, torch.tensor([5, 4, 2, 1]), batch_first=batch_first, enforce_sorted=True)
                   if batch_first else pack_padded_sequence(x, torch.tensor([4, 3, 3, 2, 1]), enforce_sorted=True))
        return pad_packed_sequence(out, batch_first=batch_first)[0].pow(2).sum()

    return quiet(f)


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("bidirectional, batch_first, packed", [(False, False, False), (True, True, False),
                                                                 (False, True, True), (True, False, True)])
def test_dropout_between_recurrent_layers_is_replayed(kind, bidirectional, batch_first, packed):
    # The word language model's nn.LSTM(..., num_layers=2, dropout=0.2): the masks torch's kernel draws between the
    # layers are drawn again from the generator's state before the call (they were refused: not verified)
    # (in float64: float32's rounding bound through three layers is above the injected error, and above a few of
    # the gradient's entries; a script's float32 run measures its noise instead: tests/scripts/teaching/word_lm.py)
    x = torch.randn(4, 5, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    f = _dropped_between_layers(kind, bidirectional, batch_first, packed, torch.float64)
    report = gs.check_function(f, x)
    assert _clean(report) and report.checked > 0, str(report)
    wrong = gs.check_function(injected(f), x)  # (the gradient still decides)
    assert "mismatch" in {f.kind for f in wrong.errors()}, str(wrong)


def test_gumbel_softmax_noise_not_torch_s_is_refused_by_name(monkeypatch):
    # a replay from another generator state does not give torch's sample: refused, never compared
    from gradcheck_sym.ops.torch import RULES

    rule = RULES["gumbel_softmax"]

    def elsewhere(c, a):
        c.rng_state = torch.Generator().manual_seed(12345).get_state()
        return rule.lower(c, a)

    monkeypatch.setitem(RULES, "gumbel_softmax", rule.__class__("gumbel_softmax", rule.signature, elsewhere))
    report = gs.check_function(seeded(lambda x: F.gumbel_softmax(x, tau=0.5)), t(4, 5))
    assert [f.kind for f in report.errors()] == ["not-verified"]
    assert "gumbel_softmax's noise could not be recovered from the generator state" in " ".join(str(report).split())


def test_a_dropout_mask_between_recurrent_layers_not_torch_s_is_never_compared(monkeypatch):
    # masks other than the kernel's (drawn from another state) give another value: the rule's value is found to
    # differ from torch's, and nothing through it is vouched for
    from gradcheck_sym.ops.torch import recurrent

    drawn = recurrent._between_layers

    def elsewhere(c, *args):
        c.rng_state = torch.Generator().manual_seed(12345).get_state()
        return drawn(c, *args)

    monkeypatch.setattr(recurrent, "_between_layers", elsewhere)
    f = _dropped_between_layers("lstm", False, False, False)
    report = gs.check_function(f, torch.randn(4, 5, 2, generator=torch.Generator().manual_seed(1)), dtype="float32")
    assert not report.ok and "differs from torch's" in str(report), str(report)


# ---------------------------------------------------------------- packed sequences
class _Packed(torch.nn.Module):
    """pack_padded_sequence -> a recurrent layer -> pad_packed_sequence, its output and last states summed."""

    def __init__(self, kind, bidirectional, layers, batch_first, enforce_sorted, lengths):
        super().__init__()
        cls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[kind]
        self.layer = cls(2, 3, num_layers=layers, bidirectional=bidirectional, batch_first=batch_first).double()
        self.kind, self.batch_first, self.enforce_sorted, self.lengths = kind, batch_first, enforce_sorted, lengths

    def forward(self, x, h0):
        from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

        packed = pack_padded_sequence(x, self.lengths, batch_first=self.batch_first, enforce_sorted=self.enforce_sorted)
        out, h = self.layer(packed, (h0, h0 * 0.5) if self.kind == "lstm" else h0)
        padded, lengths = pad_packed_sequence(out, batch_first=self.batch_first, padding_value=0.25, total_length=5)
        hn = h[0] if self.kind == "lstm" else h
        return (padded * padded.detach().sign()).sum() + (hn ** 3).sum() + lengths.sum()


@pytest.mark.parametrize("kind, bidirectional, layers, batch_first, enforce_sorted", [
    ("lstm", False, 1, True, False), ("lstm", True, 2, False, True), ("gru", True, 1, True, True),
    ("rnn", False, 2, False, False)])
def test_a_recurrent_layer_on_a_packed_sequence_checks_clean_and_catches_a_wrong_gradient(
        kind, bidirectional, layers, batch_first, enforce_sorted):
    # the chatbot and classification tutorials' pack_padded_sequence -> LSTM -> pad_packed_sequence was refused:
    # every backward through it not verified
    torch.manual_seed(0)
    lengths = torch.tensor([4, 3, 2]) if enforce_sorted else torch.tensor([2, 4, 3])
    module = _Packed(kind, bidirectional, layers, batch_first, enforce_sorted, lengths)
    x = t(3, 4, 2) if batch_first else t(4, 3, 2)
    h0 = t(layers * (2 if bidirectional else 1), 3, 3, seed=1)
    report = gs.check_function(module, x, h0)
    assert _clean(report) and report.checked > 0, str(report)
    with torch.no_grad():  # the reference's value is torch's
        assert torch.isfinite(module(x, h0))
    report = gs.check_function(_scaled(module), x, h0)
    assert not report.ok and "mismatch" in {f.kind for f in report.errors()}, str(report)
