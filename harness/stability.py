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
from functools import lru_cache
from itertools import combinations

import numpy as np
import pandas as pd
from scipy.stats import binomtest, fisher_exact
from scipy.stats import t as student_t

from harness import attribution as precursors
from harness.collapse import DetectConfig
from harness.contracts import (ABLATION_COLUMNS, ATTRIBUTION_COLUMNS, ATTRIBUTION_SUMMARY_COLUMNS, BASE_VARIANT,
                               ID_COLUMNS, LR_CURVE_COLUMNS, SENSITIVITY_COLUMNS, SENSITIVITY_PAIR_COLUMNS,
                               SWEEP_PREFIX)
from harness.logs import is_loss
from harness.stats import ALPHA, COLLAPSE_TYPES, FALSE_ALARM_RATE, holm
from harness.text import num
from harness.variants import STABILISERS, value_text, variant_name

INTERVAL_LABEL = ("t 95% over seeds; measured coverage 0.94-0.95 with normal seed noise, but 0.52-0.92 when a "
                  "learning rate diverges in 10-30% of seeds")
"""The sensitivity interval: mean of the n - 1 per-seed values +- t(n - 2) * SD / sqrt(n - 1) (NaN with
fewer than 3 seeds: the first seed only chooses). Its coverage of the true sensitivity, measured at 3, 5, 8
and 12 seeds (3,000 studies each; tests/test_stability_verdicts.py repeats it): 0.94-0.95 with normal
noise; with the top lr diverging in 10% of seeds 0.52-0.87, in 30% 0.72-0.92 (a seed either diverged or
not: the per-seed values are a two-point mixture that a few seeds rarely show whole). No interval from
3-5 seeds covers such a mixture without being uselessly wide, so the label says it; verdicts never rest
on it (they use the test of sensitivity_pairs)."""
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


def _unstable(runs: pd.DataFrame, events: pd.DataFrame) -> pd.Series:
    """Diverged, or a collapse or divergence event (COLLAPSE_TYPES), per run of ``runs``."""
    hit = set(precursors.run_ids(events[events["type"].isin(COLLAPSE_TYPES)])) if len(events) else set()
    return (runs["status"] == "diverged") | precursors.run_ids(runs).isin(hit)


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


def _grid_matrix(g: pd.DataFrame, grid: list[float]) -> tuple[np.ndarray, np.ndarray, list]:
    """(seeds, L, left out) for one (arch, setting) over ``grid``: L[seed, lr] = min(final, initial) loss of
    the seeds with a trained run and a final loss at every lr of the grid; ``left out`` the other seeds."""
    g = g.dropna(subset=["final_loss", "initial_loss"]).drop_duplicates(["seed", "lr"])
    g = g[g["lr"].isin(grid)]
    clipped = np.minimum(g["final_loss"].to_numpy(float), g["initial_loss"].to_numpy(float))
    table = pd.DataFrame({"seed": g["seed"].to_numpy(), "lr": g["lr"].to_numpy(), "m": clipped}).pivot(
        index="seed", columns="lr", values="m").reindex(columns=grid)
    complete = table.notna().all(axis=1)
    return table.index[complete].to_numpy(), table[complete].to_numpy(float), list(table.index[~complete])


def prequential_sensitivity(losses: np.ndarray) -> np.ndarray:
    """Per-seed learning-rate sensitivity with each seed's optimum chosen on the seeds BEFORE it: for seed
    i >= 1 (in the order given), the mean over the grid of its min(final, initial) loss minus its loss at
    the lr where the median over seeds 0..i-1 is lowest. The first seed only helps choose, so n seeds give
    n - 1 values. ``losses``: (seeds, lrs); ``_earlier_seed_values`` computes it.

    Why not Wortsman et al.'s per-seed mean minus min: the min over lrs of one seed's noisy losses sits
    below its mean by about the run-to-run noise even when the lr response is flat, so quiet seeds look
    less sensitive (an audit: SD 0.01 vs 0.04 nats gave "less sensitive, p = 0.008" in 97.5% of 5-seed
    studies). Choosing seed i's lr on other seeds makes its noise independent of the choice: with a flat
    response the estimate is 0 in expectation whatever the noise. Why the seeds before it, not all the
    others (leave-one-out): then seed i's choice uses seed j's losses AND seed j's uses seed i's, both
    lean to where the pair is low, and the two values are positively correlated, more so among noisy
    seeds. A permutation test then sees more spread in an architecture of noisy seeds than in the mixed
    relabellings of its null, and erred in 6-7% of 8-seed studies with seed noise 0.01 vs 0.04; chosen
    on earlier seeds only, no two values share noise that way (E[value_i value_j] = 0 under a flat
    response) and the same test erred in 3.5%. The median, so one diverged seed does not move the
    choice of every later seed."""
    values = _earlier_seed_values(np.arange(len(losses)), np.asarray(losses, dtype=float))
    return values[~np.isnan(values)]


