"""The qk_norm switch and the diagnostics protocol (harness/archs/layers.py): off is the published model,
on adds only the gains and bounds the attention logits at a large lr where the plain model's grow; the
recorded attn_logit_max and the state_* magnitudes equal direct computations on known inputs."""

import math

import pytest
import torch
import torch.nn.functional as F

from harness.archs import build, info, trn_hybrid
from harness.archs.layers import QKNorm, causal_logit_max, collect, recording
from harness.shape import param_count

ATTENTION_ARCHS = {  # head_dim 4 everywhere
    "transformer": dict(vocab_size=11, d_model=16, n_layers=2, n_heads=4, max_seq_len=8),
    "resonance": dict(vocab_size=11, d_model=16, n_layers=2, n_heads=4),
    "trn_hybrid": dict(vocab_size=11, d_model=16, n_layers=3, n_heads=4, n_kv_heads=2, n_oscillators=4,
                       attn_layers=[0, 2], max_seq_len=8, bigram_buckets=13, bigram_dim=4, ffn_hidden=16),
    "eam": dict(vocab_size=11, teacher_d_model=12, encoder_d_model=16, encoder_heads=4, key_dim=16,
                decoder_hidden=10, max_locations=64, initial_locations=16),
}
ATTENTION_PATHS = {
    "transformer": ["blocks.0.attn", "blocks.1.attn"],
    "resonance": ["layers.0.attn", "layers.1.attn"],
    "trn_hybrid": ["blocks.0.attn", "blocks.2.attn"],
    "eam": ["encoder.blocks.0", "encoder.blocks.1"],
}
HEAD_DIM = 4


def made(arch, seed=0, **overrides):
    torch.manual_seed(seed)
    return build(arch, **{**ATTENTION_ARCHS[arch], **overrides}).eval()


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def output(arch, model, ids):
    """What the attention feeds: the logits, or for eam the Encoder's keys (an unwritten memory reads zeros)."""
    return model.encoder(ids) if arch == "eam" else model(ids)


