"""memnls: Memory-NLS, the seed's headline model (a nonlinear-Schroedinger-style mixer with memory).

Each block's mixer gates its projected input by a scalar potential per position,
V = Lambda * rho + sum_j lambda_j * y_j, where rho is the mean squared activation and the y_j are
exponential moving averages of rho at H fixed rates. Only the two projections of the mixer learn.

Two published quirks are reproduced by default: the block is ``x = mixer(norm1(x))`` with the
residual taken from the normalised input (``residual: "published"``; ``"standard"`` is the
ablation x + mixer(norm1(x))), and the model has no positional embedding (``use_positional``).

Defaults are the published 70M config (71,069,184 parameters), including dt = 0.05 as both published
runs used (the reference library's own default dt is 0.01).

The model is built around a mixer class (``Model(config, mixer=...)``), so that a control such as
diag_ssm swaps only the mixer and keeps embedding, norms, FFN, residual, head and init.

No switches (no attention: qk_norm does not apply). Diagnostics (layers.collect):
  state_potential_{min,max}/blocks.{i}.mixer  extremes of the potential V, the gain the mixer puts on its
                                              input, over the batch's positions (last recorded forward)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from harness.archs import make_config
from harness.archs.fft import causal_fft_conv
from harness.archs.transformer import FeedForward, ffn_width, init_weights, tie_lm_head

RESIDUALS = ("published", "standard")


@dataclass
class Config:
    vocab_size: int = 256
    d_model: int = 768
    n_layers: int = 10
    n_heads: int = 12  # H memory modes (no channel split)
    ffn_mult: int = 5
    max_seq_len: int = 1024
    dropout: float = 0.0
    use_positional: bool = False
    nonlinearity_strength: float = -0.5  # Lambda, the cubic self-interaction (negative: attractive)
    memory_coupling_total: float = 0.3  # sum_j lambda_j
    nu_min: float = 0.5
    nu_max: float = 10.0
    dt: float = 0.05
    fast_bias: float = 3.0  # lambda_0 / lambda_{H-1}
    dissipation: float = 0.0  # gamma0 of the FDT noise
    fdt_temperature: float = 0.0  # T of the FDT noise
    residual: str = "published"
    ffn_hidden: int | None = None  # None -> ffn_mult * d_model; the shape solver's knob

    def __post_init__(self):
        if self.n_heads < 2:
            raise ValueError(
                f"memnls: n_heads={self.n_heads}, but the memory modes are spaced over n_heads - 1 intervals: "
                "use n_heads >= 2"
            )
        if not 0 < self.nu_min <= self.nu_max:
            raise ValueError(f"memnls: need 0 < nu_min <= nu_max, got nu_min={self.nu_min}, nu_max={self.nu_max}")
        if self.dissipation < 0 or self.fdt_temperature < 0:
            raise ValueError(
                f"memnls: dissipation={self.dissipation} and fdt_temperature={self.fdt_temperature} must be >= 0"
            )


def causal_ema(u: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """y(t) = a*y(t-1) + (1-a)*u(t), y(-1) = 0, along the last axis of u, for each rate in a.

    Evaluated as a causal convolution with kernel (1-a)*a**tau by zero-padded FFT, in at least
    float32 whatever the autocast state. u: [..., L]; a: [C] broadcasting against u's axis -2.
    """
    dtype = torch.promote_types(u.dtype, torch.float32)
    a = a.to(dtype)
    kernel = (1 - a)[:, None] * a[:, None] ** torch.arange(u.shape[-1], device=u.device, dtype=dtype)
    return causal_fft_conv(u, kernel)


class MemoryNLSLayer(nn.Module):
    """The Memory-NLS mixer; returns output_proj(update) and leaves the residual to the block."""

    def __init__(self, config: Config):
        super().__init__()
        d, H = config.d_model, config.n_heads
        self.input_proj = nn.Linear(d, d)
        self.output_proj = nn.Linear(d, d)
        self.dropout = nn.Dropout(config.dropout)
        self.nonlinearity_strength = float(config.nonlinearity_strength)
        # FDT-locked noise scale sqrt(2 * gamma0 * T * dt): zero (off) unless both gamma0 and T are positive
        self.noise_std = math.sqrt(2 * config.dissipation * config.fdt_temperature * config.dt)
        # fixed buffers (published in the weights file): rates geometric from fast (nu_max) to slow (nu_min),
        # couplings weighted fast_bias : 1 from fast to slow and normalised to memory_coupling_total
        frac = torch.arange(H, dtype=torch.float64) / (H - 1)
        nus = config.nu_max * (config.nu_min / config.nu_max) ** frac
        lambdas = config.fast_bias ** (1 - frac)
        lambdas = lambdas * (config.memory_coupling_total / lambdas.sum())
        self.register_buffer("nus", nus.float())
        self.register_buffer("alphas", torch.exp(-nus * config.dt).float())
        self.register_buffer("lambdas", lambdas.float())
        self.recording = False
        self.recorded: dict[str, float] = {}

    def diagnostics(self) -> dict[str, float]:
        return self.recorded

    def memory(self, rho: torch.Tensor) -> torch.Tensor:
        """The memory modes y_j(t) of a density rho [B, L]: [B, L, H]."""
        return causal_ema(rho[:, None, :], self.alphas).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_in = self.input_proj(x)
        with torch.autocast(device_type=x.device.type, enabled=False):
            x_in32 = x_in.to(torch.promote_types(x_in.dtype, torch.float32))
            rho = x_in32.pow(2).mean(dim=-1)  # [B, L]: one scalar per position
            potential = self.nonlinearity_strength * rho + self.memory(rho) @ self.lambdas.to(rho.dtype)
            if self.recording:
                self.recorded = dict(zip(("state_potential_min", "state_potential_max"),
                                         torch.stack(torch.aminmax(potential.detach())).tolist()))
            update = potential[..., None] * x_in32
            if self.noise_std and self.training:
                update = update + self.noise_std * torch.randn_like(update)
        return self.dropout(self.output_proj(update.to(x_in.dtype)))


class Block(nn.Module):
    """norm1 -> mixer -> residual ("published": from norm1(x); "standard": from x), then x + ffn(norm2(x))."""

    def __init__(self, config, mixer: type[nn.Module]):
        super().__init__()
        d = config.d_model
        self.published_residual = config.residual == "published"
        self.norm1 = nn.LayerNorm(d)
        self.mixer = mixer(config)
        self.norm2 = nn.LayerNorm(d)
        self.ffn = FeedForward(d, ffn_width(config), config.dropout)

    def forward(self, x):
        h = self.norm1(x)
        x = (h if self.published_residual else x) + self.mixer(h)
        return x + self.ffn(self.norm2(x))


class Model(nn.Module):
    """tok_emb (+ pos_emb if use_positional) -> blocks -> norm_f -> tied head.

    ``config`` needs vocab_size, d_model, n_layers, ffn_mult, ffn_hidden, max_seq_len, dropout,
    use_positional and residual, plus whatever ``mixer(config)`` reads.
    """

    def __init__(self, config, mixer: type[nn.Module] = MemoryNLSLayer):
        super().__init__()
        if config.residual not in RESIDUALS:
            raise ValueError(f"residual={config.residual!r}: choose one of {list(RESIDUALS)}")
        self.config = config
        d = config.d_model
        self.tok_emb = nn.Embedding(config.vocab_size, d)
        if config.use_positional:
            self.pos_emb = nn.Embedding(config.max_seq_len, d)
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config, mixer) for _ in range(config.n_layers))
        self.norm_f = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, config.vocab_size, bias=False)
        self.apply(init_weights)
        tie_lm_head(self)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.tok_emb(input_ids)
        if self.config.use_positional:
            T = input_ids.shape[1]
            if T > self.config.max_seq_len:
                raise ValueError(f"sequence length {T} exceeds max_seq_len={self.config.max_seq_len}")
            x = x + self.pos_emb(torch.arange(T, device=input_ids.device))
        x = self.dropout(x)
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.norm_f(x))


def build(**hparams) -> Model:
    return Model(make_config(Config, hparams, "memnls"))
