"""All runs of a study -> tidy tables: the only input the report reads.

Writes study.json, runs.csv (one row per run: identity with its variant, the variant's sweep values as
``sweep_*`` columns, status, shape, its architecture's admission verdict (``admission*``), provenance,
scores and a pipeline's own numbers as ``pipeline_*`` columns), trajectories.csv (every metric of every run, diagnostics included), events.csv, summary.csv
(per architecture and variant), pairs.csv (per pair of architectures within a variant), claims.csv
(the published claims, tested), headlines.csv (published figures beside measured ones),
quantization.csv (every run's quantization rows, ``final`` marking the trained model's),
quantization_summary.csv (per architecture, variant, step and width over the seeds: median, min and
max), the stability tables of harness.stability (lr_curves, sensitivity, sensitivity_pairs,
attribution and attribution_summary from harness.attribution, ablations), looks.csv (a seed budget's
looks: harness.sequential), controls.csv (harness.controls: the study's positive and negative controls, empty
without) and notes.json (the sentences the report prints about the
study as a whole, and the variant at the study's own recipe). Every number the report shows is
computed here. A failed or diverged run is a row like any other: the statistics count it and the
report lists it. No torch here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from harness import claims, controls, sequential, stability, stats
from harness.collapse import DetectConfig
from harness.contracts import (AGGREGATE_TABLES, BASE_VARIANT, EVENT_COLUMNS, ID_COLUMNS, LOOK_COLUMNS, METRIC_COLUMNS,
                               PIPELINE_KEY, QUANTIZATION_COLUMNS, QUANTIZATION_SUMMARY_COLUMNS, RUN_STATUSES,
                               SWEEP_PREFIX)
from harness.files import write_atomic

# per-architecture shape facts that summary.csv carries beside the statistics
SHAPE_COLUMNS = ["n_params", "reference", "reference_params", "deviation", "knob", "knob_value"]


def _csv(df: pd.DataFrame) -> str:
    return df.to_csv(index=False, lineterminator="\n")


def read_table(path: Path, required: list[str], what: str) -> pd.DataFrame:
    """Read a CSV, failing with its path when it is missing, unreadable or lacks a required column."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing ({what}); rerun the stage that writes it")
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a readable CSV ({e}); delete it and rerun the stage that writes it") from e
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing columns {missing} (has {list(df.columns)})")
    return df


def _read_run_json(path: Path, study_name: str, archs: set[str]) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (written by the train stage); rerun the run")
    try:
        run = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e}); delete the run folder and rerun it") from e
    missing = [k for k in ("arch", "seed", "study", "status") if k not in run]
    if missing:
        raise ValueError(f"{path}: missing keys {missing}")
    if run["status"] not in RUN_STATUSES:
        raise ValueError(f"{path}: status {run['status']!r} is not one of {RUN_STATUSES}")
    if run["study"] != study_name:
        raise ValueError(f"{path}: belongs to study {run['study']!r}, not {study_name!r}")
    if archs and run["arch"] not in archs:
        raise ValueError(f"{path}: arch {run['arch']!r} is not one of the study's {sorted(archs)}")
    run.setdefault("variant", BASE_VARIANT)  # a run.json written before variants
    return run


