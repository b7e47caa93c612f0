"""Quantization evaluation: the per-row quantizer, keep patterns, the evaluation, a run folder and the CLI."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from harness import archs
from harness.contracts import QUANTIZATION_COLUMNS
from harness.quantize import FULL_PRECISION, evaluate_bits, kept, quantize_, quantize_rows, quantize_run, write_table
from harness.run import execute
from harness.study import config_hash, resolve, run_spec
from tests.conftest import MICRO_STUDY, REPO, micro_config


def test_known_2x4_matrix_at_4_bits():
    # 4 bits: integers -7..7; row 0 max 7 -> scale 1, row 1 max 14 -> scale 2
    w = torch.tensor([[7.0, -3.2, 0.4, 2.6],
                      [-14.0, 5.0, 2.9, -0.9]])
    # row 0: 7, -3.2 -> -3, 0.4 -> 0, 2.6 -> 3; row 1 / 2: -7, 2.5 -> 2 (a tie: to even), 1.45 -> 1, -0.45 -> 0
    expected = torch.tensor([[7.0, -3.0, 0.0, 3.0],
                             [-14.0, 4.0, 2.0, 0.0]])
    assert torch.equal(quantize_rows(w, 4), expected)
    # 8 bits on the same matrix: scales 7/127 and 14/127
    assert torch.equal(quantize_rows(w, 8)[0], torch.round(w[0] / (7 / 127)).clamp(-127, 127) * (7 / 127))


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 8, 12])
def test_round_trip_error_is_at_most_half_a_step_per_element(bits):
    torch.manual_seed(bits)
    w = torch.randn(17, 3, 5) * torch.logspace(-3, 1, 17)[:, None, None]  # 3-D: rows are the first dim
    w[4] = 0.0  # an all-zero row stays zero
    q = quantize_rows(w, bits)
    assert q.shape == w.shape and q.dtype == w.dtype
    scale = w.reshape(17, -1).abs().amax(1) / (2 ** (bits - 1) - 1)
    error = (q - w).abs().reshape(17, -1).amax(1)
    assert (error <= scale / 2 * (1 + 1e-5) + 1e-12).all()
    assert torch.equal(q[4], torch.zeros_like(q[4]))
    levels = [len(torch.unique(torch.round(q[i].flatten() / scale[i]))) for i in range(17) if i != 4]
    assert max(levels) <= 2 ** bits - 1  # symmetric: -qmax..qmax


def test_quantizer_rejects_one_bit_and_vectors():
    with pytest.raises(ValueError, match="at least 2"):
        quantize_rows(torch.ones(2, 2), 1)
    with pytest.raises(ValueError, match="2 or more dimensions"):
        quantize_rows(torch.ones(3), 4)
    with pytest.raises(ValueError, match="from 2 to 31"):
        evaluate_bits(tiny_model(), periodic_batches(n=1), [8, 32])
    with pytest.raises(ValueError, match="PATTERN=BITS"):
        quantize_(tiny_model(), 4, ["tok_emb.*=eight"])


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return archs.build("transformer", vocab_size=32, d_model=16, n_layers=1, n_heads=2, max_seq_len=16, ffn_hidden=32)


def periodic_batches(n=3, batch=4, seq=16, vocab=32):
    """A sequence a tiny model learns in a few hundred steps: every token follows from the last one."""
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        start = torch.randint(0, vocab, (batch, 1), generator=g)
        ids = (start + 5 * torch.arange(seq + 1)) % vocab
        out.append((ids[:, :-1], ids[:, 1:]))
    return out


@pytest.fixture(scope="module")
def trained():
    model = tiny_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    train = periodic_batches(n=8)
    for i in range(150):
        x, y = train[i % len(train)]
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def test_8_bits_barely_changes_a_trained_model_and_2_bits_ruins_it(trained):
    rows = {r["bits"]: r for r in evaluate_bits(trained, periodic_batches(), [8, 2])}
    assert rows[FULL_PRECISION]["loss"] < 0.5  # it learned the sequence
    assert abs(rows[8]["loss_increase"]) < 1e-3
    assert rows[2]["loss_increase"] > 0.5
    assert rows[2]["bpt_increase"] == pytest.approx(rows[2]["loss_increase"] / math.log(2))


def test_keep_patterns_leave_those_tensors_bit_identical(trained):
    model = tiny_model()
    model.load_state_dict(trained.state_dict())
    before = {n: t.clone() for n, t in model.named_parameters()}
    widths = quantize_(model, 4, ["lm_head.*", "blocks.0.attn.*", "blocks.0.ffn.fc2.*=8"])
    after = dict(model.named_parameters())
    # the head is tied to the token embedding: keeping it by either name keeps the one tensor
    for name in ("tok_emb.weight", "blocks.0.attn.qkv.weight", "blocks.0.attn.proj.weight"):
        assert widths[name] is None and torch.equal(after[name], before[name]), name
    assert torch.equal(after["blocks.0.ffn.fc2.weight"], quantize_rows(before["blocks.0.ffn.fc2.weight"], 8))
    for name in ("pos_emb.weight", "blocks.0.ffn.fc1.weight"):  # the rest at 4 bits
        assert torch.equal(after[name], quantize_rows(before[name], 4)), name
    for name, t in before.items():  # vectors (biases, norm gains) untouched
        if t.dim() < 2:
            assert torch.equal(after[name], t), name
    assert kept(model, ["tok_emb.*", "*.fc2.*=8"]) == {"tok_emb.weight": None, "blocks.0.ffn.fc2.weight": 8}


def test_evaluation_equals_a_direct_computation(trained):
    batches = periodic_batches()
    state = {n: t.clone() for n, t in trained.state_dict().items()}

    def loss_of(model):
        with torch.no_grad():
            model.eval()
            losses = [F.cross_entropy(model(x).flatten(0, 1), y.flatten()).item() for x, y in batches]
        return sum(losses) / len(losses)

    rows = evaluate_bits(trained, batches, [5, 3], keep=["pos_emb.*"])
    assert [r["bits"] for r in rows] == [32, 5, 3]
    base = loss_of(trained)
    assert rows[0]["loss"] == pytest.approx(base, abs=1e-6)
    for r in rows[1:]:
        by_hand = tiny_model()
        by_hand.load_state_dict(state)
        qmax = 2 ** (r["bits"] - 1) - 1
        with torch.no_grad():
            for name, p in by_hand.named_parameters():  # the tied head is the same tensor as tok_emb
                if p.dim() >= 2 and not name.startswith("pos_emb"):
                    scale = p.abs().amax(dim=1, keepdim=True) / qmax
                    p.copy_(torch.clamp(torch.round(p / scale), -qmax, qmax) * scale)
        loss = loss_of(by_hand)
        assert r["loss"] == pytest.approx(loss, abs=1e-6)
        assert r["loss_increase"] == pytest.approx(loss - base, abs=1e-6)
        assert r["bpt_increase"] == pytest.approx((loss - base) / math.log(2), abs=1e-6)
    for name, t in trained.state_dict().items():  # the model is restored
        assert torch.equal(t, state[name]), name


def micro_spec(arch="transformer", **quantize):
    study = {**MICRO_STUDY, "quantize": quantize} if quantize else MICRO_STUDY
    return run_spec(resolve(micro_config(study))["micro"], arch, "base", 0)


def test_a_run_folder_and_its_snapshots_through_the_cli(tmp_path, shared_data, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the spec's snapshot folder is relative to the workflow's directory
    spec = micro_spec(every_checkpoint=True)
    plain = micro_spec()
    assert spec["snapshots"] == "results/micro/transformer/base/seed0/snapshots"
    assert "snapshots" not in plain
    run = tmp_path / "results" / "micro" / "transformer" / "base" / "seed0"
    assert execute(spec, run) == "completed"
    manifest = json.loads((run / "run.json").read_text())
    assert manifest["config_hash"] == config_hash(plain)  # keeping snapshots changes no run
    assert sorted(p.name for p in (run / "snapshots").iterdir()) == ["step10.safetensors", "step20.safetensors",
                                                                     "step30.safetensors"]
    out = tmp_path / "q.csv"
    done = subprocess.run([sys.executable, "-m", "harness", "quantize", str(run), "--bits", "8", "4",
                           "--keep", "tok_emb.*", "--snapshots", str(run / "snapshots"), "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    table = pd.read_csv(out)
    assert list(table.columns) == QUANTIZATION_COLUMNS
    assert list(zip(table.step, table.bits)) == [(s, b) for s in (10, 20, 30, 40) for b in (32, 8, 4)]
    assert (table.study == "micro").all() and (table.arch == "transformer").all() and (table.seed == 0).all()
    assert (table.note == "kept tok_emb.weight at full precision").all()
    # the final model's full-precision loss is the trainer's last validation loss (same fixed batches)
    metrics = pd.read_csv(run / "metrics.csv")
    last_val = metrics[(metrics.split == "val") & (metrics.step == 40)].value.item()
    assert table[(table.step == 40) & (table.bits == 32)].loss.item() == pytest.approx(last_val, abs=1e-6)
    assert table[(table.step == 10) & (table.bits == 32)].loss.item() == pytest.approx(
        metrics[(metrics.split == "val") & (metrics.step == 10)].value.item(), abs=1e-6)
    # a snapshot written by another config is not evaluated
    run_json = {**manifest, "config_hash": "another"}
    (run / "run.json").write_text(json.dumps(run_json))
    rows = quantize_run(run, [8], snapshot_dir=run / "snapshots")
    assert {r["step"] for r in rows} == {40}


def test_runs_without_a_network_to_quantize_get_a_note(tmp_path):
    failed = {"study": "micro", "arch": "transformer", "build": "transformer", "seed": 3, "status": "failed",
              "reason": "RuntimeError: boom"}
    pipeline = {"study": "micro", "arch": "eam", "build": "eam", "seed": 0, "status": "completed", "reason": None}
    for name, run in (("failed", failed), ("pipeline", pipeline)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "run.json").write_text(json.dumps(run))
        rows = quantize_run(tmp_path / name, [8, 4])
        write_table(tmp_path / name / "quantization.csv", rows)
        table = pd.read_csv(tmp_path / name / "quantization.csv")
        assert list(table.columns) == QUANTIZATION_COLUMNS and len(table) == 1
        assert table.step.isna().all() and table.bits.isna().all() and table.loss.isna().all()
        assert table.note.item().startswith("not quantized: ")
    assert "run failed (RuntimeError: boom)" in pd.read_csv(tmp_path / "failed" / "quantization.csv").note.item()
    assert "pipeline" in pd.read_csv(tmp_path / "pipeline" / "quantization.csv").note.item()


def test_weights_of_a_model_tied_without_a_load_hook_load_strictly(tmp_path):
    from examples.gru import build
    from safetensors.torch import save_model

    from harness.quantize import load_weights

    torch.manual_seed(0)
    model = build(vocab_size=32, d_model=8, n_layers=1, n_heads=1, dropout=0.0, max_seq_len=16, ffn_hidden=8)
    save_model(model, str(tmp_path / "m.safetensors"))  # stores the tied embedding and head once
    torch.manual_seed(1)
    again = build(vocab_size=32, d_model=8, n_layers=1, n_heads=1, dropout=0.0, max_seq_len=16, ffn_hidden=8)
    load_weights(again, tmp_path / "m.safetensors")
    for (name, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), name
    assert again.lm_head.weight is again.tok_emb.weight
