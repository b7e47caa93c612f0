"""Seeds until decided (harness.sequential): the budget's looks and levels, the replay of the looks on a
study's runs, and the DAG that trains more seeds only while a question is open."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pandas as pd
import pytest
import yaml

from harness import sequential
from harness.contracts import EVENT_COLUMNS, ID_COLUMNS, LOOK_COLUMNS
from harness.sequential import SeedBudget
from harness.status import status
from harness.study import ConfigError, coerce_overrides, resolve
from tests.conftest import NEEDS_DATA, TINYSHAKESPEARE, micro_config, workflow_copy, write_config
from tests.test_workflow import snakemake


def test_budget_looks_and_levels_spend_alpha_once():
    budget = SeedBudget(3, 5, 13)
    assert budget.looks() == [3, 8, 13]
    alphas = budget.alphas()
    # Pocock-type spending alpha ln(1 + (e - 1) t) at t = 3/13, 8/13, 1, by hand
    spent = [0.05 * math.log(1 + (math.e - 1) * t) for t in (3 / 13, 8 / 13, 1.0)]
    assert alphas == pytest.approx([spent[0], spent[1] - spent[0], spent[2] - spent[1]])
    assert sum(alphas) == pytest.approx(0.05) and all(a > 0 for a in alphas)
    assert SeedBudget(5, 2, 5).looks() == [5] and SeedBudget(5, 2, 5).alphas() == pytest.approx([0.05])
    assert SeedBudget(3, 2, 10).looks() == [3, 5, 7, 9, 10]  # the last look at max
    with pytest.raises(ValueError, match="start <= max"):
        SeedBudget(4, 1, 3)


def test_a_budget_in_the_config_resolves_to_its_seeds_and_looks():
    study = micro_config()["studies"]["micro"]
    study["seeds"] = {"start": 3, "step": 2, "max": 7}
    config = micro_config(study)
    resolved = resolve(config)["micro"]
    assert resolved["seeds"] == list(range(7))
    assert resolved["seed_budget"] == {"start": 3, "step": 2, "max": 7, "looks": [3, 5, 7]}
    # an override as typed on the command line (strings): its folder leaves out max, so a larger max continues
    override = coerce_overrides({**micro_config(), "seeds": {"start": "3", "step": "2", "max": "9"}})
    assert list(resolve(override)) == ["micro+seeds=3by2"]
    bad = micro_config(study)
    bad["studies"]["micro"]["seeds"] = {"start": 5, "step": 1, "max": 3}
    with pytest.raises(ConfigError, match="study 'micro': seeds: a budget needs 1 <= start <= max"):
        resolve(bad)


def _claims_file(tmp_path, steps: int) -> str:
    path = tmp_path / "calm.yaml"
    path.write_text(yaml.safe_dump({"claims": [{
        "id": "transformer-calm", "source": "a test", "statement": "the micro transformer never collapses",
        "kind": "events", "archs": ["transformer"],
        "setting": {"data": "tinyshakespeare", "tokens": "bytes", "steps": steps},
        "params": {"expect": "none", "types": ["collapse", "divergence"]}}]}))
    return str(path)


def _study(tmp_path, budget: dict) -> dict:
    study = micro_config()["studies"]["micro"]
    study.update(seeds=budget, archs=["transformer"], smoke=False, claims=_claims_file(tmp_path, 40))
    return resolve(micro_config(study))["micro"]


def _calm_runs(study: dict, n: int) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """n completed transformer runs without an event, as the aggregate's tables."""
    runs = pd.DataFrame([{"study": study["name"], "arch": "transformer", "variant": "base", "seed": s,
                          "status": "completed", "steps_done": 40, "n_params": 5000} for s in range(n)])
    trajectories = pd.DataFrame([{"study": study["name"], "arch": "transformer", "variant": "base", "seed": s,
                                  "step": step, "split": "val", "metric": "loss", "value": 5.0 - step / 20}
                                 for s in range(n) for step in (0, 20, 40)])
    return runs, trajectories, pd.DataFrame(columns=ID_COLUMNS + EVENT_COLUMNS)


