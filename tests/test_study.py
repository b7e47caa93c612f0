"""Config resolution: overrides, arch entries, early errors, run specs."""

from pathlib import Path

import pytest
import yaml
from snakemake.utils import validate

from harness.study import (
    ConfigError, check_config, coerce_overrides, config_hash, default_study, published_curves_file, resolve, run_dir,
    run_spec, runs, study_folder,
)
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


def test_overrides_apply_to_every_study_in_a_folder_of_their_own():
    config = micro_config(archs=["memnls"], seeds=[3, 4], steps=7)
    studies = resolve(config)
    assert list(studies) == ["micro+archs=memnls+seeds=3,4+steps=7"] == [default_study(studies, config)]
    study = studies["micro+archs=memnls+seeds=3,4+steps=7"]
    assert study["name"] == "micro+archs=memnls+seeds=3,4+steps=7" and study["base"] == "micro"
    assert study["overrides"] == {"archs": ["memnls"], "seeds": [3, 4], "steps": 7}
    assert study["description"] == "micro study for tests (study micro with overrides archs=[memnls] seeds=[3,4] steps=7)"
    assert list(study["archs"]) == ["memnls"]
    assert study["archs"]["memnls"]["hparams"] == {"ffn_mult": 5}  # keeps the study's definition
    assert study["seeds"] == [3, 4] and study["recipe"]["steps"] == 7
    # the budget's reference stays known though the override dropped it from the runs
    assert study["reference_arch"]["build"] == "transformer"
    assert run_spec(study, "memnls", "base", 3)["study"] == study["name"]


def test_no_override_and_an_override_that_changes_nothing_keep_the_study_name():
    plain = resolve(micro_config())["micro"]
    assert plain["base"] == "micro" and plain["overrides"] == {}
    assert plain["description"] == "micro study for tests"
    same = resolve(micro_config(seeds=[0], steps=40, archs=["transformer", "memnls"], data_dir="/elsewhere"))
    assert list(same) == ["micro"] and same["micro"]["overrides"] == {}  # data_dir changes no result


def test_study_folder_is_readable_safe_and_stable():
    assert study_folder("tiny", {}) == "tiny"
    assert study_folder("tiny", {"seeds": [0, 1, 2, 3, 4], "steps": 2000}) == "tiny+seeds=0-4+steps=2000"
    assert study_folder("tiny", {"steps": 2000, "seeds": [0, 1, 2, 3, 4]}) == "tiny+seeds=0-4+steps=2000"
    assert study_folder("tiny", {"seeds": [0, 1, 5, 6, 7, 9]}) == "tiny+seeds=0,1,5-7,9"
    assert (study_folder("tiny", {"archs": ["transformer", "examples.gru:build"]})
            == "tiny+archs=transformer,examples.gru.build")
    entry = {"name": "memnls", "hparams": {"ffn_mult": 4}}
    named = study_folder("tiny", {"archs": [entry]})
    assert named.startswith("tiny+archs=memnls@") and named == study_folder("tiny", {"archs": [dict(entry)]})
    assert named != study_folder("tiny", {"archs": [{"name": "memnls", "hparams": {"ffn_mult": 5}}]})
    many = study_folder("tiny", {"seeds": list(range(0, 200, 2))})
    assert len(many) < 40 and many.startswith("tiny+seeds=100@")
    for name in (named, many):
        assert all(c.isalnum() or c in "_.-+=,@" for c in name)


def test_command_line_values_are_typed_before_validation():
    # what Snakemake's --config hands over: YAML BaseLoader strings inside lists and mappings
    config = micro_config()
    config.update(seeds=["0", "1"], steps=50, archs=["transformer", {"name": "memnls", "hparams": {"ffn_mult": "4", "dt": "0.05", "residual": "standard"}}])
    coerce_overrides(config)
    assert config["seeds"] == [0, 1] and config["steps"] == 50
    assert config["archs"][1]["hparams"] == {"ffn_mult": 4, "dt": 0.05, "residual": "standard"}
    check_config(config, SCHEMA)
    scalar = coerce_overrides({"seeds": 3, "archs": "transformer", "steps": "20"})
    assert scalar == {"seeds": [3], "archs": ["transformer"], "steps": 20}


@pytest.mark.parametrize(
    "top, message",
    [
        ({"step": 100}, "config: unknown key 'step'; did you mean steps?"),
        ({"seeds": [0, 0]}, "config seeds: [0, 0] has non-unique elements"),
        ({"seeds": ["x"]}, "config seeds[0]: 'x' is not of type 'integer'"),
    ],
)
def test_check_config_says_the_first_mistake_in_one_line(top, message):
    config = micro_config()
    config.update(top)
    with pytest.raises(ConfigError) as e:
        check_config(config, SCHEMA)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_dotted_path_arch_is_named_after_its_module():
    studies = resolve(micro_config(archs=["examples.gru:build"]))
    assert list(studies) == ["micro+archs=examples.gru.build"]
    assert studies["micro+archs=examples.gru.build"]["archs"] == {"gru": {"build": "examples.gru:build", "hparams": {}}}


