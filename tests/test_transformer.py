import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file, save_model

from harness.archs import build
from harness.shape import param_count
from tests.conftest import assert_causal, dropout_calls

SMALL = dict(vocab_size=11, d_model=16, n_layers=2, n_heads=4, ffn_mult=4, max_seq_len=8)


def small(seed=0, **overrides):
    torch.manual_seed(seed)
    return build("transformer", **{**SMALL, **overrides})


def test_published_70m_count():
    published = dict(vocab_size=256, d_model=768, n_layers=10, n_heads=12, ffn_mult=4, max_seq_len=1024)
    assert param_count("transformer", published) == 71_863_296
    assert param_count("transformer", {}) == 71_863_296  # the defaults are the published config


def test_published_tensor_names_and_shapes():
    V, d, T, h = 11, 16, 8, 64
    expected = {"tok_emb.weight": (V, d), "pos_emb.weight": (T, d), "norm_f.weight": (d,), "norm_f.bias": (d,),
                "lm_head.weight": (V, d)}
    for i in range(2):
        p = f"blocks.{i}."
        expected |= {p + "norm1.weight": (d,), p + "norm1.bias": (d,), p + "attn.qkv.weight": (3 * d, d),
                     p + "attn.qkv.bias": (3 * d,), p + "attn.proj.weight": (d, d), p + "attn.proj.bias": (d,),
                     p + "norm2.weight": (d,), p + "norm2.bias": (d,), p + "ffn.fc1.weight": (h, d),
                     p + "ffn.fc1.bias": (h,), p + "ffn.fc2.weight": (d, h), p + "ffn.fc2.bias": (d,)}
    got = {k: tuple(v.shape) for k, v in small().state_dict().items()}
    assert got == expected


def test_head_is_tied_and_counted_once():
    model = small()
    assert model.lm_head.weight is model.tok_emb.weight
    sd = model.state_dict()
    assert param_count("transformer", SMALL) == sum(v.numel() for k, v in sd.items() if k != "lm_head.weight")


def test_init_follows_the_seed():
    model = small(d_model=64, ffn_mult=4)
    fc1 = model.blocks[0].ffn.fc1
    assert fc1.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.tok_emb.weight.std().item() == pytest.approx(0.02, rel=0.2)
    assert torch.all(fc1.bias == 0) and torch.all(model.blocks[0].attn.qkv.bias == 0)
    assert torch.all(model.norm_f.weight == 1) and torch.all(model.norm_f.bias == 0)


def test_ffn_hidden_overrides_ffn_mult():
    model = small(ffn_hidden=5)
    assert model.blocks[1].ffn.fc1.weight.shape == (5, 16)


def test_safetensors_files_load_strictly(tmp_path):
    model, fresh = small(seed=0), small(seed=1)
    ids = torch.randint(0, 11, (2, 8))
    save_model(model, tmp_path / "one_name.safetensors")  # keeps one name of the tied pair
    assert len(load_file(tmp_path / "one_name.safetensors")) == len(model.state_dict()) - 1
    fresh.load_state_dict(load_file(tmp_path / "one_name.safetensors"), strict=True)
    torch.testing.assert_close(fresh(ids), model(ids), rtol=0, atol=0)

    fresh = small(seed=2)
    save_file({k: v.clone() for k, v in model.state_dict().items()}, tmp_path / "both.safetensors")
    fresh.load_state_dict(load_file(tmp_path / "both.safetensors"), strict=True)
    torch.testing.assert_close(fresh(ids), model(ids), rtol=0, atol=0)


def test_a_tied_pair_that_disagrees_is_refused():
    sd = {k: v.clone() for k, v in small().state_dict().items()}
    sd["lm_head.weight"] += 1
    with pytest.raises(ValueError, match="lm_head.weight"):
        small().load_state_dict(sd)


def test_attention_matches_explicit_softmax():
    model = small().eval()
    attn, x = model.blocks[0].attn, torch.randn(2, 8, 16)
    q, k, v = attn.qkv(x).split(16, dim=-1)
    heads = lambda t: t.view(2, 8, 4, 4).transpose(1, 2)  # noqa: E731
    scores = heads(q) @ heads(k).transpose(-1, -2) / math.sqrt(4)
    scores = scores.masked_fill(torch.ones(8, 8).triu(1).bool(), float("-inf"))
    y = (F.softmax(scores, dim=-1) @ heads(v)).transpose(1, 2).reshape(2, 8, 16)
    torch.testing.assert_close(attn(x), attn.proj(y))


def test_causal():
    assert_causal(small(), vocab_size=11, length=8, t=4, atol=1e-6)


def test_dropout_after_embedding_attention_and_ffn():
    expected = ["dropout"] + [f"blocks.{i}.{m}.dropout" for i in range(2) for m in ("attn", "ffn")]
    assert dropout_calls(small(dropout=0.1), vocab_size=11) == expected


def test_dropout_only_in_training():
    model = small(dropout=0.5)
    ids = torch.randint(0, 11, (2, 8))
    assert not torch.equal(model(ids), model(ids))
    model.eval()
    reference = small(dropout=0.0).eval()
    torch.testing.assert_close(model(ids), reference(ids), rtol=0, atol=0)


def test_bad_config_is_named():
    with pytest.raises(ValueError, match="n_head"):
        small(n_heads=3)
    with pytest.raises(ValueError, match="'n_embd'"):
        build("transformer", n_embd=16)
    with pytest.raises(ValueError, match="max_seq_len"):
        small()(torch.zeros(1, 9, dtype=torch.long))
