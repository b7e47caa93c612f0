"""trn_hybrid: published parameter count, the parallel scan, causality, the warm ramp, float32 state."""

import math

import pytest
import torch

from harness.archs import build, info
from harness.archs import trn_hybrid
from harness.archs.trn_hybrid import linear_scan, smoothstep
from tests.conftest import assert_causal

SMALL = dict(
    vocab_size=64, d_model=32, n_layers=5, n_heads=4, n_kv_heads=2, n_oscillators=8,
    attn_layers=[1, 3], max_seq_len=64, bigram_buckets=37, bigram_dim=8, warm_steps=10, ffn_hidden=48,
)


def n_params(module):
    return sum(p.numel() for p in module.parameters())


def small_model(seed=0, **overrides):
    """A small model with every zero-initialised path made live, so tests see all of them."""
    torch.manual_seed(seed)
    model = build("trn_hybrid", **{**SMALL, **overrides})
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def test_published_parameter_count_and_parts():
    with torch.device("meta"):
        model = build("trn_hybrid")
    assert n_params(model) == 25_789_479
    attn_idx = [i for i, b in enumerate(model.blocks) if b.is_attention]
    assert attn_idx == [2, 5, 8]
    trn_block, attn_block = model.blocks[0], model.blocks[2]
    assert n_params(model.tok_emb) == 524_288
    assert n_params(model.bigram) == 1_376_257
    assert n_params(attn_block) == 1_837_064
    assert n_params(trn_block) == 2_625_026
    assert n_params(trn_block.trn.proj) == 787_968
    assert n_params(trn_block.trn.phase) == 131_328
    assert n_params(trn_block.trn.out) == 523_264
    assert n_params(trn_block.mlp) == 1_179_648
    assert model.skip_weights.numel() == 2_560
    assert all(n_params(b) == 2_625_026 for i, b in enumerate(model.blocks) if i not in attn_idx)


def test_ffn_hidden_is_the_swiglu_width():
    with torch.device("meta"):
        wide = build("trn_hybrid", ffn_hidden=1024)
    # 7 TRN blocks, each SwiGLU grows by 3 * d * (1024 - 768)
    assert n_params(wide) == 25_789_479 + 7 * 3 * 512 * 256


def test_published_inits():
    model = build("trn_hybrid", **{**SMALL, "n_oscillators": 16})
    trn = model.blocks[0].trn
    K = 16
    alpha, g_out, beta = trn.proj.bias.detach().view(6, K)[3:]
    probs = torch.sigmoid(alpha)
    assert torch.allclose(probs[:4], torch.tensor(0.30)) and torch.allclose(probs[4:12], torch.tensor(0.65))
    assert torch.allclose(probs[12:], torch.tensor(0.97))
    assert torch.allclose(torch.sigmoid(g_out), torch.tensor(0.65)) and torch.all(beta == -2)
    assert torch.all(trn.proj.bias.view(6, K)[:3] == 0)
    omega = trn.omega_base.detach()
    assert omega[0].item() == pytest.approx(2 * math.pi / 1024, rel=1e-5)
    assert omega[-1].item() == pytest.approx(math.pi * (1 - 1 / K), rel=1e-5)
    assert torch.all(model.bigram.embed.weight == 0) and torch.all(model.bigram.proj.weight == 0)
    assert torch.all(model.blocks[1].attn.proj.weight == 0) and torch.all(model.blocks[1].mlp.proj.weight == 0)
    assert torch.equal(model.blocks[0].resid_mix[1], torch.zeros(32))


def loop_scan(alpha, drive):
    r, out = torch.zeros_like(drive[:, 0]), []
    for t in range(drive.size(1)):
        r = alpha[:, t] * r + drive[:, t]
        out.append(r)
    return torch.stack(out, dim=1)


