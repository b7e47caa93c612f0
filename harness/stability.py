"""Stability tables of a study: learning-rate curves and sensitivity, precursor attribution, ablations.

From the tidy tables harness.aggregate builds (runs, trajectories, events) this module derives the
tables whose columns harness.contracts defines (LR_CURVE_COLUMNS, SENSITIVITY_COLUMNS,
SENSITIVITY_PAIR_COLUMNS, ATTRIBUTION_COLUMNS, ATTRIBUTION_SUMMARY_COLUMNS, ABLATION_COLUMNS); ``tables``
builds them all. Conventions:

- A run is *unstable* when it diverged (status) or had a collapse or divergence event (the statistics'
  COLLAPSE_TYPES); failed runs (a crash of the harness, not of the model) are left out of every count.
- Final loss: the last finite validation loss; a run that diverged (status, or a validation curve that
  ends non-finite) counts as its initial loss (step 0), the Wortsman et al. 2023 convention.
- Learning-rate sensitivity (Wortsman et al. 2023, arXiv 2309.14322), per seed over the lr grid:
  mean_lr min(final, initial) - min_lr final, in nats; averaged over the seeds that have a run at
  every lr, with a Student t 95% interval over those seeds (a percentile bootstrap undercovers at
  the few seeds a study has, harness.stats). Architectures are compared by the exact Mann-Whitney
  test of harness.stats on the per-seed values, Holm-corrected over the table.
- Attribution (what set each collapsing run apart from stable runs of the same schedule before its
  collapse) is harness.attribution's; ``tables`` calls it.
No torch here.
"""

from __future__ import annotations

import math
import numbers
from itertools import combinations

import numpy as np
import pandas as pd
from scipy.stats import fisher_exact
from scipy.stats import t as student_t

from harness import attribution as precursors
from harness.collapse import DetectConfig
from harness.contracts import (ABLATION_COLUMNS, ATTRIBUTION_COLUMNS, ATTRIBUTION_SUMMARY_COLUMNS, BASE_VARIANT,
                               ID_COLUMNS, LR_CURVE_COLUMNS, SENSITIVITY_COLUMNS, SENSITIVITY_PAIR_COLUMNS,
                               SWEEP_PREFIX)
from harness.logs import is_loss
from harness.stats import ALPHA, COLLAPSE_TYPES, _holm, mann_whitney, min_possible_p, seeds_needed
from harness.text import num
from harness.variants import STABILISERS, value_text, variant_name

INTERVAL_LABEL = "t 95% over seeds"
"""The sensitivity interval: mean over seeds +- t(n - 1) * SD / sqrt(n) (NaN with fewer than 2 seeds)."""
LOSS_DIGITS = 3


# ----------------------------------------------------------------------------------------- names

def _where(arch: str, setting: str) -> str:
    return arch if setting == BASE_VARIANT else f"{arch} {setting}"


def _sweep(study: dict) -> dict:
    return dict((study or {}).get("sweep") or {})


def _keys(study: dict, runs: pd.DataFrame, exclude: tuple[str, ...] = ()) -> list[str]:
    """Sweep keys (the sweep's order) that runs has a column for, less ``exclude``."""
    return [k for k in _sweep(study) if k not in exclude and SWEEP_PREFIX + k in runs.columns]


def _settings(runs: pd.DataFrame, keys: list[str]) -> pd.Series:
    """The variant name of each run over ``keys`` only."""
    return pd.Series([variant_name({k: r[SWEEP_PREFIX + k] for k in keys}) for _, r in runs.iterrows()],
                     index=runs.index, dtype=object)


def _ids(df: pd.DataFrame) -> pd.Series:
    return pd.Series(list(zip(*(df[c] for c in ID_COLUMNS))), index=df.index, dtype=object)


def _unstable(runs: pd.DataFrame, events: pd.DataFrame) -> pd.Series:
    """Diverged, or a collapse or divergence event (COLLAPSE_TYPES), per run of ``runs``."""
    hit = set(_ids(events[events["type"].isin(COLLAPSE_TYPES)])) if len(events) else set()
    return (runs["status"] == "diverged") | _ids(runs).isin(hit)


