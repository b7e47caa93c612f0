"""Architectures that fail on purpose, named by dotted path ('tests.faulty_archs:build') in tests."""

from dataclasses import dataclass

import torch
import torch.nn as nn

from harness.archs import make_config


@dataclass
class Config:
    vocab_size: int = 256
    d_model: int = 16
    n_layers: int = 1
    n_heads: int = 1
    max_seq_len: int = 64
    dropout: float = 0.0
    ffn_hidden: int = 16  # the width knob, so that a matched study can size it
    fail_at: int = 10  # the training step at which it fails
    failure: str = "nan"  # "nan": non-finite logits; "raise": an exception


class Model(nn.Module):
    def __init__(self, config: Config):
        super().__init__()
        self.config = config
        self.emb = nn.Embedding(config.vocab_size, config.d_model)
        nn.init.normal_(self.emb.weight, std=0.02)  # a loss near ln V at init: it passes admission, then fails
        self.ffn = nn.Sequential(nn.Linear(config.d_model, config.ffn_hidden), nn.Linear(config.ffn_hidden, config.d_model))
        self.head = nn.Linear(config.d_model, config.vocab_size)
        self.head.weight = self.emb.weight  # tied, so that even a micro budget has room for the knob
        # training forwards so far; a buffer, so a resumed run knows where it is (as trn_hybrid's ramp does)
        self.register_buffer("forward_count", torch.zeros((), dtype=torch.long))

    def forward(self, input_ids):
        x = self.emb(input_ids)
        logits = self.head(x + self.ffn(x))
        if self.training:
            self.forward_count += 1
        if self.training and self.forward_count.item() > self.config.fail_at:
            if self.config.failure == "raise":
                raise RuntimeError("injected failure")
            return logits * float("nan")
        return logits


def build(**hparams) -> Model:
    return Model(make_config(Config, hparams, "faulty"))
