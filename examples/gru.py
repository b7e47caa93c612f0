"""A worked example of adding an architecture: a GRU language model, outside the harness package.

Name it in a study by dotted path, one config entry, no Snakefile change:

    archs:
      - transformer
      - {name: gru, build: "examples.gru:build"}

The harness needs only `build(**hparams) -> nn.Module` whose forward(input_ids[B, T]) returns
logits [B, T, V]. It passes the study's common hyperparameters (vocab_size, d_model, n_layers,
n_heads, dropout, max_seq_len); `ffn_hidden` is the width the shape solver turns to match the
study's parameter budget (MATCH_KNOB below).
"""

from dataclasses import dataclass

import torch.nn as nn
import torch.nn.functional as F

from harness.archs import make_config

MATCH_KNOB = "ffn_hidden"


@dataclass
class Config:
    vocab_size: int = 256
    d_model: int = 128
    n_layers: int = 2
    n_heads: int = 1  # unused: a GRU has no heads; accepted so every study can pass it
    max_seq_len: int = 1024  # unused: a GRU has no positional table
    dropout: float = 0.0
    ffn_hidden: int | None = None  # None -> 4 * d_model


class Block(nn.Module):
    def __init__(self, c: Config):
        super().__init__()
        hidden = c.ffn_hidden or 4 * c.d_model
        self.norm1 = nn.LayerNorm(c.d_model)
        self.gru = nn.GRU(c.d_model, c.d_model, batch_first=True)
        self.norm2 = nn.LayerNorm(c.d_model)
        self.fc1 = nn.Linear(c.d_model, hidden)
        self.fc2 = nn.Linear(hidden, c.d_model)
        self.drop = nn.Dropout(c.dropout)

    def forward(self, x):
        x = x + self.gru(self.norm1(x))[0]  # a GRU only looks back: causal by construction
        return x + self.drop(self.fc2(F.gelu(self.fc1(self.norm2(x)))))


class Model(nn.Module):
    def __init__(self, config: Config):
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        # small, as in the seed models: the tied head's logits start near 0, the loss near ln V
        # (PyTorch's N(0, 1) embedding makes them tens of nats wide; `harness check` says so)
        nn.init.normal_(self.tok_emb.weight, std=0.02)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.norm_f = nn.LayerNorm(config.d_model)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.lm_head.weight = self.tok_emb.weight  # tied, as in the seed models

    def forward(self, input_ids):
        x = self.tok_emb(input_ids)
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.norm_f(x))


def build(**hparams) -> Model:
    return Model(make_config(Config, hparams, "gru"))
