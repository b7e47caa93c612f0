"""trn_hybrid (PR #669): published count and tensor names, the parallel scan, causality, the warm ramp,
float32 state, and the source's conventions on known inputs (RoPE sense, SwiGLU width, init, epsilons)."""

import math

import pytest
import torch

from harness.archs import build, info
from harness.archs import trn_hybrid
from harness.archs.trn_hybrid import (
    AttentionBlock, TRNBlock, linear_scan, phase_gate, rotary, swiglu_hidden, warm_factor,
)
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
    attn_idx = [i for i, b in enumerate(model.blocks) if isinstance(b, AttentionBlock)]
    assert attn_idx == [2, 5, 8]
    trn_block, attn_block = model.blocks[0], model.blocks[2]
    assert n_params(model.tok_emb) == 524_288
    assert n_params(model.bigram) == 1_376_257
    assert n_params(attn_block) == 1_837_064
    assert n_params(trn_block) == 2_625_026
    assert n_params(trn_block.resonance.proj.proj) == 787_968
    assert n_params(trn_block.resonance.W_phase) == 131_328
    assert n_params(trn_block.resonance.W_res) == 523_264
    assert n_params(trn_block.gate_up) + n_params(trn_block.down) == 1_179_648
    assert model.skip_weights.numel() == 2_560
    assert all(n_params(b) == 2_625_026 for i, b in enumerate(model.blocks) if i not in attn_idx)


def test_source_tensor_names():
    """The submission's state dict keys, so its weights load with strict=True."""
    with torch.device("meta"):
        model = build("trn_hybrid")
    trn = [
        "token_shift_mu", "attn_scale", "mlp_scale", "resid_mix", "resonance.lambda_pcg", "resonance.res_scale",
        "resonance._forward_count", "resonance.proj.omega_base", "resonance.proj.proj.weight",
        "resonance.proj.proj.bias", "resonance.W_res.weight", "resonance.W_phase.weight", "resonance.W_phase.bias",
        "gate_up.weight", "down.weight",
    ]
    attn = [
        "attn_scale", "mlp_scale", "resid_mix", "attn.q_gain", "attn.c_q.weight", "attn.c_k.weight",
        "attn.c_v.weight", "attn.proj.weight", "mlp.fc.weight", "mlp.proj.weight",
    ]
    expected = {"tok_emb.weight", "skip_weights", "bigram.scale", "bigram.embed.weight", "bigram.proj.weight"}
    for i in range(10):
        expected |= {f"blocks.{i}.{n}" for n in (attn if i in (2, 5, 8) else trn)}
    state = model.state_dict()
    assert set(state) == expected
    assert state["blocks.0.resonance._forward_count"].dtype == torch.int64
    assert state["blocks.0.gate_up.weight"].shape == (2 * 768, 512)
    assert state["blocks.0.down.weight"].shape == (512, 768)


def test_ffn_hidden_is_the_swiglu_width():
    with torch.device("meta"):
        wide = build("trn_hybrid", ffn_hidden=1024)
    # 7 TRN blocks, each SwiGLU grows by 3 * d * (1024 - 768)
    assert n_params(wide) == 25_789_479 + 7 * 3 * 512 * 256


@pytest.mark.parametrize("d_model, mlp_mult, hidden", [(512, 2, 768), (384, 2, 512), (386, 2, 768), (64, 2, 256),
                                                      (768, 3, 1536), (1154, 2, 1792)])
def test_swiglu_hidden_rounding(d_model, mlp_mult, hidden):
    """int(2/3 * mlp_mult * d) rounded up to a multiple of 256 (768 at the published d 512)."""
    assert swiglu_hidden(d_model, mlp_mult) == hidden
    with torch.device("meta"):
        model = build("trn_hybrid", d_model=d_model, n_heads=1, n_kv_heads=1, mlp_mult=mlp_mult)
    assert model.config.ffn_hidden == hidden


