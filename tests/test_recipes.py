"""Training-recipe presets (#10 item 4): the Muon + AdamW split, the warmdown schedule, the named
presets of harness/recipes.yaml selected per architecture, and the common recipe left as it was."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from harness.recipe import MuonAdam, Recipe, lr_at, make_optimizer, split_params, train_step
from harness.run import execute
from harness.study import ConfigError, recipe_presets, resolve, run_spec
from tests.conftest import MICRO_STUDY, micro_config
from tests.test_train import spec_for

CPU = torch.device("cpu")


def preset_study(**entry) -> dict:
    return {**MICRO_STUDY, "archs": [{"name": "transformer", **entry}, "memnls"]}


def test_the_default_recipe_is_unchanged(tmp_path, shared_data):
    """The micro transformer run's metrics as the code before recipes (commit d8849fb) wrote them."""
    spec = spec_for("transformer")
    assert "recipe_name" not in spec and spec["recipe"]["optimizer"] == "adamw"
    assert execute(spec, tmp_path) == "completed"
    m = pd.read_csv(tmp_path / "metrics.csv")
    val = m[(m.split == "val") & (m.metric == "loss")].value.tolist()
    assert val == pytest.approx([5.525705337524414, 4.992111921310425, 4.447578430175781,
                                 4.168628454208374, 4.078401803970337], rel=1e-5)
    assert json.loads((tmp_path / "run.json").read_text())["recipe_name"] == "common"


def test_default_optimizer_is_the_plain_adamw_it_was():
    r = Recipe.from_dict(spec_for()["recipe"])
    torch.manual_seed(0)
    a = torch.nn.Linear(8, 8)
    b = torch.nn.Linear(8, 8)
    b.load_state_dict(a.state_dict())
    opt_a = make_optimizer(list(a.parameters()), r, CPU, a)
    opt_b = torch.optim.AdamW(b.parameters(), lr=r.lr, betas=r.betas, weight_decay=r.weight_decay)
    x = torch.randn(4, 8)
    for step in range(3):
        train_step(lambda x: a(x).square().mean(), list(a.parameters()), opt_a, x, lr_at(step, r), r.grad_clip)
        train_step(lambda x: b(x).square().mean(), list(b.parameters()), opt_b, x, lr_at(step, r), r.grad_clip)
    assert type(opt_a) is torch.optim.AdamW
    torch.testing.assert_close(a.weight, b.weight, rtol=0, atol=0)


