"""Recurrent layers, unrolled: ``nn.RNN`` (tanh), ``nn.LSTM``, ``nn.GRU`` and their cells.

Each time step is what torch's documentation writes: the gates are linear layers (a matmul of the step's input
and of the hidden state, plus the biases) through sigmoid and tanh; the layers and directions are run in turn,
each step's hidden state gathered into the output and the last ones into ``h_n`` (and ``c_n``).  So their
derivative comes from the matmuls' and the functions' own rules, never from torch's fused backward.

Packed sequences (``pack_padded_sequence``, an RNN on a ``PackedSequence``, ``pad_packed_sequence``) are gathers
and scatters of rows: at step t the first ``batch_sizes[t]`` sequences step, the others keep their state (a
sequence that ended has its last state in ``h_n``; in the reverse direction a sequence starts from ``h_0`` at its
own last step).

Dropout between layers while training (``nn.LSTM(..., num_layers=2, dropout=0.2)``, the word language model's) is
drawn inside torch's kernel, after each layer but the last, on that layer's whole output: ``at::dropout`` on a
(time, batch, directions * hidden) tensor, or on a packed sequence's rows.  Its masks are replayed from the default
generator's state before the call, in that order (as `dropout.draw_mask` replays ``F.dropout``'s); a replay that
does not give torch's output shows as a value our rule got wrong, never as a gradient.

Refused (their gradients are then not verified, with the reason): relu RNNs (the kink inside the recurrence has no
value of the user's to take its side from) and LSTM projections (``proj_size``).
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
    if len(args) >= 9 and isinstance(args[1], torch.Tensor) and not args[1].is_floating_point():
        return _packed_layers(c, kind, args)
    if len(args) < 9:
        raise Refused("a recurrent layer called with other arguments than nn.RNN's")
    x, hx, params, has_biases, layers, dropout, train, bidirectional, batch_first = args[:9]
    dirs = 2 if bidirectional else 1
    per = 4 if has_biases else 2
    _refuse(params, layers, dirs, per)
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
    noises = _between_layers(c, x, layers, train, dropout, (steps, batch, dirs * hidden))
    for layer in range(layers):
        if layer:  # (the layer before's output as the next one reads it: through its dropout)
            seq = [P.ew(MUL, s, noises[layer - 1][t]) for t, s in enumerate(seq)] if noises else seq
        ys: list[list[Any]] = []
        for d in range(dirs):
            k = layer * dirs + d
            w, state = _weights_and_start(c, params, k, per, h0, c0, state_shape)
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


def _weights_and_start(c: Ctx, params: Sequence[Any], k: int, per: int, h0: Any, c0: Any,
                       state_shape: tuple[int, ...]) -> tuple[tuple[Any, ...], tuple[Any, Any]]:
    """Layer-direction k's weights (w_ih, w_hh, b_ih, b_hh: None without biases) and its initial state."""
    w = tuple(c.v(p) for p in params[k * per:(k + 1) * per])
    if per == 2:
        w += (None, None)
    return w, (_part(c.v(h0), state_shape, k), None if c0 is None else _part(c.v(c0), state_shape, k))


def _refuse(params: Sequence[Any], layers: int, dirs: int, per: int) -> None:
    if len(params) != layers * dirs * per:
        raise Refused("an LSTM with proj_size is not modelled")


def _between_layers(c: Ctx, x: torch.Tensor, layers: int, train: bool, p: float,
                    shape: tuple[int, ...]) -> list[torch.Tensor] | None:
    """The dropout torch's kernel applied to each layer's output but the last: ``mask / (1 - p)`` in the input's
    dtype (as torch scales it), as float64 of `shape`; None where there is none."""
    if not train or p == 0 or layers < 2:
        return None
    if p >= 1:  # (torch multiplies by 0 and draws nothing)
        return [torch.zeros(shape, dtype=torch.float64)] * (layers - 1)
    if c.rng_state is None or x.device.type != "cpu":
        raise Refused("the masks of the dropout between a recurrent layer's layers could not be recovered (not a CPU "
                      "generator)")
    gen = torch.Generator()
    gen.set_state(c.rng_state)
    # one draw per layer but the last, in order, each into a new tensor of the layer output's shape and dtype, as
    # ATen's `_dropout_impl` draws (`empty_like(input).bernoulli_(1 - p)`), continuing from the one before
    return [(torch.empty(shape, dtype=x.dtype).bernoulli_(1 - p, generator=gen) / (1 - p)).to(torch.float64)
            for _ in range(layers - 1)]


def _packed_layers(c: Ctx, kind: str, args: list[Any]) -> Any:
    """A recurrent layer on a packed sequence: ``(data, batch_sizes, hx, params, has_biases, layers, dropout,
    train, bidirectional)``; the output is packed as its input."""
    data, sizes, hx, params, has_biases, layers, dropout, train, bidirectional = args[:9]
    dirs = 2 if bidirectional else 1
    per = 4 if has_biases else 2
    _refuse(params, layers, dirs, per)
    sizes = [int(b) for b in sizes.tolist()]
    offsets = [sum(sizes[:t]) for t in range(len(sizes))]
    rows = sum(sizes)
    h0, c0 = (hx[0], hx[1]) if kind == "lstm" else (hx, None)
    state_shape = tuple(h0.shape)
    batch, hidden = state_shape[1], state_shape[2]
    seq, width = c.v(data), data.shape[1]
    last_h, last_c = [], []
    noises = _between_layers(c, data, layers, train, dropout, (rows, dirs * hidden))
    for layer in range(layers):
        if layer and noises:  # (the layer before's output as the next one reads it: through its dropout)
            seq = P.ew(MUL, seq, noises[layer - 1])
        outs = []
        for d in range(dirs):
            k = layer * dirs + d
            w, start = _weights_and_start(c, params, k, per, h0, c0, state_shape)
            out, final = _packed_direction(kind, seq, (rows, width), sizes, offsets, start, w, batch, hidden, d == 1)
            outs.append(out)
            last_h.append(final[0])
            last_c.append(final[1])
        width = dirs * hidden
        seq = outs[0] if dirs == 1 else _placed(outs, (rows, width), [(slice(None), slice(d * hidden, (d + 1) * hidden))
                                                                       for d in range(dirs)])
    h_n = _placed(last_h, state_shape, list(range(len(last_h))))
    if kind == "lstm":
        return seq, h_n, _placed(last_c, state_shape, list(range(len(last_c))))
    return seq, h_n


