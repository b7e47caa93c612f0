import dataclasses
import sys
import types

import pytest
import torch
import torch.nn as nn
import yaml
from snakemake.utils import validate

from harness.archs import build, make_config
from harness.shape import Shape, count_params, match, param_count, plan
from harness.study import resolve, run_spec
from tests.conftest import REPO, SCHEMA

SMALL = dict(vocab_size=64, d_model=32, n_layers=2, ffn_mult=4, max_seq_len=32)
SMALL_ARCHS = {"transformer": {**SMALL, "n_heads": 4}, "memnls": {**SMALL, "n_heads": 4}, "diag_ssm": SMALL}


def test_count_params_counts_a_tied_pair_once_and_no_buffers():
    model = build("memnls", **SMALL_ARCHS["memnls"])
    state = model.state_dict()
    buffers = {name for name, _ in model.named_buffers()}
    expected = sum(v.numel() for k, v in state.items() if k not in buffers and k != "lm_head.weight")
    assert count_params(model) == expected
    assert param_count("memnls", SMALL_ARCHS["memnls"]) == expected


def test_as_published_reports_the_published_deviation():
    shapes = plan({"transformer": {}, "memnls": {}}, "as_published", "transformer")
    assert shapes["memnls"] == Shape({}, 71_069_184, 71_863_296, "as_published", "transformer", "ffn_hidden", None)
    assert shapes["memnls"].deviation == pytest.approx(-0.01105, abs=1e-5)
    assert shapes["transformer"].deviation == 0.0
    assert plan({"memnls": {}}, "as_published", None)["memnls"].deviation is None


@pytest.mark.parametrize("archs", [SMALL_ARCHS, {"transformer": {}, "memnls": {}, "diag_ssm": {}}],
                         ids=["small", "70M"])
def test_matched_plan_lands_every_arch_within_one_percent(archs):
    shapes = plan(archs, "matched", "transformer")
    ref = param_count("transformer", archs["transformer"])
    assert shapes["transformer"].knob_value == archs["transformer"].get("ffn_hidden")
    assert shapes["transformer"].hparams == archs["transformer"]
    for arch in ("memnls", "diag_ssm"):
        shape = shapes[arch]
        assert shape.reference_params == ref
        assert shape.knob == "ffn_hidden" and shape.hparams["ffn_hidden"] == shape.knob_value
        assert shape.n_params == param_count(arch, shape.hparams)
        assert abs(shape.deviation) <= 0.01
        assert shape.deviation == pytest.approx(shape.n_params / ref - 1)


def test_match_picks_the_closest_knob_value():
    target = param_count("transformer", SMALL_ARCHS["transformer"])
    hparams, n = match("memnls", SMALL_ARCHS["memnls"], target)
    best = hparams["ffn_hidden"]
    for neighbour in (best - 1, best + 1):
        other = param_count("memnls", {**SMALL_ARCHS["memnls"], "ffn_hidden": neighbour})
        assert abs(n - target) <= abs(other - target)


def test_impossible_targets_raise():
    target = param_count("transformer", SMALL_ARCHS["transformer"])
    with pytest.raises(ValueError, match=r"memnls: no ffn_hidden lands within 0\.000%"):
        match("memnls", SMALL_ARCHS["memnls"], target + 1, tolerance=0.0)
    with pytest.raises(ValueError, match="achievable counts start at"):
        match("memnls", SMALL_ARCHS["memnls"], 1000)


@pytest.fixture
def fake_arch(monkeypatch):
    """A module 'fake_arch' with builders for the knob's failure cases."""

    @dataclasses.dataclass
    class Config:
        width: int = 8

    module = types.ModuleType("fake_arch")
    module.build = lambda **hparams: nn.Linear(make_config(Config, hparams, "fake").width, 1)
    module.MATCH_KNOB = None
    knobbed = types.ModuleType("fake_knobbed_arch")
    knobbed.build = module.build
    monkeypatch.setitem(sys.modules, "fake_arch", module)
    monkeypatch.setitem(sys.modules, "fake_knobbed_arch", knobbed)


def test_an_arch_without_a_usable_knob_cannot_be_matched(fake_arch):
    assert param_count("fake_arch:build", {"width": 4}) == 5
    with pytest.raises(ValueError, match="fake_arch:build: has no match knob"):
        plan({"transformer": SMALL_ARCHS["transformer"], "fake_arch:build": {}}, "matched", "transformer")
    with pytest.raises(ValueError, match="does not accept its match knob 'ffn_hidden'"):
        match("fake_knobbed_arch:build", {}, 100)


def test_bad_plan_arguments_are_named():
    with pytest.raises(ValueError, match="'balanced'"):
        plan(SMALL_ARCHS, "balanced", "transformer")
    with pytest.raises(ValueError, match="'gpt'"):
        plan(SMALL_ARCHS, "matched", "gpt")
    with pytest.raises(ValueError, match="needs a reference"):
        plan(SMALL_ARCHS, "matched", None)


@pytest.mark.parametrize("arch", ["memnls", "diag_ssm", "resonance", "trn_hybrid"])
def test_default_tiny_study_matches_every_knobbed_arch_within_one_percent(arch):
    """The shipped tiny study (d_model 64, 2 layers, 4 heads, bytes) builds each arch and lands it near the
    transformer's 124,672 parameters, as the train rule does."""
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    validate(config, str(SCHEMA))
    study = resolve(config)["tiny"]
    spec = run_spec(study, arch, "base", 0)
    base = {**spec["model"], "vocab_size": 256, "max_seq_len": spec["recipe"]["seq_len"]}
    target = param_count("transformer", {**base, **spec["reference"]["hparams"]})
    assert target == 124_672
    hparams, n = match(spec["build"], {**base, **spec["hparams"]}, target)
    assert abs(n / target - 1) <= 0.01
    with torch.device("meta"):
        assert count_params(build(spec["build"], **hparams)) == n