def test_replay_decides_at_the_second_look_and_keeps_that_verdict(tmp_path):
    """0 of 3 runs with an event cannot settle "no events" (the exact interval at level 1 - 0.0167 reaches
    0.80); 0 of 8 can (at 1 - 0.0194 it ends at 0.44 < 1/2). Later seeds do not reopen it: with 13 seeds of
    which 5 collapsed the claim is still the second look's 'consistent'."""
    study = _study(tmp_path, {"start": 3, "step": 5, "max": 13})
    runs, trajectories, events = _calm_runs(study, 3)
    plan = sequential.plan(study, runs, trajectories, events, None, 1)
    assert plan["open"] == ["claim:transformer-calm"] and not plan["done"] and plan["need"] == {"transformer": ["base"]}
    runs, trajectories, events = _calm_runs(study, 8)
    plan = sequential.plan(study, runs, trajectories, events, None, 2)
    assert plan["done"] and plan["decided"] == ["claim:transformer-calm"] and plan["need"] == {}
    runs, trajectories, _ = _calm_runs(study, 13)
    events = pd.DataFrame([{**{c: math.nan for c in EVENT_COLUMNS}, "study": study["name"], "arch": "transformer",
                            "variant": "base", "seed": s, "type": "collapse", "onset_step": 20.0}
                           for s in range(8, 13)])
    looks, claims, _ = sequential.replay(study, runs, trajectories, events, None)
    assert list(looks.columns) == LOOK_COLUMNS
    assert looks[["look", "seeds", "decided"]].values.tolist() == [[1, 3, False], [2, 8, True]]
    row = claims.set_index("id").loc["transformer-calm"]
    assert row["verdict"] == "consistent" and row["n"] == 8
    assert "Decided at look 2 of at most 3, with 8 seeds" in row["sentence"]


def test_a_budget_with_no_question_is_done_at_its_first_look():
    """A smoke study tests no claim and sweeps no lr: nothing can be decided, so nothing more is trained
    (this raised KeyError on an empty looks table)."""
    study = micro_config()["studies"]["micro"]
    study.update(seeds={"start": 3, "step": 5, "max": 13}, archs=["transformer"], smoke=True)
    study = resolve(micro_config(study))["micro"]
    plan = sequential.plan(study, *_calm_runs(study, 3), None, 1)
    assert plan["done"] and plan["open"] == plan["decided"] == [] and plan["need"] == {}


