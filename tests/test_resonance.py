"""resonance (PR #1061): published count and names, the FFT path equals the oscillators' exact recurrences,
causality, gradients to the oscillator parameters, the source's conventions on known inputs."""

import math

import numpy as np
import pytest
import torch

from harness.archs import build, info
from tests.conftest import assert_causal

SMALL = dict(vocab_size=50, d_model=24, n_layers=2, n_heads=4)  # K = 12 oscillators
PUBLISHED_PARAMS = 14_770_432


def n_params(module):
    return sum(p.numel() for p in module.parameters())


def recurrence(u, w0, zeta, eps=1e-8):
    """The spec's exact second-order recurrences of the sampled position and velocity responses (float64).

    u: [L, K]; returns pos, vel: [L, K], with y_{-1} = y_{-2} = u_{-1} = 0. ``eps`` is the source's
    1e-8 in the wd divisors, so that the two agree to round-off rather than to 1e-8 / wd.
    """
    gamma = zeta * w0
    wd = np.sqrt(np.maximum(w0**2 - gamma**2, 1e-6))
    r = np.exp(-gamma)
    c1, c2 = 2 * r * np.cos(wd), -(r**2)
    b_pos = r * np.sin(wd) / (wd + eps)
    b_vel = -r * (np.cos(wd) + gamma / (wd + eps) * np.sin(wd))
    pos, vel = np.zeros_like(u), np.zeros_like(u)
    p1 = p2 = v1 = v2 = u1 = np.zeros(u.shape[1])
    for t in range(u.shape[0]):
        pos[t] = c1 * p1 + c2 * p2 + b_pos * u1
        vel[t] = c1 * v1 + c2 * v2 + u[t] + b_vel * u1
        p1, p2, v1, v2, u1 = pos[t], p1, vel[t], v1, u[t]
    return pos, vel


def spread_model(dtype, d_model=14):
    """A model whose oscillators span w0 from 0.05 to past pi and damping ratios from ~0.05 to ~0.95."""
    model = build("resonance", **{**SMALL, "d_model": d_model, "n_heads": 1}).to(dtype)
    K = d_model // 2
    with torch.no_grad():
        model.log_omega.copy_(torch.linspace(math.log(0.05), math.log(3.5), K))
        model.damping_pre.copy_(torch.linspace(-6.0, 6.0, K).flip(0))
    return model


def expected_states(model, u):
    w0 = model.natural_frequency().detach().double().numpy()
    zeta = model.damping_ratio().detach().double().numpy()
    return np.stack([np.concatenate(recurrence(ub, w0, zeta), axis=1) for ub in u.double().numpy()])  # [B, L, 2K]


