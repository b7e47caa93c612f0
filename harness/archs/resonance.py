"""resonance: the Causal Oscillator LM, a bank of damped oscillators under a stack of attention blocks.

Source: Roland Sharp's submission to openai/parameter-golf, pull request #1061 (head 54ba8cf, folder
records/track_10min_16mb/2026-03-29_CausalOscillatorLM, train_gpt.py; architecture from
github.com/rolandnsharp/resonance): 1.3379 val bpb at 14,770,432 parameters. Reimplemented here from
its published code, so the submission's state dict loads with ``load_state_dict(strict=True)`` and
gives the same logits; the facts used are in /work/shared/specs/architectures.md, section 4.

Each token is an impulse (``token_drive``, V x K) on K damped harmonic oscillators. Their position
and velocity responses, convolved causally by FFT, are the only context the first block sees: there
is no positional embedding and no other embedding. Then ``n_layers`` pre-norm blocks of bias-free
causal attention and a ``x * sin(x)`` feed-forward at width d_model = 2K, and an untied, biased,
soft-capped readout. The published config is the default.

Switch ``qk_norm`` (default off, as published): QKNorm on queries and keys (layers.QKNorm), adding
2 * head_dim gains per block. Diagnostics (layers.collect):
  attn_logit_max/layers.{i}.attn  largest pre-softmax attention logit of the last recorded forward
  state_damping_{min,max}    extremes of the oscillators' damping ratios zeta (from the parameters)
  state_frequency_{min,max}  extremes of their natural frequencies w0, radians per token (parameters)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from harness.archs import make_config
from harness.archs.fft import causal_fft_conv
from harness.archs.layers import QKNorm, RecordsLogits

RECONSTRUCTION = False  # published code (PR #1061), reproduced exactly
MATCH_KNOB = "ffn_hidden"
SWITCHES = ("qk_norm",)


@dataclass
class Config:
    vocab_size: int = 1024
    d_model: int = 384  # 2K: the position and the velocity of K oscillators
    n_layers: int = 12
    n_heads: int = 16
    ffn_hidden: int | None = None  # None -> 2 * d_model (published); the shape solver's knob
    logit_softcap: float = 30.0  # 0 turns the cap off, as in the source
    max_seq_len: int = 1024  # interface parity: no positional table, the kernels span any length
    dropout: float = 0.0  # interface parity only: the published model has no dropout
    qk_norm: bool = False

    def __post_init__(self):
        if self.ffn_hidden is None:
            self.ffn_hidden = 2 * self.d_model
        if self.d_model < 2 or self.d_model % 2:
            raise ValueError(f"resonance: d_model={self.d_model} must be even (2 x n_oscillators)")
        if self.d_model % self.n_heads:
            raise ValueError(f"resonance: d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        if self.ffn_hidden < 1:
            raise ValueError(f"resonance: ffn_hidden={self.ffn_hidden} must be >= 1")
        if self.logit_softcap < 0:
            raise ValueError(f"resonance: logit_softcap={self.logit_softcap} must be >= 0 (0 = no cap)")
        if self.dropout != 0.0:
            raise ValueError(
                f"resonance: dropout={self.dropout} is not supported; the published model has no "
                "dropout, set dropout: 0"
            )

    @property
    def n_oscillators(self) -> int:
        return self.d_model // 2


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + 1e-8) * scale, with a learned scale (the source's own norm, not F.rms_norm)."""

    def __init__(self, dim: int, eps: float = 1e-8):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.scale


