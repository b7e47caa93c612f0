"""trn_hybrid: the Temporal Resonance Network / attention hybrid (parameter-golf non-record entry).

Most blocks mix tokens with a bank of K damped complex oscillators per layer (the TRN layer); every
third block is grouped-query attention. Around them sits the parameter-golf baseline: a hashed
bigram embedding, U-Net skips between the first and second half of the stack, a learned mix of
every block's input with the normed embedding x0, weightless RMSNorms and a soft-capped tied head.
The published config (the defaults here) has 25,789,479 parameters.

Choices where the published description is silent (labelled in the module docstrings below):
Linear weights whose init is not published (attention q/k/v, the attention MLP's fc, SwiGLU) keep
PyTorch's default init; the published model has no dropout, so only dropout = 0 is accepted; the
SwiGLU width is published as an absolute 768 (ffn_hidden), so there is no ffn_mult to accept.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from harness.archs import make_config


@dataclass
class Config:
    vocab_size: int = 1024
    d_model: int = 512
    n_layers: int = 10
    n_heads: int = 8
    n_kv_heads: int = 4
    n_oscillators: int = 256
    attn_layers: list[int] = field(default_factory=lambda: [2, 5, 8])  # the rest are TRN blocks
    max_seq_len: int = 1024
    bigram_buckets: int = 10240
    bigram_dim: int = 128
    warm_steps: int = 2000  # smoothstep ramp of the TRN output over the first training steps
    ffn_hidden: int | None = None  # SwiGLU hidden of the TRN blocks (None -> 768); the matching knob
    mlp_mult: int = 2  # hidden of the attention blocks' leaky-ReLU^2 MLP, in multiples of d_model
    rope_base: float = 10000.0
    logit_softcap: float = 30.0
    dropout: float = 0.0  # interface parity only: the published model has no dropout

    def __post_init__(self):
        self.attn_layers = [int(i) for i in self.attn_layers]
        if self.ffn_hidden is None:
            self.ffn_hidden = 768
        if self.dropout != 0.0:
            raise ValueError(
                f"trn_hybrid: dropout={self.dropout} is not supported; the published model has no "
                "dropout, set dropout: 0"
            )
        if self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2:
            raise ValueError(
                f"trn_hybrid: d_model={self.d_model} must split into n_heads={self.n_heads} heads "
                "of even size (RoPE rotates pairs)"
            )
        if self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"trn_hybrid: n_heads={self.n_heads} must be a multiple of n_kv_heads={self.n_kv_heads}"
            )
        bad = [i for i in self.attn_layers if not 0 <= i < self.n_layers]
        if bad or len(set(self.attn_layers)) != len(self.attn_layers):
            raise ValueError(
                f"trn_hybrid: attn_layers={self.attn_layers} must be distinct block indices in "
                f"[0, n_layers={self.n_layers})"
            )
        if self.n_oscillators < 2:
            raise ValueError(f"trn_hybrid: n_oscillators={self.n_oscillators} must be >= 2")
        if self.bigram_buckets < 2:
            raise ValueError(f"trn_hybrid: bigram_buckets={self.bigram_buckets} must be >= 2")
        if self.warm_steps < 0:
            raise ValueError(f"trn_hybrid: warm_steps={self.warm_steps} must be >= 0")


def rms_norm(x: torch.Tensor) -> torch.Tensor:
    """Weightless RMSNorm over the last dim (the entry's norms carry no parameters)."""
    return F.rms_norm(x, (x.size(-1),))


def linear_scan(alpha: torch.Tensor, drive: torch.Tensor) -> torch.Tensor:
    """r_t = alpha_t * r_{t-1} + drive_t along dim 1 with r_{-1} = 0, for all t at once.

    Kogge-Stone doubling: after the pass with offset o every (alpha_t, r_t) summarises the window
    (t - 2o, t], so ceil(log2 L) passes of elementwise work replace L sequential steps. alpha must
    broadcast against drive. Only products and sums of the inputs, so it is as stable as the loop.
    """
    a, r = alpha, drive
    length, offset = drive.size(1), 1
    while offset < length:
        r = torch.cat([r[:, :offset], r[:, offset:] + a[:, offset:] * r[:, :-offset]], dim=1)
        if 2 * offset < length:  # the last pass needs no decay product
            a = torch.cat([a[:, :offset], a[:, offset:] * a[:, :-offset]], dim=1)
        offset *= 2
    return r


def smoothstep(step: int, warm_steps: int) -> float:
    """0 at step 0, 1 from warm_steps on, with zero slope at both ends."""
    if warm_steps <= 0:
        return 1.0
    s = min(max(step / warm_steps, 0.0), 1.0)
    return s * s * (3.0 - 2.0 * s)


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def _safe_abs(re: torch.Tensor, im: torch.Tensor) -> torch.Tensor:
    """|re + i im| with a finite gradient at 0 (plain sqrt has an infinite one there)."""
    return torch.sqrt(re * re + im * im + 1e-12)


class BigramHash(nn.Module):
    """Hashed embedding of (previous token, token): cheap bigram statistics for a small model.

    Published init: table and projection both zero, scale 0.05. NOTE: with both factors zero no
    gradient reaches either of them (each one's gradient is proportional to the other), so at this
    init the branch stays exactly zero under any gradient-based optimizer.
    """

    def __init__(self, buckets: int, dim: int, d_model: int):
        super().__init__()
        self.buckets = buckets
        self.embed = nn.Embedding(buckets, dim)
        self.proj = nn.Linear(dim, d_model, bias=False)
        self.scale = nn.Parameter(torch.tensor(0.05))
        nn.init.zeros_(self.embed.weight)
        nn.init.zeros_(self.proj.weight)

    def bucket_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """(36313 t_i XOR 27191 t_{i-1}) mod (buckets - 1); position 0 gets the spare last bucket."""
        mod = self.buckets - 1
        pairs = torch.bitwise_xor(36313 * ids[:, 1:], 27191 * ids[:, :-1]) % mod
        first = torch.full_like(ids[:, :1], mod)
        return torch.cat([first, pairs], dim=1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.scale * self.proj(self.embed(self.bucket_ids(ids)))


def rotary(x: torch.Tensor, base: float) -> torch.Tensor:
    """RoPE on x[B, H, T, hd]: rotate the pairs (x_j, x_{j+hd/2}) by t * base^(-2j/hd)."""
    T, hd = x.size(-2), x.size(-1)
    inv_freq = base ** (-torch.arange(0, hd, 2, device=x.device, dtype=torch.float32) / hd)
    angle = torch.arange(T, device=x.device, dtype=torch.float32)[:, None] * inv_freq
    cos, sin = angle.cos().to(x.dtype), angle.sin().to(x.dtype)
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class Attention(nn.Module):
    """Grouped-query causal attention with RMS-normed q and k, RoPE and a learned gain per query head.

    q/k/v keep PyTorch's default Linear init (not published); the output projection starts at zero.
    """

    def __init__(self, cfg: Config):
        super().__init__()
        self.n_heads, self.n_kv_heads = cfg.n_heads, cfg.n_kv_heads
        self.head_dim = cfg.d_model // cfg.n_heads
        self.rope_base = cfg.rope_base
        self.q = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.k = nn.Linear(cfg.d_model, cfg.n_kv_heads * self.head_dim, bias=False)
        self.v = nn.Linear(cfg.d_model, cfg.n_kv_heads * self.head_dim, bias=False)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.q_gain = nn.Parameter(torch.full((cfg.n_heads,), 1.5))
        nn.init.zeros_(self.proj.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q = self.q(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q = rotary(rms_norm(q), self.rope_base) * self.q_gain.to(q.dtype)[None, :, None, None]
        k = rotary(rms_norm(k), self.rope_base)
        groups = self.n_heads // self.n_kv_heads
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class LeakyReluSquaredMLP(nn.Module):
    """proj(leaky_relu(fc(x), 0.5) ** 2); fc keeps the default init, proj starts at zero."""

    def __init__(self, d_model: int, hidden: int):
        super().__init__()
        self.fc = nn.Linear(d_model, hidden, bias=False)
        self.proj = nn.Linear(hidden, d_model, bias=False)
        nn.init.zeros_(self.proj.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.leaky_relu(self.fc(x), 0.5).square())


class SwiGLU(nn.Module):
    """down(silu(gate) * up) with [gate, up] = gate_up(x); default Linear init (not published)."""

    def __init__(self, d_model: int, hidden: int):
        super().__init__()
        self.gate_up = nn.Linear(d_model, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class TRN(nn.Module):
    """The oscillator bank: K complex resonators driven and read out per token.

    One projection gives, per oscillator, an amplitude, a frequency (around a learned base), a
    phase, a decay alpha, an output gate and an erase strength. The state r_t = alpha_t r_{t-1} +
    drive_t is a linear recurrence, so it runs as a parallel scan, in float32 even under autocast
    (long products of alpha lose everything in bf16). The readout demodulates r by the current
    angle, gates it by its agreement with a learned phase, and adds the products of neighbouring
    oscillators, giving 4K - 2 features.
    """

    def __init__(self, cfg: Config):
        super().__init__()
        d, K = cfg.d_model, cfg.n_oscillators
        self.proj = nn.Linear(d, 6 * K)  # chunks: amplitude, frequency, phase, alpha, g_out, beta
        self.phase = nn.Linear(d, K)  # the phase q the gate compares the demodulated state with
        self.out = nn.Linear(4 * K - 2, d, bias=False)
        self.omega_base = nn.Parameter(
            torch.exp(torch.linspace(math.log(2 * math.pi / 1024), math.log(math.pi * (1 - 1 / K)), K))
        )
        self.lam = nn.Parameter(torch.tensor(0.5))
        self.res_scale = nn.Parameter(torch.tensor(0.05))

        nn.init.normal_(self.proj.weight, std=d**-0.5)
        with torch.no_grad():
            bias = torch.zeros(6, K)
            quarter = K // 4  # decays in three groups: fast, medium (half of K), slow
            bias[3, :quarter] = _logit(0.30)
            bias[3, quarter : K - quarter] = _logit(0.65)
            bias[3, K - quarter :] = _logit(0.97)
            bias[4] = _logit(0.65)  # g_out
            bias[5] = -2.0  # beta
            self.proj.bias.copy_(bias.flatten())
        nn.init.normal_(self.phase.weight, std=1e-3)
        nn.init.zeros_(self.phase.bias)
        nn.init.normal_(self.out.weight, std=2e-3)

    def forward(self, h: torch.Tensor, warm: torch.Tensor | float) -> torch.Tensor:
        T = h.size(1)
        amp, freq, phase, alpha, g_out, beta = self.proj(h).float().chunk(6, dim=-1)
        amp = F.softplus(amp).clamp(max=3.0)
        freq = (torch.sigmoid(freq) * math.pi + self.omega_base).clamp(1e-4, math.pi - 1e-4)
        phase = torch.tanh(phase) * math.pi
        alpha, g_out, beta = torch.sigmoid(alpha), torch.sigmoid(g_out), torch.sigmoid(beta)

        t = torch.arange(T, device=h.device, dtype=torch.float32)
        angle = freq * torch.log1p(t)[:, None] + phase  # [B, T, K]
        cos, sin = angle.cos(), angle.sin()
        drive = ((1 - alpha) * amp).unsqueeze(-1) * torch.stack([cos, sin], dim=-1)
        r_re, r_im = linear_scan(alpha.unsqueeze(-1), drive).unbind(-1)

        along = beta * (r_re * cos + r_im * sin)  # erase part of the component along the angle
        r_re, r_im = r_re - along * cos, r_im - along * sin
        cap = _safe_abs(r_re, r_im).clamp(min=1.0)  # r / max(|r|, 1)
        r_re, r_im = r_re / cap, r_im / cap
        rho_re, rho_im = r_re * cos + r_im * sin, r_im * cos - r_re * sin  # r * exp(-i angle)

        q = self.phase(h).float()
        mag = _safe_abs(rho_re, rho_im)
        gate = torch.sigmoid(self.lam * (rho_re * q.cos() + rho_im * q.sin()) / mag)
        rho_re, rho_im = gate * rho_re, gate * rho_im

        a_re, a_im, b_re, b_im = rho_re[..., :-1], rho_im[..., :-1], rho_re[..., 1:], rho_im[..., 1:]
        g_pair = 0.5 * (g_out[..., :-1] + g_out[..., 1:])
        c_re, c_im = a_re * b_re - a_im * b_im, a_re * b_im + a_im * b_re  # rho_k * rho_{k+1}
        features = torch.cat([g_out * rho_re, g_out * rho_im, g_pair * c_re, g_pair * c_im], dim=-1)
        return self.res_scale * warm * self.out(features)


class Block(nn.Module):
    """Residual mix with x0, then a token mixer (TRN or attention) and an MLP, each with a d-vector scale.

    TRN blocks feed the mixer a token-shifted input and use a SwiGLU; attention blocks use the
    leaky-ReLU^2 MLP of width mlp_mult * d.
    """

    def __init__(self, cfg: Config, is_attention: bool):
        super().__init__()
        d = cfg.d_model
        self.is_attention = is_attention
        self.resid_mix = nn.Parameter(torch.stack([torch.ones(d), torch.zeros(d)]))
        self.attn_scale = nn.Parameter(torch.ones(d))
        self.mlp_scale = nn.Parameter(torch.ones(d))
        if is_attention:
            self.attn = Attention(cfg)
            self.mlp = LeakyReluSquaredMLP(d, cfg.mlp_mult * d)
        else:
            self.shift = nn.Parameter(torch.zeros(d))  # mu = sigmoid(shift): weight of the current token
            self.trn = TRN(cfg)
            self.mlp = SwiGLU(d, cfg.ffn_hidden)

    def forward(self, x: torch.Tensor, x0: torch.Tensor, warm: torch.Tensor | float) -> torch.Tensor:
        x = self.resid_mix[0] * x + self.resid_mix[1] * x0
        h = rms_norm(x)
        if self.is_attention:
            mixed = self.attn(h)
        else:
            mu = torch.sigmoid(self.shift)
            previous = torch.cat([h[:, :1], h[:, :-1]], dim=1)  # position 0 keeps its own h
            mixed = self.trn(mu * h + (1 - mu) * previous, warm)
        x = x + self.attn_scale * mixed
        return x + self.mlp_scale * self.mlp(rms_norm(x))


class Model(nn.Module):
    def __init__(self, config: Config):
        super().__init__()
        self.config = config
        d = config.d_model
        self.tok_emb = nn.Embedding(config.vocab_size, d)
        self.bigram = BigramHash(config.bigram_buckets, config.bigram_dim, d)
        attn = set(config.attn_layers)
        self.blocks = nn.ModuleList(Block(config, i in attn) for i in range(config.n_layers))
        self.n_encoder = config.n_layers // 2  # U-Net: these push, the remaining blocks pop
        self.skip_weights = nn.Parameter(torch.ones(self.n_encoder, d))
        # TRN output ramp; a buffer (not a float) so that a compiled forward sees a tensor, not a constant.
        self.register_buffer("warm", torch.tensor(smoothstep(0, config.warm_steps)), persistent=False)
        nn.init.normal_(self.tok_emb.weight, std=0.005)

    def on_train_step(self, step: int) -> None:
        """Set the warm ramp for the training forward of `step` (the trainer calls this)."""
        self.warm.fill_(smoothstep(step, self.config.warm_steps))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        T = input_ids.size(1)
        if T > self.config.max_seq_len:
            raise ValueError(f"trn_hybrid: sequence length {T} exceeds max_seq_len={self.config.max_seq_len}")
        warm = self.warm if self.training else 1.0
        x = rms_norm(self.tok_emb(input_ids) + self.bigram(input_ids))
        x0 = x
        skips = []
        for i, block in enumerate(self.blocks):
            if i >= self.n_encoder and skips:
                x = x + self.skip_weights[i - self.n_encoder] * skips.pop()
            x = block(x, x0, warm)
            if i < self.n_encoder:
                skips.append(x)
        logits = F.linear(rms_norm(x), self.tok_emb.weight)
        cap = self.config.logit_softcap
        return cap * torch.tanh(logits / cap)


def build(**hparams) -> Model:
    return Model(make_config(Config, hparams, "trn_hybrid"))