def _run_row(run: dict[str, Any], variants: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Flatten run.json into one row; a failed run may lack everything after its identity. The run's
    variant's sweep values become sweep_<key> columns."""
    shape = run.get("shape") or {}
    data = run.get("data") or {}
    if run["variant"] not in variants:
        raise ValueError(f"run {run['arch']} seed {run['seed']}: variant {run['variant']!r} is not one of the "
                         f"study's {sorted(variants)}")
    row = {
        "study": run["study"], "arch": run["arch"], "variant": run["variant"], "seed": int(run["seed"]),
        **{f"{SWEEP_PREFIX}{k}": v for k, v in variants[run["variant"]].items()}, "status": run["status"],
        "reason": run.get("reason") or ("" if run["status"] == "completed" else "(no reason recorded in run.json)"),
        "build": run.get("build"), "recipe_name": run.get("recipe_name") or "common", "n_params": run.get("n_params"),
        "reference": shape.get("reference"), "reference_params": shape.get("reference_params"),
        "deviation": shape.get("deviation"), "shape_mode": shape.get("mode"),
        "knob": shape.get("knob"), "knob_value": shape.get("knob_value"),
        "reconstruction": run.get("reconstruction"),
        "hparams": json.dumps(run["hparams"], sort_keys=True) if run.get("hparams") is not None else None,
        "config_hash": run.get("config_hash"), "device": run.get("device"), "dtype": run.get("dtype"),
        "threads": run.get("threads"), "wall_time_s": run.get("wall_time_s"), "steps_done": run.get("steps_done"),
        "data_name": data.get("name"), "data_sha256": data.get("sha256"), "data_tokens": data.get("tokens"),
        "vocab_size": data.get("vocab_size"),
        **_admission_columns(run.get("admission")),
    }
    for name, version in sorted((run.get("versions") or {}).items()):
        row[f"version_{name}"] = version
    # a pipeline's own numbers (flat values only), whatever the pipeline
    for name, value in sorted((run.get(PIPELINE_KEY) or {}).items()):
        if isinstance(value, (int, float, str)):
            row[f"{PIPELINE_KEY}_{name}"] = value
    return row


def _admission_columns(admission: dict[str, Any] | None) -> dict[str, Any]:
    """run.json's admission verdict (harness.admission.summary) as runs.csv columns: ``admission`` is
    'passed', 'passed with warnings' or empty (a run trained outside the workflow's admission check),
    ``admission_warnings`` the warnings, ``admission_tolerances`` the tolerances as JSON, and
    ``admission_checked`` the cache key of the check."""
    if not admission:
        return {"admission": None, "admission_warnings": None, "admission_tolerances": None, "admission_checked": None}
    verdict = "passed" if admission.get("passed") else "failed"
    if admission.get("passed") and admission.get("warnings"):
        verdict = "passed with warnings"
    return {"admission": verdict, "admission_warnings": "; ".join(admission.get("warnings") or []) or None,
            "admission_tolerances": json.dumps(admission.get("tolerances") or {}, sort_keys=True),
            "admission_checked": admission.get("checked")}


def _with_identity(df: pd.DataFrame, run: dict[str, Any], path: Path) -> pd.DataFrame:
    """Prepend study, arch, seed (from run.json); a file that names another run is an error."""
    identity = {"study": run["study"], "arch": run["arch"], "variant": run["variant"], "seed": int(run["seed"])}
    for key, value in identity.items():
        if key in df.columns and len(df) and not (df[key].astype(str) == str(value)).all():
            raise ValueError(f"{path}: column {key!r} does not match run.json ({value!r})")
    rest = df.drop(columns=[c for c in identity if c in df.columns])
    return pd.concat([pd.DataFrame(identity, index=rest.index), rest], axis=1)


def read_run(run_dir: Path, study_name: str, archs: set[str],
             variants: dict[str, dict[str, Any]]) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    """One run folder -> (run row, metrics with identity, events with identity)."""
    run = _read_run_json(run_dir / "run.json", study_name, archs)
    metrics_path = run_dir / "metrics.csv"
    metrics = read_table(metrics_path, METRIC_COLUMNS[:4], "written by the train stage")
    if len(metrics) and not pd.api.types.is_numeric_dtype(metrics["value"]):
        raise ValueError(f"{metrics_path}: column 'value' is not numeric")
    if len(metrics) and not pd.api.types.is_integer_dtype(metrics["step"]):
        raise ValueError(f"{metrics_path}: column 'step' is not integer")
    metrics = metrics.astype({"step": "int64", "value": "float64"})  # a crash may log no row at all
    events_path = run_dir / "events.csv"
    events = read_table(events_path, EVENT_COLUMNS[:-1], "written by the detect stage")
    return (_run_row(run, variants), _with_identity(metrics, run, metrics_path),
            _with_identity(events, run, events_path))


def read_quantization(run_dir: Path, run: dict[str, Any]) -> pd.DataFrame:
    """One run's quantization.csv (written by the quantize stage), with its identity checked."""
    path = run_dir / "quantization.csv"
    table = read_table(path, QUANTIZATION_COLUMNS, "written by the quantize stage")
    return _with_identity(table, run, path)


def quantization_tables(tables: list[pd.DataFrame]) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """Every run's rows (``final``: the trained model, not a snapshot), the summary per (arch, step, bits)
    over the seeds, and a sentence naming the runs that were not quantized (and why)."""
    nonempty = [t for t in tables if len(t)]
    rows = (pd.concat(nonempty, ignore_index=True) if nonempty
            else pd.DataFrame(columns=QUANTIZATION_COLUMNS)).astype({"note": "str"})
    rows["note"] = rows["note"].replace("nan", "")
    measured = rows.dropna(subset=["bits"]).astype({"step": "int64", "bits": "int64", "loss": "float64",
                                                    "loss_increase": "float64", "bpt_increase": "float64"})
    measured.insert(len(ID_COLUMNS) + 1, "final",
                    measured["step"] == measured.groupby(["arch", "variant", "seed"])["step"].transform("max"))
    measured = measured.sort_values(["arch", "variant", "seed", "step", "bits"],
                                    ascending=[True, True, True, True, False], ignore_index=True)
    skipped = rows[rows["bits"].isna()].sort_values(["arch", "variant", "seed"])
    by_reason: dict[str, list[str]] = {}
    for r in skipped.itertuples(index=False):
        by_reason.setdefault(r.note.removeprefix("not quantized: ") or "no reason given", []).append(
            f"{r.arch}{'' if r.variant == BASE_VARIANT else ' ' + r.variant} seed {int(r.seed)}")
    note = "; ".join(f"{', '.join(runs)}: {reason}" for reason, runs in by_reason.items())
    note = f"Not quantized: {note}." if note else ""

    grouped = measured.groupby(["arch", "variant", "step", "bits"])
    summary = grouped.agg(final=("final", "all"), n=("seed", "nunique"), loss_median=("loss", "median"),
                          loss_increase_median=("loss_increase", "median"),
                          loss_increase_min=("loss_increase", "min"), loss_increase_max=("loss_increase", "max"),
                          bpt_increase_median=("bpt_increase", "median"), bpt_increase_min=("bpt_increase", "min"),
                          bpt_increase_max=("bpt_increase", "max")).reset_index()
    summary = summary.sort_values(["arch", "variant", "step", "bits"], ascending=[True, True, True, False],
                                  ignore_index=True)
    at = len(ID_COLUMNS) + 1
    return measured[QUANTIZATION_COLUMNS[:at] + ["final"] + QUANTIZATION_COLUMNS[at:]], \
        summary[QUANTIZATION_SUMMARY_COLUMNS], note


def _per_arch_shape(runs: pd.DataFrame) -> pd.DataFrame:
    """The shape facts of each (architecture, variant), from its first run that recorded them (seeds
    share them; a stabiliser switch adds its own parameters)."""
    known = runs.dropna(subset=["n_params"]).sort_values(["arch", "variant", "seed"])
    return known.groupby(["arch", "variant"], as_index=False)[SHAPE_COLUMNS].first()


def _with_shape_flags(pairs: pd.DataFrame, summary: pd.DataFrame, study: dict) -> pd.DataFrame:
    """Mark what a pair's verdict cannot say: ``decidable`` False when the seed counts cannot reach
    significance after the correction over every pair; ``unmatched`` names each architecture of the pair
    whose parameter count lies outside the study's tolerance of the budget (a pipeline, say)."""
    tolerance = (study.get("shape") or {}).get("tolerance", 0.01)
    deviation = (summary.set_index(["variant", "arch"])["deviation"] if "deviation" in summary
                 else pd.Series(dtype=float))
    off = {key: d for key, d in deviation.items() if pd.notna(d) and abs(d) > tolerance}

    def unmatched(variant: str, a: str, b: str) -> str:
        return "; ".join(f"{x} {100 * off[variant, x]:+.1f}% of the budget" for x in (a, b) if (variant, x) in off)

    pairs = pairs.copy()
    per_variant = pairs.groupby("variant")["variant"].transform("size")
    pairs["decidable"] = pairs["min_possible_p"] * per_variant <= stats.ALPHA
    pairs["unmatched"] = [unmatched(*key) for key in zip(pairs["variant"], pairs["arch_a"], pairs["arch_b"])]
    return pairs


def read_study(run_dirs: list[Path], study: dict) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame,
                                                          list[pd.DataFrame]]:
    """(runs with their scores, trajectories, events, scores, per-run quantization tables) of a study's run
    folders: what every verdict is judged on (the aggregate, and each look of a seed budget)."""
    if not run_dirs:
        raise ValueError(f"study {study.get('name')!r}: no run folders to aggregate")
    if "name" not in study:
        raise ValueError("study: missing key 'name' (pass the resolved study)")
    quantized = bool((study.get("quantize") or {}).get("bits"))  # bits: [] turns the stage off
    variants = study.get("variants") or {BASE_VARIANT: {}}
    rows, trajectories, events, quantization = [], [], [], []
    for run_dir in sorted(Path(p) for p in run_dirs):
        row, metrics, run_events = read_run(run_dir, study["name"], set(study.get("archs", {})), variants)
        rows.append(row)
        trajectories.append(metrics)
        events.append(run_events)
        if quantized:
            quantization.append(read_quantization(run_dir, row))
    runs = pd.DataFrame(rows).sort_values(["arch", "variant", "seed"], ignore_index=True)
    duplicated = runs[runs.duplicated(["arch", "variant", "seed"], keep=False)]
    if len(duplicated):
        raise ValueError("two run folders hold the same run: "
                         f"{duplicated[['arch', 'variant', 'seed']].to_dict('records')}")
    # a crash's empty metrics.csv has object columns; keep strings as str so filtering stays fast
    trajectories = pd.concat(trajectories, ignore_index=True).astype(
        {"study": "str", "arch": "str", "variant": "str", "split": "str", "metric": "str"}).sort_values(
        ["arch", "variant", "seed", "split", "metric", "step"], ignore_index=True, kind="stable")
    nonempty = [e for e in events if len(e)]
    events = (pd.concat(nonempty, ignore_index=True) if nonempty else pd.DataFrame(columns=ID_COLUMNS + EVENT_COLUMNS))
    events = events.sort_values(["arch", "variant", "seed", "onset_step"], ignore_index=True, kind="stable")

    # a run with fewer evaluations than the detector's history cannot show a collapse: not measurable
    min_evals = DetectConfig.from_dict(study.get("detect") or {}).min_history
    scores = stats.run_scores(trajectories, events, runs, target_ppl=study.get("target_ppl"), min_evals=min_evals)
    score_columns = [c for c in scores.columns if c not in runs.columns or c in ID_COLUMNS]
    runs = runs.merge(scores[score_columns], on=ID_COLUMNS, how="left", validate="one_to_one")
    return runs, trajectories, events, scores, quantization


