"""Controls (harness.controls) and what they need: a copy of an architecture that differs only in its
initialisation seed (an entry's init_seed_offset), sweep axes scoped to the architectures that declare a
model switch, the controls' judgement from constructed aggregate tables, and the report's opening lines."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from snakemake.utils import validate

from harness import archs, claims, controls, shape, stability, stats
from harness.contracts import CONTROL_COLUMNS, EVENT_COLUMNS, ID_COLUMNS, SWEEP_PREFIX
from harness.report.page import render
from harness.run import execute
from harness.study import (ConfigError, check_config, coerce_overrides, config_hash, init_seed, resolve,
                           run_spec, runs)
from harness.variants import variant_name, variants
from tests.conftest import MICRO_STUDY, REPO, SCHEMA, micro_config
from tests.test_report_stability import write_aggregate

COPY = {"name": "transformer-copy", "build": "transformer", "init_seed_offset": 1000}


# ------------------------------------------------------------------------------- a copy of an architecture


def with_copy(**study) -> dict:
    return resolve(micro_config({**MICRO_STUDY, "archs": ["transformer", COPY], **study}))["micro"]


def test_a_copy_differs_from_its_original_only_in_its_initialisation_seed():
    study = with_copy()
    original, copy = run_spec(study, "transformer", "base", 2), run_spec(study, "transformer-copy", "base", 2)
    assert copy["init_seed_offset"] == 1000 and "init_seed_offset" not in original  # the original's spec as before
    assert (init_seed(original), init_seed(copy)) == (2, 1002) and copy["seed"] == original["seed"] == 2
    assert {k: v for k, v in copy.items() if k not in ("arch", "init_seed_offset")} == \
        {k: v for k, v in original.items() if k != "arch"}
    assert config_hash(copy) != config_hash(original)  # another configuration: its own runs, never the original's
    # a study without copies keeps its specs, and so its config hashes and runs
    plain = resolve(micro_config())["micro"]
    assert run_spec(plain, "transformer", "base", 2) == {**original, "study": "micro"}


def test_a_copy_whose_initialisations_overlap_the_originals_is_an_error():
    with pytest.raises(ConfigError, match=r"'transformer-copy' with init_seed_offset 1 would start from the same "
                                          r"initialisations as 'transformer' at other seeds \(init seeds \[1, 2\]\)"):
        with_copy(seeds=[0, 1, 2], archs=["transformer", {**COPY, "init_seed_offset": 1}])
    assert runs(with_copy(seeds=[0, 1, 2], archs=["transformer", {**COPY, "init_seed_offset": 3}]))


def test_the_schema_takes_init_seed_offset_and_rejects_a_negative_one():
    config = micro_config({**MICRO_STUDY, "archs": ["transformer", COPY]})
    check_config(config, SCHEMA)
    # from the command line (Snakemake's BaseLoader gives strings): typed before validation
    typed = coerce_overrides({**micro_config(), "archs": ["transformer", {**COPY, "init_seed_offset": "1000"}]})
    assert typed["archs"][1]["init_seed_offset"] == 1000
    check_config(typed, SCHEMA)
    bad = {"study": "micro", "studies": {"micro": {**MICRO_STUDY, "archs": [{**COPY, "init_seed_offset": -1}]}}}
    with pytest.raises(ConfigError, match="init_seed_offset.*-1 is less than the minimum of 0"):
        check_config(bad, SCHEMA)


def test_a_copy_trains_on_the_same_batches_from_another_initialisation(tmp_path, shared_data, monkeypatch):
    """The seed drives the data order for both, the offset only the initialisation (run.json says which)."""
    from harness import data

    study = with_copy(recipe={**MICRO_STUDY["recipe"], "steps": 3, "log_every": 1, "eval_every": 3,
                              "checkpoint_every": 3})
    seen: dict[str, list] = {}
    real = data.get_batch
    for arch in ("transformer", "transformer-copy"):
        seen[arch] = []
        monkeypatch.setattr(data, "get_batch", lambda *a, _arch=arch, **k: seen[_arch].append(real(*a, **k)) or
                            seen[_arch][-1])
        assert execute(run_spec(study, arch, "base", 0), tmp_path / arch) == "completed"
    for (xa, ya), (xb, yb) in zip(seen["transformer"], seen["transformer-copy"], strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    manifests = {a: json.loads((tmp_path / a / "run.json").read_text()) for a in seen}
    assert manifests["transformer-copy"]["init_seed"] == 1000 and "init_seed" not in manifests["transformer"]
    assert manifests["transformer-copy"]["seed"] == manifests["transformer"]["seed"] == 0
    first = {a: pd.read_csv(tmp_path / a / "metrics.csv").query("step == 0 and split == 'val'")["value"].item()
             for a in seen}
    assert first["transformer"] != first["transformer-copy"]  # another initialisation: another untrained loss


# ------------------------------------------------------------------------------------------ scoped sweeps


def test_a_model_switch_sweep_runs_only_the_architectures_that_declare_it():
    """Before, a qk_norm sweep in a study holding memnls stopped with an error (the cartesian product asked
    memnls for qk_norm=on); now memnls trains the off value alone, under the transformer's off names."""
    study = {**MICRO_STUDY, "sweep": {"lr": [0.01, 0.1], "qk_norm": [False, True]}}
    config = micro_config(study)
    check_config(config, SCHEMA)
    resolved = resolve(config)["micro"]
    planned = runs(resolved)
    assert [(a, v) for a, v, _ in planned if a == "transformer"] == [
        ("transformer", "lr=0.01,qk_norm=off"), ("transformer", "lr=0.01,qk_norm=on"),
        ("transformer", "lr=0.1,qk_norm=off"), ("transformer", "lr=0.1,qk_norm=on")]
    assert [(a, v) for a, v, _ in planned if a == "memnls"] == [
        ("memnls", "lr=0.01,qk_norm=off"), ("memnls", "lr=0.1,qk_norm=off")]
    assert len(planned) == len(set(planned)) == 6  # 2 x 2 + 2 x 1, no run twice
    assert run_spec(resolved, "memnls", "lr=0.1,qk_norm=off", 0)["recipe"]["lr"] == 0.1
    with pytest.raises(ConfigError, match="'memnls' does not train variant 'lr=0.1,qk_norm=on'"):
        run_spec(resolved, "memnls", "lr=0.1,qk_norm=on", 0)