# ---------------------------------------------------------------------------- lr curves, sensitivity

OUTCOME_COLUMNS = ID_COLUMNS + ["setting", "lr", "unstable", "diverged", "initial_loss", "final_loss"]


def run_outcomes(study: dict, runs: pd.DataFrame, trajectories: pd.DataFrame, events: pd.DataFrame) -> pd.DataFrame:
    """One row per trained (not failed) run of an lr sweep (OUTCOME_COLUMNS): its setting (the variant
    without lr), lr, unstable, diverged (status diverged or a validation curve ending non-finite), initial
    loss (validation loss at step 0; a run without one takes its architecture's median, and an architecture
    that never evaluates at step 0, a pipeline, ln(vocabulary): the loss of a uniform guess) and final loss
    (the last finite validation loss; a diverged run's initial loss). Empty without an lr sweep of at
    least two values."""
    if len(_sweep(study).get("lr") or []) < 2 or SWEEP_PREFIX + "lr" not in runs.columns or runs.empty:
        return pd.DataFrame(columns=OUTCOME_COLUMNS)
    runs = runs[runs["status"] != "failed"]
    val = trajectories[(trajectories["split"].astype(str) == "val") & is_loss(trajectories["metric"])]
    val = val.assign(value=val["value"].astype(float)).sort_values("step", kind="stable")
    curves = {key: g for key, g in val.groupby(ID_COLUMNS, sort=False)}
    rows = []
    for run, unstable in zip(runs.itertuples(index=False), _unstable(runs, events)):
        curve = curves.get(tuple(getattr(run, c) for c in ID_COLUMNS), val.iloc[:0])
        steps, losses = curve["step"].to_numpy(), curve["value"].to_numpy(dtype=float)
        at0 = losses[steps == 0]
        initial = float(at0[np.isfinite(at0)][-1]) if np.isfinite(at0).any() else math.nan
        finite = losses[np.isfinite(losses)]
        diverged = run.status == "diverged" or (len(losses) > 0 and not np.isfinite(losses[-1]))
        rows.append({**{c: getattr(run, c) for c in ID_COLUMNS}, "lr": float(getattr(run, SWEEP_PREFIX + "lr")),
                     "unstable": bool(unstable), "diverged": bool(diverged), "initial_loss": initial,
                     "final_loss": float(finite[-1]) if len(finite) else math.nan})
    out = pd.DataFrame(rows, columns=[c for c in OUTCOME_COLUMNS if c != "setting"])
    out.insert(len(ID_COLUMNS), "setting", _settings(runs, _keys(study, runs, ("lr",))).to_numpy())
    fallback = out.groupby("arch")["initial_loss"].transform("median")
    out["initial_loss"] = out["initial_loss"].fillna(fallback)
    if "vocab_size" in runs.columns:
        uniform = pd.Series(np.log(runs["vocab_size"].to_numpy(dtype=float)), index=out.index)
        out["initial_loss"] = out["initial_loss"].fillna(uniform)
    out.loc[out["diverged"], "final_loss"] = out.loc[out["diverged"], "initial_loss"]
    return out


def lr_curves(outcomes: pd.DataFrame) -> pd.DataFrame:
    """LR_CURVE_COLUMNS: per (arch, setting, lr) over the seeds of ``run_outcomes``."""
    rows = []
    for (arch, setting, lr), g in outcomes.groupby(["arch", "setting", "lr"], sort=True):
        final = g["final_loss"].dropna()
        n, k = len(g), int(g["unstable"].sum())
        rows.append({"arch": arch, "setting": setting, "lr": lr, "n": n, "n_unstable": k, "unstable_rate": k / n,
                     "initial_loss": float(g["initial_loss"].median()),
                     "final_loss_median": float(final.median()) if len(final) else math.nan,
                     "final_loss_min": float(final.min()) if len(final) else math.nan,
                     "final_loss_max": float(final.max()) if len(final) else math.nan,
                     "n_diverged": int(g["diverged"].sum())})
    return pd.DataFrame(rows, columns=LR_CURVE_COLUMNS)


