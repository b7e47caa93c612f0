"""transformer: the seed's matched GPT baseline (pre-norm, learned positions, exact GELU, tied head).

Module and tensor names are the published ones (tok_emb, pos_emb, blocks.{i}.{norm1,attn,norm2,ffn},
norm_f, lm_head), so the published model.safetensors loads with strict ``load_state_dict``.
The pieces every seed model shares (FeedForward, init_weights, tie_lm_head) live here and are
imported by the other architecture files rather than repeated.

Switch ``qk_norm`` (default off, the published model): QKNorm on queries and keys (layers.QKNorm),
adding 2 * head_dim gains per block. Diagnostics (layers.collect):
  attn_logit_max/blocks.{i}.attn  largest pre-softmax attention logit of the last recorded forward
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from harness.archs import make_config
from harness.archs.layers import QKNorm, RecordsLogits

SWITCHES = ("qk_norm",)


@dataclass
class Config:
    """Defaults are the published 70M config (71,863,296 parameters)."""

    vocab_size: int = 256
    d_model: int = 768
    n_layers: int = 10
    n_heads: int = 12
    ffn_mult: int = 4
    max_seq_len: int = 1024
    dropout: float = 0.0
    ffn_hidden: int | None = None  # None -> ffn_mult * d_model; the shape solver's knob
    qk_norm: bool = False

    def __post_init__(self):
        if self.d_model % self.n_heads:
            raise ValueError(f"transformer: d_model={self.d_model} is not divisible by n_heads={self.n_heads}")


def ffn_width(config) -> int:
    """Hidden width of the FFN: the explicit knob if set, else ffn_mult * d_model."""
    return config.ffn_hidden if config.ffn_hidden is not None else config.ffn_mult * config.d_model


class FeedForward(nn.Module):
    """fc1 -> exact GELU -> fc2 -> dropout (the published FFN of both seed models)."""

    def __init__(self, d_model: int, hidden: int, dropout: float):
        super().__init__()
        self.fc1 = nn.Linear(d_model, hidden)
        self.fc2 = nn.Linear(hidden, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        return self.dropout(self.fc2(F.gelu(self.fc1(x))))


class CausalSelfAttention(RecordsLogits, nn.Module):
    """qkv -> heads -> (qk_norm) -> causal SDPA (scale 1/sqrt(head_dim)) -> proj -> dropout."""

    def __init__(self, d_model: int, n_heads: int, dropout: float, qk_norm: bool = False):
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.dropout = nn.Dropout(dropout)
        self.q_norm = QKNorm(d_model // n_heads) if qk_norm else nn.Identity()
        self.k_norm = QKNorm(d_model // n_heads) if qk_norm else nn.Identity()

    def forward(self, x):
        B, T, d = x.shape
        q, k, v = (t.view(B, T, self.n_heads, d // self.n_heads).transpose(1, 2)
                   for t in self.qkv(x).split(d, dim=-1))
        q, k = self.q_norm(q), self.k_norm(k)
        self.record(q, k)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.dropout(self.proj(y.transpose(1, 2).reshape(B, T, d)))


class Block(nn.Module):
    """Pre-norm: x + attn(norm1(x)), then x + ffn(norm2(x))."""

    def __init__(self, d_model: int, n_heads: int, ffn_hidden: int, dropout: float, qk_norm: bool = False):
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, n_heads, dropout, qk_norm)
        self.norm2 = nn.LayerNorm(d_model)
        self.ffn = FeedForward(d_model, ffn_hidden, dropout)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


def init_weights(module: nn.Module) -> None:
    """The seed's init: Linear and Embedding N(0, 0.02), biases 0, LayerNorm 1/0; no residual scaling."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
    if isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


_TIED = ("tok_emb.weight", "lm_head.weight")


def _fill_tied_name(module, state_dict, prefix, *args):
    """A file may hold one name of the tied pair (safetensors' save_model drops the other) or both:
    fill in the missing one so strict loading works, and refuse a pair that disagrees."""
    emb, head = (prefix + name for name in _TIED)
    if emb in state_dict and head in state_dict:
        if not torch.equal(state_dict[emb], state_dict[head]):
            raise ValueError(f"{emb} and {head} differ, but the model ties them: the file is not of this model")
    elif emb in state_dict:
        state_dict[head] = state_dict[emb]
    elif head in state_dict:
        state_dict[emb] = state_dict[head]


def tie_lm_head(model: nn.Module) -> None:
    """Make model.lm_head.weight the same Parameter as model.tok_emb.weight, and accept either name on load."""
    model.lm_head.weight = model.tok_emb.weight
    model.register_load_state_dict_pre_hook(_fill_tied_name)


class Model(nn.Module):
    def __init__(self, config: Config):
        super().__init__()
        self.config = config
        d = config.d_model
        self.tok_emb = nn.Embedding(config.vocab_size, d)
        self.pos_emb = nn.Embedding(config.max_seq_len, d)
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(
            Block(d, config.n_heads, ffn_width(config), config.dropout, config.qk_norm) for _ in range(config.n_layers)
        )
        self.norm_f = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, config.vocab_size, bias=False)
        self.apply(init_weights)
        tie_lm_head(self)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        T = input_ids.shape[1]
        if T > self.config.max_seq_len:
            raise ValueError(f"transformer: sequence length {T} exceeds max_seq_len={self.config.max_seq_len}")
        positions = torch.arange(T, device=input_ids.device)
        x = self.dropout(self.tok_emb(input_ids) + self.pos_emb(positions))
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.norm_f(x))


def build(**hparams) -> Model:
    return Model(make_config(Config, hparams, "transformer"))