def test_published_inits():
    torch.manual_seed(0)
    model = build("trn_hybrid", **{**SMALL, "n_oscillators": 10, "d_model": 64, "ffn_hidden": 512, "vocab_size": 3000})
    trn = model.blocks[0].resonance
    K = 10
    alpha, g_out, beta = trn.proj.proj.bias.detach().view(6, K)[3:]
    probs = torch.sigmoid(alpha)  # groups K//4 = 2, K//2 = 5 and the remaining 3
    torch.testing.assert_close(probs, torch.tensor([0.30] * 2 + [0.65] * 5 + [0.97] * 3))
    assert torch.allclose(torch.sigmoid(g_out), torch.tensor(0.65)) and torch.all(beta == -2)
    assert torch.all(trn.proj.proj.bias.view(6, K)[:3] == 0)
    omega = trn.proj.omega_base.detach()  # from 2 pi / max_seq_len
    assert omega[0].item() == pytest.approx(2 * math.pi / SMALL["max_seq_len"], rel=1e-5)
    assert omega[-1].item() == pytest.approx(math.pi * (1 - 1 / K), rel=1e-5)
    assert trn.proj.proj.weight.std().item() == pytest.approx(64**-0.5, rel=0.1)
    assert trn.W_phase.weight.std().item() == pytest.approx(1e-3, rel=0.1) and torch.all(trn.W_phase.bias == 0)
    assert trn.W_res.weight.std().item() == pytest.approx(2e-3, rel=0.1)
    assert trn.lambda_pcg.item() == 0.5 and trn.res_scale.item() == pytest.approx(0.05)
    assert trn._forward_count.item() == 0
    block = model.blocks[0]
    assert block.gate_up.weight.std().item() == pytest.approx(64**-0.5, rel=0.1)
    assert block.down.weight.std().item() == pytest.approx(512**-0.5, rel=0.1)
    assert torch.all(block.token_shift_mu == 0)
    assert model.tok_emb.weight.std().item() == pytest.approx(0.005, rel=0.1)
    assert torch.all(model.bigram.embed.weight == 0) and torch.all(model.bigram.proj.weight == 0)
    assert torch.all(model.blocks[1].attn.proj.weight == 0) and torch.all(model.blocks[1].mlp.proj.weight == 0)
    assert torch.all(model.blocks[1].attn.q_gain == 1.5)
    assert torch.equal(model.blocks[0].resid_mix[1], torch.zeros(64))


def test_rope_rotation_sense_on_a_known_vector():
    """The source turns (x1, x2) -> (x1 cos + x2 sin, -x1 sin + x2 cos): clockwise, opposite to GPT-NeoX."""
    x = torch.zeros(1, 1, 3, 4)  # head_dim 4: pairs (x0, x2) at inv_freq 1 and (x1, x3) at base^(-1/2) = 0.1
    x[..., 0] = 1.0  # pair 0 = (1, 0)
    x[..., 3] = 1.0  # pair 1 = (0, 1)
    y = rotary(x, base=100.0)
    for t in range(3):
        torch.testing.assert_close(y[0, 0, t, [0, 2]], torch.tensor([math.cos(t), -math.sin(t)]))
        torch.testing.assert_close(y[0, 0, t, [1, 3]], torch.tensor([math.sin(0.1 * t), math.cos(0.1 * t)]))


def test_phase_gate_epsilon_on_known_inputs():
    """|rho| = sqrt(re^2 + im^2 + 1e-6): at rho = 1e-3 (q = 0, lambda 0.5) the gate is sigmoid(0.5 / sqrt 2)."""
    gate = phase_gate(torch.tensor([1e-3, 0.0, 3.0]), torch.tensor([0.0, 0.0, 4.0]), torch.zeros(3), torch.tensor(0.5))
    expected = torch.sigmoid(torch.tensor([0.5 / math.sqrt(2), 0.0, 0.5 * 3 / math.sqrt(25 + 1e-6)]))
    torch.testing.assert_close(gate, expected)
    assert gate[1].item() == 0.5  # a vanishing state: gate 1/2, not NaN


def test_bigram_projection_only_when_widths_differ():
    with torch.device("meta"):
        assert "bigram.proj.weight" in build("trn_hybrid", **SMALL).state_dict()
        assert "bigram.proj.weight" not in build("trn_hybrid", **{**SMALL, "bigram_dim": 32}).state_dict()


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


