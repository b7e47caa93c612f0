"""diag_ssm: memnls with its mixer swapped for a plain learned diagonal linear recurrence (a control).

The seed calls memnls's memory "mathematically equivalent to the diagonal-state update of
S4/S5/Mamba/RWKV". This model keeps everything of memnls (embedding, norms, FFN, the ``residual``
option with the same default, tied head, init) and replaces the mixer by
y_c(t) = a_c y_c(t-1) + (1 - a_c) x_in_c(t) per channel, with learned rates and no gate, no nonlinear
potential and no noise: a gap between the two measures what the physics terms add.
Parameters: memnls's plus d_model per layer (log_nu).

No switches (no attention). Diagnostics (layers.collect):
  state_decay_{min,max}/blocks.{i}.mixer  extremes of the per-channel rates a_c (parameters; near 1 = long memory)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from harness.archs import make_config, memnls


@dataclass
class Config:
    """Defaults follow memnls's published 70M config, so the rates span the same range."""

    vocab_size: int = 256
    d_model: int = 768
    n_layers: int = 10
    n_heads: int = 12  # unused (the recurrence is per channel); accepted so a study's common block applies
    ffn_mult: int = 5
    max_seq_len: int = 1024
    dropout: float = 0.0
    use_positional: bool = False
    nu_min: float = 0.5
    nu_max: float = 10.0
    dt: float = 0.05
    residual: str = "published"
    ffn_hidden: int | None = None  # None -> ffn_mult * d_model; the shape solver's knob

    def __post_init__(self):
        if not 0 < self.nu_min <= self.nu_max:
            raise ValueError(f"diag_ssm: need 0 < nu_min <= nu_max, got nu_min={self.nu_min}, nu_max={self.nu_max}")


class DiagonalRecurrence(nn.Module):
    """input_proj -> per-channel causal EMA at learned rates a_c = exp(-exp(log_nu_c) dt) -> output_proj."""

    def __init__(self, config: Config):
        super().__init__()
        d = config.d_model
        self.dt = config.dt
        self.input_proj = nn.Linear(d, d)
        self.output_proj = nn.Linear(d, d)
        self.dropout = nn.Dropout(config.dropout)
        # nu geometric from nu_max (fast) to nu_min (slow) across channels, as memnls's modes
        frac = torch.arange(d, dtype=torch.float64) / max(d - 1, 1)
        nus = config.nu_max * (config.nu_min / config.nu_max) ** frac
        self.log_nu = nn.Parameter(nus.log().float())

    def decay(self) -> torch.Tensor:
        """a_c, one per channel."""
        return torch.exp(-torch.exp(self.log_nu) * self.dt)

    @torch.no_grad()
    def diagnostics(self) -> dict[str, float]:
        a = self.decay()
        return {"state_decay_min": a.min().item(), "state_decay_max": a.max().item()}

    def memory(self, u: torch.Tensor) -> torch.Tensor:
        """y of u [B, L, d]: [B, L, d] (float32 or wider)."""
        return memnls.causal_ema(u.transpose(1, 2), self.decay()).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_in = self.input_proj(x)
        return self.dropout(self.output_proj(self.memory(x_in).to(x_in.dtype)))


class Model(memnls.Model):
    def __init__(self, config: Config):
        super().__init__(config, mixer=DiagonalRecurrence)


def build(**hparams) -> Model:
    return Model(make_config(Config, hparams, "diag_ssm"))