def test_fft_path_equals_recurrence_float64():
    model = spread_model(torch.float64)
    u = torch.randn(2, 300, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    got = model.oscillate(u).detach()
    assert got.dtype == torch.float64 and got.shape == (2, 300, 14)
    want = expected_states(model, u)
    assert np.abs(got.numpy() - want).max() <= 1e-12 * np.abs(want).max()


def test_fft_path_float32_within_tolerance():
    model = spread_model(torch.float32)
    u = torch.randn(2, 1024, 7, generator=torch.Generator().manual_seed(1))
    got = model.oscillate(u).detach()
    assert got.dtype == torch.float32
    want = expected_states(model, u)
    assert np.abs(got.numpy() - want).max() <= 5e-5 * np.abs(want).max()


def test_fft_path_float32_under_bf16_autocast():
    model = spread_model(torch.float32)
    u = torch.randn(1, 200, 7, generator=torch.Generator().manual_seed(2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = model.oscillate(u.bfloat16()).detach()
    assert got.dtype == torch.float32
    want = expected_states(model, u.bfloat16().float())
    assert np.abs(got.numpy() - want).max() <= 5e-5 * np.abs(want).max()


def test_impulse_response_known_answer():
    """w0 = 1, zeta = 0.5 (log_omega 0, damping_pre 0): h_pos, h_vel at t = 0..3, worked out by hand."""
    model = build("resonance", **{**SMALL, "d_model": 2, "n_heads": 1}).double()
    with torch.no_grad():
        model.log_omega.zero_()
    impulse = torch.zeros(1, 4, 1, dtype=torch.float64)
    impulse[0, 0, 0] = 1.0
    pos, vel = model.oscillate(impulse)[0].detach().T
    # gamma = 0.5, wd = sqrt(0.75): e^{-t/2} sin(wd t) / wd and e^{-t/2} (cos(wd t) - sin(wd t) / (2 wd))
    f64 = dict(dtype=torch.float64)
    torch.testing.assert_close(pos, torch.tensor([0.0, 0.53350718895, 0.41927962482, 0.13324264248], **f64))
    torch.testing.assert_close(vel, torch.tensor([1.0, 0.12619296136, -0.26870526210, -0.25759741066], **f64))


def test_published_parameter_count_and_tensor_names():
    with torch.device("meta"):
        model = build("resonance")
    assert n_params(model) == PUBLISHED_PARAMS
    layer = [
        "norm1.scale", "attn.qkv.weight", "attn.out.weight", "norm2.scale",
        "ff.0.weight", "ff.0.bias", "ff.2.weight", "ff.2.bias",
    ]
    names = ["log_omega", "damping_pre", "token_drive.weight"]
    names += [f"layers.{i}.{n}" for i in range(12) for n in layer]
    names += ["out_norm.scale", "out_proj.weight", "out_proj.bias"]
    assert list(model.state_dict()) == names
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes["token_drive.weight"] == (1024, 192) and shapes["log_omega"] == (192,)
    assert shapes["layers.0.attn.qkv.weight"] == (1152, 384) and shapes["layers.0.ff.0.weight"] == (768, 384)
    assert shapes["out_proj.weight"] == (1024, 384) and shapes["out_proj.bias"] == (1024,)


def test_parameter_count_formula_and_ffn_hidden_knob():
    V, d, F, L = 50, 24, 40, 3
    with torch.device("meta"):
        model = build("resonance", **{**SMALL, "n_layers": L, "ffn_hidden": F})
    K = d // 2
    block = 2 * d + 3 * d * d + d * d + (d * F + F) + (F * d + d)
    assert n_params(model) == V * K + 2 * K + L * block + d + (d * V + V)
    with torch.device("meta"):
        assert build("resonance", **SMALL).config.ffn_hidden == 2 * 24  # the published 2x


def test_init():
    torch.manual_seed(0)
    model = build("resonance", **{**SMALL, "vocab_size": 4000})
    assert model.token_drive.weight.std().item() == pytest.approx(0.1, rel=0.05)
    w0 = torch.exp(torch.linspace(math.log(0.1), math.log(math.pi), 12))
    torch.testing.assert_close(model.natural_frequency(), w0)
    torch.testing.assert_close(model.damping_ratio(), torch.full((12,), 0.5))
    assert model.out_proj.weight is not model.token_drive.weight  # untied
    assert all(torch.all(p == 1) for n, p in model.named_parameters() if n.endswith("scale"))


def test_source_conventions_on_known_inputs():
    model = build("resonance", **SMALL)
    x = torch.tensor([[3.0, -4.0]])
    norm = type(model.out_norm)(2)
    torch.testing.assert_close(norm(x), x / math.sqrt(12.5 + 1e-8))  # RMSNorm eps 1e-8, scale 1
    z = torch.linspace(-5, 5, 11)
    torch.testing.assert_close(model.layers[0].ff[1](z), z * torch.sin(z))
    assert model.layers[0].attn.qkv.bias is None and model.layers[0].attn.out.bias is None
    with torch.no_grad():
        model.out_proj.bias.fill_(100.0)
        logits = model(torch.randint(0, 50, (1, 5)))
    assert logits.abs().max() <= 30 and logits.min() > 29  # 30 tanh(z / 30)
    uncapped = build("resonance", **SMALL, logit_softcap=0.0)
    with torch.no_grad():
        uncapped.out_proj.bias.fill_(100.0)
        assert uncapped(torch.randint(0, 50, (1, 5))).min() > 90


def test_causal():
    torch.manual_seed(0)
    assert_causal(build("resonance", **SMALL), vocab_size=50, length=30, t=12)


def test_gradients_reach_the_oscillators():
    torch.manual_seed(0)
    model = build("resonance", **SMALL)
    ids = torch.randint(0, 50, (2, 33))
    loss = torch.nn.functional.cross_entropy(model(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten())
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert model.log_omega.grad.abs().min() > 0 and model.damping_pre.grad.abs().min() > 0


def test_published_code_flag_and_config_errors():
    assert info("resonance").reconstruction is False
    assert info("resonance").match_knob == "ffn_hidden"
    with pytest.raises(ValueError, match="dropout"):
        build("resonance", dropout=0.1)
    with pytest.raises(ValueError, match="even"):
        build("resonance", d_model=25, n_heads=5)
    with pytest.raises(ValueError, match="n_heads"):
        build("resonance", d_model=24, n_heads=5)
    with pytest.raises(ValueError, match="unknown"):
        build("resonance", attn_every=2)
