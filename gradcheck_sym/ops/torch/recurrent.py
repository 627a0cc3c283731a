"""Recurrent layers, unrolled: ``nn.RNN`` (tanh), ``nn.LSTM``, ``nn.GRU`` and their cells.

Each time step is what torch's documentation writes: the gates are linear layers (a matmul of the step's input
and of the hidden state, plus the biases) through sigmoid and tanh; the layers and directions are run in turn,
each step's hidden state gathered into the output and the last ones into ``h_n`` (and ``c_n``).  So their
derivative comes from the matmuls' and the functions' own rules, never from torch's fused backward.

Refused (their gradients are then not verified, with the reason): packed sequences, relu RNNs (the kink inside
the recurrence has no value of the user's to take its side from), LSTM projections (``proj_size``) and dropout
between layers while training (its mask is drawn inside the fused kernel).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from .. import prims as P
from ..ew import ADD, MUL, SUB
from .elementwise import table_fn
from .linalg import matmul, plus
from .registry import Ctx, Refused, rule

__all__: list[str] = []


def _positions(shape: Sequence[int]) -> torch.Tensor:
    return torch.arange(int(torch.tensor(shape).prod()) if shape else 1).reshape(tuple(shape))


def _part(h: Any, shape: Sequence[int], index: Any) -> Any:
    """``h[index]`` (a basic index of a tensor of `shape`), as a gather."""
    return P.take(h, _positions(shape)[index])


def _placed(parts: list[Any], shape: Sequence[int], indices: list[Any]) -> Any:
    """A tensor of `shape` whose ``[indices[k]]`` is ``parts[k]`` (the places cover it)."""
    out = None
    positions = _positions(shape)
    for part, index in zip(parts, indices):
        placed = P.segsum(part, positions[index], tuple(shape))
        out = placed if out is None else P.ew(ADD, out, placed)
    return out


def _linear(x: Any, w: Any, b: Any) -> Any:
    out = matmul(x, P.mT(w))
    return out if b is None else plus(out, b)


def _gate(g: Any, batch: int, hidden: int, k: int, count: int) -> Any:
    """The k-th of `count` gates side by side in g (batch, count * hidden)."""
    return _part(g, (batch, count * hidden), (slice(None), slice(k * hidden, (k + 1) * hidden)))


def _step(kind: str, x: Any, state: tuple[Any, Any | None], w: tuple[Any, Any, Any, Any], batch: int,
          hidden: int) -> tuple[Any, Any | None]:
    """One time step of a `kind` cell: the new hidden state (and cell state, for an LSTM)."""
    sig, tanh = table_fn("sigmoid", 1), table_fn("tanh", 1)
    h, cell = state
    gi, gh = _linear(x, w[0], w[2]), _linear(h, w[1], w[3])
    if kind == "rnn_tanh":
        return P.ew(tanh, P.ew(ADD, gi, gh)), None
    if kind == "lstm":  # gates i, f, g, o
        g = P.ew(ADD, gi, gh)
        i, f, c, o = (_gate(g, batch, hidden, k, 4) for k in range(4))
        cell = P.ew(ADD, P.ew(MUL, P.ew(sig, f), cell), P.ew(MUL, P.ew(sig, i), P.ew(tanh, c)))
        return P.ew(MUL, P.ew(sig, o), P.ew(tanh, cell)), cell
    # gru: gates r, z, n; n = tanh(W_in x + b_in + r (W_hn h + b_hn)); h' = n + z (h - n)
    r = P.ew(sig, P.ew(ADD, _gate(gi, batch, hidden, 0, 3), _gate(gh, batch, hidden, 0, 3)))
    z = P.ew(sig, P.ew(ADD, _gate(gi, batch, hidden, 1, 3), _gate(gh, batch, hidden, 1, 3)))
    n = P.ew(tanh, P.ew(ADD, _gate(gi, batch, hidden, 2, 3), P.ew(MUL, r, _gate(gh, batch, hidden, 2, 3))))
    return P.ew(ADD, n, P.ew(MUL, z, P.ew(SUB, h, n))), None


def _layers(c: Ctx, kind: str) -> Any:
    args = list(c.args)  # type: ignore[attr-defined]
    if len(args) < 9 or (isinstance(args[1], torch.Tensor) and not args[1].is_floating_point()):
        raise Refused("packed sequences are not modelled")
    x, hx, params, has_biases, layers, dropout, train, bidirectional, batch_first = args[:9]
    dirs = 2 if bidirectional else 1
    per = 4 if has_biases else 2
    if len(params) != layers * dirs * per:
        raise Refused("an LSTM with proj_size is not modelled")
    if train and dropout > 0 and layers > 1:
        raise Refused("dropout between the layers of a recurrent layer is drawn inside its kernel: not modelled")
    if x.dim() != 3:
        raise Refused("a recurrent layer's input of other than 3 dimensions")
    h0, c0 = (hx[0], hx[1]) if kind == "lstm" else (hx, None)
    shape = tuple(x.shape)
    steps, batch = (shape[1], shape[0]) if batch_first else (shape[0], shape[1])
    hidden = h0.shape[-1]
    state_shape = tuple(h0.shape)

    def at(t: int) -> Any:  # a step's index in a (time, batch, ...) or (batch, time, ...) tensor
        return (slice(None), t) if batch_first else t

    seq = [_part(c.v(x), shape, at(t)) for t in range(steps)]
    last_h, last_c = [], []
    for layer in range(layers):
        ys: list[list[Any]] = []
        for d in range(dirs):
            k = layer * dirs + d
            w = tuple(c.v(p) for p in params[k * per:(k + 1) * per])
            if not has_biases:
                w += (None, None)
            state = (_part(c.v(h0), state_shape, k), None if c0 is None else _part(c.v(c0), state_shape, k))
            out: list[Any] = [None] * steps
            for t in (range(steps) if d == 0 else reversed(range(steps))):
                state = _step(kind, seq[t], state, w, batch, hidden)  # type: ignore[arg-type]
                out[t] = state[0]
            ys.append(out)
            last_h.append(state[0])
            last_c.append(state[1])
        width = (batch, dirs * hidden)
        seq = [ys[0][t] if dirs == 1 else _placed([y[t] for y in ys], width,
                                                  [(slice(None), slice(d * hidden, (d + 1) * hidden))
                                                   for d in range(dirs)]) for t in range(steps)]
    out_shape = (batch, steps, dirs * hidden) if batch_first else (steps, batch, dirs * hidden)
    output = _placed(seq, out_shape, [at(t) for t in range(steps)])
    h_n = _placed(last_h, state_shape, list(range(len(last_h))))
    if kind == "lstm":
        return output, h_n, _placed(last_c, state_shape, list(range(len(last_c))))
    return output, h_n


def _cell(c: Ctx, kind: str) -> Any:
    args = list(c.args)  # type: ignore[attr-defined]
    x, hx, w_ih, w_hh = args[:4]
    b_ih, b_hh = (list(args[4:6]) + [None, None])[:2]
    if x.dim() != 2:
        raise Refused("a recurrent cell's input of other than 2 dimensions")
    h0, c0 = (hx[0], hx[1]) if kind == "lstm" else (hx, None)
    w = tuple(None if p is None else c.v(p) for p in (w_ih, w_hh, b_ih, b_hh))
    h, cell = _step(kind, c.v(x), (c.v(h0), None if c0 is None else c.v(c0)), w, x.shape[0], h0.shape[-1])
    return (h, cell) if kind == "lstm" else h


def _relu(c: Ctx, a: Any) -> Any:
    raise Refused("a relu RNN is not modelled (the kink inside the recurrence has no value of the user's to take its "
                  "side from)")


rule("rnn_relu", "rnn_relu_cell", sig=lambda *args, **kwargs: 0)(_relu)
rule("rnn_tanh", sig=lambda *args, **kwargs: 0)(lambda c, a: _layers(c, "rnn_tanh"))
rule("lstm", sig=lambda *args, **kwargs: 0)(lambda c, a: _layers(c, "lstm"))
rule("gru", sig=lambda *args, **kwargs: 0)(lambda c, a: _layers(c, "gru"))
rule("rnn_tanh_cell", sig=lambda *args, **kwargs: 0)(lambda c, a: _cell(c, "rnn_tanh"))
rule("lstm_cell", sig=lambda *args, **kwargs: 0)(lambda c, a: _cell(c, "lstm"))
rule("gru_cell", sig=lambda *args, **kwargs: 0)(lambda c, a: _cell(c, "gru"))