def test_a_pipeline_reads_its_inputs_at_the_variant_they_train():
    study = {**MICRO_STUDY, "archs": [*MICRO_STUDY["archs"], {"name": "eam", "hparams": {"teacher": "memnls"}}],
             "sweep": {"qk_norm": [False, True]}}
    resolved = resolve(micro_config(study))["micro"]
    assert resolved["arch_variants"]["eam"] == ["qk_norm=off", "qk_norm=on"]
    assert run_spec(resolved, "eam", "qk_norm=on", 1)["inputs"] == {"teacher": "results/micro/memnls/qk_norm=off/seed1"}
    assert run_spec(resolved, "eam", "qk_norm=off", 1)["inputs"] == {"teacher": "results/micro/memnls/qk_norm=off/seed1"}


def test_the_stability_preset_carries_the_qk_norm_ablation_for_its_attention_architectures():
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    validate(config, str(SCHEMA))
    study = resolve(config)["stability"]
    counts = {arch: len(v) for arch, v in study["arch_variants"].items()}
    assert counts == {"transformer": 24, "memnls": 12, "diag_ssm": 12, "resonance": 24, "trn_hybrid": 24, "eam": 24}
    assert len(runs(study)) == 360  # 216 before: 6 x 12 variants x 3 seeds
    # every architecture sizes and builds under each of its switch settings: memnls and diag_ssm get no
    # qk_norm hyperparameter they would reject (their qk_norm=off runs carry no switch at all)
    for arch, planned in study["arch_variants"].items():
        for variant in dict.fromkeys(v for v in planned if "lr=0.003,z_loss=0," in v):
            spec = run_spec(study, arch, variant, 0)
            assert ("switches" in spec) == (arch in ("transformer", "resonance", "trn_hybrid", "eam")), (arch, spec)
            if not archs.info(spec["build"]).pipeline:  # eam is sized by its own pipeline
                assert shape.for_spec(spec, 256).n_params > 0


