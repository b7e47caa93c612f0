import pytest
import torch
from safetensors.torch import load_file, save_file, save_model

from harness.archs import build
from harness.archs.memnls import causal_ema
from harness.shape import param_count
from tests.conftest import assert_causal, dropout_calls

SMALL = dict(vocab_size=11, d_model=16, n_layers=2, n_heads=4, ffn_mult=5, max_seq_len=8)
PUBLISHED_MIXER = dict(n_heads=12, nonlinearity_strength=-0.5, memory_coupling_total=0.3, nu_min=0.5, nu_max=10.0,
                       dt=0.05, fast_bias=3.0)


def small(seed=0, **overrides):
    torch.manual_seed(seed)
    return build("memnls", **{**SMALL, **overrides})


def loop_ema(u, a):
    """The recurrence step by step: u [B, L], a [H] -> y [B, L, H]."""
    y, out = torch.zeros(u.shape[0], a.shape[0], dtype=u.dtype), []
    for t in range(u.shape[1]):
        y = a * y + (1 - a) * u[:, t, None]
        out.append(y)
    return torch.stack(out, dim=1)


def test_published_70m_count():
    published = dict(vocab_size=256, d_model=768, n_layers=10, ffn_mult=5, max_seq_len=1024, **PUBLISHED_MIXER)
    assert param_count("memnls", published) == 71_069_184
    assert param_count("memnls", {}) == 71_069_184  # the defaults are the published config


def test_published_buffers():
    mixer = small(**PUBLISHED_MIXER).blocks[0].mixer  # the buffers do not depend on d_model
    a, lam = mixer.alphas, mixer.lambdas
    assert (a[0].item(), a[11].item()) == pytest.approx((0.60653, 0.97531), abs=5e-6)
    assert (lam[0].item(), lam[11].item()) == pytest.approx((0.04083, 0.01361), abs=5e-6)
    assert lam.sum().item() == pytest.approx(0.3)
    assert mixer.nus[0].item() == pytest.approx(10.0) and mixer.nus[11].item() == pytest.approx(0.5)
    learned = [name for name, _ in mixer.named_parameters()]  # only the two projections learn
    assert learned == ["input_proj.weight", "input_proj.bias", "output_proj.weight", "output_proj.bias"]


def test_published_tensor_names_and_shapes():
    V, d, H, h = 11, 16, 4, 80
    expected = {"tok_emb.weight": (V, d), "norm_f.weight": (d,), "norm_f.bias": (d,), "lm_head.weight": (V, d)}
    for i in range(2):
        p = f"blocks.{i}."
        expected |= {p + "norm1.weight": (d,), p + "norm1.bias": (d,), p + "mixer.nus": (H,),
                     p + "mixer.alphas": (H,), p + "mixer.lambdas": (H,), p + "mixer.input_proj.weight": (d, d),
                     p + "mixer.input_proj.bias": (d,), p + "mixer.output_proj.weight": (d, d),
                     p + "mixer.output_proj.bias": (d,), p + "norm2.weight": (d,), p + "norm2.bias": (d,),
                     p + "ffn.fc1.weight": (h, d), p + "ffn.fc1.bias": (h,), p + "ffn.fc2.weight": (d, h),
                     p + "ffn.fc2.bias": (d,)}
    got = {k: tuple(v.shape) for k, v in small().state_dict().items()}
    assert got == expected
    assert tuple(small(use_positional=True).state_dict()["pos_emb.weight"].shape) == (8, d)


def test_safetensors_files_load_strictly(tmp_path):
    model = small(seed=0)
    ids = torch.randint(0, 11, (2, 8))
    save_model(model, tmp_path / "one_name.safetensors")
    fresh = small(seed=1)
    fresh.load_state_dict(load_file(tmp_path / "one_name.safetensors"), strict=True)
    torch.testing.assert_close(fresh(ids), model(ids), rtol=0, atol=0)

    save_file({k: v.clone() for k, v in model.state_dict().items()}, tmp_path / "both.safetensors")
    fresh = small(seed=2)
    fresh.load_state_dict(load_file(tmp_path / "both.safetensors"), strict=True)
    torch.testing.assert_close(fresh(ids), model(ids), rtol=0, atol=0)


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 2e-6)])
def test_fft_memory_equals_the_recurrence(dtype, tol):
    mixer = small(**PUBLISHED_MIXER).blocks[0].mixer.to(dtype)
    rho = torch.rand(2, 300, dtype=dtype)
    expected = loop_ema(rho, mixer.alphas)
    got = mixer.memory(rho)
    assert got.dtype == dtype
    assert (got - expected).abs().max().item() <= tol * expected.abs().max().item()


def test_mixer_matches_the_published_formula():
    mixer = small(n_heads=3, nonlinearity_strength=-0.7).blocks[0].mixer.double()
    x = torch.randn(2, 10, 16, dtype=torch.float64)
    x_in = mixer.input_proj(x)
    rho = (x_in ** 2).mean(-1)
    potential = -0.7 * rho + loop_ema(rho, mixer.alphas) @ mixer.lambdas
    torch.testing.assert_close(mixer(x), mixer.output_proj(potential[..., None] * x_in))


def test_memory_runs_in_float32_under_autocast():
    assert causal_ema(torch.rand(1, 1, 6, dtype=torch.bfloat16), torch.tensor([0.5])).dtype == torch.float32
    model, ids = small().eval(), torch.randint(0, 11, (2, 8))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(ids)
    torch.testing.assert_close(logits.float(), model(ids), atol=0.05, rtol=0.05)


def test_published_residual_restarts_from_the_normalised_input():
    x = torch.randn(2, 8, 16) * 3 + 1
    blocks = {r: small(residual=r).blocks[0] for r in ("published", "standard")}
    with torch.no_grad():
        for block in blocks.values():
            for linear in (block.mixer.output_proj, block.ffn.fc2):
                linear.weight.zero_()
                linear.bias.zero_()
    torch.testing.assert_close(blocks["published"](x), blocks["published"].norm1(x))
    torch.testing.assert_close(blocks["standard"](x), x)


def test_residual_default_is_published():
    assert small().blocks[0].published_residual
    with pytest.raises(ValueError, match="residual='pre'"):
        small(residual="pre")


def test_causal():
    assert_causal(small(), vocab_size=11, length=8, t=4)


def test_fdt_noise_only_when_enabled_and_training():
    ids = torch.randint(0, 11, (2, 8))
    noisy = small(dissipation=0.5, fdt_temperature=1.0)
    assert not torch.equal(noisy(ids), noisy(ids))
    noisy.eval()
    assert torch.equal(noisy(ids), noisy(ids))
    silent = small(dissipation=0.5, fdt_temperature=0.0)  # training, but T = 0: no noise
    assert torch.equal(silent(ids), silent(ids))


def test_dropout_after_embedding_mixer_and_ffn():
    expected = ["dropout"] + [f"blocks.{i}.{m}.dropout" for i in range(2) for m in ("mixer", "ffn")]
    assert dropout_calls(small(dropout=0.1), vocab_size=11) == expected


def test_bad_config_is_named():
    with pytest.raises(ValueError, match="n_heads=1"):
        small(n_heads=1)
    with pytest.raises(ValueError, match="fdt_temperature=-1"):
        small(dissipation=-1, fdt_temperature=-1)
    with pytest.raises(ValueError, match="'memory_modes'"):
        build("memnls", memory_modes=4)