def seed_sensitivities(outcomes: pd.DataFrame) -> pd.DataFrame:
    """Per (arch, setting, seed) with a finite final loss at every lr of its (arch, setting) grid: the
    Wortsman et al. sensitivity mean_lr min(final, initial) - min_lr final (columns arch, setting, seed,
    sensitivity, n_lrs). Seeds missing an lr are left out (the sentence of ``sensitivity`` says so)."""
    rows = []
    for (arch, setting), g in outcomes.groupby(["arch", "setting"], sort=True):
        grid = sorted(g["lr"].unique())
        for seed, s in g.groupby("seed", sort=True):
            s = s.dropna(subset=["final_loss", "initial_loss"]).drop_duplicates("lr")
            if sorted(s["lr"]) != grid:
                continue
            final, initial = s["final_loss"].to_numpy(float), s["initial_loss"].to_numpy(float)
            rows.append({"arch": arch, "setting": setting, "seed": seed, "n_lrs": len(grid),
                         "sensitivity": float(np.mean(np.minimum(final, initial)) - np.min(final))})
    return pd.DataFrame(rows, columns=["arch", "setting", "seed", "n_lrs", "sensitivity"])


def mean_interval(x: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Student t interval of the mean over seeds (NaN below 2 seeds)."""
    x = np.asarray(x, dtype=float)
    if len(x) < 2:
        return math.nan, math.nan
    half = float(student_t.ppf(0.5 + level / 2, len(x) - 1)) * float(np.std(x, ddof=1)) / math.sqrt(len(x))
    return float(np.mean(x)) - half, float(np.mean(x)) + half


def _stable_lr(curve: pd.DataFrame) -> tuple[float, int, int]:
    """(largest lr up to which every lr has a majority of stable runs, its stable k, its n); NaN lr and the
    smallest lr's counts when the smallest lr already fails."""
    found = (math.nan, int(curve["n"].iloc[0] - curve["n_unstable"].iloc[0]), int(curve["n"].iloc[0]))
    for r in curve.sort_values("lr").itertuples(index=False):
        k = int(r.n - r.n_unstable)
        if not k > r.n / 2:
            break
        found = (float(r.lr), k, int(r.n))
    return found


def sensitivity(outcomes: pd.DataFrame) -> pd.DataFrame:
    """SENSITIVITY_COLUMNS: per (arch, setting) the mean over seeds of ``seed_sensitivities`` with its t 95%
    interval, best_final_loss (the lowest per-lr median final loss of the grid), the stable lr with its k
    of n, and a sentence."""
    curves, per_seed = lr_curves(outcomes), seed_sensitivities(outcomes)
    rows = []
    for (arch, setting), curve in curves.groupby(["arch", "setting"], sort=True):
        x = per_seed.loc[(per_seed["arch"] == arch) & (per_seed["setting"] == setting), "sensitivity"].to_numpy()
        seeds = outcomes.loc[(outcomes["arch"] == arch) & (outcomes["setting"] == setting), "seed"].nunique()
        mean = float(np.mean(x)) if len(x) else math.nan
        lo, hi = mean_interval(x)
        best = curve.loc[curve["final_loss_median"].idxmin()] if curve["final_loss_median"].notna().any() else None
        stable_lr, k, n = _stable_lr(curve)
        lrs = sorted(curve["lr"])
        text = f"{_where(arch, setting)}: "
        if len(x):
            seeds_text = f"{len(x)} seed{'s' * (len(x) != 1)}"
            text += f"learning-rate sensitivity {num(mean, LOSS_DIGITS)} nats (mean over {seeds_text} " \
                    f"and {len(lrs)} learning rates, "
            text += (f"95% t interval {num(lo, LOSS_DIGITS)} to {num(hi, LOSS_DIGITS)})" if len(x) > 1
                     else "no interval from one seed)")
        else:
            text += "no learning-rate sensitivity (no seed has a final loss at every learning rate)"
        if 0 < len(x) < seeds:
            gone = seeds - len(x)
            text += f"; {gone} seed{'s' * (gone != 1)} without a final loss at every learning rate of the grid left out"
        if best is not None:
            text += f"; best final loss {num(best['final_loss_median'], LOSS_DIGITS)} at lr={value_text(best['lr'])}"
        if math.isnan(stable_lr):
            text += (f"; no learning rate of the grid is stable in a majority of runs "
                     f"(lr={value_text(lrs[0])}: {k} of {n} stable).")
        elif stable_lr == lrs[-1]:
            text += (f"; stable at every learning rate of the grid, up to lr={value_text(stable_lr)} "
                     f"({k} of {n} runs stable there).")
        else:
            text += f"; stable up to lr={value_text(stable_lr)} ({k} of {n} runs stable there)."
        rows.append({"arch": arch, "setting": setting, "n_seeds": len(x), "n_lrs": len(lrs), "sensitivity": mean,
                     "lo": lo, "hi": hi,
                     "best_final_loss": float(best["final_loss_median"]) if best is not None else math.nan,
                     "stable_lr": stable_lr, "stable_k": k, "stable_n": n, "sentence": text})
    return pd.DataFrame(rows, columns=SENSITIVITY_COLUMNS)


def sensitivity_pairs(outcomes: pd.DataFrame) -> pd.DataFrame:
    """SENSITIVITY_PAIR_COLUMNS: every pair of architectures within a setting, their per-seed sensitivities
    compared (difference of means a - b; harness.stats.mann_whitney: exact two-sided p without ties, the
    exact permutation distribution with them); Holm over every pair of the table; NaN p below 2 seeds."""
    per_seed = seed_sensitivities(outcomes)
    rows = []
    for setting, g in per_seed.groupby("setting", sort=True):
        values = {arch: s["sensitivity"].to_numpy(float) for arch, s in g.groupby("arch", sort=True)}
        for a, b in combinations(sorted(values), 2):
            xa, xb = values[a], values[b]
            p = mann_whitney(xa, xb)[1] if len(xa) >= 2 and len(xb) >= 2 else math.nan
            rows.append({"setting": setting, "arch_a": a, "arch_b": b, "n_a": len(xa), "n_b": len(xb),
                         "difference": float(np.mean(xa) - np.mean(xb)), "p": p, "p_holm": math.nan, "sentence": ""})
    table = pd.DataFrame(rows, columns=SENSITIVITY_PAIR_COLUMNS)
    if table.empty:
        return table
    table["p_holm"] = _holm(table["p"])
    m = len(table)
    table["sentence"] = [_pair_sentence(r, m) for r in table.itertuples(index=False)]
    return table


def _pair_sentence(r, n_pairs: int) -> str:
    where = "" if r.setting == BASE_VARIANT else f"{r.setting}: "
    seeds = f"{r.n_a} seeds" if r.n_a == r.n_b else f"{r.n_a} and {r.n_b} seeds"
    if math.isnan(r.p_holm):
        return (f"{where}{r.arch_a} vs {r.arch_b}: cannot compare learning-rate sensitivity with {seeds}; "
                f"run at least {seeds_needed(n_pairs)} seeds of each.")
    if r.p_holm <= ALPHA:
        low, high = (r.arch_a, r.arch_b) if r.difference < 0 else (r.arch_b, r.arch_a)
        return (f"{where}{low} is less sensitive to the learning rate than {high} "
                f"(by {num(abs(r.difference), LOSS_DIGITS)} "
                f"nats; exact Mann-Whitney p = {r.p:.2g}, Holm-corrected {r.p_holm:.2g}, {seeds}).")
    floor = min_possible_p(r.n_a, r.n_b)
    text = (f"{where}{r.arch_a} vs {r.arch_b}: no significant difference in learning-rate sensitivity "
            f"(a - b = {num(r.difference, LOSS_DIGITS)} nats; exact Mann-Whitney p = {r.p:.2g}, "
            f"Holm-corrected {r.p_holm:.2g}, {seeds})")
    if floor * n_pairs > ALPHA:
        text += (f"; the smallest p {seeds} allow is {floor:.2g}, so across {n_pairs} comparisons a difference "
                 f"needs at least {seeds_needed(n_pairs)} seeds of each")
    return text + "."


# ------------------------------------------------------------------------------------------- ablations

def _is_off(v) -> bool:
    return value_text(v) in ("off", "0")


def ablations(study: dict, runs: pd.DataFrame, events: pd.DataFrame) -> pd.DataFrame:
    """ABLATION_COLUMNS: for each switch of STABILISERS in the sweep with an off value (False / 0) and on values,
    per (arch, setting = the other sweep values, lr included, BASE_VARIANT if none) and per on value: unstable
    runs k of n off vs on, two-sided Fisher exact p (NaN when a side has no run). ``switch`` names the on value
    as a variant does (qk_norm=on, z_loss=0.0001), so several strengths of one switch stay apart."""
    sweep, rows = _sweep(study), []
    trained = runs[runs["status"] != "failed"] if len(runs) else runs
    for key in STABILISERS:
        column = SWEEP_PREFIX + key
        values = sweep.get(key) or []
        offs = {value_text(v) for v in values if _is_off(v)}
        ons = list(dict.fromkeys(value_text(v) for v in values if not _is_off(v)))
        if not offs or not ons or column not in trained.columns or trained.empty:
            continue
        df = trained.assign(_unstable=_unstable(trained, events).to_numpy(),
                            _setting=_settings(trained, _keys(study, trained, (key,))).to_numpy(),
                            _value=[value_text(v) for v in trained[column]])
        for (arch, setting), g in df.groupby(["arch", "_setting"], sort=True):
            off = g[g["_value"].isin(offs)]
            off_k, off_n = int(off["_unstable"].sum()), len(off)
            for on_value in ons:
                on = g[g["_value"] == on_value]
                on_k, on_n = int(on["_unstable"].sum()), len(on)
                if not off_n and not on_n:
                    continue
                p = float(fisher_exact([[off_k, off_n - off_k], [on_k, on_n - on_k]]).pvalue) \
                    if off_n and on_n else math.nan
                switch, off_name = variant_name({key: on_value}), variant_name({key: sorted(offs)[0]})
                text = (f"{_where(arch, setting)}: {off_k} of {off_n} runs unstable with {off_name}, "
                        f"{on_k} of {on_n} with {switch}")
                if math.isnan(p):
                    text += " (no comparison: one side has no trained run)."
                elif p <= ALPHA:
                    text += f" (two-sided Fisher exact p = {p:.2g}: the switch changes the instability rate)."
                else:
                    text += f" (two-sided Fisher exact p = {p:.2g}: no significant difference at {ALPHA})."
                rows.append({"arch": arch, "switch": switch, "setting": setting, "off_k": off_k, "off_n": off_n,
                             "on_k": on_k, "on_n": on_n, "p": p, "sentence": text})
    return pd.DataFrame(rows, columns=ABLATION_COLUMNS)


# ------------------------------------------------------------------------------------------------ all

def tables(study: dict, runs: pd.DataFrame, trajectories: pd.DataFrame, events: pd.DataFrame,
           config: DetectConfig | None = None) -> dict[str, pd.DataFrame]:
    """Every stability table of a study, by its AGGREGATE_TABLES name, each with exactly its contract's
    columns (empty frames where the study has no lr sweep, no events or no switch)."""
    events = events if len(events) else pd.DataFrame(columns=ID_COLUMNS + ["type", "onset_step"])
    outcomes = run_outcomes(study, runs, trajectories, events)
    attributed = precursors.attribution(study, runs, trajectories, events, config) if len(runs) else \
        pd.DataFrame(columns=ATTRIBUTION_COLUMNS)
    return {
        "lr_curves": lr_curves(outcomes),
        "sensitivity": sensitivity(outcomes),
        "sensitivity_pairs": sensitivity_pairs(outcomes),
        "attribution": attributed,
        "attribution_summary": precursors.attribution_summary(study, attributed, runs, events) if len(runs) else
        pd.DataFrame(columns=ATTRIBUTION_SUMMARY_COLUMNS),
        "ablations": ablations(study, runs, events),
    }