def test_an_ablation_has_no_row_for_an_architecture_without_the_switch():
    study = {"sweep": {"qk_norm": [False, True]}, "variants": variants({"qk_norm": [False, True]}),
             "arch_variants": {"transformer": ["qk_norm=off", "qk_norm=on"], "memnls": ["qk_norm=off"]}}
    rows = [{"study": "s", "arch": arch, "variant": variant_name({"qk_norm": on}), "seed": seed,
             f"{SWEEP_PREFIX}qk_norm": on, "status": "completed"}
            for arch, ons in (("transformer", (False, True)), ("memnls", (False,))) for on in ons for seed in range(3)]
    table = stability.ablations(study, pd.DataFrame(rows), pd.DataFrame(columns=ID_COLUMNS + ["type", "onset_step"]))
    assert list(table["arch"]) == ["transformer"]


# -------------------------------------------------------------------------------- declaring the controls


CONTROLS = {"positive": {"claim": "qk-layernorm-lr-sensitivity", "name": "the known qk-layernorm effect"},
            "negative": {"archs": ["transformer", "transformer-copy"]}}
CONTROL_ARCHS = ["transformer", {"name": "transformer-qknorm", "build": "transformer", "hparams": {"qk_norm": True}},
                 COPY]
CLAIMS_FILE = str(REPO / "config" / "controls_claims.yaml")


def controls_study(**changes) -> dict:
    return {**MICRO_STUDY, "archs": CONTROL_ARCHS, "claims": CLAIMS_FILE, "controls": CONTROLS, **changes}


@pytest.mark.parametrize("changes, message", [
    ({"controls": {"positive": {"claim": "qk-layernorm-lr-sensitivty"}}},
     "controls.positive.claim: 'qk-layernorm-lr-sensitivty' is not a claim .*did you mean 'qk-layernorm-lr-sensitivity'"),
    ({"archs": ["transformer", COPY]}, "claim 'qk-layernorm-lr-sensitivity' is about transformer-qknorm, transformer; "
                                       "the study has no architecture 'transformer-qknorm'"),
    ({"controls": {"negative": {"archs": ["transformer", "transformer-qknorm"]}}},
     "must be copies of one architecture, but their hparams differ"),
    ({"archs": ["transformer", {**COPY, "init_seed_offset": 0}],
      "controls": {"negative": {"archs": ["transformer", "transformer-copy"]}}}, "would train identical runs"),
    ({"controls": {"negative": {"archs": ["transformer", "absent"]}}}, "the study has no architecture 'absent'"),
])
def test_a_control_that_cannot_be_one_fails_before_any_job(changes, message):
    with pytest.raises(ConfigError, match=message):
        resolve(micro_config(controls_study(**changes)))


def test_an_archs_override_that_leaves_a_control_out_does_not_stop_the_other_studies():
    resolved = resolve(micro_config(controls_study(), archs=["transformer"]))
    assert list(resolved["micro+archs=transformer"]["archs"]) == ["transformer"]


def test_the_shipped_controls_preset_resolves():
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    validate(config, str(SCHEMA))
    study = resolve(config)["controls"]
    assert study["controls"]["positive"]["expect"] == "supported"  # the schema's default
    assert len(runs(study)) == 3 * 5 * 5 and len(study["seeds"]) == 5


# ------------------------------------------------------------------------------ judging them, and the page

GRID = [3e-3, 1e-2, 3e-2, 1e-1, 3e-1]
INITIAL = math.log(256)
CURVE = np.array([2.6, 2.45, 2.35, 2.35, 2.5])