class SineGate(nn.Module):
    """x * sin(x): the feed-forward's nonlinearity (a module, so the ff Sequential's indices are 0 and 2)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sin(x)


class CausalAttention(RecordsLogits, nn.Module):
    """Multi-head causal attention, no biases and no positional encoding: order comes from the oscillators."""

    def __init__(self, dim: int, n_heads: int, qk_norm: bool = False):
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)
        self.q_norm = QKNorm(dim // n_heads) if qk_norm else nn.Identity()
        self.k_norm = QKNorm(dim // n_heads) if qk_norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = (t.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2) for t in self.qkv(x).split(C, dim=-1))
        q, k = self.q_norm(q), self.k_norm(k)
        self.record(q, k)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(y.transpose(1, 2).reshape(B, T, C))


class Block(nn.Module):
    """Pre-norm: x + attn(norm1(x)), then x + ff(norm2(x)) with ff = Linear, x sin x, Linear (biased)."""

    def __init__(self, config: Config):
        super().__init__()
        d, hidden = config.d_model, config.ffn_hidden
        self.norm1 = RMSNorm(d)
        self.attn = CausalAttention(d, config.n_heads, config.qk_norm)
        self.norm2 = RMSNorm(d)
        self.ff = nn.Sequential(nn.Linear(d, hidden), SineGate(), nn.Linear(hidden, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.ff(self.norm2(x))


class Model(nn.Module):
    def __init__(self, config: Config):
        super().__init__()
        self.config = config
        K, d = config.n_oscillators, config.d_model
        # Built in the source's order, so that one seed gives the source's initial weights.
        self.token_drive = nn.Embedding(config.vocab_size, K)
        nn.init.normal_(self.token_drive.weight, std=0.1)
        # w0 = exp(log_omega), geometric from 0.1 to pi (no upper bound once learned);
        # damping ratio zeta = 0.05 + 0.9 sigmoid(damping_pre) in (0.05, 0.95): always underdamped.
        self.log_omega = nn.Parameter(torch.linspace(math.log(0.1), math.log(math.pi), K))
        self.damping_pre = nn.Parameter(torch.zeros(K))
        self.layers = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.out_norm = RMSNorm(d)
        self.out_proj = nn.Linear(d, config.vocab_size)  # untied, with a bias; PyTorch's default init

    def natural_frequency(self) -> torch.Tensor:
        return self.log_omega.exp()

    def damping_ratio(self) -> torch.Tensor:
        return 0.05 + 0.9 * torch.sigmoid(self.damping_pre)

    @torch.no_grad()
    def diagnostics(self) -> dict[str, float]:
        zeta, w0 = self.damping_ratio(), self.natural_frequency()
        return {"state_damping_min": zeta.min().item(), "state_damping_max": zeta.max().item(),
                "state_frequency_min": w0.min().item(), "state_frequency_max": w0.max().item()}

    def kernels(self, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Impulse responses h_pos, h_vel: [K, length], sampled at t = 0..length-1, in at least float32.

        gamma = zeta w0, wd = sqrt(max(w0^2 - gamma^2, 1e-6));
        h_pos(t) = e^{-gamma t} sin(wd t) / wd, h_vel(t) = e^{-gamma t} (cos(wd t) - (gamma / wd) sin(wd t)),
        with the source's 1e-8 added to each wd divisor. Sampled in time, so the response is causal.
        """
        dtype = torch.promote_types(self.log_omega.dtype, torch.float32)
        w0, zeta = self.natural_frequency().to(dtype), self.damping_ratio().to(dtype)
        gamma = zeta * w0
        wd = torch.sqrt((w0 * w0 - gamma * gamma).clamp(min=1e-6))
        t = torch.arange(length, device=w0.device, dtype=dtype)
        decay = torch.exp(-gamma[:, None] * t)
        sin, cos = torch.sin(wd[:, None] * t), torch.cos(wd[:, None] * t)
        h_pos = decay * sin / (wd[:, None] + 1e-8)
        h_vel = decay * (cos - (gamma / (wd + 1e-8))[:, None] * sin)
        return h_pos, h_vel

    def oscillate(self, drive: torch.Tensor) -> torch.Tensor:
        """Oscillator states concat([pos, vel]): [B, T, 2K] for drives [B, T, K], by exact causal FFT convolution.

        The shared convolution pads to a power of two >= 2T, the source to exactly 2T: the same
        numbers up to float round-off (bit-identical when 2T is a power of two, as at T = 1024).
        """
        h_pos, h_vel = self.kernels(drive.size(1))
        states = causal_fft_conv(drive.transpose(1, 2).unsqueeze(1), torch.stack([h_pos, h_vel]))  # [B, 2, K, T]
        return states.flatten(1, 2).transpose(1, 2).contiguous()  # row-major like the source's concat

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.oscillate(self.token_drive(input_ids))
        for layer in self.layers:
            x = layer(x)
        logits = self.out_proj(self.out_norm(x))
        cap = self.config.logit_softcap
        return cap * torch.tanh(logits / cap) if cap > 0 else logits


def build(**hparams) -> Model:
    return Model(make_config(Config, hparams, "resonance"))
