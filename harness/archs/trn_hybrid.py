"""trn_hybrid: the Temporal Resonance Network / attention hybrid (parameter-golf non-record entry).

Source: amabito's submission to openai/parameter-golf, pull request #669 (head 133b0c1, folder
records/track_non_record_16mb/2026-03-25_TRN_Hybrid_Int5_1x5090, train_gpt_trn.py): val bpb 1.4942.
Reimplemented from its published code, so that the submission's state dict loads with
``load_state_dict(strict=True)`` and gives the same logits; the facts used are in
/work/shared/specs/architectures.md, section 3.

Most blocks mix tokens with a bank of K damped complex oscillators per layer (the TRN layer); a few
are grouped-query attention. Around them sits the parameter-golf baseline: a hashed bigram
embedding, U-Net skips between the first and second half of the stack, a learned mix of every
block's input with the normed embedding x0, weightless RMSNorms and a soft-capped tied head.
The published config (the defaults here) has 25,789,479 parameters.

Kept as the source has them, though they look like slips: RoPE rotates the opposite way to the
usual GPT-NeoX form; the warm ramp counts a TRN layer's training-mode forwards (its
``_forward_count`` buffer), which is the optimizer step only without gradient accumulation. The
published model has no dropout, so only dropout = 0 is accepted.

Switch ``qk_norm`` (default off, as published): the published attention already RMS-normalises q
and k, weightless; the switch gives those norms learnable gains (layers.QKNorm, the same numbers at
init), 2 * head_dim parameters per attention block. Diagnostics (layers.collect):
  attn_logit_max/blocks.{i}.attn  largest pre-softmax attention logit (q_gain included) of the last recorded forward
  state_cap_frac/blocks.{i}.resonance  fraction of oscillator states the readout capped, |r| > 1 (last recorded forward)
  state_decay_{min,max}/blocks.{i}.resonance  extremes of the per-token decays alpha (last recorded forward)
  state_frequency_base_{min,max}/blocks.{i}.resonance  extremes of the learned base frequencies omega_base
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from harness.archs import make_config
from harness.archs.layers import QKNorm, RecordsLogits, rms_norm

SWITCHES = ("qk_norm",)


@dataclass
class Config:
    vocab_size: int = 1024
    d_model: int = 512
    n_layers: int = 10
    n_heads: int = 8
    n_kv_heads: int = 4
    n_oscillators: int = 256
    attn_layers: list[int] = field(default_factory=lambda: [2, 5, 8])  # the rest are TRN blocks
    max_seq_len: int = 1024  # also sets the lowest initial oscillator frequency, 2 pi / max_seq_len
    bigram_buckets: int = 10240
    bigram_dim: int = 128
    warm_steps: int = 2000  # smoothstep ramp of the TRN output over a layer's first training forwards
    ffn_hidden: int | None = None  # SwiGLU hidden of the TRN blocks; None -> the source's rounding; the knob
    mlp_mult: int = 2  # hidden of the attention blocks' leaky-ReLU^2 MLP, in multiples of d_model
    rope_base: float = 10000.0
    logit_softcap: float = 30.0
    dropout: float = 0.0  # interface parity only: the published model has no dropout
    qk_norm: bool = False

    def __post_init__(self):
        self.attn_layers = [int(i) for i in self.attn_layers]
        if self.ffn_hidden is None:
            self.ffn_hidden = swiglu_hidden(self.d_model, self.mlp_mult)
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


def swiglu_hidden(d_model: int, mlp_mult: int) -> int:
    """The source's SwiGLU width: 2/3 of the attention MLP's, truncated, then rounded up to a multiple of 256."""
    return (int(2 / 3 * mlp_mult * d_model) + 255) // 256 * 256


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


def warm_factor(count: torch.Tensor, warm_steps: int) -> torch.Tensor:
    """Smoothstep of count / warm_steps, clamped at 1: 0 at 0, 1 from warm_steps on, flat at both ends."""
    if warm_steps <= 0:
        return torch.ones((), device=count.device)
    s = (count.float() / warm_steps).clamp(max=1.0)
    return s * s * (3.0 - 2.0 * s)


def phase_gate(rho_re: torch.Tensor, rho_im: torch.Tensor, q: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """sigmoid(lam * cos(arg rho - q)): how well the demodulated state agrees with the phase q.

    |rho| is taken as sqrt(re^2 + im^2 + 1e-6), as in the source, so a vanishing state gets gate 1/2.
    """
    mag = torch.sqrt(rho_re * rho_re + rho_im * rho_im + 1e-6)
    return torch.sigmoid(lam * ((rho_re / mag) * q.cos() + (rho_im / mag) * q.sin()))


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


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
        nn.init.zeros_(self.embed.weight)
        self.proj = nn.Linear(dim, d_model, bias=False) if dim != d_model else None  # the source drops it then
        if self.proj is not None:
            nn.init.zeros_(self.proj.weight)
        self.scale = nn.Parameter(torch.tensor(0.05))

    def bucket_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """(36313 t_i XOR 27191 t_{i-1}) mod (buckets - 1); position 0 gets the spare last bucket.

        In int32 as the source computes it (identical to exact arithmetic for vocabularies below ~59,000).
        """
        t = ids.to(torch.int32)
        mod = self.buckets - 1
        pairs = torch.bitwise_xor(36313 * t[:, 1:], 27191 * t[:, :-1]) % mod
        return torch.cat([torch.full_like(t[:, :1], mod), pairs], dim=1).long()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.embed(self.bucket_ids(ids))
        return self.scale * (h if self.proj is None else self.proj(h))


def rotary(x: torch.Tensor, base: float) -> torch.Tensor:
    """RoPE on x[B, H, T, hd], halves not interleaved, in the source's sense:
    (x1, x2) -> (x1 cos + x2 sin, -x1 sin + x2 cos), i.e. each pair turns by -t * base^(-2j/hd)."""
    T, hd = x.size(-2), x.size(-1)
    inv_freq = 1.0 / base ** (torch.arange(0, hd, 2, device=x.device, dtype=torch.float32) / hd)
    angle = torch.outer(torch.arange(T, device=x.device, dtype=torch.float32), inv_freq)
    cos, sin = angle.cos().to(x.dtype), angle.sin().to(x.dtype)
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos + x2 * sin, x2 * cos - x1 * sin], dim=-1)


class Attention(RecordsLogits, nn.Module):
    """Grouped-query causal attention with RMS-normed q and k, RoPE and a learned gain per query head.

    c_q/c_k/c_v keep PyTorch's default Linear init (as in the source); the output projection starts at zero.
    """

    def __init__(self, cfg: Config):
        super().__init__()
        self.n_heads, self.n_kv_heads = cfg.n_heads, cfg.n_kv_heads
        self.head_dim = cfg.d_model // cfg.n_heads
        self.rope_base = cfg.rope_base
        self.c_q = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.c_k = nn.Linear(cfg.d_model, cfg.n_kv_heads * self.head_dim, bias=False)
        self.c_v = nn.Linear(cfg.d_model, cfg.n_kv_heads * self.head_dim, bias=False)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.q_gain = nn.Parameter(torch.full((cfg.n_heads,), 1.5))
        nn.init.zeros_(self.proj.weight)
        self.q_norm = QKNorm(self.head_dim) if cfg.qk_norm else rms_norm
        self.k_norm = QKNorm(self.head_dim) if cfg.qk_norm else rms_norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q = self.c_q(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.c_k(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.c_v(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q = rotary(self.q_norm(q), self.rope_base) * self.q_gain.to(q.dtype)[None, :, None, None]
        k = rotary(self.k_norm(k), self.rope_base)
        self.record(q, k)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=self.n_kv_heads != self.n_heads)
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


class OscillatorProjection(nn.Module):
    """Per token and oscillator: amplitude, frequency (around the learned omega_base), phase, decay
    alpha, output gate and erase strength, from one Linear(d -> 6K).

    Init: weight N(0, d^-0.5); the alpha bias in groups of K//4, K//2 and the rest at logit 0.30,
    0.65, 0.97 (fast, medium, slow decays); g_out bias logit 0.65; beta bias -2; the others 0.
    omega_base spans 2 pi / max_seq_len .. pi (1 - 1/K) geometrically.
    """

    def __init__(self, d_model: int, K: int, max_seq_len: int):
        super().__init__()
        self.proj = nn.Linear(d_model, 6 * K)
        self.omega_base = nn.Parameter(
            torch.linspace(math.log(2 * math.pi / max_seq_len), math.log(math.pi * (1 - 1 / max(K, 2))), K).exp()
        )
        nn.init.normal_(self.proj.weight, std=d_model**-0.5)
        bias = torch.zeros(6, K)
        fast, medium = K // 4, K // 2  # the slow group takes the remainder
        bias[3, :fast] = _logit(0.30)
        bias[3, fast : fast + medium] = _logit(0.65)
        bias[3, fast + medium :] = _logit(0.97)
        bias[4] = _logit(0.65)  # g_out
        bias[5] = -2.0  # beta
        with torch.no_grad():
            self.proj.bias.copy_(bias.flatten())

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        amp, freq, phase, alpha, g_out, beta = self.proj(x).float().chunk(6, dim=-1)
        amp = F.softplus(amp).clamp(max=3.0)
        freq = (torch.sigmoid(freq) * math.pi + self.omega_base).clamp(1e-4, math.pi - 1e-4)
        phase = torch.tanh(phase) * math.pi
        return amp, freq, phase, torch.sigmoid(alpha), torch.sigmoid(g_out), torch.sigmoid(beta)


class TemporalResonance(nn.Module):
    """The TRN layer: K complex resonators driven and read out per token.

    The state r_t = alpha_t r_{t-1} + (1 - alpha_t) A_t e^{i angle_t}, angle_t = w_t log(1 + t) + phi_t,
    is a linear recurrence, so it runs as a parallel scan, in float32 even under autocast (long
    products of alpha lose everything in bf16). The readout erases part of r along the current angle,
    caps |r| at 1, demodulates by the angle, gates it by its agreement with a learned phase (W_phase),
    and adds the products of neighbouring oscillators, giving 4K - 2 features for W_res.
    """

    def __init__(self, cfg: Config):
        super().__init__()
        d, K = cfg.d_model, cfg.n_oscillators
        self.warm_steps = cfg.warm_steps
        self.proj = OscillatorProjection(d, K, cfg.max_seq_len)
        self.W_res = nn.Linear(4 * K - 2, d, bias=False)
        nn.init.normal_(self.W_res.weight, std=2e-3)
        self.W_phase = nn.Linear(d, K)  # the phase q the gate compares the demodulated state with
        nn.init.normal_(self.W_phase.weight, std=1e-3)
        nn.init.zeros_(self.W_phase.bias)
        self.lambda_pcg = nn.Parameter(torch.tensor(0.5))
        self.res_scale = nn.Parameter(torch.tensor(0.05))
        # Training-mode forwards so far: drives the warm ramp and is saved with the weights.
        self.register_buffer("_forward_count", torch.tensor(0, dtype=torch.long))
        self.recording = False
        self.recorded: dict[str, float] = {}

    @torch.no_grad()
    def diagnostics(self) -> dict[str, float]:
        omega = self.proj.omega_base
        return {**self.recorded, "state_frequency_base_min": omega.min().item(),
                "state_frequency_base_max": omega.max().item()}

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        amp, freq, phase, alpha, g_out, beta = self.proj(h)
        t = torch.arange(h.size(1), device=h.device, dtype=torch.float32)
        angle = freq * torch.log1p(t)[:, None] + phase  # [B, T, K]
        cos, sin = angle.cos(), angle.sin()
        drive = ((1 - alpha) * amp).unsqueeze(-1) * torch.stack([cos, sin], dim=-1)
        with torch.autocast(device_type=h.device.type, enabled=False):
            r_re, r_im = linear_scan(alpha.unsqueeze(-1), drive).unbind(-1)

        along = beta * (r_re * cos + r_im * sin)  # erase part of the component along the angle
        r_re, r_im = r_re - along * cos, r_im - along * sin
        magnitude = torch.sqrt(r_re * r_re + r_im * r_im + 1e-8)
        if self.recording:
            self.recorded = dict(zip(("state_cap_frac", "state_decay_min", "state_decay_max"), torch.stack(
                [(magnitude > 1).float().mean(), alpha.min(), alpha.max()]).tolist()))
        cap = magnitude.clamp(min=1.0)  # r / max(|r|, 1)
        r_re, r_im = r_re / cap, r_im / cap
        rho_re, rho_im = r_re * cos + r_im * sin, r_im * cos - r_re * sin  # r * exp(-i angle)

        gate = phase_gate(rho_re, rho_im, self.W_phase(h).float(), self.lambda_pcg)
        rho_re, rho_im = gate * rho_re, gate * rho_im

        a_re, a_im, b_re, b_im = rho_re[..., :-1], rho_im[..., :-1], rho_re[..., 1:], rho_im[..., 1:]
        g_pair = 0.5 * (g_out[..., :-1] + g_out[..., 1:])
        c_re, c_im = a_re * b_re - a_im * b_im, a_re * b_im + a_im * b_re  # rho_k * rho_{k+1}
        features = torch.cat([g_out * rho_re, g_out * rho_im, g_pair * c_re, g_pair * c_im], dim=-1)

        if self.training:
            self._forward_count += 1
            warm = warm_factor(self._forward_count, self.warm_steps)
        else:
            warm = 1.0
        return (self.res_scale * warm) * self.W_res(features.to(h.dtype))


class AttentionBlock(nn.Module):
    """mix with x0, x + attn_scale * Attn(norm x), x + mlp_scale * MLP(norm x); the scales are d-vectors."""

    def __init__(self, cfg: Config):
        super().__init__()
        d = cfg.d_model
        self.attn = Attention(cfg)
        self.mlp = LeakyReluSquaredMLP(d, cfg.mlp_mult * d)
        self.attn_scale = nn.Parameter(torch.ones(d))
        self.mlp_scale = nn.Parameter(torch.ones(d))
        self.resid_mix = nn.Parameter(torch.stack([torch.ones(d), torch.zeros(d)]))

    def forward(self, x: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        x = self.resid_mix[0] * x + self.resid_mix[1] * x0
        x = x + self.attn_scale * self.attn(rms_norm(x))
        return x + self.mlp_scale * self.mlp(rms_norm(x))


class TRNBlock(nn.Module):
    """As the attention block, with a token-shifted TRN layer for attention and a SwiGLU for the MLP.

    Token shift: h_t <- mu h_t + (1 - mu) h_{t-1}, mu = sigmoid(token_shift_mu); h_0 unchanged.
    SwiGLU: down(silu(gate) * up), [gate, up] = gate_up(x); gate_up N(0, d^-0.5), down N(0, hidden^-0.5).
    """

    def __init__(self, cfg: Config):
        super().__init__()
        d, hidden = cfg.d_model, cfg.ffn_hidden
        self.token_shift_mu = nn.Parameter(torch.zeros(d))
        self.resonance = TemporalResonance(cfg)
        self.gate_up = nn.Linear(d, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, d, bias=False)
        self.attn_scale = nn.Parameter(torch.ones(d))
        self.mlp_scale = nn.Parameter(torch.ones(d))
        self.resid_mix = nn.Parameter(torch.stack([torch.ones(d), torch.zeros(d)]))
        nn.init.normal_(self.gate_up.weight, std=d**-0.5)
        nn.init.normal_(self.down.weight, std=hidden**-0.5)

    def swiglu(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)

    def forward(self, x: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        x = self.resid_mix[0] * x + self.resid_mix[1] * x0
        h = rms_norm(x)
        mu = torch.sigmoid(self.token_shift_mu).to(h.dtype)
        h = torch.cat([h[:, :1], mu * h[:, 1:] + (1 - mu) * h[:, :-1]], dim=1)
        x = x + self.attn_scale * self.resonance(h)
        return x + self.mlp_scale * self.swiglu(rms_norm(x))


class Model(nn.Module):
    def __init__(self, config: Config):
        super().__init__()
        self.config = config
        d = config.d_model
        self.tok_emb = nn.Embedding(config.vocab_size, d)
        self.bigram = BigramHash(config.bigram_buckets, config.bigram_dim, d)
        self.n_encoder = config.n_layers // 2  # U-Net: these push, the remaining blocks pop
        self.skip_weights = nn.Parameter(torch.ones(min(self.n_encoder, config.n_layers - self.n_encoder), d))
        attn = set(config.attn_layers)
        self.blocks = nn.ModuleList(
            AttentionBlock(config) if i in attn else TRNBlock(config) for i in range(config.n_layers)
        )
        nn.init.normal_(self.tok_emb.weight, std=0.005)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        T = input_ids.size(1)
        if T > self.config.max_seq_len:
            raise ValueError(f"trn_hybrid: sequence length {T} exceeds max_seq_len={self.config.max_seq_len}")
        x = rms_norm(self.tok_emb(input_ids) + self.bigram(input_ids))
        x0 = x
        skips = []
        for i, block in enumerate(self.blocks):
            if i >= self.n_encoder and skips:
                x = x + self.skip_weights[i - self.n_encoder] * skips.pop()
            x = block(x, x0)
            if i < self.n_encoder:
                skips.append(x)
        logits = F.linear(rms_norm(x), self.tok_emb.weight)
        cap = self.config.logit_softcap
        return cap * torch.tanh(logits / cap)


def build(**hparams) -> Model:
    return Model(make_config(Config, hparams, "trn_hybrid"))