def control_tables(finals: dict[str, np.ndarray], seeds: int):
    """The aggregate's tables of an lr sweep of the three architectures: finals[arch] seeds x lrs (inf:
    diverged there, with a collapse event)."""
    study = {"name": "c", "data": {"name": "tinyshakespeare", "tokens": "bytes"}, "smoke": False,
             "recipe": {"steps": 200, "grad_clip": 1.0, "lr": 3e-3}, "sweep": {"lr": GRID},
             "variants": variants({"lr": GRID}), "claims": CLAIMS_FILE, "controls": CONTROLS,
             "archs": {"transformer": {"build": "transformer", "hparams": {}},
                       "transformer-qknorm": {"build": "transformer", "hparams": {"qk_norm": True}},
                       "transformer-copy": {"build": "transformer", "hparams": {}, "init_seed_offset": 1000}}}
    rows, curves, events = [], [], []
    for arch, losses in finals.items():
        for seed, row in enumerate(losses[:seeds]):
            for lr, loss in zip(GRID, row):
                ident = {"study": "c", "arch": arch, "variant": variant_name({"lr": lr}), "seed": seed}
                state = "completed" if np.isfinite(loss) else "diverged"
                rows.append({**ident, f"{SWEEP_PREFIX}lr": lr, "status": state, "steps_done": 200, "n_params": 1.25e5,
                             "vocab_size": 256})
                curves += [{**ident, "step": s, "split": "val", "metric": "loss", "value": v}
                           for s, v in ((0, INITIAL), (100, min(loss, INITIAL)), (150, min(loss, INITIAL)),
                                        (200, loss if np.isfinite(loss) else math.nan))]
                if not np.isfinite(loss):
                    events.append({**ident, **{c: math.nan for c in EVENT_COLUMNS}, "type": "collapse",
                                   "split": "val", "onset_step": 150.0})
    runs_, curves, events = (pd.DataFrame(rows), pd.DataFrame(curves),
                             pd.DataFrame(events, columns=ID_COLUMNS + EVENT_COLUMNS))
    tables = stability.tables(study, runs_, curves, events)
    verdicts = claims.evaluate(study, runs_, events, None, tables)
    pairs = stats.compare(stats.run_scores(curves, events, runs_))
    return controls.evaluate(study, runs_, curves, events, None, pairs, verdicts, tables)


def finals_of(rng, unstable_top: dict[str, bool], shift: dict[str, np.ndarray] | None = None) -> dict:
    out = {}
    for arch, top in unstable_top.items():
        losses = CURVE + (shift or {}).get(arch, 0) + rng.normal(0, 0.01, (6, len(GRID)))
        losses[:, -1] = np.inf if top else losses[:, -1]
        out[arch] = losses
    return out


def test_both_controls_pass_and_open_the_report_in_a_line_each():
    rng = np.random.default_rng(0)
    finals = finals_of(rng, {"transformer": True, "transformer-qknorm": False, "transformer-copy": True})
    table, notes = control_tables(finals, seeds=5)
    assert list(table.columns) == CONTROL_COLUMNS and notes["passed"] == {"positive": True, "negative": True}
    positive, negative = notes["lines"]
    assert positive.startswith("Positive control: the harness finds the known qk-layernorm effect (decided at 5 "
                               "seeds each, learning-rate sensitivity transformer-qknorm minus transformer -")
    assert "Welch-Hsu t-test p = " in positive and "claim qk-layernorm-lr-sensitivity: supported" in positive
    assert "at lr=0.3 0 of 5 runs of transformer-qknorm unstable against 5 of 5 of transformer" in positive
    assert negative.startswith("Negative control: it finds no difference between two copies of one architecture "
                               "(transformer and transformer-copy, another initialisation seed; sensitivity p = ")
    mine = table[table["control"] == "negative"]
    assert set(mine["measure"]) == {"claim", "sensitivity", "instability", "final perplexity", "collapse rate"}
    assert not mine["separates"].any()
    # the copy stands in for the original in every claim about it, the positive one included
    swapped = mine[mine["measure"] == "claim"].set_index("where")["sentence"]
    assert swapped["qk-layernorm-lr-sensitivity"] == ("claim qk-layernorm-lr-sensitivity: supported with transformer, "
                                                      "supported with transformer-copy in its place.")


