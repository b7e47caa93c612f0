"""Architectures that break the language-model contract on purpose, one property each, named by dotted
path ('tests.broken_archs:bidirectional_gru') in tests of the admission checks (harness/admission.py).

Each is a bug people meet in practice. ``sound`` is the same small model without the bug: a causal
cumulative-mean mixer and a per-position FFN (``ffn_hidden``, the width knob), a tied head. Every
builder takes the study's common hyperparameters, so a matched study can size it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from examples import gru
from harness.archs import make_config


@dataclass
class Config:
    vocab_size: int = 256
    d_model: int = 16
    n_layers: int = 1
    n_heads: int = 1
    max_seq_len: int = 64
    dropout: float = 0.0
    ffn_hidden: int = 16


class Sound(nn.Module):
    """Embedding, a causal mixer (the running mean of the tokens so far), an FFN, a tied head."""

    def __init__(self, c: Config):
        super().__init__()
        self.config = c
        self.emb = nn.Embedding(c.vocab_size, c.d_model)
        nn.init.normal_(self.emb.weight, std=0.02)
        self.norm = nn.LayerNorm(c.d_model)
        self.fc1 = nn.Linear(c.d_model, c.ffn_hidden)
        self.fc2 = nn.Linear(c.ffn_hidden, c.d_model)
        self.drop = nn.Dropout(c.dropout)
        self.head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        self.head.weight = self.emb.weight

    def mix(self, x: torch.Tensor) -> torch.Tensor:
        steps = torch.arange(1, x.size(1) + 1, device=x.device, dtype=x.dtype)[:, None]
        return x.cumsum(1) / steps

    def ffn(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(F.gelu(self.fc1(self.norm(x)))))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.emb(input_ids)
        x = x + self.mix(x)
        x = x + self.ffn(x)
        return self.head(self.norm(x))


def sound(**hparams) -> Sound:
    return Sound(make_config(Config, hparams, "sound"))


# --- causality ----------------------------------------------------------------------------------------

def bidirectional_gru(**hparams) -> nn.Module:
    """examples/gru.py with its GRU made bidirectional: the backward direction sees every later token."""
    model = gru.build(**hparams)
    for block in model.blocks:
        d = block.gru.input_size
        block.gru = nn.GRU(d, d // 2, batch_first=True, bidirectional=True)  # the one changed line
    return model


class OffByOneAttention(Sound):
    """Single-head attention whose mask lets position t see t + 1 (tril(diagonal=1) for tril())."""

    def __init__(self, c: Config):
        super().__init__(c)
        self.qkv = nn.Linear(c.d_model, 3 * c.d_model)

    def mix(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        T = x.size(1)
        mask = torch.ones(T, T, dtype=torch.bool, device=x.device).tril(diagonal=1)  # the bug: diagonal=1
        scores = (q @ k.transpose(1, 2)) / q.size(-1) ** 0.5
        return scores.masked_fill(~mask, float("-inf")).softmax(-1) @ v


def off_by_one_mask(**hparams) -> OffByOneAttention:
    return OffByOneAttention(make_config(Config, hparams, "off_by_one_mask"))


# --- batch independence -------------------------------------------------------------------------------

class BatchNormed(Sound):
    """BatchNorm1d over the channels of [B, d, T]: its training-mode statistics pool every sequence of
    the batch (and every position, which leaks the future too)."""

    def __init__(self, c: Config):
        super().__init__(c)
        self.bn = nn.BatchNorm1d(c.d_model)

    def mix(self, x: torch.Tensor) -> torch.Tensor:
        return super().mix(self.bn(x.transpose(1, 2)).transpose(1, 2))


def batchnorm(**hparams) -> BatchNormed:
    return BatchNormed(make_config(Config, hparams, "batchnorm"))


# --- output contract ----------------------------------------------------------------------------------

class NanAtInit(Sound):
    """A zero-initialised gain before an eps-free normalisation: 0 / 0 at every position."""

    def __init__(self, c: Config):
        super().__init__(c)
        self.gain = nn.Parameter(torch.zeros(c.d_model))

    def mix(self, x: torch.Tensor) -> torch.Tensor:
        h = super().mix(x) * self.gain
        return h / h.norm(dim=-1, keepdim=True)  # the bug: no eps


def nan_at_init(**hparams) -> NanAtInit:
    return NanAtInit(make_config(Config, hparams, "nan_at_init"))


class ShiftedOutput(Sound):
    """Shifts its logits itself (as if it were the loss): [B, T - 1, V]."""

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return super().forward(input_ids)[:, :-1]


def wrong_shape(**hparams) -> ShiftedOutput:
    return ShiftedOutput(make_config(Config, hparams, "wrong_shape"))


# --- initial loss -------------------------------------------------------------------------------------

class HotHead(Sound):
    """Logits scaled up 100x (an output scale left at the wrong value): a loss far above ln V at init."""

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return 100.0 * super().forward(input_ids)


def hot_init(**hparams) -> HotHead:
    return HotHead(make_config(Config, hparams, "hot_init"))


# --- determinism --------------------------------------------------------------------------------------

def unseeded_init(**hparams) -> Sound:
    """Reseeds torch's global generator from the clock inside build: every build is another model."""
    torch.seed()  # the bug
    return Sound(make_config(Config, hparams, "unseeded_init"))


class DropoutInEval(Sound):
    """Dropout called with training=True: it stays on in evaluation."""

    def ffn(self, x: torch.Tensor) -> torch.Tensor:
        return F.dropout(self.fc2(F.gelu(self.fc1(self.norm(x)))), self.config.dropout, training=True)  # the bug


def dropout_in_eval(**hparams) -> DropoutInEval:
    return DropoutInEval(make_config(Config, hparams, "dropout_in_eval"))


# --- accounting ---------------------------------------------------------------------------------------

class TiedTwice(Sound):
    """The head 'tied' by wrapping the embedding's storage in a new Parameter: one storage, two
    parameters, so model.parameters() (and the shape solver) counts the table twice."""

    def __init__(self, c: Config):
        super().__init__(c)
        self.head.weight = nn.Parameter(self.emb.weight.data)  # the bug: a second Parameter on one storage


def tied_twice(**hparams) -> TiedTwice:
    return TiedTwice(make_config(Config, hparams, "tied_twice"))


class FaintLeak(Sound):
    """A leak scaled down 1e-4 (a path that starts near zero, as a zero-initialised gate does): each
    position gets a trace of the next token's embedding. Invisible at float32's rounding of FFT models,
    plain in float64."""

    def mix(self, x: torch.Tensor) -> torch.Tensor:
        ahead = torch.cat([x[:, 1:], torch.zeros_like(x[:, :1])], dim=1)
        return super().mix(x) + 1e-4 * ahead


def faint_leak(**hparams) -> FaintLeak:
    return FaintLeak(make_config(Config, hparams, "faint_leak"))
