"""A bidirectional LSTM with a CRF on top, trained by its negative log-likelihood (the shape of a published
tutorial on dynamic decisions; our own version and toy data): the forward algorithm over tags one at a time with a
max-shifted log-sum-exp, impossible transitions at -10000, the gold path's score by indexing, Viterbi decoding under
no_grad.  EPOCHS passes over two sentences (2 here, 300 at the tutorial's size in benchmarks/teaching.py)."""
import os

import torch
from torch import nn

torch.manual_seed(3)
TAGS = ["B", "I", "O", "<s>", "</s>"]
START, STOP = TAGS.index("<s>"), TAGS.index("</s>")
data = [("a cat sat on the mat by the door".split(), "B I O O B I O B I".split()),
        ("dogs ran to the park".split(), "B O O B I".split())]
vocab = {w: i for i, w in enumerate(sorted({w for words, _ in data for w in words}))}


def lse(v):  # log-sum-exp of a (1, n) row, shifted by its largest entry
    top = v[0, int(torch.argmax(v, 1))]
    return top + torch.log(torch.exp(v - top.view(1, -1).expand(1, v.size(1))).sum())


class Tagger(nn.Module):
    def __init__(self, n_words, n_tags, dim=5, hidden=4):
        super().__init__()
        self.n = n_tags
        self.emb = nn.Embedding(n_words, dim)
        self.lstm = nn.LSTM(dim, hidden // 2, bidirectional=True)
        self.out = nn.Linear(hidden, n_tags)
        self.trans = nn.Parameter(torch.randn(n_tags, n_tags))  # trans[j, i]: from tag i to tag j
        self.trans.data[START, :] = -10000
        self.trans.data[:, STOP] = -10000

    def features(self, words):
        state = (torch.randn(2, 1, self.lstm.hidden_size), torch.randn(2, 1, self.lstm.hidden_size))
        h, _ = self.lstm(self.emb(words).view(len(words), 1, -1), state)
        return self.out(h.view(len(words), -1))

    def partition(self, feats):
        alpha = torch.full((1, self.n), -10000.0)
        alpha[0][START] = 0.0
        for f in feats:
            alpha = torch.cat([lse(alpha + self.trans[j].view(1, -1) + f[j].view(1, -1).expand(1, self.n)).view(1)
                               for j in range(self.n)]).view(1, -1)
        return lse(alpha + self.trans[STOP])

    def gold(self, feats, tags):
        path = torch.cat([torch.tensor([START]), tags])
        score = torch.zeros(1)
        for i, f in enumerate(feats):
            score = score + self.trans[path[i + 1], path[i]] + f[path[i + 1]]
        return score + self.trans[STOP, path[-1]]

    def nll(self, words, tags):
        feats = self.features(words)
        return self.partition(feats) - self.gold(feats, tags)

    def decode(self, words):
        feats, back = self.features(words), []
        best = torch.full((1, self.n), -10000.0)
        best[0][START] = 0.0
        for f in feats:
            scores = [best + self.trans[j] for j in range(self.n)]
            ids = [int(torch.argmax(s, 1)) for s in scores]
            back.append(ids)
            best = (torch.cat([s[0][i].view(1) for s, i in zip(scores, ids)]) + f).view(1, -1)
        last = int(torch.argmax(best + self.trans[STOP], 1))
        path = [last]
        for ids in reversed(back):
            path.append(ids[path[-1]])
        return path[::-1][1:]


model = Tagger(len(vocab), len(TAGS))
opt = torch.optim.SGD(model.parameters(), lr=0.01, weight_decay=1e-4)
encode = lambda words: torch.tensor([vocab[w] for w in words])  # noqa: E731
for epoch in range(int(os.environ.get("EPOCHS", "2"))):
    for words, tags in data:
        model.zero_grad()
        loss = model.nll(encode(words), torch.tensor([TAGS.index(t) for t in tags]))
        loss.backward()
        opt.step()
with torch.no_grad():
    print(round(loss.item(), 4), model.decode(encode(data[0][0])))
