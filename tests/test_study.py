"""Config resolution: overrides, arch entries, early errors, run specs."""

from pathlib import Path

import pytest
import yaml
from snakemake.utils import validate

from harness.study import config_hash, published_curves_file, resolve, run_spec
from tests.conftest import MICRO_STUDY, REPO, SCHEMA, micro_config


def test_shipped_config_resolves_with_its_presets():
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    validate(config, str(SCHEMA))
    studies = resolve(config)
    assert {"tiny", "seed-tinyshakespeare", "seed-enwik8-70m"} <= set(studies)
    assert sorted(studies["tiny"]["archs"]) == ["diag_ssm", "eam", "memnls", "resonance", "transformer", "trn_hybrid"]
    assert len(studies["tiny"]["seeds"]) == 3
    enwik8 = studies["seed-enwik8-70m"]
    assert enwik8["gpu"] and enwik8["shape"]["mode"] == "as_published"
    # the seed's recipe is the schema's default recipe
    assert enwik8["recipe"]["lr"] == 3e-4 and enwik8["recipe"]["betas"] == [0.9, 0.95]
    assert enwik8["recipe"]["warmup_steps"] == 500 and enwik8["recipe"]["eval_batches"] == 16


def test_overrides_apply_to_every_study():
    config = micro_config(archs=["memnls"], seeds=[3, 4], steps=7)
    study = resolve(config)["micro"]
    assert list(study["archs"]) == ["memnls"]
    assert study["archs"]["memnls"]["hparams"] == {"ffn_mult": 5}  # keeps the study's definition
    assert study["seeds"] == [3, 4] and study["recipe"]["steps"] == 7
    # the budget's reference stays known though the override dropped it from the runs
    assert study["reference_arch"]["build"] == "transformer"


def test_dotted_path_arch_is_named_after_its_module():
    study = resolve(micro_config(archs=["examples.gru:build"]))["micro"]
    assert study["archs"] == {"gru": {"build": "examples.gru:build", "hparams": {}}}


@pytest.mark.parametrize(
    "top, message",
    [
        ({"archs": ["nope"]}, "unknown architecture 'nope'"),
        ({"archs": ["not_a_module.x:build"]}, "module 'not_a_module.x' is not importable"),
        ({"study": "absent"}, "'absent' is not one of the studies"),
    ],
)
def test_bad_config_fails_early_naming_the_value(top, message):
    config = micro_config()
    config.update(top)
    with pytest.raises(ValueError, match=message):
        resolve(config)


@pytest.mark.parametrize(
    "key, value, message",
    [("steps", -5, "less than the minimum"), ("seeds", [1, 1]," non-unique"), ("seeds", ["a"], "not of type")],
)
def test_schema_rejects_bad_values_naming_the_key(key, value, message):
    from snakemake.exceptions import WorkflowError

    with pytest.raises(WorkflowError, match=message) as e:
        micro_config(**{key: value})
    assert f"instance['{key}']" in str(e.value)


def test_checkpoint_interval_must_align_with_log_window():
    study = {**MICRO_STUDY, "recipe": {**MICRO_STUDY["recipe"], "checkpoint_every": 7}}
    with pytest.raises(ValueError, match="checkpoint_every"):
        resolve(micro_config(study))


def test_run_spec_and_hash_ignore_the_seed():
    study = resolve(micro_config())["micro"]
    a, b = run_spec(study, "memnls", 0), run_spec(study, "memnls", 1)
    assert a["seed"] == 0 and b["seed"] == 1
    assert config_hash(a) == config_hash(b)
    assert config_hash(a) != config_hash(run_spec(study, "transformer", 0))
    with pytest.raises(ValueError, match="no architecture 'gru'"):
        run_spec(study, "gru", 0)


def test_eam_is_wired_to_its_same_seed_teacher():
    study = {**MICRO_STUDY, "archs": [*MICRO_STUDY["archs"], {"name": "eam", "hparams": {"teacher": "transformer"}}]}
    resolved = resolve(micro_config(study))["micro"]
    spec = run_spec(resolved, "eam", 2)
    assert spec["inputs"] == {"teacher": "results/micro/transformer/seed2"}
    assert config_hash(spec) == config_hash(run_spec(resolved, "eam", 3))
    assert "inputs" not in run_spec(resolved, "memnls", 2)
    for bad in ({}, {"teacher": "eam"}, {"teacher": "absent"}):
        study["archs"][-1] = {"name": "eam", "hparams": bad}
        with pytest.raises(ValueError, match="needs hparams.teacher"):
            resolve(micro_config(study))


def test_published_curves_resolve_to_the_shipped_file_or_fail_before_any_job(tmp_path):
    shipped = resolve(micro_config({**MICRO_STUDY, "published_curves": "mnsm-enwik8-70m.csv"}))["micro"]
    path = published_curves_file(shipped)
    assert path.endswith("harness/published/mnsm-enwik8-70m.csv") and Path(path).is_file()
    own = tmp_path / "curves.csv"
    own.write_text("arch,step,split,metric,value\n")
    assert published_curves_file({**shipped, "published_curves": str(own)}) == str(own)
    with pytest.raises(ValueError, match=r"published_curves 'no/such\.csv' is neither a file nor one of the shipped"):
        resolve(micro_config({**MICRO_STUDY, "published_curves": "no/such.csv"}))