@pytest.mark.skipif(TINYSHAKESPEARE is None, reason=NEEDS_DATA)
def test_the_dag_stops_adding_seeds_once_the_question_is_decided(tmp_path):
    """A real Snakemake run of a budget study {start 3, step 5, max 13} with one question: look 1 (3 seeds)
    leaves it open, look 2 (8 seeds) decides it, and no ninth seed and no third look are ever made."""
    workdir = workflow_copy(tmp_path / "wf")
    study = micro_config()["studies"]["micro"]
    study.update(seeds={"start": 3, "step": 5, "max": 13}, archs=["transformer"], smoke=False,
                 claims=_claims_file(tmp_path, 40), quantize={"bits": []})  # no packaged quantization claim
    write_config(workdir, micro_config(study))
    done = snakemake(workdir, "--cores", "2", "reports/collapse.html", timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    looks = workdir / "results" / "micro" / "looks" / sequential.looks_key(resolve(micro_config(study))["micro"])
    first, second = (json.loads((looks / f"look{k}.json").read_text()) for k in (1, 2))
    assert first["open"] == ["claim:transformer-calm"] and not first["done"]
    assert second["decided"] == ["claim:transformer-calm"] and second["done"]
    assert not (looks / "look3.json").exists()
    trained = sorted(int(p.name[4:]) for p in (workdir / "results/micro/transformer/base").glob("seed*"))
    assert trained == list(range(8))
    claims = pd.read_csv(workdir / "results/micro/claims.csv").set_index("id")
    assert claims.loc["transformer-calm", "verdict"] == "consistent"
    assert "Decided at look 2" in claims.loc["transformer-calm", "sentence"]
    table = pd.read_csv(workdir / "results/micro/looks.csv")
    assert table["look"].tolist() == [1, 2] and table["decided"].tolist() == [False, True]
    report = (workdir / "reports/micro/collapse.html").read_text()
    assert 'id="looks"' in report and "Seeds until decided" in report and "1 of 1 questions decided" in report
    shown = status(workdir, "micro")  # harness status: the runs the looks asked for, and where the budget stands
    assert "micro: 8 runs planned: 8 done" in shown and "done at look 2 of at most 3 (8 seeds)" in shown, shown
    again = snakemake(workdir, "--cores", "1", "-n", "reports/collapse.html")
    assert again.returncode == 0 and "Nothing to be done" in again.stdout, again.stdout
    assert not (looks / "runs.txt").exists()  # look_runs's list is temporary: the aggregate's inputs stay plain

    # a plan reopened on disk (as a corrected verdict rule would write it) goes on training: Snakemake alone
    # never reruns a job downstream of a checkpoint whose outputs exist (snakemake PR #4124)
    (looks / "look2.json").write_text(json.dumps({**second, "done": False, "decided": [],
                                                  "open": ["claim:transformer-calm"], "need": {"transformer": ["base"]}}))
    reopened = snakemake(workdir, "--cores", "1", "-n", "reports/collapse.html")
    assert reopened.returncode == 0, reopened.stderr[-3000:]
    planned = re.findall(r"seed=(\d+)", reopened.stdout)
    assert sorted({int(s) for s in planned}) == list(range(8, 13)), reopened.stdout[-3000:]
    assert re.search(r"^look\s+1$", reopened.stdout, re.M) and re.search(r"^aggregate\s+1$", reopened.stdout, re.M)

    # a larger max: other levels, so the looks start afresh in their own folder over the 8 runs already trained
    larger = micro_config({**study, "seeds": {"start": 3, "step": 5, "max": 18}})
    write_config(workdir, larger)
    resumed = snakemake(workdir, "--cores", "1", "-n", "reports/collapse.html")
    assert resumed.returncode == 0 and not re.findall(r"seed=(\d+)", resumed.stdout), resumed.stdout[-3000:]
    assert f"looks/{sequential.looks_key(resolve(larger)['micro'])}/look1.json" in resumed.stdout
    write_config(workdir, micro_config(study))

    (looks / "look2.json").unlink()  # as while look 2 was being trained
    assert "look 2 of at most 3 in progress (8 seeds); look 1: 0 decided, 1 open" in status(workdir, "micro")


def _lr_grid_runs(study: dict, n: int) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """n seeds of memnls and the transformer over the study's lr grid, the transformer's loss climbing
    three times as steeply away from lr 0.01 (seed noise 0.01 nats)."""
    rng = np.random.default_rng(0)
    runs, trajectories = [], []
    for arch, slope in (("memnls", 0.1), ("transformer", 0.3)):
        for variant, values in study["variants"].items():
            for seed in range(n):
                runs.append({"study": study["name"], "arch": arch, "variant": variant, "seed": seed,
                             "status": "completed", "sweep_lr": values["lr"], "steps_done": 40, "n_params": 5000})
                final = 2.0 + slope * abs(math.log10(values["lr"]) + 2) + rng.normal(0, 0.01)
                trajectories += [{"study": study["name"], "arch": arch, "variant": variant, "seed": seed, "step": step,
                                  "split": "val", "metric": "loss", "value": value}
                                 for step, value in ((0, 5.0), (40, final))]
    return pd.DataFrame(runs), pd.DataFrame(trajectories), pd.DataFrame(columns=ID_COLUMNS + EVENT_COLUMNS)


def test_questions_short_of_seeds_are_open_so_the_next_look_trains_them():
    """At 3 seeds a sensitivity pair has no p (it needs 4: the first seed only chooses the optimum) and the
    claim that reads it is short of seeds: both are open questions, so look 2 trains 2 more seeds of both
    architectures at every lr, and there the pair is decided. (Before, both were skipped as untestable
    and a {start: 3} budget stopped at its first look with nothing asked: the stability preset's run.)"""
    study = micro_config()["studies"]["micro"]
    study.update(seeds={"start": 3, "step": 2, "max": 7}, archs=["transformer", "memnls"], smoke=False,
                 sweep={"lr": [0.001, 0.01, 0.1]})
    study = resolve(micro_config(study))["micro"]
    first = sequential.plan(study, *_lr_grid_runs(study, 3), None, 1)
    assert first["open"] == ["claim:memnls-anti-collapse", "pair base: memnls vs transformer"] and not first["done"]
    assert first["need"] == {arch: ["lr=0.001", "lr=0.01", "lr=0.1"] for arch in ("memnls", "transformer")}
    second = sequential.plan(study, *_lr_grid_runs(study, 5), None, 2)
    assert second["decided"] == ["claim:memnls-anti-collapse", "pair base: memnls vs transformer"] and second["done"]
    looks, claims, tables = sequential.replay(study, *_lr_grid_runs(study, 5), None)
    assert claims.set_index("id").loc["memnls-anti-collapse", "proxy_verdict"] == "supported"
    assert tables["sensitivity_pairs"].iloc[0]["n_a"] == 5


def test_the_recipe_variant_is_found_in_a_study_read_back_from_sorted_json():
    """The workflow hands the study to the aggregate as JSON; with sorted keys the sweep's order (lr, z_loss,
    qk_norm) became (lr, qk_norm, z_loss) while the variants kept their names, and every claim tested at the
    recipe said "needs the variant at the study's own recipe in its sweep" (the stability preset's eight)."""
    from harness.claim_data import recipe_variant

    study = micro_config()["studies"]["micro"]
    study.update(archs=["transformer"], sweep={"lr": [0.003, 0.01], "z_loss": [0, 0.001], "qk_norm": [False, True]})
    study = resolve(micro_config(study))["micro"]
    assert recipe_variant(study) == "lr=0.003,z_loss=0,qk_norm=off"
    assert recipe_variant(json.loads(json.dumps(study, sort_keys=True))) == "lr=0.003,z_loss=0,qk_norm=off"
    assert recipe_variant({**study, "sweep": {"lr": [0.01], "qk_norm": [False]}}) is None