def _packed_direction(kind: str, seq: Any, shape: tuple[int, int], sizes: list[int], offsets: list[int],
                      start: tuple[Any, Any], w: Any, batch: int, hidden: int, backwards: bool) -> tuple[Any, Any]:
    """One direction of one layer over packed rows: its output rows (packed) and each sequence's last state."""
    def rows_of(h: Any, n: int, lo: int, hi: int) -> Any:  # rows [lo, hi) of an (n, hidden) state
        return h if (lo, hi) == (0, n) else _part(h, (n, hidden), slice(lo, hi))

    def joined(parts: list[tuple[Any, int, int]], n: int) -> Any:  # rows placed at [lo, hi) of an (n, hidden)
        if len(parts) == 1 and (parts[0][1], parts[0][2]) == (0, n):
            return parts[0][0]
        return _placed([p for p, _, _ in parts], (n, hidden), [slice(lo, hi) for _, lo, hi in parts])

    steps = range(len(sizes) - 1, -1, -1) if backwards else range(len(sizes))
    out: list[Any] = [None] * len(sizes)
    done: list[tuple[Any, ...]] = []  # (h, c, lo, hi): sequences that ended, forwards
    first = sizes[next(iter(steps))]
    state = tuple(None if s is None else rows_of(s, batch, 0, first) for s in start)
    active = first
    for t in steps:
        n = sizes[t]
        if n < active:  # forwards: sequences [n, active) ended at the step before
            done.append((*(None if s is None else rows_of(s, active, n, active) for s in state), n, active))
            state = tuple(None if s is None else rows_of(s, active, 0, n) for s in state)
        elif n > active:  # backwards: sequences [active, n) start here, from h_0
            state = tuple(None if s is None else joined([(s, 0, active), (rows_of(s0, batch, active, n), active, n)], n)
                          for s, s0 in zip(state, start))
        active = n
        x = _part(seq, shape, slice(offsets[t], offsets[t] + n))
        state = _step(kind, x, state, w, n, hidden)  # type: ignore[arg-type]
        out[t] = state[0]
    final = []
    for i in range(2):
        if state[i] is None:
            final.append(None)
            continue
        parts = [(p[i], p[2], p[3]) for p in done] + [(state[i], 0, active)]
        final.append(joined(parts, batch))
    packed = _placed(out, shape[:1] + (hidden,), [slice(offsets[t], offsets[t] + sizes[t]) for t in range(len(sizes))])
    return packed, tuple(final)


def _pack_padded(c: Ctx, a: Any) -> Any:
    x, lengths = c.args[0], c.args[1]  # type: ignore[attr-defined]
    batch_first = bool(c.args[2]) if len(c.args) > 2 else False  # type: ignore[attr-defined]
    lengths = [int(n) for n in torch.as_tensor(lengths).tolist()]
    shape = tuple(x.shape)
    positions = _positions(shape)
    picked = [positions[b, t] if batch_first else positions[t, b]
              for t in range(max(lengths)) for b in range(len(lengths)) if lengths[b] > t]
    return P.take(c.v(x), torch.stack(picked)), None


def _pad_packed(c: Ctx, a: Any) -> Any:
    data, sizes, batch_first, padding, total = c.args[:5]  # type: ignore[attr-defined]
    sizes = [int(b) for b in sizes.tolist()]
    batch, steps = sizes[0], int(total)
    feature = tuple(data.shape[1:])
    shape = ((batch, steps) if batch_first else (steps, batch)) + feature
    positions = _positions(shape)
    where = torch.stack([positions[b, t] if batch_first else positions[t, b]
                         for t in range(len(sizes)) for b in range(sizes[t])])
    out = P.segsum(c.v(data), where, shape)
    if float(padding) != 0.0:
        filled = torch.zeros(shape, dtype=torch.bool)
        filled.view(-1)[where.reshape(-1)] = True
        out = P.ew(ADD, out, torch.where(filled, 0.0, float(padding)).to(torch.float64))
    return out, None


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
rule("_pack_padded_sequence", sig=lambda *args, **kwargs: 0)(_pack_padded)
rule("_pad_packed_sequence", sig=lambda *args, **kwargs: 0)(_pad_packed)
rule("rnn_tanh", sig=lambda *args, **kwargs: 0)(lambda c, a: _layers(c, "rnn_tanh"))
rule("lstm", sig=lambda *args, **kwargs: 0)(lambda c, a: _layers(c, "lstm"))
rule("gru", sig=lambda *args, **kwargs: 0)(lambda c, a: _layers(c, "gru"))
rule("rnn_tanh_cell", sig=lambda *args, **kwargs: 0)(lambda c, a: _cell(c, "rnn_tanh"))
rule("lstm_cell", sig=lambda *args, **kwargs: 0)(lambda c, a: _cell(c, "lstm"))
rule("gru_cell", sig=lambda *args, **kwargs: 0)(lambda c, a: _cell(c, "gru"))
