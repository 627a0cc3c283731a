"""A GRU encoder and an attention decoder (additive attention: a score per encoder step from tanh(W q + U k), a
softmax over them, the weighted sum of the keys) trained with teacher forcing on a synthetic reversal task: the
shape of the sequence-to-sequence translation tutorial, our own version.  STEPS=... sets the training steps and
DTYPE=float64 the default dtype."""
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

if os.environ.get("DTYPE") == "float64":
    torch.set_default_dtype(torch.float64)
torch.manual_seed(0)
SOS, EOS, VOCAB, HIDDEN, LENGTH = 0, 1, 12, 32, 6


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.embedding = nn.Embedding(VOCAB, HIDDEN)
        self.gru = nn.GRU(HIDDEN, HIDDEN, batch_first=True)

    def forward(self, words):
        return self.gru(self.embedding(words))


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.W, self.U, self.v = nn.Linear(HIDDEN, HIDDEN), nn.Linear(HIDDEN, HIDDEN), nn.Linear(HIDDEN, 1)

    def forward(self, query, keys):
        scores = self.v(torch.tanh(self.W(query) + self.U(keys))).squeeze(2).unsqueeze(1)
        weights = F.softmax(scores, dim=-1)  # (v's bias shifts every score alike: its gradient is 0)
        return torch.bmm(weights, keys)


class Decoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.embedding = nn.Embedding(VOCAB, HIDDEN)
        self.attention = Attention()
        self.gru = nn.GRU(2 * HIDDEN, HIDDEN, batch_first=True)
        self.out = nn.Linear(HIDDEN, VOCAB)

    def forward(self, keys, hidden, target):
        word = torch.full((keys.size(0), 1), SOS, dtype=torch.long)
        outputs = []
        for i in range(LENGTH):
            context = self.attention(hidden.permute(1, 0, 2), keys)
            output, hidden = self.gru(torch.cat((self.embedding(word), context), dim=2), hidden)
            outputs.append(self.out(output))
            word = target[:, i].unsqueeze(1)  # teacher forcing
        return F.log_softmax(torch.cat(outputs, dim=1), dim=-1)


encoder, decoder = Encoder(), Decoder()
optimizer = torch.optim.Adam([*encoder.parameters(), *decoder.parameters()], lr=0.01)
for step in range(int(os.environ.get("STEPS", "8"))):
    source = torch.cat([torch.randint(2, VOCAB, (8, LENGTH - 1)), torch.full((8, 1), EOS)], dim=1)
    target = torch.cat([source[:, :-1].flip(1), torch.full((8, 1), EOS)], dim=1)
    keys, hidden = encoder(source)
    loss = F.nll_loss(decoder(keys, hidden, target).view(-1, VOCAB), target.view(-1))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
print(f"loss {loss.item():.4f}")