@pytest.mark.parametrize("length", [1, 2, 7, 16, 33, 100])
def test_parallel_scan_equals_step_by_step_loop(length):
    g = torch.Generator().manual_seed(length)
    alpha = torch.rand(3, length, 5, 1, generator=g, dtype=torch.float64)
    drive = torch.randn(3, length, 5, 2, generator=g, dtype=torch.float64)
    expected = loop_scan(alpha, drive)
    torch.testing.assert_close(linear_scan(alpha, drive), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(linear_scan(alpha.float(), drive.float()), expected.float(), rtol=1e-5, atol=1e-5)


def test_scan_runs_in_float32_under_bf16_autocast(monkeypatch):
    seen = []

    def recording_scan(alpha, drive):
        seen.append((alpha.dtype, drive.dtype))
        return linear_scan(alpha, drive)

    monkeypatch.setattr(trn_hybrid, "linear_scan", recording_scan)
    model = small_model().eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(torch.randint(0, 64, (2, 12)))
    assert seen == [(torch.float32, torch.float32)] * 3 and torch.isfinite(logits).all()


def test_bigram_bucket_ids_known_answer():
    model = build("trn_hybrid", **SMALL)
    ids = torch.tensor([[3, 5, 60]])
    expected = [36, (36313 * 5 ^ 27191 * 3) % 36, (36313 * 60 ^ 27191 * 5) % 36]
    assert model.bigram.bucket_ids(ids).tolist() == [expected]


def test_causal():
    """Logits at positions <= t ignore tokens > t (token shift and bigram look back one token only)."""
    assert_causal(small_model(), vocab_size=64, length=20, t=9, atol=0)


def test_warm_ramp():
    assert smoothstep(0, 2000) == 0.0
    assert smoothstep(1000, 2000) == pytest.approx(0.5)
    assert smoothstep(500, 2000) == pytest.approx(0.15625)  # 3 s^2 - 2 s^3 at s = 1/4
    assert smoothstep(2000, 2000) == 1.0 and smoothstep(5000, 2000) == 1.0
    assert smoothstep(0, 0) == 1.0

    model = small_model()
    ids = torch.randint(0, 64, (2, 12))
    model.eval()
    with torch.no_grad():
        eval_logits = model(ids)
    model.train()
    model.on_train_step(0)
    assert model.warm.item() == 0.0
    with torch.no_grad():
        cold = model(ids)
    model.on_train_step(SMALL["warm_steps"])
    assert model.warm.item() == 1.0
    with torch.no_grad():
        warm = model(ids)
    torch.testing.assert_close(warm, eval_logits)  # eval always runs at warm = 1
    assert not torch.allclose(cold, eval_logits)
    assert "warm" not in model.state_dict()  # the ramp is training state, not a weight


def test_trn_output_is_zero_at_warm_zero():
    model = small_model()
    model.train()
    model.on_train_step(0)
    model(torch.randint(0, 64, (2, 12))).sum().backward()
    assert model.blocks[0].trn.proj.weight.grad.abs().max() == 0


def test_gradients_finite_and_reach_the_oscillators():
    model = small_model()
    model.train()
    model.on_train_step(5)
    ids = torch.randint(0, 64, (3, 40))
    loss = torch.nn.functional.cross_entropy(model(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten())
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    trn = model.blocks[0].trn
    for p in (trn.proj.weight, trn.phase.weight, trn.out.weight, trn.omega_base, trn.lam, trn.res_scale):
        assert p.grad.abs().max() > 0


def test_bad_config_errors():
    with pytest.raises(ValueError, match="dropout"):
        build("trn_hybrid", dropout=0.1)
    with pytest.raises(ValueError, match="attn_layers"):
        build("trn_hybrid", attn_layers=[2, 10])
    with pytest.raises(ValueError, match="n_kv_heads"):
        build("trn_hybrid", n_kv_heads=3)
    with pytest.raises(ValueError, match="ffn_mult"):
        build("trn_hybrid", ffn_mult=4)
    with pytest.raises(ValueError, match="max_seq_len"):
        build("trn_hybrid", **SMALL)(torch.zeros(1, 65, dtype=torch.long))
    assert info("trn_hybrid").reconstruction is False
