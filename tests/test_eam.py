"""eam: the entry's sizes, the elastic memory's rules on small known inputs, the evaluation path as a
proper distribution, and the whole pipeline on a micro teacher run."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, load_model, save_file, save_model

from harness import data
from harness.archs import build, info
from harness.archs.eam import Decoder, ElasticMemory, Encoder, Config, EntryTransformer, key_projection
from harness.study import resolve, run_spec
from harness.train import train_run
from tests.conftest import MICRO_STUDY, micro_config

D = 8  # key width of the hand-built memories
STAGES = {"write_tokens": 4096, "encoder_steps": 10, "decoder_steps": 10}


def n_params(module):
    return sum(p.numel() for p in module.parameters())


def e(*coefficients):
    """The unit vector along sum(c_i e_i) in R^D."""
    return F.normalize(torch.tensor(coefficients + (0.0,) * (D - len(coefficients))), dim=0)


def memory(*addresses, weights=None, counters=None, max_locations=8, **kw):
    """A memory whose live rows are the given addresses (and W, C), value width 2."""
    m = ElasticMemory(key_dim=D, value_dim=2, max_locations=max_locations,
                      initial_locations=len(addresses), **kw)
    m.addresses[: len(addresses)] = torch.stack(addresses)
    if weights is not None:
        m.write_weights[: len(weights)] = torch.tensor(weights)
    if counters is not None:
        m.counters[: len(counters)] = torch.tensor(counters)
    return m


def test_entry_sizes_on_the_meta_device():
    with torch.device("meta"):
        assert n_params(EntryTransformer()) == 21_495_808  # the entry's teacher: V 1024, d 512, 8 x 8 heads, MLP 3x
        assert n_params(Encoder(Config())) == 425_984
        assert n_params(Decoder(512, 1024)) == 1_574_912
        model = build("eam")
    assert n_params(model) == 425_984 + 1_574_912  # the memory and key projection are buffers
    assert info("eam").match_knob is None and info("eam").reconstruction


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
    m.regulate = lambda keys, values: calls.append(len(keys))
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
    assert not ElasticMemory(key_dim=D, value_dim=2, max_locations=4, initial_locations=2).read(q[None]).any()


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


# -- the pipeline on a micro teacher


def micro_eam_study(**stages):
    hparams = {"teacher": "transformer", **STAGES, **stages}
    return resolve(micro_config({**MICRO_STUDY, "archs": ["transformer", {"name": "eam", "hparams": hparams}]}))["micro"]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    from tests.conftest import NEEDS_DATA, TINYSHAKESPEARE

    if TINYSHAKESPEARE is None:
        pytest.skip(NEEDS_DATA)
    out = tmp_path_factory.mktemp("micro") / "transformer" / "seed0"
    assert train_run(run_spec(micro_eam_study(), "transformer", 0), out) == "completed"
    return out


def eam_spec(teacher_dir, seed=0, **stages):
    return {**run_spec(micro_eam_study(**stages), "eam", seed), "teacher_dir": str(teacher_dir)}


def test_micro_pipeline_from_a_trained_teacher(teacher, tmp_path):
    spec = eam_spec(teacher)
    assert train_run(spec, tmp_path / "a") == "completed"  # train_run hands eam to harness.eam.run_eam
    m = pd.read_csv(tmp_path / "a" / "metrics.csv")
    assert list(m.columns) == ["step", "split", "metric", "value", "wall_time"]
    curve = lambda metric: m[m.metric == metric].set_index("step").value
    assert list(curve("encoder_loss").index) == [5, 10] and list(curve("decoder_loss").index) == [15, 20]
    assert curve("encoder_loss").iloc[-1] < curve("encoder_loss").iloc[0]
    assert curve("decoder_loss").iloc[-1] < curve("decoder_loss").iloc[0] < math.log(256) + 0.5
    val = m[m.split == "val"].set_index("metric")
    assert set(val.index) == {"loss", "teacher_loss"} and set(val.step) == {20}

    run = json.loads((tmp_path / "a" / "run.json").read_text())
    summary = run["eam"]
    assert run["status"] == "completed" and run["reason"] is None and run["steps_done"] == 20
    assert run["n_params"] == summary["encoder_params"] + summary["decoder_params"]
    assert summary["teacher"] == "transformer" and summary["max_L"] == 12000
    assert summary["eam_loss"] == val.value["loss"] and summary["teacher_loss"] == val.value["teacher_loss"]
    assert summary["transfer"] == pytest.approx(summary["teacher_loss"] / summary["eam_loss"], rel=1e-12)
    assert 3000 <= summary["live_locations"] <= 12000 and summary["write_keys_per_s"] > 0
    assert summary["keys_written"] == 4096 and summary["memory_floats"] == 12000 * (256 + 16 + 1)
    assert run["hparams"]["teacher_d_model"] == 16 and run["shape"]["knob"] is None

    # the teacher's loss is its own final validation loss: same fixed batches, same weights
    teacher_val = pd.read_csv(teacher / "metrics.csv").query("split == 'val' and metric == 'loss'").value.iloc[-1]
    assert summary["teacher_loss"] == pytest.approx(teacher_val, abs=1e-6)
    # the logged loss is the cross-entropy of the saved model's logits (build + weights from the run folder)
    model = build("eam", **run["hparams"])
    model.load_state_dict(load_file(str(tmp_path / "a" / "model.safetensors")), strict=True)
    corpus = data.load_corpus("tinyshakespeare", tokens="bytes")
    r = spec["recipe"]
    batches = data.fixed_batches(corpus.splits["val"], r["eval_batches"], r["batch_size"], r["seq_len"], r["eval_seed"])
    with torch.no_grad():
        ce = sum(F.cross_entropy(model(x).flatten(0, 1), y.flatten()).item() for x, y in batches) / len(batches)
    assert ce == pytest.approx(summary["eam_loss"], abs=1e-6)

    assert train_run(spec, tmp_path / "b") == "completed"  # the same seed repeats value for value
    pd.testing.assert_frame_equal(m.drop(columns="wall_time"),
                                  pd.read_csv(tmp_path / "b" / "metrics.csv").drop(columns="wall_time"))


@pytest.mark.parametrize("change, message", [
    (lambda spec: spec.pop("teacher_dir"), "no 'teacher_dir'"),
    (lambda spec: spec.update(seed=1), "seed 0, but this run's teacher is 'transformer' seed 1"),
    (lambda spec: spec["hparams"].update(bogus=1), r"unknown hparam(s) ['bogus']"),
    (lambda spec: spec["hparams"].update(seed=3), "cannot be set"),
])
def test_bad_teacher_or_hparams_fail_with_a_clear_reason(teacher, tmp_path, change, message):
    spec = eam_spec(teacher)
    change(spec)
    assert train_run(spec, tmp_path) == "failed"
    run = json.loads((tmp_path / "run.json").read_text())
    assert message in run["reason"]
    assert (tmp_path / "metrics.csv").is_file() and (tmp_path / "model.safetensors").is_file()


def test_a_non_finite_stage_loss_ends_the_run_as_diverged(teacher, tmp_path):
    broken = tmp_path / "teacher"
    broken.mkdir()
    (broken / "run.json").write_text((teacher / "run.json").read_text())
    weights = load_file(str(teacher / "model.safetensors"))
    weights["norm_f.weight"] = torch.full_like(weights["norm_f.weight"], math.nan)
    save_file(weights, str(broken / "model.safetensors"))
    assert train_run(eam_spec(broken), tmp_path / "run") == "diverged"
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["reason"] == "non-finite encoder_loss at step 1" and run["steps_done"] == 1
    m = pd.read_csv(tmp_path / "run" / "metrics.csv")
    assert m[m.metric == "encoder_loss"].step.tolist() == [1] and not (m.split == "val").any()