def test_warm_ramp_counts_training_forwards():
    count = torch.tensor
    assert warm_factor(count(0), 2000).item() == 0.0
    assert warm_factor(count(1000), 2000).item() == pytest.approx(0.5)
    assert warm_factor(count(500), 2000).item() == pytest.approx(0.15625)  # 3 s^2 - 2 s^3 at s = 1/4
    assert warm_factor(count(2000), 2000).item() == 1.0 and warm_factor(count(5000), 2000).item() == 1.0
    assert warm_factor(count(0), 0).item() == 1.0

    model = small_model()
    trn_layers = [b.resonance for b in model.blocks if isinstance(b, TRNBlock)]
    ids = torch.randint(0, 64, (2, 12))
    with torch.no_grad():
        eval_logits = model.eval()(ids)
        assert all(layer._forward_count.item() == 0 for layer in trn_layers)  # eval forwards do not count
        model.train()
        first = model(ids)  # counts 1 before use: warm = smoothstep(1 / 10)
        assert all(layer._forward_count.item() == 1 for layer in trn_layers)
        for _ in range(SMALL["warm_steps"] - 1):
            warm = model(ids)
    assert all(layer._forward_count.item() == SMALL["warm_steps"] for layer in trn_layers)
    torch.testing.assert_close(warm, eval_logits)  # eval always runs at warm = 1
    assert not torch.allclose(first, eval_logits)
    state = model.state_dict()  # the count travels with the weights, so a resumed run continues the ramp
    fresh = build("trn_hybrid", **SMALL)
    fresh.load_state_dict(state, strict=True)
    assert [b.resonance._forward_count.item() for b in fresh.blocks if isinstance(b, TRNBlock)] == [10, 10, 10]


def test_trn_output_scales_with_the_warm_ramp():
    """A training forward at count 0 counts 1 first: the layer's output is smoothstep(1 / 10) = 0.028 of eval's."""
    trn = small_model().blocks[0].resonance
    h = torch.randn(2, 12, 32)
    with torch.no_grad():
        full = trn.eval()(h)
        ramped = trn.train()(h)
    assert trn._forward_count.item() == 1
    torch.testing.assert_close(ramped, full * (3 * 0.1**2 - 2 * 0.1**3))
    assert full.abs().max() > 0


def test_gradients_finite_and_reach_the_oscillators():
    model = small_model()
    model.train()
    ids = torch.randint(0, 64, (3, 40))
    loss = torch.nn.functional.cross_entropy(model(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten())
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    trn = model.blocks[0].resonance
    for p in (trn.proj.proj.weight, trn.W_phase.weight, trn.W_res.weight, trn.proj.omega_base, trn.lambda_pcg,
              trn.res_scale, model.blocks[0].token_shift_mu):
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


def test_resumed_run_continues_the_warm_ramp(tmp_path, shared_data, monkeypatch, capsys):
    """The trainer checkpoints buffers, so a run that fails and resumes equals the uninterrupted one."""
    import pandas as pd
    from safetensors.torch import load_file

    from harness.study import resolve, run_spec
    from harness.run import execute
    from tests.conftest import MICRO_STUDY, micro_config

    hparams = dict(attn_layers=[1], n_kv_heads=1, n_oscillators=4, bigram_buckets=64, bigram_dim=8, warm_steps=30)
    study = {**MICRO_STUDY, "archs": [{"name": "trn_hybrid", "hparams": hparams}],
             "model": {"d_model": 16, "n_layers": 2, "n_heads": 2}, "shape": {"mode": "as_published"}}
    spec = run_spec(resolve(micro_config(study))["micro"], "trn_hybrid", "base", 0)
    forward = trn_hybrid.TemporalResonance.forward

    def failing_forward(self, h):
        if self.training and self._forward_count.item() == 15:
            raise RuntimeError("injected failure")
        return forward(self, h)

    monkeypatch.setattr(trn_hybrid.TemporalResonance, "forward", failing_forward)
    assert execute(spec, tmp_path / "run", state_dir=tmp_path / "state") == "failed"
    monkeypatch.setattr(trn_hybrid.TemporalResonance, "forward", forward)
    capsys.readouterr()
    assert execute(spec, tmp_path / "retry", state_dir=tmp_path / "state") == "completed"
    assert "resumed from" in capsys.readouterr().err
    assert execute(spec, tmp_path / "straight", state_dir=tmp_path / "s2") == "completed"
    drop = lambda run: pd.read_csv(run / "metrics.csv").drop(columns="wall_time")  # noqa: E731
    pd.testing.assert_frame_equal(drop(tmp_path / "retry"), drop(tmp_path / "straight"))
    weights = load_file(str(tmp_path / "retry" / "model.safetensors"))
    assert weights["blocks.0.resonance._forward_count"].item() == 40  # one training forward per step