@pytest.mark.parametrize(
    "top, message",
    [
        ({"archs": ["nope"]}, "unknown architecture 'nope'"),
        ({"archs": ["not_a_module.x:build"]}, "module 'not_a_module.x' is not importable"),
        ({"archs": ["examples.gru:nobuild"]}, "module 'examples.gru' has no callable 'nobuild'"),
        ({"archs": ["examples.gru:MATCH_KNOB"]}, "module 'examples.gru' has no callable 'MATCH_KNOB'"),
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
    a, b = run_spec(study, "memnls", "base", 0), run_spec(study, "memnls", "base", 1)
    assert a["seed"] == 0 and b["seed"] == 1
    assert config_hash(a) == config_hash(b)
    assert config_hash(a) != config_hash(run_spec(study, "transformer", "base", 0))
    with pytest.raises(ValueError, match="no architecture 'gru'"):
        run_spec(study, "gru", "base", 0)


def test_eam_is_wired_to_its_same_seed_teacher():
    study = {**MICRO_STUDY, "archs": [*MICRO_STUDY["archs"], {"name": "eam", "hparams": {"teacher": "transformer"}}]}
    resolved = resolve(micro_config(study))["micro"]
    spec = run_spec(resolved, "eam", "base", 2)
    assert spec["inputs"] == {"teacher": "results/micro/transformer/base/seed2"}
    assert config_hash(spec) == config_hash(run_spec(resolved, "eam", "base", 3))
    assert "inputs" not in run_spec(resolved, "memnls", "base", 2)
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


def swept(sweep: dict, archs=None) -> dict:
    study = {**MICRO_STUDY, "sweep": sweep, **({"archs": archs} if archs else {})}
    config = micro_config(study)
    check_config(config, SCHEMA)
    return resolve(config)["micro"]


def test_a_sweep_makes_every_combination_a_variant_of_every_architecture():
    study = swept({"lr": [0.01, 0.003], "grad_clip": [1.0, 0]})
    assert list(study["variants"]) == ["lr=0.01,clip=1", "lr=0.01,clip=0", "lr=0.003,clip=1", "lr=0.003,clip=0"]
    assert study["variants"]["lr=0.003,clip=0"] == {"lr": 0.003, "grad_clip": 0}
    assert len(runs(study)) == 2 * 4 * 1  # archs x variants x seeds
    assert run_dir(study["name"], "transformer", "lr=0.01,clip=0", 0) == "results/micro/transformer/lr=0.01,clip=0/seed0"
    spec = run_spec(study, "transformer", "lr=0.01,clip=0", 0)
    assert spec["variant"] == "lr=0.01,clip=0" and (spec["recipe"]["lr"], spec["recipe"]["grad_clip"]) == (0.01, 0)
    # everything else stays as the study has it: data, seeds, evaluation, the matched shape
    base = run_spec(resolve(micro_config())["micro"], "transformer", "base", 0)
    assert {k: v for k, v in spec["recipe"].items() if k not in ("lr", "grad_clip")} == \
        {k: v for k, v in base["recipe"].items() if k not in ("lr", "grad_clip")}
    assert all(spec[k] == base[k] for k in ("data", "model", "hparams", "shape", "reference"))
    hashes = {v: config_hash(run_spec(study, "transformer", v, 0)) for v in study["variants"]}
    assert len(set(hashes.values())) == 4  # each variant is its own configuration
    assert "variant" not in base and base["seed"] == 0  # a study without a sweep has one variant, base
    assert list(resolve(micro_config())["micro"]["variants"]) == ["base"]


def test_a_switch_joins_the_hyperparameters_and_a_loss_switch_the_recipe():
    study = swept({"qk_norm": [False, True], "z_loss": [0, 1e-4]}, archs=["transformer"])
    assert list(study["variants"]) == ["qk_norm=off,z_loss=0", "qk_norm=off,z_loss=0.0001",
                                       "qk_norm=on,z_loss=0", "qk_norm=on,z_loss=0.0001"]
    spec = run_spec(study, "transformer", "qk_norm=on,z_loss=0.0001", 0)
    assert spec["switches"] == {"qk_norm": True} and spec["recipe"]["z_loss"] == 1e-4
    assert "qk_norm" not in spec["hparams"]  # matched without it: the switch adds only its own parameters


@pytest.mark.parametrize("sweep, message", [
    ({"learning_rate": [0.1]}, "sweep.learning_rate: not a recipe key nor a stabiliser switch"),
    ({"lr": [0.1, -1]}, "sweep.lr: value -1"),
    ({"steps": [10, 20]}, "sweep.steps: the variants of a study are compared on the same steps"),
    ({"lr": [0.1, 0.1]}, "sweep.lr: values repeat"),
    ({"precision": ["fp16"]}, "sweep.precision: value 'fp16'"),
])
def test_a_bad_sweep_fails_early_naming_the_key(sweep, message):
    config = micro_config({**MICRO_STUDY, "sweep": sweep}) if sweep != {"lr": [0.1, -1]} else \
        {"study": "micro", "studies": {"micro": {**MICRO_STUDY, "sweep": sweep}}}
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        check_config(config, SCHEMA)


def test_a_switch_an_architecture_cannot_honour_is_an_error_naming_both():
    """Asked by its hparams, or swept without the off value it could train at: an error naming both."""
    study = {**MICRO_STUDY, "archs": ["transformer", {"name": "memnls", "hparams": {"qk_norm": True}}]}
    with pytest.raises(ConfigError, match="architecture 'memnls' does not implement the stabiliser switch 'qk_norm'"):
        resolve(micro_config(study))
    with pytest.raises(ConfigError, match=r"architecture 'memnls' does not implement the stabiliser switch 'qk_norm'.*"
                                          r"a sweep trains them only at qk_norm=off, which sweep.qk_norm \[True\]"):
        swept({"qk_norm": [True]})
    with pytest.raises(ConfigError, match="sweep.qk_norm would change no run"):
        swept({"qk_norm": [False, True]}, archs=[{"name": "memnls", "hparams": {"ffn_mult": 5}}])
