"""resonance: a language model whose token mixer is a bank of damped harmonic oscillators.

RECONSTRUCTION: the final model's code is not public. Rebuilt from its description (oscillators
driven through FFT for local context, attention blocks for global context, additive resynthesis,
tied readout, no positional embedding) and from the author's earlier public version, which
convolves each drive signal with the sampled impulse responses of a damped oscillator
(position and velocity). The choices made here are in /work/shared/specs/architectures.md, section 4.

Block i is the transformer's block when (i + 1) % attn_every == 0 (attn_every 0: none), else an
oscillator block: x + resynth([pos, vel] of drive(LN(x))), then x + FFN(LN(x)). Init, dropout and
the tied head follow the seed models' shared conventions. No published config exists: the defaults
are the transformer's 70M shape so that the two can be matched.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from harness.archs import make_config
from harness.archs.fft import causal_fft_conv
from harness.archs.transformer import Block as AttentionBlock
from harness.archs.transformer import FeedForward, ffn_width, init_weights, tie_lm_head

RECONSTRUCTION = True

W0_MAX = math.pi  # w0 = W0_MAX * sigmoid(theta_w): up to the Nyquist frequency
DAMPING_MAX = 0.95  # g = DAMPING_MAX * sigmoid(theta_g): always underdamped, so wd > 0


@dataclass
class Config:
    vocab_size: int = 256
    d_model: int = 768
    n_layers: int = 10
    n_heads: int = 12
    ffn_mult: int = 4
    max_seq_len: int = 1024  # interface parity: no positional table, the kernels span any length
    dropout: float = 0.0
    n_oscillators: int | None = None  # K per oscillator block; None -> d_model
    attn_every: int = 3  # block i is attention when (i + 1) % attn_every == 0; 0 = no attention
    ffn_hidden: int | None = None  # None -> ffn_mult * d_model; the shape solver's knob

    def __post_init__(self):
        if self.n_oscillators is None:
            self.n_oscillators = self.d_model
        if self.n_oscillators < 1:
            raise ValueError(f"resonance: n_oscillators={self.n_oscillators} must be >= 1")
        if self.attn_every < 0:
            raise ValueError(f"resonance: attn_every={self.attn_every} must be >= 0 (0 = no attention blocks)")
        if self.d_model % self.n_heads:
            raise ValueError(f"resonance: d_model={self.d_model} is not divisible by n_heads={self.n_heads}")


def is_attention_block(i: int, attn_every: int) -> bool:
    return attn_every > 0 and (i + 1) % attn_every == 0


class OscillatorBank(nn.Module):
    """K damped oscillators, two learned parameters each (natural frequency w0, damping ratio g).

    Each oscillator's drive u_k (a projection of the input) is convolved with the impulse responses
    of position and velocity sampled at t = 0..L-1, rebuilt from w0 and g at every forward:
    h_pos(t) = r^t sin(wd t), h_vel(t) = r^t (cos(wd t) - (a/wd) sin(wd t)), with
    wd = w0 sqrt(1 - g^2), a = g w0, r = exp(-a). Sampling in time keeps the response causal, which
    multiplying by the continuous transfer function on the FFT grid would not.
    """

    def __init__(self, d_model: int, n_oscillators: int, dropout: float):
        super().__init__()
        K = n_oscillators
        self.drive = nn.Linear(d_model, K)
        self.resynth = nn.Linear(2 * K, d_model)
        self.dropout = nn.Dropout(dropout)
        w0 = torch.linspace(0.1, 3.0, K, dtype=torch.float64)
        g = torch.linspace(0.05, 0.2, K, dtype=torch.float64)
        self.theta_w = nn.Parameter(torch.logit(w0 / W0_MAX).float())
        self.theta_g = nn.Parameter(torch.logit(g / DAMPING_MAX).float())

    def natural_frequency(self) -> torch.Tensor:
        return W0_MAX * torch.sigmoid(self.theta_w)

    def damping_ratio(self) -> torch.Tensor:
        return DAMPING_MAX * torch.sigmoid(self.theta_g)

    def kernels(self, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """h_pos, h_vel: [K, length] in the parameters' dtype (at least float32)."""
        dtype = torch.promote_types(self.theta_w.dtype, torch.float32)
        w0, g = self.natural_frequency().to(dtype), self.damping_ratio().to(dtype)
        wd = w0 * torch.sqrt(1 - g * g)
        a = g * w0
        t = torch.arange(length, device=w0.device, dtype=dtype)
        envelope = torch.exp(-a[:, None] * t)  # r^t
        sin, cos = torch.sin(wd[:, None] * t), torch.cos(wd[:, None] * t)
        return envelope * sin, envelope * (cos - (a / wd)[:, None] * sin)

    def respond(self, u: torch.Tensor) -> torch.Tensor:
        """Oscillator states [pos, vel]: [B, L, 2K] for drives u: [B, L, K] (at least float32)."""
        h_pos, h_vel = self.kernels(u.shape[1])
        y = causal_fft_conv(u.transpose(1, 2).unsqueeze(1), torch.stack([h_pos, h_vel]))  # [B, 2, K, L]
        return y.flatten(1, 2).transpose(1, 2)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        features = self.respond(self.drive(h))
        return self.dropout(self.resynth(features.to(h.dtype)))


class OscillatorBlock(nn.Module):
    """Pre-norm like the transformer's block, with the oscillator bank in place of attention."""

    def __init__(self, config: Config):
        super().__init__()
        d = config.d_model
        self.norm1 = nn.LayerNorm(d)
        self.osc = OscillatorBank(d, config.n_oscillators, config.dropout)
        self.norm2 = nn.LayerNorm(d)
        self.ffn = FeedForward(d, ffn_width(config), config.dropout)

    def forward(self, x):
        x = x + self.osc(self.norm1(x))
        return x + self.ffn(self.norm2(x))


class Model(nn.Module):
    def __init__(self, config: Config):
        super().__init__()
        self.config = config
        d = config.d_model
        self.tok_emb = nn.Embedding(config.vocab_size, d)
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(
            AttentionBlock(d, config.n_heads, ffn_width(config), config.dropout)
            if is_attention_block(i, config.attn_every)
            else OscillatorBlock(config)
            for i in range(config.n_layers)
        )
        self.norm_f = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, config.vocab_size, bias=False)
        self.apply(init_weights)  # touches Linear/Embedding/LayerNorm only: theta_w, theta_g keep their init
        tie_lm_head(self)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.dropout(self.tok_emb(input_ids))
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.norm_f(x))


def build(**hparams) -> Model:
    return Model(make_config(Config, hparams, "resonance"))
