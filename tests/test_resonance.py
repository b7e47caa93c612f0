"""resonance: the FFT path equals the oscillators' exact recurrences; causal; layout; reconstruction flag."""

import numpy as np
import pytest
import torch

from harness.archs import build, info
from harness.archs.resonance import OscillatorBank, OscillatorBlock
from harness.archs.transformer import Block as TransformerBlock
from tests.conftest import assert_causal

SMALL = dict(vocab_size=50, d_model=24, n_layers=4, n_heads=4, ffn_mult=2, n_oscillators=6, attn_every=2)


def recurrence(u, w0, g):
    """Exact second-order recurrences of the sampled position and velocity responses (float64).

    u: [L, K]; returns pos, vel: [L, K], with y_{-1} = y_{-2} = u_{-1} = 0.
    """
    wd = w0 * np.sqrt(1 - g**2)
    a = g * w0
    r = np.exp(-a)
    c1, c2 = 2 * r * np.cos(wd), -(r**2)
    pos, vel = np.zeros_like(u), np.zeros_like(u)
    p1 = p2 = v1 = v2 = u1 = np.zeros(u.shape[1])
    for t in range(u.shape[0]):
        pos[t] = c1 * p1 + c2 * p2 + r * np.sin(wd) * u1
        vel[t] = c1 * v1 + c2 * v2 + u[t] - r * (np.cos(wd) + (a / wd) * np.sin(wd)) * u1
        p1, p2, v1, v2, u1 = pos[t], p1, vel[t], v1, u[t]
    return pos, vel


def spread_bank(K, dtype):
    """A bank whose oscillators span the whole allowed range (w0 up to ~pi, damping down to ~0)."""
    bank = OscillatorBank(8, K, dropout=0.0).to(dtype)
    with torch.no_grad():
        bank.theta_w.copy_(torch.linspace(-5.0, 5.0, K))
        bank.theta_g.copy_(torch.linspace(-6.0, 4.0, K).flip(0))
    return bank


def expected_states(bank, u):
    w0 = bank.natural_frequency().detach().double().numpy()
    g = bank.damping_ratio().detach().double().numpy()
    return np.stack([np.concatenate(recurrence(ub, w0, g), axis=1) for ub in u.double().numpy()])  # [B, L, 2K]


def test_fft_path_equals_recurrence_float64():
    bank = spread_bank(7, torch.float64)
    u = torch.randn(2, 300, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    got = bank.respond(u).detach()
    assert got.dtype == torch.float64 and got.shape == (2, 300, 14)
    want = expected_states(bank, u)
    assert np.abs(got.numpy() - want).max() <= 1e-12 * np.abs(want).max()


def test_fft_path_float32_within_tolerance():
    bank = spread_bank(7, torch.float32)
    u = torch.randn(2, 1024, 7, generator=torch.Generator().manual_seed(1))
    got = bank.respond(u).detach()
    assert got.dtype == torch.float32
    want = expected_states(bank, u)
    assert np.abs(got.numpy() - want).max() <= 5e-5 * np.abs(want).max()


def test_fft_path_float32_under_bf16_autocast():
    bank = spread_bank(5, torch.float32)
    u = torch.randn(1, 200, 5, generator=torch.Generator().manual_seed(2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = bank.respond(u.bfloat16()).detach()
    assert got.dtype == torch.float32
    want = expected_states(bank, u.bfloat16().float())
    assert np.abs(got.numpy() - want).max() <= 5e-5 * np.abs(want).max()


def test_init_and_kernel_bound():
    bank = OscillatorBank(8, 5, dropout=0.0)
    torch.testing.assert_close(bank.natural_frequency(), torch.linspace(0.1, 3.0, 5))
    torch.testing.assert_close(bank.damping_ratio(), torch.linspace(0.05, 0.2, 5))
    h_pos, h_vel = spread_bank(9, torch.float32).kernels(512)
    assert h_pos[:, 0].abs().max() == 0 and torch.all(h_vel[:, 0] == 1)
    assert h_pos.abs().max() <= 1 and h_vel.abs().max() <= 1 + 0.95 / (1 - 0.95**2) ** 0.5


def test_gradients_reach_frequency_and_damping():
    torch.manual_seed(0)
    model = build("resonance", **SMALL)
    ids = torch.randint(0, 50, (2, 33))
    loss = torch.nn.functional.cross_entropy(model(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten())
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    for block in model.blocks:
        if isinstance(block, OscillatorBlock):
            assert block.osc.theta_w.grad.abs().min() > 0 and block.osc.theta_g.grad.abs().min() > 0


def test_causal():
    assert_causal(build("resonance", **SMALL), vocab_size=50, length=30, t=12)


@pytest.mark.parametrize(
    "attn_every, n_layers, expected", [(3, 9, [2, 5, 8]), (3, 10, [2, 5, 8]), (0, 4, []), (1, 3, [0, 1, 2])]
)
def test_attention_block_positions(attn_every, n_layers, expected):
    with torch.device("meta"):
        model = build("resonance", **{**SMALL, "attn_every": attn_every, "n_layers": n_layers})
    assert [i for i, b in enumerate(model.blocks) if isinstance(b, TransformerBlock)] == expected
    assert all(isinstance(b, OscillatorBlock) for i, b in enumerate(model.blocks) if i not in expected)


def test_parameter_count_formula():
    d, K, V, F = 24, 6, 50, 40
    with torch.device("meta"):
        model = build("resonance", **{**SMALL, "n_layers": 3, "attn_every": 3, "ffn_hidden": F})
    ffn = d * F + F + F * d + d
    osc_block = 4 * d + (d * K + K) + (2 * K * d + d) + 2 * K + ffn
    attn_block = 4 * d + (d * 3 * d + 3 * d) + (d * d + d) + ffn
    assert sum(p.numel() for p in model.parameters()) == V * d + 2 * osc_block + attn_block + 2 * d
    assert model.lm_head.weight is model.tok_emb.weight
    assert model.blocks[0].osc.drive.weight.shape == (K, d)


def test_reconstruction_flag_and_defaults():
    assert info("resonance").reconstruction is True
    model = build("resonance", **{**SMALL, "n_oscillators": None})
    assert model.config.n_oscillators == 24
    with pytest.raises(ValueError, match="attn_every"):
        build("resonance", attn_every=-1)
    with pytest.raises(ValueError, match="unknown"):
        build("resonance", n_kv_heads=2)