def live(model, seed=1):
    """Make the zero-initialised projections live (trn_hybrid's attention output starts at zero)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def direct_logit_max(q, k, scale):
    """max over b, h and s <= t of scale * q[b, h, t] . k[b, h, s], written out with a loop over t."""
    return max((scale * q[:, :, t, None] @ k[:, :, : t + 1].transpose(-1, -2)).max().item() for t in range(q.size(2)))


def rms(x, gain=None):
    y = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + torch.finfo(x.dtype).eps)
    return y if gain is None else y * gain


def inputs_of(model, paths):
    """Run hooks capturing the first positional input of each module in paths."""
    seen = {}
    for path in paths:
        model.get_submodule(path).register_forward_pre_hook(lambda m, a, path=path: seen.__setitem__(path, a[0]))
    return seen


def test_the_attention_archs_declare_qk_norm_and_the_others_nothing():
    assert {a: info(a).switches for a in [*ATTENTION_ARCHS, "memnls", "diag_ssm"]} == {
        **{a: ("qk_norm",) for a in ATTENTION_ARCHS}, "memnls": (), "diag_ssm": ()}
    for arch in ("memnls", "diag_ssm"):
        with pytest.raises(ValueError, match=f"{arch} hyperparameters.*'qk_norm'"):
            build(arch, d_model=16, n_layers=1, qk_norm=True)


@pytest.mark.parametrize("arch", ATTENTION_ARCHS)
def test_qk_norm_off_is_the_published_model(arch):
    ids = torch.randint(0, 11, (2, 8), generator=torch.Generator().manual_seed(0))
    plain, off = live(made(arch)), live(made(arch, qk_norm=False))
    assert n_params(off) == n_params(plain)
    assert param_count(arch, {**ATTENTION_ARCHS[arch], "qk_norm": False}) == param_count(arch, ATTENTION_ARCHS[arch])
    assert off.state_dict().keys() == plain.state_dict().keys()
    with torch.no_grad():
        torch.testing.assert_close(output(arch, off, ids), output(arch, plain, ids), rtol=0, atol=0)


@pytest.mark.parametrize("arch", ATTENTION_ARCHS)
def test_qk_norm_on_adds_only_the_gains(arch):
    plain, on = made(arch), made(arch, qk_norm=True)
    gains = sorted(f"{path}.{which}.weight" for path in ATTENTION_PATHS[arch] for which in ("q_norm", "k_norm"))
    assert n_params(on) - n_params(plain) == len(gains) * HEAD_DIM
    missing, unexpected = on.load_state_dict(plain.state_dict(), strict=False)
    assert sorted(missing) == gains and unexpected == []
    # the same seed draws the same weights: the switch adds gains (at 1) and changes nothing else
    on_params = dict(on.named_parameters())
    for name, p in plain.named_parameters():
        assert torch.equal(on_params[name], p), name
    assert all(torch.equal(on.get_submodule(g.rsplit(".", 1)[0]).weight, torch.ones(HEAD_DIM)) for g in gains)


def test_trn_hybrid_qk_norm_at_init_gives_the_published_logits():
    """Its published attention already RMS-normalises q and k: the switch only makes the gains learnable."""
    ids = torch.randint(0, 11, (2, 8), generator=torch.Generator().manual_seed(0))
    plain = live(made("trn_hybrid"))
    on = made("trn_hybrid", qk_norm=True)
    on.load_state_dict(plain.state_dict(), strict=False)
    with torch.no_grad():
        torch.testing.assert_close(on(ids), plain(ids), rtol=0, atol=1e-6)


@pytest.mark.parametrize("qk_norm", [False, True])
def test_transformer_logit_max_equals_direct_computation(qk_norm):
    model = made("transformer", qk_norm=qk_norm)
    if qk_norm:
        live(model)  # gains away from 1
    ids = torch.randint(0, 11, (3, 8), generator=torch.Generator().manual_seed(0))
    seen = inputs_of(model, ATTENTION_PATHS["transformer"])
    with torch.no_grad(), recording(model):
        model(ids)
    got = collect(model)
    assert set(got) == {f"attn_logit_max/{p}" for p in ATTENTION_PATHS["transformer"]}
    for path, x in seen.items():
        attn = model.get_submodule(path)
        q, k, _ = (t.view(3, 8, 4, HEAD_DIM).transpose(1, 2) for t in attn.qkv(x).split(16, dim=-1))
        if qk_norm:
            q, k = rms(q, attn.q_norm.weight), rms(k, attn.k_norm.weight)
        with torch.no_grad():
            expected = direct_logit_max(q, k, 1 / math.sqrt(HEAD_DIM))
        assert got[f"attn_logit_max/{path}"] == pytest.approx(expected, abs=1e-5)
        assert attn.max_logit == got[f"attn_logit_max/{path}"]


@pytest.mark.parametrize("qk_norm", [False, True])
def test_trn_hybrid_logit_max_equals_direct_computation_with_gqa_rope_and_gain(qk_norm):
    model = live(made("trn_hybrid", qk_norm=qk_norm))
    attn = model.blocks[2].attn
    x = torch.randn(2, 8, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), recording(attn):
        attn(x)
        q = attn.c_q(x).view(2, 8, 4, HEAD_DIM).transpose(1, 2)
        k = attn.c_k(x).view(2, 8, 2, HEAD_DIM).transpose(1, 2)
        q_gain, k_gain = (attn.q_norm.weight, attn.k_norm.weight) if qk_norm else (None, None)
        q = trn_hybrid.rotary(rms(q, q_gain), 10000.0) * attn.q_gain[None, :, None, None]
        k = trn_hybrid.rotary(rms(k, k_gain), 10000.0)[:, [0, 0, 1, 1]]  # query head h reads key head h // 2
        expected = direct_logit_max(q, k, 1 / math.sqrt(HEAD_DIM))
    assert collect(attn) == {"attn_logit_max": pytest.approx(expected, abs=1e-5)}


@pytest.mark.parametrize("arch", ATTENTION_ARCHS)
def test_every_attention_module_reports_under_its_path(arch):
    model = live(made(arch, qk_norm=True))
    with torch.no_grad(), recording(model):
        output(arch, model, torch.randint(0, 11, (2, 8)))
    got = {k: v for k, v in collect(model).items() if k.startswith("attn_logit_max")}
    assert set(got) == {f"attn_logit_max/{p}" for p in ATTENTION_PATHS[arch]}
    assert all(0 < v < math.inf for v in got.values())


@pytest.fixture
def one_thread():
    """A model this small gains nothing from intra-op threads, and on a busy machine they spin (2 s -> 16 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_qk_norm_bounds_attention_logits_at_a_large_lr(one_thread):
    """AdamW at lr 0.1, no clipping, 30 steps on a copy task (a random half, then the same again):
    without qk_norm the largest logit grows from ~0.07 to hundreds; with it, each module's stays
    under its bound sqrt(head_dim) max|g_q| max|g_k| at every step (QKNorm's docstring)."""
    head_dim = 8

    def train(qk_norm):
        torch.manual_seed(0)
        model = build("transformer", vocab_size=64, d_model=32, n_layers=2, n_heads=4, max_seq_len=32, qk_norm=qk_norm)
        opt = torch.optim.AdamW(model.parameters(), lr=0.1)
        data = torch.Generator().manual_seed(1)
        history = []
        for _ in range(30):
            half = torch.randint(0, 64, (8, 16), generator=data)
            ids = torch.cat([half, half], dim=1)
            with recording(model):
                logits = model(ids[:, :-1])
            logit_max = collect(model)
            if qk_norm:
                for i, block in enumerate(model.blocks):
                    g_q, g_k = block.attn.q_norm.weight.abs().max(), block.attn.k_norm.weight.abs().max()
                    assert logit_max[f"attn_logit_max/blocks.{i}.attn"] <= math.sqrt(head_dim) * g_q * g_k * (1 + 1e-6)
            history.append(max(logit_max.values()))
            loss = F.cross_entropy(logits.reshape(-1, 64), ids[:, 1:].reshape(-1))
            opt.zero_grad()
            loss.backward()
            opt.step()
        return history

    plain, normed = train(False), train(True)
    print(f"attn_logit_max plain: init {plain[0]:.3f} max {max(plain):.1f} final {plain[-1]:.1f}; "
          f"qk_norm: init {normed[0]:.3f} max {max(normed):.2f} final {normed[-1]:.2f}")
    assert max(plain) > 100 * plain[0] and plain[-1] > 100 * plain[0]
    assert max(plain) > 10 * max(normed)
    assert max(normed) < 3 * math.sqrt(head_dim)


def test_memnls_potential_range_equals_direct_computation():
    torch.manual_seed(0)
    model = build("memnls", vocab_size=11, d_model=16, n_layers=2, n_heads=4, max_seq_len=8).eval()
    paths = ["blocks.0.mixer", "blocks.1.mixer"]
    seen = inputs_of(model, paths)
    with torch.no_grad(), recording(model):
        model(torch.randint(0, 11, (2, 8), generator=torch.Generator().manual_seed(0)))
    got = collect(model)
    assert set(got) == {f"state_potential_{m}/{p}" for m in ("min", "max") for p in paths}
    for path, h in seen.items():
        mixer = model.get_submodule(path)
        with torch.no_grad():
            rho = mixer.input_proj(h).pow(2).mean(-1)  # [B, L]
            y, potentials = torch.zeros(2, 4), []
            for t in range(8):  # the memory modes, step by step
                y = mixer.alphas * y + (1 - mixer.alphas) * rho[:, t, None]
                potentials.append(-0.5 * rho[:, t] + y @ mixer.lambdas)
            potential = torch.stack(potentials)
        assert got[f"state_potential_min/{path}"] == pytest.approx(potential.min().item(), abs=1e-6)
        assert got[f"state_potential_max/{path}"] == pytest.approx(potential.max().item(), abs=1e-6)
        assert got[f"state_potential_min/{path}"] < got[f"state_potential_max/{path}"]


def test_diag_ssm_decay_extremes_are_its_rates():
    model = build("diag_ssm", vocab_size=11, d_model=16, n_layers=2, max_seq_len=8)  # nu in [0.5, 10], dt 0.05
    assert collect(model) == {f"state_decay_{m}/blocks.{i}.mixer": pytest.approx(a, rel=1e-6) for i in range(2)
                              for m, a in (("min", math.exp(-10 * 0.05)), ("max", math.exp(-0.5 * 0.05)))}
    with torch.no_grad():
        model.blocks[1].mixer.log_nu[3] = math.log(40.0)  # a faster channel: a = exp(-2)
    assert collect(model)["state_decay_min/blocks.1.mixer"] == pytest.approx(math.exp(-2.0), rel=1e-6)


def test_resonance_damping_and_frequency_extremes_are_its_oscillators():
    model = made("resonance")  # K = 8 oscillators, w0 geometric 0.1 .. pi, damping_pre 0 -> zeta 0.5
    state = {k: v for k, v in collect(model).items() if k.startswith("state_")}
    assert state == pytest.approx({"state_damping_min": 0.5, "state_damping_max": 0.5,
                                   "state_frequency_min": 0.1, "state_frequency_max": math.pi}, rel=1e-6)
    with torch.no_grad():
        model.damping_pre[0], model.damping_pre[1] = -2.0, 3.0
    state = collect(model)
    assert state["state_damping_min"] == pytest.approx(0.05 + 0.9 * torch.sigmoid(torch.tensor(-2.0)).item())
    assert state["state_damping_max"] == pytest.approx(0.05 + 0.9 * torch.sigmoid(torch.tensor(3.0)).item())


def test_trn_hybrid_cap_hits_and_decays_equal_direct_computation():
    model = live(made("trn_hybrid", max_seq_len=64))  # blocks.1 is the TRN block; K = 4
    res = model.blocks[1].resonance
    with torch.no_grad():  # two loud oscillators (amplitude 3, so |r| passes the cap) and two quiet ones
        res.proj.proj.bias[:4] = torch.tensor([5.0, 5.0, -5.0, -5.0])
    seen = inputs_of(model, ["blocks.1.resonance"])
    with torch.no_grad(), recording(model):
        model(torch.randint(0, 11, (2, 8), generator=torch.Generator().manual_seed(0)))
        amp, freq, phase, alpha, _, beta = res.proj(seen["blocks.1.resonance"])
        angle = freq * torch.log1p(torch.arange(8.0))[:, None] + phase
        r, magnitudes = torch.zeros(2, 4, dtype=torch.complex64), []
        for t in range(8):  # the recurrence, step by step, then the erase along the angle
            r = alpha[:, t] * r + (1 - alpha[:, t]) * amp[:, t] * torch.exp(1j * angle[:, t])
            along = beta[:, t] * (r.real * angle[:, t].cos() + r.imag * angle[:, t].sin())
            erased = r - along * torch.exp(1j * angle[:, t])
            magnitudes.append(torch.sqrt(erased.real**2 + erased.imag**2 + 1e-8))
        capped = (torch.stack(magnitudes) > 1).float().mean().item()
    got = collect(model)
    assert 0 < capped < 1
    assert got["state_cap_frac/blocks.1.resonance"] == pytest.approx(capped, abs=1e-6)
    assert got["state_decay_min/blocks.1.resonance"] == pytest.approx(alpha.min().item(), abs=1e-7)
    assert got["state_decay_max/blocks.1.resonance"] == pytest.approx(alpha.max().item(), abs=1e-7)
    omega = res.proj.omega_base
    assert got["state_frequency_base_min/blocks.1.resonance"] == pytest.approx(omega.min().item())
    assert got["state_frequency_base_max/blocks.1.resonance"] == pytest.approx(omega.max().item())


def test_eam_reports_how_full_its_memory_is():
    model = made("eam")
    assert collect(model) == {"state_live_frac/memory": 16 / 64}


def test_nothing_is_recorded_without_recording():
    model = made("transformer")
    model(torch.randint(0, 11, (2, 8)))
    assert collect(model) == {}
    with recording(model):
        model(torch.randint(0, 11, (2, 8)))
    assert len(collect(model)) == 2


@pytest.mark.parametrize("arch", ["transformer", "memnls", "trn_hybrid"])
def test_recording_is_restored_also_when_the_body_raises(arch):
    model = made(arch) if arch in ATTENTION_ARCHS else build(arch, vocab_size=11, d_model=16, n_layers=2)
    flags = lambda: [m.recording for m in model.modules() if hasattr(m, "recording")]  # noqa: E731
    assert len(flags()) >= 2 and not any(flags())
    with pytest.raises(RuntimeError, match="inside"):
        with recording(model):
            assert all(flags())
            with recording(model.blocks[0]):  # nested: leaving the inner one keeps the outer on
                pass
            assert all(flags())
            raise RuntimeError("inside")
    assert not any(flags())


def test_qk_norm_is_rms_over_head_dim_with_its_gain():
    norm = QKNorm(4)
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([1.0, 2.0, 0.5, -1.0]))
    x = torch.tensor([[3.0, -1.0, 1.0, 1.0]])  # mean square 3
    torch.testing.assert_close(norm(x), x / math.sqrt(3.0) * norm.weight)


def test_logit_max_is_float32_under_bf16_autocast():
    g = torch.Generator().manual_seed(0)
    q, k = (torch.randn(2, 4, 8, 16, generator=g).bfloat16() for _ in range(2))
    expected = direct_logit_max(q.float(), k.float(), 0.25)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert causal_logit_max(q, k) == pytest.approx(expected, abs=1e-5)
