"""eam's published rules (the submitted code of parameter-golf PR #1146), each on small known inputs:
the memory (create, split, merge, write, read, regulation cadence, float16 addresses, draws) and the
Encoder and Decoder (the code's tensor names, inits and the rms_norm after the embedding).
The prose variant's rules are pinned in tests/test_eam.py."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from harness.archs import build
from harness.archs.eam import (KEY_SEED, Config, Decoder, ElasticMemory, Encoder, ProseElasticMemory,
                               fp16_similarities, key_projection)
from tests.conftest import hand_built_memory

D = 8  # key width of the hand-built memories


def e(*coefficients, dim=D):
    """The unit vector along sum(c_i e_i) in R^dim."""
    return F.normalize(torch.tensor(coefficients + (0.0,) * (dim - len(coefficients))), dim=0)


def memory(*addresses, **kw):
    """A published-rules memory whose live rows are the given addresses (and W, C), value width 2."""
    return hand_built_memory(ElasticMemory, *addresses, **kw)


def h(x: torch.Tensor) -> torch.Tensor:
    """x rounded to float16, as float32."""
    return x.half().float()


# -- the memory


def test_addresses_are_float16_and_drawn_as_the_code_draws_them():
    torch.manual_seed(3)
    expected = F.normalize(torch.randn(8, D), dim=-1).half()  # the code: randn(max_L, kd) after manual_seed
    m = ElasticMemory(key_dim=D, value_dim=2, max_locations=8, initial_locations=4, seed=3)
    assert m.addresses.dtype == torch.float16 and torch.equal(m.addresses, expected)
    assert m.live == 4 and not m.counters.any() and not m.write_weights.any()


def test_similarities_are_float16_rounded():
    g = torch.Generator().manual_seed(0)
    q, a = F.normalize(torch.randn(5, D, generator=g), dim=1), F.normalize(torch.randn(7, D, generator=g), dim=1)
    s = fp16_similarities(q, a.half())
    assert s.dtype == torch.float32 and torch.equal(s, h(s))  # every value is a float16
    torch.testing.assert_close(s, h(q) @ h(a).T, atol=2**-11, rtol=0)  # within half a float16 ulp of 1


def test_a_write_into_empty_rows_adds_weighted_values():
    key = e(1, 0.5)
    m = memory(e(1), e(0, 1), e(0, 0, 1))
    v = torch.tensor([[3.0, -2.0]])
    m.write(key[None], v)
    s = h(key[:2])  # the sims to the unit axes are the key's float16 components
    w = torch.tensor([1.0, float(s[1] / s[0]), 0.0])  # clamp(s, 0) / s_top1; W = 0 so no conscience
    torch.testing.assert_close(m.write_weights[:3], w, atol=0, rtol=0)
    torch.testing.assert_close(m.counters[:3], w[:, None] * v, atol=0, rtol=0)


def test_conscience_uses_the_write_weights_at_the_batch_start():
    key = e(0.62, 0.5, 0.6)  # nearest to row 0
    for gamma, winner in ((1.0, 2), (0.0, 0)):
        m = memory(e(1), e(0, 1), e(0, 0, 1), weights=[1.0, 0.0, 0.0], conscience=gamma)
        m.write(key[None], torch.zeros(1, 2))  # s - gamma W / sum(W): 0.62 - 1, 0.50, 0.60: row 2 wins
        for row in range(3):
            axis = e(*(0.0,) * row, 1.0).half()
            assert torch.equal(m.addresses[row], axis) == (row != winner), (gamma, row)


def test_winners_moves_are_assigned_so_the_last_key_of_a_batch_stands():
    k1, k2 = e(1, 0.2), e(1, 0, 0.3)
    m = memory(e(1), e(0, 1), e(0, 0, 1))
    m.write(torch.stack([k1, k2]), torch.zeros(2, 2))  # both keys see W = 0: row 0 wins both
    assert m.write_weights[0] == 2.0
    eta = 0.01 / (1.0 + m.write_weights[0:1] / 10.0)  # W after the batch's adds
    a0 = e(1)
    assert torch.equal(m.addresses[0], F.normalize(a0 + eta * (k2 - a0), dim=0).half())
    added = F.normalize(a0 + eta * (k1 - a0) + eta * (k2 - a0), dim=0).half()
    assert not torch.equal(m.addresses[0], added)
    assert torch.equal(m.addresses[1], e(0, 1).half()) and torch.equal(m.addresses[2], e(0, 0, 1).half())
    assert float(m.lr) == pytest.approx(0.01 * 0.99999**2, rel=1e-12)


def test_regulation_runs_when_the_count_since_the_last_reaches_regulate_every_then_restarts():
    m = memory(e(1), regulate_every=4)
    calls = []
    m.regulate = lambda keys, values, top1=None: calls.append(len(keys))
    for n in (3, 2, 8, 3):  # counts 3, 5 -> run, 0 + 8 -> run (once), 0 + 3
        m.write(e(1).expand(n, D), torch.zeros(n, 2))
    assert calls == [2, 8] and int(m.keys_written) == 16 and int(m.since_regulation) == 3
    prose = ProseElasticMemory(key_dim=D, value_dim=2, max_locations=8, initial_locations=1, regulate_every=4)
    prose_calls = []
    prose.regulate = lambda keys, values, top1=None: prose_calls.append(len(keys))
    for n in (3, 2, 8, 3):  # the prose rule: once per mark crossed (4, 8 and 12, 16)
        prose.write(e(1).expand(n, D), torch.zeros(n, 2))
    assert prose_calls == [2, 8, 8, 3]


def test_a_novel_key_creates_an_empty_row_judged_by_its_similarity_before_the_write():
    low, high = e(0.14, 0, 0, (1 - 0.14**2) ** 0.5), e(0.16, 0, 0, 0, (1 - 0.16**2) ** 0.5)  # threshold 0.15
    m = memory(e(1), e(0, 1), regulate_every=2)
    seen = []
    regulate = m.regulate
    m.regulate = lambda keys, values, top1=None: (seen.append(top1.clone()), regulate(keys, values, top1))
    m.write(torch.stack([high, low]), torch.tensor([[1.0, 1.0], [5.0, 6.0]]))
    torch.testing.assert_close(seen[0], torch.stack([h(high[0]), h(low[0])]), atol=0, rtol=0)
    assert m.live == 3 and torch.equal(m.addresses[2], low.half())
    assert not m.counters[2].any() and m.write_weights[2] == 0  # C = 0, W = 0: not the key's value
    torch.testing.assert_close(m.write_weights[:2], torch.tensor([2.0, 0.0]))  # both keys wrote row 0

    given = memory(e(1), e(0, 1))  # regulate trusts the top-1 it is handed
    given.regulate(e(1)[None], torch.zeros(1, 2), top1=torch.tensor([0.1]))
    assert given.live == 3 and torch.equal(given.addresses[2], e(1).half())

    capped = memory(e(1, dim=32), e(0, 1, dim=32), max_locations=32)
    keys = torch.eye(32)[2:26]  # 24 keys orthogonal to the live rows (and to each other: no merge)
    capped.regulate(keys, torch.zeros(24, 2))
    assert capped.live == 22 and torch.equal(capped.addresses[2:22], keys[:20].half())  # 20, in batch order


def test_split_adds_empty_children_in_index_order_and_leaves_the_parent_unchanged():
    counters = [[2.0, 4.0], [1.0, 1.0], [6.0, 8.0]]
    m = memory(e(1), e(0, 1), e(0, 0, 1), weights=[151.0, 150.0, 200.0], counters=counters, seed=5)
    g = torch.Generator()
    g.set_state(m.generator.get_state())
    m.regulate(e(1)[None], torch.zeros(1, 2))  # not novel; L <= 20: no merge
    assert m.live == 5  # children of rows 0 then 2 (index order); W = 150 does not split
    assert m.write_weights[:5].tolist() == [151.0, 150.0, 200.0, 0.0, 0.0]
    assert m.counters[:5].tolist() == counters + [[0.0, 0.0], [0.0, 0.0]]
    for child, parent in ((3, 0), (4, 2)):  # normalize(a + 0.1 u), u a unit vector rounded to float16
        u = F.normalize(torch.randn(D, generator=g), dim=-1).half() * 0.1
        assert torch.equal(m.addresses[child], F.normalize(m.addresses[parent].float() + u.float(), dim=-1).half())

    m.regulate(e(1)[None], torch.zeros(1, 2))  # the parents are still overloaded: they split again
    assert m.live == 7 and m.write_weights[:3].tolist() == [151.0, 150.0, 200.0]

    one = memory(e(1), e(0, 1), e(0, 0, 1), weights=[151.0, 0.0, 200.0], max_split=1)
    one.regulate(e(1)[None], torch.zeros(1, 2))
    assert one.live == 4 and float(one.addresses[3].float() @ e(1)) > 0.8  # row 0's child, not the heavier row 2's

    full = memory(e(1), e(0, 1), e(0, 0, 1), weights=[200.0, 200.0, 0.0], max_locations=4)
    full.regulate(e(1)[None], torch.zeros(1, 2))
    assert full.live == 4
    full.regulate(e(1)[None], torch.zeros(1, 2))  # nothing grows past max_locations
    assert full.live == 4


def _merge_memory(cosine, weights):
    """22 live rows (more than 20): 21 orthogonal axes and a row at the given cosine to axis 0."""
    dim = 32
    axes = [e(*(0.0,) * i, 1.0, dim=dim) for i in range(21)]
    near = e(cosine, (1 - cosine**2) ** 0.5, dim=dim)
    m = memory(*axes, near, max_locations=24, seed=1)
    m.write_weights[0], m.write_weights[21] = weights
    m.counters[0], m.counters[21] = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    m.counters[20], m.write_weights[20] = torch.tensor([7.0, 7.0]), 9.0  # the row that moves if 21 is freed
    return m


def test_merge_joins_the_first_sampled_row_with_its_best_partner():
    m = _merge_memory(0.96, (2.0, 1.0))
    g = torch.Generator()
    g.set_state(m.generator.get_state())
    sample = torch.randperm(22, generator=g)
    keep = next(int(i) for i in sample if int(i) in (0, 21))  # the first sampled row with a partner > 0.95
    free = 21 - keep
    a_keep, a_free = m.addresses[keep].float(), m.addresses[free].float()
    w_keep, w_free = m.write_weights[keep].clone(), m.write_weights[free].clone()
    c_sum = m.counters[0] + m.counters[21]
    m.regulate(e(1, dim=32)[None], torch.zeros(1, 2))
    assert m.live == 21
    row = 0  # kept, or (when row 21 is kept and row 0 freed) the last row moved into the freed one
    expected = F.normalize((w_keep * a_keep + w_free * a_free) / (w_keep + w_free + 1e-8), dim=-1).half()
    assert torch.equal(m.addresses[row], expected)
    assert m.counters[row].tolist() == c_sum.tolist() and m.write_weights[row] == 3.0
    assert m.write_weights[20] == 9.0 and m.counters[20].tolist() == [7.0, 7.0]  # the other rows stay
    assert m.write_weights[21] == 0 and not m.counters[21].any()  # the freed last row is cleared


def test_merge_needs_a_cosine_above_095_and_more_than_20_live_rows():
    below = _merge_memory(0.94, (2.0, 1.0))
    below.regulate(e(1, dim=32)[None], torch.zeros(1, 2))
    assert below.live == 22
    few = memory(e(1), e(0.99, 0.14), e(0, 0, 1))  # cosine 0.99, but only 3 live rows
    few.regulate(e(0, 0, 1)[None], torch.zeros(1, 2))
    assert few.live == 3


def test_two_empty_rows_merge_into_the_zero_address():
    m = _merge_memory(0.96, (0.0, 0.0))
    m.regulate(e(1, dim=32)[None], torch.zeros(1, 2))
    assert m.live == 21 and (m.addresses[:21].float().norm(dim=1) == 0).sum() == 1  # (0 a1 + 0 a2) / 1e-8


def test_a_read_ranges_over_every_live_row_including_empty_ones():
    v0, v1 = torch.tensor([1.0, 2.0]), torch.tensor([-3.0, 5.0])
    m = memory(e(1), e(0, 1), e(0, 0, 1), weights=[1.0, 2.0, 0.0],
               counters=[v0.tolist(), (2 * v1).tolist(), [0.0, 0.0]])
    q = e(1, 0.5, 3)  # closest to the empty row 2, which contributes the zero vector with its weight
    p = torch.softmax(10 * h(q[:3]), dim=0)
    torch.testing.assert_close(m.read(q[None]), (p[0] * v0 + p[1] * v1)[None])
    prose = ProseElasticMemory(key_dim=D, value_dim=2, max_locations=8, initial_locations=3)
    prose.addresses[:3] = m.addresses[:3].float()
    prose.write_weights[:3], prose.counters[:3] = m.write_weights[:3], m.counters[:3]
    p_written = torch.softmax(10 * q[:2], dim=0)  # the prose read skips the empty row
    torch.testing.assert_close(prose.read(q[None]), (p_written[0] * v0 + p_written[1] * v1)[None])
    m.read_top_k = 1
    assert not m.read(q[None]).any()  # its top-1 is the empty row
    assert not ElasticMemory(key_dim=D, value_dim=2, max_locations=4, initial_locations=2).read(q[None]).any()


def test_a_long_write_stream_is_deterministic_and_grows_within_bounds():
    def busy(seed):
        m = ElasticMemory(key_dim=32, value_dim=3, max_locations=64, initial_locations=8, regulate_every=64,
                          split_above=3.0, seed=seed)
        g = torch.Generator().manual_seed(0)
        centres = F.normalize(torch.randn(4, 32, generator=g), dim=1)
        for _ in range(20):
            near = centres[torch.randint(0, 4, (32,), generator=g)]
            keys = F.normalize(near + 0.3 * torch.randn(32, 32, generator=g), dim=1)
            m.write(keys, torch.randn(32, 3, generator=g))
        return m

    a, b = busy(1), busy(1)
    assert 8 < a.live <= 64
    for name, buffer in a.named_buffers():
        assert torch.equal(buffer, dict(b.named_buffers())[name]), name
    assert (a.write_weights[a.live:] == 0).all() and not a.counters[a.live:].any()


# -- the model around it


def test_encoder_and_decoder_carry_the_codes_tensor_names():
    enc = Encoder(Config())
    assert list(enc.state_dict()) == ["tok.weight"] + [f"blocks.{i}.{n}.weight" for i in range(2)
                                                       for n in ("qkv", "out", "up", "down")] + ["key_proj.weight"]
    assert list(Decoder(512, 1024).state_dict()) == ["head.0.weight", "head.0.bias", "head.2.weight", "head.2.bias"]


def test_encoder_inits_and_the_rms_norm_after_its_embedding():
    torch.manual_seed(0)
    enc = Encoder(Config(vocab_size=64, encoder_d_model=32, key_dim=16))
    assert 0.9 < enc.tok.weight.std().item() < 1.1  # nn.Embedding's default N(0, 1)
    assert all(block.out.weight.any() and block.down.weight.any() for block in enc.blocks)  # nothing zeroed
    x = torch.randint(0, 64, (2, 10))
    with torch.no_grad():
        before = enc(x)
        enc.tok.weight.mul_(7.0)  # the embedding is normalised before the first block
        torch.testing.assert_close(enc(x), before, atol=1e-5, rtol=0)


def test_rules_pick_the_memory_and_the_key_projection_is_the_codes():
    assert type(build("eam", max_locations=16, initial_locations=4).memory) is ElasticMemory
    assert type(build("eam", rules="prose", max_locations=16, initial_locations=4).memory) is ProseElasticMemory
    with pytest.raises(ValueError, match="rules='bogus'"):
        build("eam", rules="bogus")
    a = build("eam", teacher_d_model=64, key_dim=32, max_locations=16, initial_locations=4, seed=0)
    b = build("eam", teacher_d_model=64, key_dim=32, max_locations=16, initial_locations=4, seed=1)
    q = key_projection(64, KEY_SEED, 32)
    assert torch.equal(a.key_proj, b.key_proj) and torch.equal(a.key_proj, q.bfloat16().float())
    hidden = torch.randn(3, 64)
    torch.testing.assert_close(a.teacher_keys(hidden), F.normalize(hidden @ q.bfloat16().float(), dim=-1))