def test_a_control_that_fails_says_so_and_why():
    rng = np.random.default_rng(1)
    # an effect that is not there (qk_norm breaks at the top lr as the transformer does): the positive control fails
    finals = finals_of(rng, {"transformer": True, "transformer-qknorm": True, "transformer-copy": True})
    _, notes = control_tables(finals, seeds=5)
    positive, negative = notes["lines"]
    assert notes["passed"] == {"positive": False, "negative": True}
    assert positive.startswith("Positive control failed: the harness does not find the known qk-layernorm effect "
                               "(tested at 5 seeds each")
    assert "expected supported" in positive and "may mean that this design cannot see an effect" in positive
    # a "copy" that does not break at the top lr as its original does: separated, and the line says by what
    finals = finals_of(rng, {"transformer": True, "transformer-qknorm": False, "transformer-copy": False})
    table, notes = control_tables(finals, seeds=5)
    assert notes["passed"] == {"positive": True, "negative": False}
    negative = notes["lines"][1]
    assert negative.startswith("Negative control failed:") and "A difference of that size elsewhere" in negative
    separated = table[(table["control"] == "negative") & table["separates"]]
    assert {"claim", "sensitivity", "instability"} <= set(separated["measure"])
    assert "learning-rate sensitivity of transformer minus transformer-copy" in negative


def test_a_study_without_controls_has_an_empty_table_and_no_notes():
    table, notes = controls.evaluate({"name": "x"}, pd.DataFrame(columns=["arch"]), pd.DataFrame(), pd.DataFrame(),
                                     None, pd.DataFrame(), pd.DataFrame(), {})
    assert table.empty and list(table.columns) == CONTROL_COLUMNS and notes == {}


def test_the_report_opens_with_the_controls_and_a_study_without_them_gets_the_page_it_had(tmp_path):
    plain = write_aggregate(tmp_path / "plain", sweep=True)
    render(plain, tmp_path / "plain.html")
    before = (tmp_path / "plain.html").read_text()
    assert 'id="controls' not in before and 'href="#controls"' not in before  # no line, no section, no nav entry

    agg = write_aggregate(tmp_path / "controlled", sweep=True)
    rng = np.random.default_rng(0)
    table, notes = control_tables(finals_of(rng, {"transformer": True, "transformer-qknorm": False,
                                                  "transformer-copy": True}), seeds=5)
    table.to_csv(agg / "controls.csv", index=False)
    saved = json.loads((agg / "notes.json").read_text())
    (agg / "notes.json").write_text(json.dumps({**saved, "controls": notes}))
    render(agg, tmp_path / "controlled.html")
    page = (tmp_path / "controlled.html").read_text()
    head = page[:page.index("<nav>")]
    assert '<div id="controls-lines"><p>Positive control: the harness finds the known qk-layernorm effect' in head
    assert "<p>Negative control: it finds no difference between two copies of one architecture" in head
    assert '<a href="#controls">controls</a>' in page and '<section id="controls">' in page
    assert page.index('<section id="controls">') < page.index('<section id="claims">')
    # without controls.csv (an aggregate folder written before controls) the page is the one it was
    (agg / "controls.csv").unlink()
    (agg / "notes.json").write_text(json.dumps(saved))
    render(agg, tmp_path / "again.html")
    assert (tmp_path / "again.html").read_text() == before


def test_a_seed_budget_plans_and_extends_each_architectures_own_variants():
    from harness import sequential

    study = {**MICRO_STUDY, "seeds": {"start": 3, "step": 2, "max": 7}, "sweep": {"qk_norm": [False, True]}}
    resolved = resolve(micro_config(study))["micro"]
    first = sequential.budget_runs(resolved, lambda k: None, upto=1)
    assert sorted({(a, v) for a, v, _ in first}) == [("memnls", "qk_norm=off"), ("transformer", "qk_norm=off"),
                                                     ("transformer", "qk_norm=on")]
    open_claim = pd.DataFrame([{"kind": "claim", "archs": "memnls, transformer", "setting": "base"}])
    assert sequential.needed(resolved, open_claim) == {"memnls": ["qk_norm=off"],
                                                       "transformer": ["qk_norm=off", "qk_norm=on"]}
