import pytest
import torch

from harness.archs import available, build
from harness.shape import param_count
from tests.conftest import assert_causal

SMALL = dict(vocab_size=11, d_model=16, n_layers=2, ffn_mult=5, max_seq_len=8)


def small(seed=0, **overrides):
    torch.manual_seed(seed)
    return build("diag_ssm", **{**SMALL, **overrides})


def loop_recurrence(u, a):
    """y_c(t) = a_c y_c(t-1) + (1 - a_c) u_c(t) step by step: u [B, L, d], a [d]."""
    y, out = torch.zeros_like(u[:, 0]), []
    for t in range(u.shape[1]):
        y = a * y + (1 - a) * u[:, t]
        out.append(y)
    return torch.stack(out, dim=1)


def test_registered():
    assert "diag_ssm" in available()


def test_rates_start_geometric_over_memnls_range():
    mixer = small().blocks[0].mixer
    nu = mixer.log_nu.exp()
    assert (nu[0].item(), nu[-1].item()) == pytest.approx((10.0, 0.5))
    torch.testing.assert_close(nu[1:] / nu[:-1], torch.full((15,), (0.5 / 10.0) ** (1 / 15)))
    a = mixer.decay()
    assert (a[0].item(), a[-1].item()) == pytest.approx((0.60653, 0.97531), abs=5e-6)
    assert mixer.log_nu.requires_grad


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 2e-6)])
def test_fft_equals_the_recurrence(dtype, tol):
    mixer = small().blocks[0].mixer.to(dtype)
    with torch.no_grad():
        mixer.log_nu.add_(0.3 * torch.randn(16, dtype=dtype))  # learned rates move: any values must work
    u = torch.randn(2, 300, 16, dtype=dtype)
    expected = loop_recurrence(u, mixer.decay())
    got = mixer.memory(u)
    assert got.dtype == dtype
    assert (got - expected).abs().max().item() <= tol * expected.abs().max().item()
    x = torch.randn(2, 300, 16, dtype=dtype)
    torch.testing.assert_close(mixer(x), mixer.output_proj(loop_recurrence(mixer.input_proj(x), mixer.decay())))


def test_rates_learn():
    model = small()
    model(torch.randint(0, 11, (2, 8))).square().mean().backward()
    assert model.blocks[0].mixer.log_nu.grad.abs().sum() > 0


def test_count_is_memnls_plus_d_per_layer():
    assert param_count("diag_ssm", SMALL) == param_count("memnls", SMALL) + 16 * 2
    assert param_count("diag_ssm", {}) == 71_069_184 + 768 * 10


def test_keeps_everything_of_memnls_but_the_mixer():
    memnls_keys = set(build("memnls", **SMALL).state_dict())
    keys = set(small().state_dict())
    buffers = {f"blocks.{i}.mixer.{b}" for i in range(2) for b in ("nus", "alphas", "lambdas")}
    assert keys == (memnls_keys - buffers) | {f"blocks.{i}.mixer.log_nu" for i in range(2)}
    assert small().blocks[0].published_residual
    assert not small(residual="standard").blocks[0].published_residual


def test_causal():
    assert_causal(small(), vocab_size=11, length=8, t=4)


def test_bad_config_is_named():
    with pytest.raises(ValueError, match="'nonlinearity_strength'"):  # memnls-only knob
        build("diag_ssm", nonlinearity_strength=-0.5)
    with pytest.raises(ValueError, match="nu_min"):
        small(nu_min=0.0)
