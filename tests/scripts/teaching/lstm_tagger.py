"""Part-of-speech tagging with an LSTM: embeddings, nn.LSTM, a linear layer and log_softmax, trained with SGD on two
toy sentences (the shape of the official "Sequence models and LSTM networks" tutorial; our own version).
N=... sets the number of epochs."""
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(1)

training_data = [
    ("the dog ate the apple".split(), ["DET", "NN", "V", "DET", "NN"]),
    ("everybody read that book".split(), ["NN", "V", "DET", "NN"]),
]
word_to_ix, tag_to_ix = {}, {"DET": 0, "NN": 1, "V": 2}
for sentence, _ in training_data:
    for word in sentence:
        word_to_ix.setdefault(word, len(word_to_ix))


class LSTMTagger(nn.Module):
    def __init__(self, embedding_dim, hidden_dim, vocab_size, tagset_size):
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab_size, embedding_dim)
        self.lstm = nn.LSTM(embedding_dim, hidden_dim)
        self.hidden2tag = nn.Linear(hidden_dim, tagset_size)

    def forward(self, sentence):
        embeds = self.word_embeddings(sentence)
        lstm_out, _ = self.lstm(embeds.view(len(sentence), 1, -1))
        tag_space = self.hidden2tag(lstm_out.view(len(sentence), -1))
        return F.log_softmax(tag_space, dim=1)


def prepare(seq, to_ix):
    return torch.tensor([to_ix[w] for w in seq], dtype=torch.long)


model = LSTMTagger(6, 6, len(word_to_ix), len(tag_to_ix))
loss_function = nn.NLLLoss()
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

with torch.no_grad():
    print(model(prepare(training_data[0][0], word_to_ix)).argmax(dim=1).tolist())

for epoch in range(int(os.environ.get("N", "30"))):
    for sentence, tags in training_data:
        model.zero_grad()
        tag_scores = model(prepare(sentence, word_to_ix))
        loss = loss_function(tag_scores, prepare(tags, tag_to_ix))
        loss.backward()
        optimizer.step()

with torch.no_grad():
    print(model(prepare(training_data[0][0], word_to_ix)).argmax(dim=1).tolist())