def _earlier_seed_values(seeds: np.ndarray, losses: np.ndarray) -> np.ndarray:
    """Per row of ``losses`` (seeds x lrs): its mean over the grid minus its loss at the lr where the median
    over the rows with a smaller seed number is lowest; NaN for a row with none."""
    values = np.full(len(seeds), np.nan)
    for i, seed in enumerate(seeds):
        earlier = losses[seeds < seed]
        if len(earlier):
            best = int(np.argmin(np.median(earlier, axis=0)))
            values[i] = losses[i].mean() - losses[i, best]
    return values


def pair_sensitivities(seeds_a, la: np.ndarray, seeds_b, lb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The per-seed sensitivities of two architectures for comparing them: each seed's mean loss over the
    common grid minus its loss at the lr where the median over BOTH architectures' seeds with a smaller
    seed number is lowest (seeds with none are left out). ``la``/``lb``: (seeds, lrs) in the order of
    ``seeds_a``/``seeds_b``.

    Why a choice common to the pair: an optimum chosen on an architecture's own noisy seeds lands off the
    true one more often the noisier they are, and the loss there is higher, so on a curved lr response
    noisy seeds look less sensitive (8-10% of 5-8-seed studies erred with seed noise 0.01 vs 0.04 nats,
    whichever of its own seeds chose). A lr chosen on both architectures' seeds misses alike for both.
    Why earlier seeds only: no two values then choose on each other (see ``prequential_sensitivity``), so
    they are independent draws for ``sensitivity_test``. What it measures: each architecture's mean loss
    over the grid above its loss at the lr best for the pair; where the two optima differ, that is not
    each one's own Wortsman sensitivity (the per-architecture table gives those)."""
    values = _earlier_seed_values(np.concatenate([np.asarray(seeds_a), np.asarray(seeds_b)]),
                                  np.concatenate([np.asarray(la, dtype=float), np.asarray(lb, dtype=float)]))
    va, vb = values[:len(la)], values[len(la):]
    return va[~np.isnan(va)], vb[~np.isnan(vb)]


PAIR_MIN_VALUES = 3
"""Sensitivities of each architecture a pair needs (4 seeds: the first only chooses). With 2 each, one
degree of freedom, a pair of seeds that both happen not to diverge has almost no spread, and a null where
30% of the runs at lr 1 diverge was decided in 9.75% of 3-seed studies (benchmarks/verdict_calibration.py)."""
SENSITIVITY_TEST = "Welch-Hsu t-test"
"""Welch's t referred to Student's t with min(n_a, n_b) - 1 degrees of freedom (Hsu 1938): ``sensitivity_test``."""


def sensitivity_test(sa: np.ndarray, sb: np.ndarray) -> tuple[float, float]:
    """(difference, two-sided p) of two sets of per-seed sensitivities (``pair_sensitivities``): the mean
    difference a - b, and Welch's t referred to Student's t with min(n_a, n_b) - 1 degrees of freedom
    (Hsu 1938), which keeps the size at or under the level for any ratio of the two architectures' seed
    noise (Welch's own df erred in 5.75% of 5-seed studies at SD 0.01 vs 0.04). NaN below PAIR_MIN_VALUES
    values each.
    Direction and p come from the one statistic."""
    sa, sb = np.asarray(sa, dtype=float), np.asarray(sb, dtype=float)
    if len(sa) < PAIR_MIN_VALUES or len(sb) < PAIR_MIN_VALUES:
        return math.nan, math.nan
    difference = float(sa.mean() - sb.mean())
    se = math.sqrt(sa.var(ddof=1) / len(sa) + sb.var(ddof=1) / len(sb))
    if se == 0:
        return difference, 1.0 if difference == 0 else 0.0
    df = min(len(sa), len(sb)) - 1
    return difference, float(2 * student_t.sf(abs(difference) / se, df))


def mean_interval(x: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Student t interval of the mean over seeds (NaN below 2 seeds)."""
    x = np.asarray(x, dtype=float)
    if len(x) < 2:
        return math.nan, math.nan
    half = float(student_t.ppf(0.5 + level / 2, len(x) - 1)) * float(np.std(x, ddof=1)) / math.sqrt(len(x))
    return float(np.mean(x)) - half, float(np.mean(x)) + half


def lr_status(n: int, n_unstable: int, n_lrs: int) -> str:
    """One lr of a grid: "stable" (a majority of its runs stable), "unstable" (a majority unstable, and more
    than the detector's false alarms explain: one-sided binomial test against FALSE_ALARM_RATE at ALPHA
    over the grid's lrs), "unmeasured" (no trained run) or "undecided" (neither, e.g. 1 of 2 unstable: a
    single false alarm must not cut a stable range short)."""
    if n == 0:
        return "unmeasured"
    if n - n_unstable > n / 2:
        return "stable"
    beyond = binomtest(n_unstable, n, FALSE_ALARM_RATE, alternative="greater").pvalue <= ALPHA / max(n_lrs, 1)
    return "unstable" if n_unstable > n / 2 and beyond else "undecided"


def _lr_text(row) -> str:
    lr = f"lr={value_text(row.lr)}"
    if row.status == "unmeasured":
        return f"{lr} not measured (no trained run)"
    if row.status == "undecided":
        return (f"{lr} undecided ({int(row.n_unstable)} of {int(row.n)} runs unstable: too few to tell from the "
                "detector's false alarms)")
    return f"{lr}: {int(row.n_unstable)} of {int(row.n)} runs unstable"


def stable_range(curve: pd.DataFrame, grid: list[float]) -> tuple[float, int, int, str]:
    """(stable lr, its stable k, its n, a sentence) of one (arch, setting) over the study's lr ``grid``.
    The stable lr is the largest lr such that it is stable and no lr up to it is unstable or unmeasured
    (``lr_status``); NaN when the smallest lr is not stable (then the smallest lr's counts). The sentence
    names what ends the range and any lr inside it that is undecided, and where else a majority is stable."""
    counts = curve.set_index("lr")[["n", "n_unstable"]].reindex(grid).fillna(0).astype(int).reset_index()
    counts["status"] = [lr_status(r.n, r.n_unstable, len(grid)) for r in counts.itertuples(index=False)]
    rows = list(counts.itertuples(index=False))
    found = None
    for i, r in enumerate(rows):
        if r.status in ("unstable", "unmeasured"):
            break
        if r.status == "stable":
            found = i
    if found is None:
        first = rows[0]
        text = f"no stable range from the smallest learning rate ({_lr_text(first)})"
        others = [value_text(r.lr) for r in rows if r.status == "stable"]
        if others:
            text += f"; a majority of runs stable at lr={', '.join(others)}"
        return math.nan, int(first.n - first.n_unstable), int(first.n), text
    best = rows[found]
    stable_k, n = int(best.n - best.n_unstable), int(best.n)
    if found == len(rows) - 1:
        text = f"stable at every learning rate of the grid, up to lr={value_text(best.lr)} ({stable_k} of {n} runs stable there)"
    else:
        text = f"stable up to lr={value_text(best.lr)} ({stable_k} of {n} runs stable there)"
    inside = [_lr_text(r) for r in rows[:found] if r.status == "undecided"]
    if inside:
        text += "; below it " + ", ".join(inside)
    beyond = rows[found + 1:]
    if beyond:
        text += "; " + "; ".join(_lr_text(r) if r.status != "stable" else f"lr={value_text(r.lr)} stable"
                                 for r in beyond)
    return float(best.lr), stable_k, n, text


def _grid(study: dict, outcomes: pd.DataFrame) -> list[float]:
    """The study's lr grid (its sweep), or the lrs the outcomes have."""
    lrs = _sweep(study).get("lr") or sorted(outcomes["lr"].unique())
    return sorted(float(v) for v in lrs)


def sensitivity(outcomes: pd.DataFrame, grid: list[float] | None = None) -> pd.DataFrame:
    """SENSITIVITY_COLUMNS: per (arch, setting) the mean of ``prequential_sensitivity`` over the seeds with a
    final loss at every lr it has trained runs at (n_seeds; the first of them only chooses), with its t 95% interval (coverage: INTERVAL_LABEL), best_final_loss (the lowest
    per-lr median final loss), the stable lr of ``stable_range`` over the study's ``grid`` with its k of n,
    and a sentence."""
    curves = lr_curves(outcomes)
    grid = grid if grid is not None else sorted(outcomes["lr"].unique())
    rows = []
    for (arch, setting), curve in curves.groupby(["arch", "setting"], sort=True):
        own = outcomes[(outcomes["arch"] == arch) & (outcomes["setting"] == setting)]
        complete, losses, _ = _grid_matrix(own, sorted(curve["lr"]))
        x, seeds = prequential_sensitivity(losses), own["seed"].nunique()
        mean = float(np.mean(x)) if len(x) else math.nan
        lo, hi = mean_interval(x)
        best = curve.loc[curve["final_loss_median"].idxmin()] if curve["final_loss_median"].notna().any() else None
        stable_lr, k, n, stable_text = stable_range(curve, sorted(set(grid) | set(curve["lr"])))
        lrs = sorted(curve["lr"])
        text = f"{_where(arch, setting)}: "
        if len(x):
            text += (f"learning-rate sensitivity {num(mean, LOSS_DIGITS)} nats (mean over {len(complete)} seeds, each "
                     f"after the first at the optimum of the seeds before it, and {len(lrs)} learning rates; 95% t "
                     f"interval {num(lo, LOSS_DIGITS)} to {num(hi, LOSS_DIGITS)})")
        else:
            text += ("no learning-rate sensitivity (it needs 2 seeds with a final loss at every learning rate: the "
                     "optimum of each seed is chosen on the seeds before it)")
        if 0 < len(x) and len(complete) < seeds:
            gone = seeds - len(complete)
            text += f"; {gone} seed{'s' * (gone != 1)} without a final loss at every learning rate of the grid left out"
        if missing := [value_text(v) for v in grid if v not in set(lrs)]:
            text += f"; no trained run at lr={', '.join(missing)} (left out of the sensitivity)"
        if best is not None:
            text += f"; best final loss {num(best['final_loss_median'], LOSS_DIGITS)} at lr={value_text(best['lr'])}"
        rows.append({"arch": arch, "setting": setting, "n_seeds": len(complete), "n_lrs": len(lrs), "sensitivity": mean,
                     "lo": lo, "hi": hi,
                     "best_final_loss": float(best["final_loss_median"]) if best is not None else math.nan,
                     "stable_lr": stable_lr, "stable_k": k, "stable_n": n, "sentence": f"{text}; {stable_text}."})
    return pd.DataFrame(rows, columns=SENSITIVITY_COLUMNS)


def sensitivity_pairs(outcomes: pd.DataFrame, alpha: float = ALPHA) -> pd.DataFrame:
    """SENSITIVITY_PAIR_COLUMNS: every pair of architectures within a setting, compared on their COMMON grid
    (the lrs both have trained runs at: a failed run is no outcome, and a sensitivity over 5 lrs is not
    comparable with one over 6) by ``sensitivity_test`` of their ``pair_sensitivities``: the mean difference
    a - b and its p (direction and p from one statistic); Holm over every pair of the table; NaN p below
    PAIR_MIN_VALUES sensitivities of each (n_a, n_b: the seeds that enter; the first only chooses). ``missing`` names the lrs and
    seeds left out."""
    rows = []
    for setting, g in outcomes.groupby("setting", sort=True):
        by_arch = {arch: a for arch, a in g.groupby("arch", sort=True)}
        for a, b in combinations(sorted(by_arch), 2):
            lrs_a, lrs_b = set(by_arch[a]["lr"]), set(by_arch[b]["lr"])
            common = sorted(lrs_a & lrs_b)
            seeds, matrices, gone = {}, {}, []
            for arch in (a, b):
                seeds[arch], matrices[arch], left_out = _grid_matrix(by_arch[arch], common)
                if left_out:
                    gone.append(f"{arch} seed{'s' * (len(left_out) != 1)} {', '.join(str(s) for s in left_out)} "
                                "(a learning rate without a final loss)")
            for arch, own, other in ((a, lrs_a, lrs_b), (b, lrs_b, lrs_a)):
                if lost := sorted(other - own):
                    gone.insert(0, f"lr={', '.join(value_text(v) for v in lost)} (no trained run of {arch})")
            sa, sb = pair_sensitivities(seeds[a], matrices[a], seeds[b], matrices[b])
            difference, p = sensitivity_test(sa, sb)
            rows.append({"setting": setting, "arch_a": a, "arch_b": b, "n_a": len(seeds[a]), "n_b": len(seeds[b]),
                         "n_lrs": len(common), "difference": difference, "p": p, "p_holm": math.nan, "missing": "; ".join(gone), "sentence": ""})
    table = pd.DataFrame(rows, columns=SENSITIVITY_PAIR_COLUMNS)
    if table.empty:
        return table
    table["p_holm"] = holm(table["p"])
    m = len(table)
    table["sentence"] = [_pair_sentence(r, m, alpha) for r in table.itertuples(index=False)]
    return table


def _pair_sentence(r, n_pairs: int, alpha: float) -> str:
    where = "" if r.setting == BASE_VARIANT else f"{r.setting}: "
    seeds = f"{r.n_a} seeds" if r.n_a == r.n_b else f"{r.n_a} and {r.n_b} seeds"
    grid = f"{r.n_lrs} common learning rates"
    left_out = f" Left out: {r.missing}." if r.missing else ""
    if math.isnan(r.p_holm):
        return (f"{where}{r.arch_a} vs {r.arch_b}: cannot compare learning-rate sensitivity with {seeds}; "
                f"it needs at least {PAIR_MIN_VALUES + 1} seeds of each with a final loss at every common learning "
                f"rate (the first seeds only choose the optimum).{left_out}")
    if r.p_holm <= alpha:
        low, high = (r.arch_a, r.arch_b) if r.difference < 0 else (r.arch_b, r.arch_a)
        return (f"{where}{low} is less sensitive to the learning rate than {high} "
                f"(by {num(abs(r.difference), LOSS_DIGITS)} nats over {grid}; {SENSITIVITY_TEST} p = {r.p:.2g}, "
                f"Holm-corrected {r.p_holm:.2g}, {seeds}).{left_out}")
    return (f"{where}{r.arch_a} vs {r.arch_b}: no significant difference in learning-rate sensitivity "
            f"(a - b = {num(r.difference, LOSS_DIGITS)} nats over {grid}; {SENSITIVITY_TEST} p = {r.p:.2g}, "
            f"Holm-corrected over {n_pairs} pairs {r.p_holm:.2g}, {seeds}).{left_out}")


# ------------------------------------------------------------------------------------------- ablations

def _is_off(v) -> bool:
    return value_text(v) in ("off", "0")


@lru_cache(maxsize=None)
def detectable_difference(n_off: int, n_on: int, alpha: float) -> float:
    """The smallest difference in instability rate, |k_on/n_on - k_off/n_off|, that a two-sided Fisher
    exact test on n_off vs n_on runs can call significant at ``alpha`` (NaN: none can)."""
    sizes = [abs(j / n_on - i / n_off) for i in range(n_off + 1) for j in range(n_on + 1)
             if fisher_exact([[i, n_off - i], [j, n_on - j]]).pvalue <= alpha]
    return min(sizes) if sizes else math.nan


def _ablation_sentence(r, n_rows: int, alpha: float) -> str:
    off_name = r.off_name
    text = f"{_where(r.arch, r.setting)}: {r.off_k} of {r.off_n} runs unstable with {off_name}, {r.on_k} of {r.on_n} with {r.switch}"
    if math.isnan(r.p):
        return text + " (no comparison: one side has no trained run)."
    if r.p_holm <= alpha:
        return text + (f" (two-sided Fisher exact p = {r.p:.2g}, Holm-corrected over the {n_rows} rows "
                       f"{r.p_holm:.2g}: the switch changes the instability rate).")
    size = detectable_difference(r.off_n, r.on_n, alpha / n_rows)
    text += f" (Fisher p = {r.p:.2g}, Holm-corrected over the {n_rows} rows {r.p_holm:.2g}: "
    if math.isnan(size):
        return text + (f"no difference could be detected with {r.off_n} vs {r.on_n} runs: even "
                       f"0 of {r.off_n} against {r.on_n} of {r.on_n} does not reach {alpha:.3g} after the correction).")
    return text + (f"no difference of the size these runs can detect was found: the smallest they can detect, "
                   f"corrected over the rows, is {size:.0%} of runs).")


def _plans(study: dict, arch: str, key: str, value) -> bool:
    """Whether the study plans runs of ``arch`` with sweep ``key`` at ``value`` (its ``arch_variants``; a
    study without them plans every variant of every architecture)."""
    planned = ((study or {}).get("arch_variants") or {}).get(arch)
    if planned is None:
        return True
    variants = (study or {}).get("variants") or {}
    return any(value_text(variants.get(v, {}).get(key)) == value for v in planned)


def ablations(study: dict, runs: pd.DataFrame, events: pd.DataFrame, alpha: float = ALPHA) -> pd.DataFrame:
    """ABLATION_COLUMNS: for each switch of STABILISERS in the sweep with an off value (False / 0) and on values,
    per (arch, setting = the other sweep values, lr included, BASE_VARIANT if none) and per on value: unstable
    runs k of n off vs on (each run its own seed), two-sided Fisher exact p (NaN when a side has no run) and
    Holm over the table's rows: a table of 36 rows under a true null had a row "the switch changes the
    instability rate" in 14% of 5-seed studies without it. ``switch`` names the on value as a variant does
    (qk_norm=on, z_loss=0.0001), so several strengths of one switch stay apart. An architecture that trains
    only a model switch's off value (it does not declare it: the study's ``arch_variants``) has no row for it."""
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
                if not _plans(study, arch, key, on_value):
                    continue  # a model switch the architecture does not declare: it trains the off value alone
                on = g[g["_value"] == on_value]
                on_k, on_n = int(on["_unstable"].sum()), len(on)
                if not off_n and not on_n:
                    continue
                p = float(fisher_exact([[off_k, off_n - off_k], [on_k, on_n - on_k]]).pvalue) \
                    if off_n and on_n else math.nan
                rows.append({"arch": arch, "switch": variant_name({key: on_value}), "setting": setting,
                             "off_k": off_k, "off_n": off_n, "on_k": on_k, "on_n": on_n, "p": p, "p_holm": math.nan,
                             "sentence": "", "off_name": variant_name({key: sorted(offs)[0]})})
    table = pd.DataFrame(rows, columns=ABLATION_COLUMNS + ["off_name"])
    if len(table):
        table["p_holm"] = holm(table["p"])
        table["sentence"] = [_ablation_sentence(r, int(table["p"].notna().sum()), alpha)
                             for r in table.itertuples(index=False)]
    return table[ABLATION_COLUMNS]


# ------------------------------------------------------------------------------------------------ all

def tables(study: dict, runs: pd.DataFrame, trajectories: pd.DataFrame, events: pd.DataFrame,
           config: DetectConfig | None = None, alpha: float = ALPHA) -> dict[str, pd.DataFrame]:
    """Every stability table of a study, by its AGGREGATE_TABLES name, each with exactly its contract's
    columns (empty frames where the study has no lr sweep, no events or no switch); the pairs and
    ablations decided at level ``alpha`` (a look of a seed budget spends less: harness.sequential)."""
    events = events if len(events) else pd.DataFrame(columns=ID_COLUMNS + ["type", "onset_step"])
    outcomes = run_outcomes(study, runs, trajectories, events)
    attributed = precursors.attribution(study, runs, trajectories, events, config) if len(runs) else \
        pd.DataFrame(columns=ATTRIBUTION_COLUMNS)
    return {
        "lr_curves": lr_curves(outcomes),
        "sensitivity": sensitivity(outcomes, _grid(study, outcomes)),
        "sensitivity_pairs": sensitivity_pairs(outcomes, alpha),
        "attribution": attributed,
        "attribution_summary": precursors.attribution_summary(study, attributed, runs, events) if len(runs) else
        pd.DataFrame(columns=ATTRIBUTION_SUMMARY_COLUMNS),
        "ablations": ablations(study, runs, events, alpha),
    }
