"""Training diagnostics: each one equals a direct computation on a known model, at log steps only."""

from __future__ import annotations

import copy
import math

import pandas as pd
import pytest
import torch

from harness import archs
from harness.diagnostics import Probe, param_groups
from harness.recipe import next_token_loss, train_step, training_loss
from harness.run import execute
from tests.test_train import spec_for

VOCAB = 64


def tiny_transformer(seed=0):
    torch.manual_seed(seed)
    return archs.build("transformer", vocab_size=VOCAB, d_model=16, n_layers=2, n_heads=2, max_seq_len=16)


def batch(seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (4, 16), generator=g), torch.randint(0, VOCAB, (4, 16), generator=g)


def rms(tensors):
    flat = torch.cat([t.detach().flatten().double() for t in tensors])
    return float(flat.square().mean().sqrt())


def test_parameter_groups_cover_every_parameter_once_by_rule():
    model = tiny_transformer()
    groups = param_groups(model, VOCAB)
    names = {id(p): n for n, p in model.named_parameters()}
    by_group = {g: sorted(names[id(p)] for p in ps) for g, ps in groups.items()}
    assert sum(len(v) for v in by_group.values()) == len(list(model.parameters()))
    assert by_group["embed"] == ["pos_emb.weight", "tok_emb.weight"]  # the head is tied to tok_emb
    assert "head" not in by_group
    assert all(".ffn." in n for n in by_group["ffn"]) and all(".attn." in n for n in by_group["mixer"])
    assert all("norm" in n for n in by_group["norm"])


@pytest.mark.parametrize("clip", [0.0, 0.05])  # 0.05 clips: the pre-clip RMS is recovered
def test_each_diagnostic_equals_a_direct_computation(clip):
    model, x_y = tiny_transformer(), batch()
    reference = copy.deepcopy(model)  # the same weights, measured by hand
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    probe = Probe(model, VOCAB)

    def loss_of(b):
        return training_loss(model(b[0]), b[1], 0.0)

    with probe.step():
        result = train_step(loss_of, list(model.parameters()), optimizer, x_y, 1e-2, clip)
    got = probe.metrics(result.grad_norm, clip)

    logits = reference(x_y[0]).detach()
    assert got["logz_mean"] == pytest.approx(float(torch.logsumexp(logits, -1).mean()), rel=1e-5)
    assert got["logit_abs_max"] == pytest.approx(float(logits.abs().max()), rel=1e-5)
    assert got["embed_std"] == pytest.approx(float(reference.tok_emb(x_y[0]).detach().std()), rel=1e-5)
    next_token_loss(reference(x_y[0]), x_y[1]).backward()  # unclipped gradients
    ref_groups = param_groups(reference, VOCAB)
    after = dict(model.named_parameters())
    for group, params in ref_groups.items():
        assert got[f"grad_rms/{group}"] == pytest.approx(rms([p.grad for p in params]), rel=1e-4), group
        names = [n for n, p in reference.named_parameters() if any(p is q for q in params)]
        change = [after[n].detach() - p.detach() for n, p in zip(names, params)]
        assert got[f"update_ratio/{group}"] == pytest.approx(rms(change) / rms(params), rel=1e-4), group
    # the attention modules' own maxima arrive through the architecture's diagnostics protocol
    assert {k for k in got if k.startswith("attn_logit_max/")} == {"attn_logit_max/blocks.0.attn",
                                                                  "attn_logit_max/blocks.1.attn"}


def test_z_loss_adds_the_mean_squared_log_partition_function():
    logits, targets = torch.randn(2, 5, VOCAB) * 3, torch.randint(0, VOCAB, (2, 5))
    plain = next_token_loss(logits, targets)
    assert training_loss(logits, targets, 0.0) == plain
    z = torch.logsumexp(logits, -1)
    assert float(training_loss(logits, targets, 1e-2)) == pytest.approx(float(plain + 1e-2 * z.square().mean()))


def test_z_loss_pulls_log_z_toward_zero():
    """The same model, data and lr for 60 steps: log Z, about log V = 4.16 without z-loss, ends nearer 0
    the larger the coefficient (measured: 4.18, 2.17, 0.50 for 0, 0.1, 1)."""
    ends = {}
    for z_loss in (0.0, 1e-1, 1.0):
        model = tiny_transformer()
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
        for step in range(60):
            train_step(lambda b: training_loss(model(b[0]), b[1], z_loss), list(model.parameters()), optimizer,
                       batch(step), 3e-3, 1.0)
        with torch.no_grad():
            ends[z_loss] = float(torch.logsumexp(model(batch(99)[0]), -1).mean())
    assert ends[0.0] == pytest.approx(math.log(VOCAB), abs=0.2)
    assert ends[1.0] < 0.25 * ends[0.0] and ends[1.0] < ends[1e-1] < 0.6 * ends[0.0], ends


def test_the_trainer_logs_diagnostics_at_log_steps_only(tmp_path, shared_data):
    assert execute(spec_for("transformer", steps=20, log_every=5, eval_every=10, checkpoint_every=10),
                   tmp_path) == "completed"
    m = pd.read_csv(tmp_path / "metrics.csv")
    train = m[m.split == "train"]
    for name in ("logz_mean", "logit_abs_max", "embed_std", "grad_rms/embed", "update_ratio/mixer",
                 "attn_logit_max/blocks.0.attn"):
        assert list(train[train.metric == name].step) == [5, 10, 15, 20], name
        assert train[train.metric == name].value.map(math.isfinite).all()
