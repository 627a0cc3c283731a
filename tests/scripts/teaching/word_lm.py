"""A word-level language model (the shape of a well-known example repository's: our own version, random tokens): an
embedding, a 2-layer LSTM with dropout 0.2 between its layers, the decoder's weight tied to the embedding's,
truncated backpropagation through time (the hidden state detached each batch), clip_grad_norm_ and a hand-written
SGD step through p.data.  L tokens (600 here: 3 batches)."""
import math, os
import torch
import torch.nn as nn
torch.manual_seed(1111)
ntokens, emsize, nhid, nlayers, bptt, bsz = 200, 32, 32, 2, 20, 10


class RNNModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.drop = nn.Dropout(0.2)
        self.encoder = nn.Embedding(ntokens, emsize)
        self.rnn = nn.LSTM(emsize, nhid, nlayers, dropout=0.2)
        self.decoder = nn.Linear(nhid, ntokens)
        self.decoder.weight = self.encoder.weight
        self.encoder.weight.data.uniform_(-0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)

    def forward(self, input, hidden):
        emb = self.drop(self.encoder(input))
        output, hidden = self.rnn(emb, hidden)
        decoded = self.decoder(self.drop(output)).view(-1, ntokens)
        return nn.functional.log_softmax(decoded, dim=1), hidden

    def init_hidden(self, bsz):
        weight = next(self.parameters())
        return (weight.new_zeros(nlayers, bsz, nhid), weight.new_zeros(nlayers, bsz, nhid))


def repackage_hidden(h):
    return h.detach() if isinstance(h, torch.Tensor) else tuple(repackage_hidden(v) for v in h)


data = torch.randint(0, ntokens, (int(os.environ.get("L", 600)),))
data = data.narrow(0, 0, data.size(0) // bsz * bsz).view(bsz, -1).t().contiguous()
model, criterion, lr = RNNModel(), nn.NLLLoss(), 20.0
model.train()
hidden = model.init_hidden(bsz)
for batch, i in enumerate(range(0, data.size(0) - 1, bptt)):
    seq_len = min(bptt, len(data) - 1 - i)
    d, targets = data[i:i + seq_len], data[i + 1:i + 1 + seq_len].view(-1)
    model.zero_grad()
    hidden = repackage_hidden(hidden)
    output, hidden = model(d, hidden)
    loss = criterion(output, targets)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25)
    for p in model.parameters():
        p.data.add_(p.grad, alpha=-lr)
    print(batch, f"{loss.item():.3f} ppl {math.exp(loss.item()):.1f}")
