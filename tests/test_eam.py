"""eam: the entry's sizes, the elastic memory's rules on small known inputs, the evaluation path as a
proper distribution (the pipeline that trains it: tests/test_eam_pipeline.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_model, save_model

from harness.archs import build, info
from harness.archs.eam import (Decoder, ElasticMemory, Encoder, Config, EntryTransformer, ProseElasticMemory,
                               key_projection)
from tests.conftest import hand_built_memory

D = 8  # key width of the hand-built memories


def n_params(module):
    return sum(p.numel() for p in module.parameters())


def e(*coefficients):
    """The unit vector along sum(c_i e_i) in R^D."""
    return F.normalize(torch.tensor(coefficients + (0.0,) * (D - len(coefficients))), dim=0)


def memory(*addresses, **kw):
    """A prose-rules memory whose live rows are the given addresses (and W, C), value width 2.

    The published (code) rules are pinned in tests/test_eam_memory.py.
    """
    return hand_built_memory(ProseElasticMemory, *addresses, **kw)


def test_entry_sizes_on_the_meta_device():
    with torch.device("meta"):
        assert n_params(EntryTransformer()) == 21_495_808  # the entry's teacher: V 1024, d 512, 8 x 8 heads, MLP 3x
        assert n_params(Encoder(Config())) == 425_984
        assert n_params(Decoder(512, 1024)) == 1_574_912
        model = build("eam")
    assert n_params(model) == 425_984 + 1_574_912  # the memory and key projection are buffers
    assert info("eam").match_knob is None and not info("eam").reconstruction  # the code's parts


def test_key_projection_is_seeded_and_semi_orthogonal():
    q = key_projection(300, seed=3)
    assert q.shape == (300, 256)
    torch.testing.assert_close(q.T @ q, torch.eye(256), atol=1e-5, rtol=0)
    assert torch.equal(q, key_projection(300, seed=3)) and not torch.equal(q, key_projection(300, seed=4))
    narrow = key_projection(16, seed=0)  # narrower than the key: keys keep the cosines of h
    torch.testing.assert_close(narrow @ narrow.T, torch.eye(16), atol=1e-5, rtol=0)
    h = torch.randn(5, 16)
    keys = F.normalize(h @ narrow, dim=-1)
    torch.testing.assert_close(keys @ keys.T, F.normalize(h, dim=-1) @ F.normalize(h, dim=-1).T, atol=1e-5, rtol=0)


def test_a_key_written_once_reads_back_its_value():
    m = memory(e(1), e(0, 1), e(0, 0, 1))
    m.write(e(1)[None], torch.tensor([[3.0, -2.0]]))
    assert m.write_weights[:3].tolist() == [1.0, 0.0, 0.0]
    torch.testing.assert_close(m.read(e(1)[None]), torch.tensor([[3.0, -2.0]]))
    torch.testing.assert_close(m.addresses[0], e(1))  # a key on its winner leaves it in place


def test_conscience_changes_the_winner():
    key = e(0.6, 0.5, 0.62)
    for gamma, moved in ((1.0, 1), (0.0, 0)):
        m = memory(e(1), e(0, 1), weights=[1.0, 0.0], conscience=gamma)
        m.write(key[None], torch.zeros(1, 2))
        # the conscience 1 * W0 / sum(W) = 1 outweighs a0's lead in similarity: a1 wins and moves
        assert not torch.equal(m.addresses[moved], e(*[1.0 if i == moved else 0.0 for i in range(2)]))
        assert torch.equal(m.addresses[1 - moved], e(*[1.0 if i == 1 - moved else 0.0 for i in range(2)]))


def test_keys_of_one_batch_see_the_start_of_batch_state():
    k1, k2 = e(1), e(0.5, 0.45, 0, 0.74)
    v = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    batch = memory(e(1), e(0, 1), e(0, 0, 1))
    batch.write(torch.stack([k1, k2]), v)
    # both keys saw W = 0 (no conscience), so a0 won both; weights clamp(s) / s_top1 = (1, 0.9, 0) for k2
    torch.testing.assert_close(batch.write_weights[:3], torch.tensor([2.0, 0.9, 0.0]))
    torch.testing.assert_close(batch.counters[:3], torch.tensor([[1.0, 1.0], [0.0, 0.9], [0.0, 0.0]]))
    eta = 0.01 / (1 + 2.0 / 10)  # W[a0] after the batch's adds
    torch.testing.assert_close(batch.addresses[0], F.normalize(e(1) + eta * (k1 - e(1)) + eta * (k2 - e(1)), dim=0))
    assert torch.equal(batch.addresses[1], e(0, 1))
    assert float(batch.lr) == pytest.approx(0.01 * 0.99999**2, rel=1e-12)

    one_by_one = memory(e(1), e(0, 1), e(0, 0, 1))
    one_by_one.write(k1[None], v[:1])
    one_by_one.write(k2[None], v[1:])  # now W0 / sum(W) = 1: the conscience hands k2 to a1
    assert not torch.equal(one_by_one.addresses[1], e(0, 1))


def test_learning_rate_decays_per_key_to_its_floor():
    m = memory(e(1), lr=0.00101)
    m.write(e(1).expand(100, D), torch.zeros(100, 2))
    assert float(m.lr) == pytest.approx(0.00101 * 0.99999**100)
    m.write(e(1).expand(1000, D).contiguous(), torch.zeros(1000, 2))
    assert float(m.lr) == 0.001


def test_regulation_runs_once_per_mark_crossed():
    m = memory(e(1), regulate_every=4)
    calls = []
    m.regulate = lambda keys, values, top1=None: calls.append(len(keys))
    for n in (3, 2, 8):  # 0 -> 3 (no mark), 3 -> 5 (4), 5 -> 13 (8 and 12)
        m.write(e(1).expand(n, D), torch.zeros(n, 2))
    assert calls == [2, 8, 8] and int(m.keys_written) == 13


def test_creation_fires_below_the_similarity_threshold_only():
    low, high = e(0.14, 0, 0, (1 - 0.14**2) ** 0.5), e(0.16, 0, 0, 0, (1 - 0.16**2) ** 0.5)
    m = memory(e(1), e(0, 1))
    m.regulate(torch.stack([high, low]), torch.tensor([[1.0, 1.0], [5.0, 6.0]]))
    assert m.live == 3
    torch.testing.assert_close(m.addresses[2], low)
    assert m.counters[2].tolist() == [5.0, 6.0] and m.write_weights[2] == 1.0

    capped = memory(e(1), e(0, 1), max_create=4)
    keys = torch.eye(D)[2:]  # six keys orthogonal to the live locations
    capped.regulate(keys, torch.arange(12.0).view(6, 2))
    assert capped.live == 6 and torch.equal(capped.addresses[2:6], keys[:4])  # the first four, in batch order


def test_split_fires_above_the_weight_threshold_and_hands_over_half():
    m = memory(e(1), e(0, 1), e(0, 0, 1), weights=[151.0, 150.0, 200.0],
               counters=[[2.0, 4.0], [1.0, 1.0], [6.0, 8.0]], merge_above=2.0)
    m.regulate(e(1)[None], torch.zeros(1, 2))
    assert m.live == 5  # rows 2 (W 200) then 0 (W 151) split, largest first; W = 150 does not
    torch.testing.assert_close(m.write_weights[:5], torch.tensor([75.5, 150.0, 100.0, 100.0, 75.5]))
    torch.testing.assert_close(m.counters[:5], torch.tensor([[1.0, 2.0], [1.0, 1.0], [3.0, 4.0], [3.0, 4.0], [1.0, 2.0]]))
    for child, parent in ((3, 2), (4, 0)):
        assert m.addresses[child].norm() == pytest.approx(1.0)
        assert 0.8 < float(m.addresses[child] @ m.addresses[parent]) < 1.0  # normalize(a + 0.1 u)

    one = memory(e(1), e(0, 1), e(0, 0, 1), weights=[151.0, 0.0, 200.0], merge_above=2.0, max_split=1)
    one.regulate(e(1)[None], torch.zeros(1, 2))
    assert one.live == 4 and one.write_weights[:4].tolist() == [151.0, 0.0, 100.0, 100.0]


@pytest.mark.parametrize("cosine, merges", [(0.96, True), (0.94, False)])
def test_merge_fires_above_the_cosine_threshold_only(cosine, merges):
    near = e(cosine, (1 - cosine**2) ** 0.5)
    m = memory(e(1), near, e(0, 0, 1), weights=[2.0, 1.0, 0.0], counters=[[1.0, 0.0], [0.0, 1.0]])
    m.regulate(e(0, 0, 1)[None], torch.zeros(1, 2))
    assert m.live == (2 if merges else 3)
    if merges:
        row = int(torch.nonzero(m.write_weights[:2] == 3.0))
        torch.testing.assert_close(m.addresses[row], F.normalize(2 * e(1) + 1 * near, dim=0))
        assert m.counters[row].tolist() == [1.0, 1.0]
        torch.testing.assert_close(m.addresses[1 - row], e(0, 0, 1))  # the other live row survives
        assert m.write_weights[2] == 0 and not m.counters[2].any()  # the freed row is cleared


def test_nothing_grows_past_max_locations():
    m = memory(e(1), e(0, 1), weights=[200.0, 200.0], max_locations=4, merge_above=2.0)
    keys = torch.eye(D)[2:]
    m.regulate(keys[:1], torch.zeros(1, 2))  # one new row, then two heavy rows want a child: one fits
    assert m.live == 4
    torch.testing.assert_close(m.addresses[2], keys[0])  # creation first, then the split of row 0 (stable order)
    assert m.write_weights[:4].tolist() == [100.0, 200.0, 1.0, 100.0]
    m.regulate(keys, torch.zeros(6, 2))  # six keys want rows, row 1 wants a child: the memory is full
    assert m.live == 4 and m.write_weights[:4].tolist() == [100.0, 200.0, 1.0, 100.0]


def test_read_is_the_softmax_weighted_mean_of_the_top_written_locations():
    v0, v1 = torch.tensor([1.0, 2.0]), torch.tensor([-3.0, 5.0])
    m = memory(e(1), e(0, 1), e(0, 0, 1), weights=[1.0, 2.0, 0.0], counters=[v0.tolist(), (2 * v1).tolist(), [99.0, 99.0]])
    q = e(1, 0.5, 3)  # closest to the never-written row 2, which a read ignores
    s = torch.tensor([1.0, 0.5]) / torch.tensor([1.0, 0.5, 3.0]).norm()
    p = torch.softmax(10 * s, dim=0)
    torch.testing.assert_close(m.read(q[None]), (p[0] * v0 + p[1] * v1)[None])
    m.read_top_k = 1
    torch.testing.assert_close(m.read(q[None]), v0[None])
    assert not ProseElasticMemory(key_dim=D, value_dim=2, max_locations=4, initial_locations=2).read(q[None]).any()


def _busy_memory(seed):
    """A memory that has written, created, split and merged: random keys drawn around a few centres."""
    m = ElasticMemory(key_dim=D, value_dim=3, max_locations=40, initial_locations=10, regulate_every=16,
                      split_above=3.0, seed=seed)
    g = torch.Generator().manual_seed(0)
    centres = F.normalize(torch.randn(4, D, generator=g), dim=1)
    for _ in range(6):
        keys = centres[torch.randint(0, 4, (16,), generator=g)] + 0.3 * torch.randn(16, D, generator=g)
        m.write(keys, torch.randn(16, 3, generator=g))
    return m


def test_memory_is_deterministic_given_its_seed_and_saves_to_safetensors(tmp_path):
    a, b = _busy_memory(seed=1), _busy_memory(seed=1)
    assert 10 < a.live <= 40
    for name, buffer in a.named_buffers():
        assert torch.equal(buffer, dict(b.named_buffers())[name]), name
    assert not torch.equal(a.addresses, _busy_memory(seed=2).addresses)
    save_model(a, str(tmp_path / "memory.safetensors"))
    fresh = ElasticMemory(key_dim=D, value_dim=3, max_locations=40, initial_locations=10, seed=7)
    load_model(fresh, str(tmp_path / "memory.safetensors"))
    queries = torch.randn(5, D)
    assert fresh.live == a.live and torch.equal(fresh.read(queries), a.read(queries))


def test_evaluation_path_is_a_causal_proper_distribution():
    torch.manual_seed(0)
    model = build("eam", vocab_size=11, teacher_d_model=12, encoder_d_model=8, key_dim=16, decoder_hidden=10,
                  max_locations=64, initial_locations=16).eval()
    with torch.no_grad():  # make the zero-initialised output projections live, so attention can leak
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    model.memory.write(torch.randn(40, 16), torch.randn(40, 12))
    x = torch.randint(0, 11, (2, 6))
    logits = model(x)
    assert logits.shape == (2, 6, 11) and logits.abs().max() <= 30
    torch.testing.assert_close(logits.softmax(-1).sum(-1), torch.ones(2, 6))
    changed = x.clone()
    changed[:, 4:] = (changed[:, 4:] + 1) % 11
    torch.testing.assert_close(model(changed)[:, :4], logits[:, :4])  # the future does not leak