def aggregate(run_dirs: list[Path], out_dir: Path, study: dict) -> None:
    """Read every run folder of ``study`` and write the study's tables to ``out_dir``. With a seed budget
    the claims and sensitivity pairs are those of the look that decided each (harness.sequential.replay)."""
    runs, trajectories, events, scores, quantization = read_study(run_dirs, study)
    quantized = bool((study.get("quantize") or {}).get("bits"))
    summary = stats.summarize(scores, n_boot=2000, seed=0).merge(_per_arch_shape(runs), on=["arch", "variant"],
                                                                 how="left")
    pairs = _with_shape_flags(stats.compare(scores, seed=0), summary, study)
    quantization, quantization_summary, quantization_note = quantization_tables(quantization)
    if study.get("seed_budget"):
        looks, verdicts, stability_tables = sequential.replay(study, runs, trajectories, events,
                                                              quantization if quantized else None)
    else:
        stability_tables = stability.tables(study, runs, trajectories, events)
        verdicts = claims.evaluate(study, runs, events, quantization if quantized else None, stability_tables)
        looks = pd.DataFrame(columns=LOOK_COLUMNS)
    control_table, control_notes = controls.evaluate(study, runs, trajectories, events,
                                                     quantization if quantized else None, pairs, verdicts,
                                                     stability_tables)
    headlines, publication = claims.headlines(study, runs, events)
    notes = {"seed_caveat": stats.seed_caveat(summary, pairs), "publication": publication,
             "final_window": stats.final_window_caveat(int(study["recipe"]["steps"]), int(study["recipe"]["eval_every"])),
             "quantization": quantization_note,
             # the variant at the study's own recipe: what a figure of one variant (quantization, trajectories) shows
             "recipe_variant": claims.recipe_variant(study)}
    if control_notes:  # the report's opening lines about the study's controls (harness.controls)
        notes["controls"] = control_notes

    out_dir = Path(out_dir)
    write_atomic(out_dir / "study.json", json.dumps(study, indent=2) + "\n")
    tables = {"runs": runs, "trajectories": trajectories, "events": events, "summary": summary, "pairs": pairs,
              "claims": verdicts, "headlines": headlines, "quantization": quantization,
              "quantization_summary": quantization_summary, **stability_tables, "looks": looks,
              "controls": control_table}
    for name in AGGREGATE_TABLES:
        write_atomic(out_dir / f"{name}.csv", _csv(tables[name]))
    write_atomic(out_dir / "notes.json", json.dumps(notes, indent=2, sort_keys=True) + "\n")