class Small(torch.nn.Module):
    """Embedding 50x16, one block (two 16x32 / 32x16 matrices, a norm, a 2x16 gate), an untied head."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(50, 16)
        self.blocks = torch.nn.ModuleList([torch.nn.ModuleDict({
            "up": torch.nn.Linear(16, 32, bias=False), "down": torch.nn.Linear(32, 16),
            "norm": torch.nn.LayerNorm(16), "gate": torch.nn.Linear(16, 2, bias=False)})])
        self.scale = torch.nn.Parameter(torch.ones(()))
        self.head = torch.nn.Linear(16, 50, bias=False)

    def forward(self, ids):
        h = self.emb(ids)
        for b in self.blocks:
            h = h + b["down"](torch.relu(b["up"](b["norm"](h)))) * b["gate"](h).sigmoid()[..., :1]
        return self.head(h * self.scale)


def muon_recipe(**over) -> Recipe:
    return Recipe.from_dict({**spec_for(optimizer="muon_adam", muon_lr=0.02, embed_lr=0.05, head_lr=0.008,
                                        scalar_lr=0.04, lr=0.01, **over)["recipe"]})


def test_muon_adam_split_assigns_blocks_matrices_to_muon_and_the_rest_to_adamw():
    model = Small()
    groups = split_params(list(model.parameters()), model)
    count = {k: sum(p.numel() for p in v) for k, v in groups.items()}
    assert count == {"muon": 16 * 32 + 32 * 16, "embed": 50 * 16, "head": 50 * 16,
                     "scalar": 16 + 16 + 16 + 2 * 16 + 1}  # down bias, norm weight+bias, gate, scale
    assert sum(count.values()) == sum(p.numel() for p in model.parameters())
    opt = make_optimizer(list(model.parameters()), muon_recipe(), CPU, model)
    assert isinstance(opt, MuonAdam)
    muon, adam = opt.optimizers
    assert type(muon) is torch.optim.Muon and type(adam) is torch.optim.AdamW
    # the step's lr times each group's ratio: Muon 0.02, embed 0.05, head 0.008, scalar 0.04 at lr 0.01
    train_step(lambda ids: model(ids).logsumexp(-1).mean(), list(model.parameters()), opt,
               torch.randint(0, 50, (2, 5)), 0.01, 1.0)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.02, 0.05, 0.008, 0.04])


def test_muon_updates_the_matrices_as_torch_muon_computes():
    torch.manual_seed(0)
    model = Small()
    twin = Small()
    twin.load_state_dict(model.state_dict())
    r = muon_recipe(grad_clip=0.0)
    opt = make_optimizer(list(model.parameters()), r, CPU, model)
    ids = torch.randint(0, 50, (2, 5))
    before = model.blocks[0]["up"].weight.detach().clone()
    train_step(lambda ids: model(ids).logsumexp(-1).mean(), list(model.parameters()), opt, ids, r.lr, 0.0)
    assert not torch.equal(model.blocks[0]["up"].weight, before)
    # the same step by torch's Muon alone, on the twin's matrices
    loss = twin(ids).logsumexp(-1).mean()
    loss.backward()
    mats = [twin.blocks[0]["up"].weight, twin.blocks[0]["down"].weight]
    torch.optim.Muon(mats, lr=r.muon_lr, momentum=r.muon_momentum, nesterov=r.muon_nesterov,
                     ns_steps=r.muon_ns_steps, weight_decay=r.muon_weight_decay).step()
    torch.testing.assert_close(model.blocks[0]["up"].weight, mats[0])
    torch.testing.assert_close(model.blocks[0]["down"].weight, mats[1])


def test_muon_adam_state_dict_round_trips_by_model_parameter_order():
    torch.manual_seed(0)
    model = Small()
    params = list(model.parameters())
    opt = make_optimizer(params, muon_recipe(), CPU, model)
    train_step(lambda ids: model(ids).logsumexp(-1).mean(), params, opt, torch.randint(0, 50, (2, 5)), 0.01, 1.0)
    state = opt.state_dict()["state"]
    assert sorted(state) == list(range(len(params)))
    up = [n for n, _ in model.named_parameters()].index("blocks.0.up.weight")
    assert set(state[up]) == {"momentum_buffer"} and set(state[0]) == {"step", "exp_avg", "exp_avg_sq"}
    fresh = make_optimizer(params, muon_recipe(), CPU, model)
    fresh.load_state_dict({"state": state, "param_groups": fresh.state_dict()["param_groups"]})
    torch.testing.assert_close(fresh.state_dict()["state"][up]["momentum_buffer"], state[up]["momentum_buffer"])


def test_warmdown_schedule_on_known_steps():
    lin = Recipe.from_dict(spec_for(steps=100, warmup_steps=10, lr=1e-3, min_lr=0.0, schedule="warmdown",
                                    warmdown_steps=40)["recipe"])
    assert lr_at(0, lin) == pytest.approx(1e-4)
    assert lr_at(10, lin) == lr_at(59, lin) == pytest.approx(1e-3)
    assert lr_at(60, lin) == pytest.approx(1e-3)
    assert lr_at(80, lin) == pytest.approx(0.5e-3)
    assert lr_at(99, lin) == pytest.approx(1e-3 / 40)
    cos = Recipe.from_dict({**lin.__dict__, "betas": list(lin.betas), "warmdown_shape": "cosine", "min_lr": 1e-4})
    assert lr_at(80, cos) == pytest.approx(1e-4 + 0.5 * 0.9e-3)
    assert lr_at(100, cos) == pytest.approx(1e-4)


def test_presets_are_valid_recipes_over_the_study_recipe():
    base = spec_for()["recipe"]
    for name, preset in recipe_presets().items():
        Recipe.from_dict({**base, **preset})  # no unknown key
    assert set(recipe_presets()) == {"trn_hybrid-pr669", "resonance-pr1061", "eam-pr1146"}


def test_a_preset_selected_per_arch_reaches_run_json_and_the_other_arch_keeps_the_common_recipe(tmp_path,
                                                                                             shared_data):
    study = resolve(micro_config(preset_study(recipe="resonance-pr1061")))["micro"]
    spec = run_spec(study, "transformer", "base", 0)
    assert spec["recipe_name"] == "resonance-pr1061"
    assert spec["recipe"]["optimizer"] == "muon_adam" and spec["recipe"]["muon_lr"] == 0.012
    assert spec["recipe"]["steps"] == MICRO_STUDY["recipe"]["steps"]  # the study's length stays
    other = run_spec(study, "memnls", "base", 0)
    assert "recipe_name" not in other and other["recipe"] == study["recipe"]
    spec["recipe"]["warmdown_steps"] = 20  # the source's 5000 would cover the whole micro run
    assert execute(spec, tmp_path) == "completed"
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["recipe_name"] == "resonance-pr1061" and run["recipe"]["optimizer"] == "muon_adam"
    m = pd.read_csv(tmp_path / "metrics.csv")
    val = m[(m.split == "val") & (m.metric == "loss")].value
    assert val.iloc[-1] < val.iloc[0]


def test_an_unknown_preset_fails_at_resolve():
    with pytest.raises(ConfigError, match="resonance-pr1061"):
        resolve(micro_config(preset_study(recipe="resonance-pr106")))


def test_muon_adam_resumes_with_its_optimizer_state_through_the_checkpoint(tmp_path):
    from harness import checkpoint

    def steps(model, opt, n, gen):
        for _ in range(n):
            ids = torch.randint(0, 50, (2, 5), generator=gen)
            train_step(lambda ids: model(ids).logsumexp(-1).mean(), list(model.parameters()), opt, ids, 0.01, 1.0)

    torch.manual_seed(0)
    a = Small()
    b = Small()
    b.load_state_dict(a.state_dict())
    opt_a = make_optimizer(list(a.parameters()), muon_recipe(), CPU, a)
    steps(a, opt_a, 2, torch.Generator().manual_seed(1))
    gen = torch.Generator().manual_seed(2)
    checkpoint.save_checkpoint(tmp_path, a, opt_a, {"train": gen}, {"step": 2})
    steps(a, opt_a, 2, gen)
    opt_b = make_optimizer(list(b.parameters()), muon_recipe(), CPU, b)
    gen_b = torch.Generator()
    checkpoint.load_checkpoint(tmp_path / checkpoint.SLOTS[0], b, opt_b, {"train": gen_b})
    steps(b, opt_b, 2, gen_b)
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p, q, msg=n)


def test_published_recipe_gives_each_arch_with_a_preset_its_own():
    study = resolve(micro_config({**MICRO_STUDY, "published_recipe": True,
                                  "archs": ["resonance", "transformer", {"name": "t2", "build": "transformer",
                                                                         "recipe": "eam-pr1146"}]}))["micro"]
    assert run_spec(study, "resonance", "base", 0)["recipe_name"] == "resonance-pr1061"
    assert "recipe_name" not in run_spec(study, "transformer", "base", 0)  # no preset: the common recipe
    assert run_spec(study, "t2", "base", 0)["recipe_name"] == "eam-pr1146"
