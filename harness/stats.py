"""Multi-seed statistics: per-run scores, per-architecture summaries, pairwise comparisons.

Conventions (statistics.md, after rliable and AlgoPerf): perplexity is lower-is-better; the IQM is
scipy's trim_mean(x, 0.25); a diverged run is never dropped: its perplexity and its time to target
are infinite; a failed run (a crash of the harness, not of the model) has no scores and is only
counted; a run without a final validation loss is dropped from the comparisons VISIBLY (n_dropped
and the reason in the tables, and in the verdict).

Intervals are chosen for their coverage at the few seeds a study has (measured by simulation in
tests/test_stats.py), not for convention: a percentile bootstrap of the IQM covers about 0.86-0.89
at 5 seeds and of the probability of improvement 0.6-0.9 (degenerate [1, 1] for separated seeds).
- IQM: the trimmed-mean t interval (Tukey-McLaughlin / Yuen: winsorized variance, h - 1 degrees of
  freedom), about 0.94 at 5-10 seeds on normal, lognormal and t3 seeds (0.92 on a skewed
  exponential); below 5 seeds the plain [min, max] range, labelled as such.
- probability of improvement: Newcombe's score interval at every n (about 0.93-0.97 at 3-10 seeds).
- a claim's rate: Clopper-Pearson (exact, >= 95% at every n); a claim's per-seed number: the median with
  its order-statistic interval (>= 95% for any continuous distribution; from 6 seeds on).
No torch here.
"""

from __future__ import annotations

import math
from itertools import combinations

import numpy as np
import pandas as pd
from scipy.optimize import brentq
from scipy.stats import PermutationMethod, binom, binomtest, fisher_exact, mannwhitneyu, norm, trim_mean
from scipy.stats import t as student_t

from harness.collapse import DetectConfig, testable
from harness.logs import is_loss
from harness.contracts import ID_COLUMNS

SCORE_COLUMNS = ["study", "arch", "variant", "seed", "status", "final_loss", "final_smoothed_loss", "best_loss", "best_step",
                 "time_to_target", "collapsed", "n_events", "n_evals", "testable"]
SUMMARY_COLUMNS = ["arch", "variant", "n_seeds", "n_completed", "n_diverged", "n_failed",
                   "final_ppl_median", "final_ppl_iqm", "final_ppl_lo", "final_ppl_hi",
                   "best_ppl_median", "best_ppl_iqm", "best_ppl_lo", "best_ppl_hi",
                   "final_bpb_median", "time_to_target_median",
                   "collapse_count", "collapse_n", "collapse_rate", "collapse_rate_lo", "collapse_rate_hi", "interval",
                   "n_dropped", "dropped"]
PAIR_COLUMNS = ["variant", "arch_a", "arch_b", "n_a", "n_b", "prob_improvement", "pi_lo", "pi_hi", "pi_interval",
                "mannwhitney_p", "holm_p", "fisher_p", "min_possible_p", "verdict",
                "fisher_holm_p", "n_dropped_a", "n_dropped_b", "mannwhitney_method"]
COLLAPSE_TYPES = ("collapse", "divergence")
FALSE_ALARM_RATE = 0.02
"""The share of healthy runs the detector may flag: the target benchmarks/collapse_calibration.py measures
and tests/test_collapse_calibration.py enforces under every noise model. Instability counts as real only
beyond it."""
SMOOTH_EVALS = 3  # final_smoothed_loss: mean val loss of the last 3 evaluations (statistics.md)
MIN_BOOTSTRAP_SEEDS = 5  # below this a percentile "95%" interval covers ~75%: report the range
ALPHA = 0.05
INTERVAL_LABEL = "trimmed-mean t 95%"  # the IQM interval from MIN_BOOTSTRAP_SEEDS seeds on
PI_INTERVAL_LABEL = "Newcombe score 95%"
HUGE = 1e300  # stands in for an infinite perplexity where arithmetic needs a number (inf - inf would be NaN)


def _require(df: pd.DataFrame, columns: list[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{what}: missing column(s) {missing} (has {list(df.columns)})")


def run_scores(trajectories: pd.DataFrame, events: pd.DataFrame, runs: pd.DataFrame,
               target_ppl: float | None = None, min_evals: int | None = None,
               config: DetectConfig | None = None) -> pd.DataFrame:
    """One row per run of ``runs`` (study, arch, seed, status): its validation scores and events.

    A diverged run's final loss is infinite, whether or not its last evaluation was (training may
    blow up between two evaluations): the model is broken, not unmeasured; so is a run whose
    validation curve ENDS non-finite (the detector calls that a divergence, whatever the status).
    Isolated non-finite evaluations the run went on after are left out of the smoothed final loss
    (the mean of its last 3 finite evaluations). Its best loss comes from its finite evaluations.
    time_to_target is the first step with val perplexity <= target_ppl, inf if never, NaN without a
    target. collapsed: any collapse or divergence event, or status diverged; NaN (not measurable) for
    a run with neither that the detector could not test (``testable`` False: no more finite
    validation evaluations than the detector's min_history, harness.collapse.testable, the one rule);
    n_evals counts its finite validation evaluations. The detector's settings come from ``config``,
    or ``min_evals`` as its min_history (what aggregate passes), else the defaults.
    """
    _require(runs, ID_COLUMNS + ["status"], "runs")
    _require(trajectories, ID_COLUMNS + ["step", "split", "value"], "trajectories")
    _require(events, ID_COLUMNS + ["type"], "events")
    if target_ppl is not None and not target_ppl > 1:
        raise ValueError(f"target_ppl must be a perplexity > 1, got {target_ppl}")
    if config is None:
        config = DetectConfig() if min_evals is None else DetectConfig(min_history=max(3, int(min_evals)))
    val = trajectories[trajectories["split"].astype(str) == "val"]
    if "metric" in val.columns:
        val = val[is_loss(val["metric"])]
    val = val.assign(value=val["value"].astype(float)).sort_values("step", kind="stable")
    curves = {key: g for key, g in val.groupby(ID_COLUMNS, sort=False)}
    event_groups = {key: g for key, g in events.groupby(ID_COLUMNS, sort=False)}
    rows = []
    for run in runs[ID_COLUMNS + ["status"]].itertuples(index=False):
        key = tuple(getattr(run, c) for c in ID_COLUMNS)
        curve = curves.get(key, val.iloc[:0])
        losses, steps = curve["value"].to_numpy(), curve["step"].to_numpy()
        broken = run.status == "diverged" or (len(losses) > 0 and not np.isfinite(losses[-1]))
        if run.status == "diverged":
            losses = np.where(np.isfinite(losses), losses, np.inf)
        finite = np.isfinite(losses)
        best = int(np.argmin(np.where(finite, losses, np.inf))) if finite.any() else None
        if target_ppl is None or run.status == "failed":
            reach = math.nan
        else:
            hit = np.flatnonzero(losses <= math.log(target_ppl))
            reach = float(steps[hit[0]]) if len(hit) else math.inf
        run_events = event_groups.get(key, events.iloc[:0])
        collapsed = run.status == "diverged" or bool(run_events["type"].isin(COLLAPSE_TYPES).any())
        n_evals = int(finite.sum())
        can_test = run.status != "failed" and testable(n_evals, config)
        measurable = collapsed or can_test
        last = losses[finite][-SMOOTH_EVALS:]
        final = math.inf if broken else float(last[-1]) if len(last) else math.nan
        smoothed = math.inf if broken else float(np.mean(last)) if len(last) else math.nan
        rows.append({
            "study": run.study, "arch": run.arch, "variant": run.variant, "seed": run.seed, "status": run.status,
            "final_loss": final,
            "final_smoothed_loss": smoothed,
            "best_loss": float(losses[best]) if best is not None else math.nan,
            "best_step": float(steps[best]) if best is not None else math.nan,
            "time_to_target": reach,
            "collapsed": collapsed if measurable else math.nan,
            "n_events": int(len(run_events)),
            "n_evals": n_evals,
            "testable": bool(can_test),
        })
    return pd.DataFrame(rows, columns=SCORE_COLUMNS)


def _iqm(x: np.ndarray, axis: int = -1) -> np.ndarray:
    return trim_mean(x, 0.25, axis=axis)


def trimmed_mean_interval(x: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Interval of the IQM (25% trimmed mean): Tukey-McLaughlin / Yuen, trimmed mean +- t(h - 1) *
    sqrt((n - 1) s_w^2 / (h (h - 1))), s_w the SD of the winsorized sample, h the kept count.
    Coverage measured at 5-10 seeds: about 0.94 (normal, lognormal, t3 seeds), 0.92 (exponential);
    a percentile bootstrap gives 0.86-0.89 at 5. An infinite (diverged) seed that the trimming
    does not remove makes the upper end infinite."""
    x = np.sort(np.asarray(x, dtype=float))
    n = len(x)
    g = int(0.25 * n)
    h = n - 2 * g
    if h < 2:
        return float(x[0]), float(x[-1])
    kept = x[g:n - g]
    if not np.all(np.isfinite(kept)):
        return float(kept[0]) if np.isfinite(kept[0]) else math.inf, math.inf
    w = np.concatenate([np.full(g, x[g]), kept, np.full(g, x[n - g - 1])])
    se = float(np.std(w, ddof=1)) * math.sqrt((n - 1) / (h * (h - 1)))
    centre, q = float(np.mean(kept)), float(student_t.ppf(0.5 + level / 2, h - 1))
    return centre - q * se, centre + q * se


def _interval(x: np.ndarray, n_boot: int = 0, seed: int = 0) -> tuple[float, float]:
    """95% interval of the IQM over seeds (trimmed-mean t), or [min, max] below MIN_BOOTSTRAP_SEEDS.
    (n_boot and seed are kept for callers; the interval no longer resamples.)"""
    if len(x) == 0:
        return math.nan, math.nan
    if len(x) < MIN_BOOTSTRAP_SEEDS or np.all(x == x[0]):
        return float(np.min(x)), float(np.max(x))
    return trimmed_mean_interval(x)


def wilson(k: int, n: int) -> tuple[float, float]:
    """95% Wilson interval of k successes in n: sensible at k = 0 and k = n, unlike the normal one."""
    if n == 0:
        return math.nan, math.nan
    ci = binomtest(k, n).proportion_ci(method="wilson")
    return float(ci.low), float(ci.high)


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper-Pearson) interval of k successes in n: its coverage is at least ``level`` at every
    n and rate, where Wilson's may fall short (at n = 4 and a rate of 1/2 each of its ends excludes 1/2
    with probability 0.0625, not 0.025). Its end passes 1/2 exactly when the one-sided binomial test
    against 1/2 rejects at (1 - level) / 2."""
    if n == 0:
        return math.nan, math.nan
    ci = binomtest(k, n).proportion_ci(confidence_level=level, method="exact")
    return float(ci.low), float(ci.high)


def median_rank(n: int, level: float = 0.95) -> int:
    """The rank r of the distribution-free interval [x_(r), x_(n+1-r)] of a median over n values (0: none
    exists): the largest r with 2 P(Binomial(n, 1/2) <= r - 1) <= 1 - level, so its coverage is at least
    ``level`` for any continuous distribution, skewed or not."""
    r = 0
    while r < n // 2 and 2 * binom.cdf(r, n, 0.5) <= 1 - level:
        r += 1
    return r


def median_min_seeds(level: float = 0.95) -> int:
    """Seeds a distribution-free ``level`` interval of a median needs: 6 at 95%, where [min, max] covers
    1 - 2/2^6 = 97%."""
    return next(n for n in range(1, 1000) if median_rank(n, level))


def median_interval(x: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """(median, lo, hi) of per-seed values, the interval the order statistics of median_rank (NaN below
    median_min_seeds(level) values: no interval holds its coverage there, whatever the data)."""
    x = np.sort(np.asarray(x, dtype=float))
    median = float(np.median(x)) if len(x) else math.nan
    r = median_rank(len(x), level)
    return (median, float(x[r - 1]), float(x[len(x) - r])) if r else (median, math.nan, math.nan)


def _collapse_k_n(scores: pd.DataFrame) -> tuple[int, int]:
    """(collapsed, measurable) among the runs of ``scores`` (failed ones never measure anything)."""
    measured = scores.loc[(scores["status"] != "failed") & scores["collapsed"].notna(), "collapsed"]
    return int(measured.astype(bool).sum()), len(measured)


def summarize(scores: pd.DataFrame, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """One row per (architecture, variant): seed counts, final and best perplexity (median, IQM,
    interval), bits per byte, median time to target (inf stays in), collapse rate with its Wilson interval."""
    _require(scores, SCORE_COLUMNS, "scores")
    rows = []
    for (arch, variant), g in scores.groupby(["arch", "variant"], sort=True):
        scored = g[g["status"] != "failed"]
        dropped = scored[scored["final_smoothed_loss"].isna()]
        final = np.exp(scored["final_smoothed_loss"].dropna().to_numpy(dtype=float))
        best = np.exp(scored["best_loss"].dropna().to_numpy(dtype=float))
        k, n = _collapse_k_n(scored)
        row = {"arch": arch, "variant": variant, "n_seeds": len(g), "n_completed": int((g["status"] == "completed").sum()),
               "n_diverged": int((g["status"] == "diverged").sum()), "n_failed": int((g["status"] == "failed").sum())}
        for name, x in (("final", final), ("best", best)):
            lo, hi = _interval(x, n_boot, seed)
            row |= {f"{name}_ppl_median": float(np.median(x)) if len(x) else math.nan,
                    f"{name}_ppl_iqm": float(_iqm(x)) if len(x) else math.nan,
                    f"{name}_ppl_lo": lo, f"{name}_ppl_hi": hi}
        bpb = scored["final_smoothed_loss"].dropna().to_numpy(dtype=float) / math.log(2)
        reach = scored["time_to_target"].dropna().to_numpy(dtype=float)
        rate_lo, rate_hi = wilson(k, n)
        row |= {"final_bpb_median": float(np.median(bpb)) if len(bpb) else math.nan,
                "time_to_target_median": float(np.median(reach)) if len(reach) else math.nan,
                "collapse_count": k, "collapse_n": n, "collapse_rate": k / n if n else math.nan,
                "collapse_rate_lo": rate_lo, "collapse_rate_hi": rate_hi,
                "interval": "range (n<5)" if len(final) < MIN_BOOTSTRAP_SEEDS else INTERVAL_LABEL,
                "n_dropped": len(dropped), "dropped": _dropped_text(dropped)}
        rows.append(row)
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def _dropped_text(dropped: pd.DataFrame) -> str:
    """Why runs left the statistics: no final validation loss (never evaluated, or no finite one)."""
    if dropped.empty:
        return ""
    seeds = ", ".join(str(v) for v in dropped["seed"].tolist())
    return f"{len(dropped)} dropped: no final validation loss (no finite evaluation) for seed {seeds}"


def min_possible_p(n_a: int, n_b: int) -> float:
    """Smallest two-sided p an exact rank test can give with n_a vs n_b seeds (perfect separation)."""
    return min(1.0, 2 / math.comb(n_a + n_b, n_a)) if n_a and n_b else math.nan


def seeds_needed(n_pairs: int, alpha: float = ALPHA) -> int:
    """Seeds per architecture for which a perfect separation survives Holm over n_pairs comparisons."""
    n = 2
    while min_possible_p(n, n) * max(n_pairs, 1) > alpha:
        n += 1
    return n


def _prob_improvement(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    """P(a < b) + P(a = b) / 2 over all pairs: the probability that a has the lower perplexity."""
    a, b = np.moveaxis(a, axis, -1), np.moveaxis(b, axis, -1)
    lower = (a[..., :, None] < b[..., None, :]).mean(axis=(-2, -1))
    tied = (a[..., :, None] == b[..., None, :]).mean(axis=(-2, -1))
    return lower + tied / 2


def newcombe_interval(theta: float, n_a: int, n_b: int, level: float = 0.95) -> tuple[float, float]:
    """Score interval for a Mann-Whitney probability (Newcombe 2006, method 5): the thetas with
    (theta_hat - theta)^2 <= z^2 V(theta), V the Hanley-McNeil variance with both sample sizes set to
    their mean N. Unlike a bootstrap it stays honest with few seeds: 3 vs 3 seeds perfectly separated
    give [0.50, 1] (a bootstrap gives [1, 1])."""
    z2 = norm.ppf(0.5 + level / 2) ** 2
    big_n = (n_a + n_b) / 2

    def excess(t: float) -> float:
        variance = t * (1 - t) / (n_a * n_b) * (2 * big_n - 1 - (3 * big_n - 3) / ((2 - t) * (1 + t)))
        return (theta - t) ** 2 - z2 * variance

    # V vanishes at 0 and 1: step just inside, where the excess is negative, to bracket each root
    inner = 1e-12
    lo = brentq(excess, 0.0, min(theta, 1 - inner)) if excess(0.0) > 0 else 0.0
    hi = brentq(excess, max(theta, inner), 1.0) if excess(1.0) > 0 else 1.0
    return float(lo), float(hi)


def _verdict(a: str, b: str, n_a: int, n_b: int, pi: float, holm: float, min_p: float, n_pairs: int,
             multiplier: int = 0, dropped: str = "") -> str:
    """One sentence that agrees with the row: a difference is claimed exactly when holm <= ALPHA.
    ``multiplier`` is the factor Holm applied to this pair's p (its rank from the largest p; the
    number of pairs when unknown): the smallest p the seed counts allow, times it, says whether a
    non-significant pair could have been significant at all."""
    seeds = f"{n_a} seeds" if n_a == n_b else f"{n_a} and {n_b} seeds"
    suffix = f" ({dropped})" if dropped else ""
    if n_a < 2 or n_b < 2 or not np.isfinite(holm):
        return f"{a} vs {b}: cannot compare with {seeds}; run at least {seeds_needed(n_pairs)} seeds of each.{suffix}"
    if holm <= ALPHA:
        better, worse, p_better = (a, b, pi) if pi > 0.5 else (b, a, 1 - pi)
        return (f"{better} has a lower final perplexity than {worse} (P(improvement) = {p_better:.2f}, "
                f"Holm-corrected p = {holm:.2g}).{suffix}")
    p_text = f"{min_p:.2f}" if min_p >= 0.01 else f"{min_p:.2g}"
    if min_p * (multiplier or n_pairs) > ALPHA:
        claim = f"a claim across {n_pairs} comparisons" if n_pairs > 1 else "a claim"
        return (f"{a} vs {b}: no difference detectable with {seeds}; the smallest possible p with {n_a} vs {n_b} "
                f"is {p_text} (Holm-corrected p = {holm:.2g}), and {claim} needs at least "
                f"{seeds_needed(n_pairs)} seeds per architecture.{suffix}")
    return (f"{a} vs {b}: no significant difference with {seeds} (P({a} better) = {pi:.2f}, "
            f"Holm-corrected p = {holm:.2g} > {ALPHA}).{suffix}")


def mann_whitney(xa: np.ndarray, xb: np.ndarray, seed: int = 0) -> tuple[float, float, str]:
    """(probability that a has the lower value, two-sided p, method): Mann-Whitney U with scipy's
    exact null distribution without ties, and with ties (diverged seeds are all +inf) the exact
    permutation distribution of U (all distinct splits; a seeded Monte Carlo of 100,000 beyond that)."""
    n_a, n_b = len(xa), len(xb)
    both = np.concatenate([xa, xb])
    if len(np.unique(both)) == len(both):
        u = mannwhitneyu(xa, xb, method="exact", alternative="two-sided")
        method = "exact"
    else:
        finite_a, finite_b = np.minimum(xa, HUGE), np.minimum(xb, HUGE)
        u = mannwhitneyu(finite_a, finite_b, alternative="two-sided",
                         method=PermutationMethod(n_resamples=100_000, rng=np.random.default_rng(seed)))
        method = ("exact permutation (ties)" if math.comb(n_a + n_b, n_a) <= 100_000
                  else "permutation, 100,000 resamples (ties)")
    return 1 - float(u.statistic) / (n_a * n_b), float(u.pvalue), method


def holm(p: pd.Series) -> pd.Series:
    """Holm-adjusted p-values of the non-missing entries (statsmodels' multipletests(method="holm")
    gives the same numbers, but runs a garbage collection per call, which dominated compare)."""
    out = pd.Series(math.nan, index=p.index)
    tested = p.notna().to_numpy()
    raw = p.to_numpy(dtype=float)[tested]
    if len(raw):
        order = np.argsort(raw, kind="stable")
        adjusted = np.minimum(1.0, np.maximum.accumulate((len(raw) - np.arange(len(raw))) * raw[order]))
        out.iloc[np.flatnonzero(tested)[order]] = adjusted
    return out


def compare(scores: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """``compare_variant`` for each variant of the study: architectures are compared within a variant
    (the same recipe and switches), and Holm corrects over the pairs of that variant."""
    _require(scores, SCORE_COLUMNS[:12], "scores")
    tables = [compare_variant(g, variant, seed) for variant, g in scores.groupby("variant", sort=True)]
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=PAIR_COLUMNS)


def compare_variant(scores: pd.DataFrame, variant: str, seed: int = 0) -> pd.DataFrame:
    """One row per unordered pair of architectures of one variant: probability of improvement (final smoothed
    perplexity, via Mann-Whitney U) with Newcombe's score interval at every seed count (a bootstrap
    is degenerate for separated seeds and undercovers below ~10), Mann-Whitney p (exact; the exact
    permutation distribution with ties), Holm across all pairs, Fisher's exact test on collapse
    rates (Holm-corrected too: fisher_holm_p), the smallest p the seed counts allow, the seeds
    dropped for want of a final loss, and a one-sentence verdict that agrees with holm_p."""
    scored = scores[scores["status"] != "failed"]
    groups = {arch: g for arch, g in scored.groupby("arch", sort=True)}
    archs = sorted(scores["arch"].unique())
    pairs = list(combinations(archs, 2))
    rows, dropped_text = [], []
    for a, b in pairs:
        ga, gb = groups.get(a, scored.iloc[:0]), groups.get(b, scored.iloc[:0])
        xa = np.exp(ga["final_smoothed_loss"].dropna().to_numpy(dtype=float))
        xb = np.exp(gb["final_smoothed_loss"].dropna().to_numpy(dtype=float))
        n_a, n_b = len(xa), len(xb)
        drop_a, drop_b = len(ga) - n_a, len(gb) - n_b
        pi = pi_lo = pi_hi = p = math.nan
        method, test = "", ""
        if n_a and n_b:
            pi, p, test = mann_whitney(xa, xb, seed)
            (pi_lo, pi_hi), method = newcombe_interval(pi, n_a, n_b), PI_INTERVAL_LABEL
        (k_a, m_a), (k_b, m_b) = _collapse_k_n(ga), _collapse_k_n(gb)
        fisher = fisher_exact([[k_a, m_a - k_a], [k_b, m_b - k_b]]).pvalue if m_a and m_b else math.nan
        rows.append({"variant": variant, "arch_a": a, "arch_b": b, "n_a": n_a, "n_b": n_b, "prob_improvement": pi, "pi_lo": pi_lo,
                     "pi_hi": pi_hi, "pi_interval": method, "mannwhitney_p": p, "holm_p": math.nan, "fisher_p": float(fisher),
                     "min_possible_p": min_possible_p(n_a, n_b), "verdict": "", "fisher_holm_p": math.nan,
                     "n_dropped_a": drop_a, "n_dropped_b": drop_b, "mannwhitney_method": test})
        dropped_text.append("; ".join(f"{k} seed{'s' if k > 1 else ''} of {arch} dropped: no final validation loss"
                                      for arch, k in ((a, drop_a), (b, drop_b)) if k))
    table = pd.DataFrame(rows, columns=PAIR_COLUMNS)
    table["holm_p"] = holm(table["mannwhitney_p"])
    table["fisher_holm_p"] = holm(table["fisher_p"])
    # Holm multiplies the k-th smallest of m p-values by m - k + 1
    ranks = table["mannwhitney_p"].rank(method="first")
    multipliers = (table["mannwhitney_p"].notna().sum() - ranks + 1).fillna(len(pairs)).astype(int)
    table["verdict"] = [_verdict(r.arch_a, r.arch_b, r.n_a, r.n_b, r.prob_improvement, r.holm_p,
                                 r.min_possible_p, len(pairs), int(m), d)
                        for r, m, d in zip(table.itertuples(index=False), multipliers, dropped_text)]
    return table


def seed_caveat(summary: pd.DataFrame, pairs: pd.DataFrame) -> str:
    """Say in words what the seed count of a study can and cannot support ("" when nothing to say)."""
    sentences = []
    trained = summary["n_seeds"] - summary["n_failed"]
    if len(trained) and trained.min() < MIN_BOOTSTRAP_SEEDS:
        n = int(trained.min())
        sentences.append(
            f"With {n} trained seed{'s' if n != 1 else ''} in the smallest group, the interval shown is the range "
            "of the seeds (a percentile bootstrap at this size covers about 75%, not 95%); a 95% interval needs "
            f"at least {MIN_BOOTSTRAP_SEEDS} seeds per architecture.")
    m = len(pairs)
    if m and (pairs["min_possible_p"].fillna(1.0) * m > ALPHA).all():
        floor = float(pairs["min_possible_p"].min())
        sentences.append(
            f"The smallest p-value an exact rank test can give with these seed counts is {floor:.3g}; after Holm "
            f"correction over {m} comparison{'s' if m > 1 else ''} no difference can reach {ALPHA}, so this "
            "study cannot support a claim that one architecture beats another: that needs at least "
            f"{seeds_needed(m)} seeds per architecture.")
    return " ".join(sentences)


def final_window_caveat(steps: int, eval_every: int, share: float = 0.2) -> str:
    """A warning when the evaluations that make the smoothed final value span more than ``share`` of
    training ("" otherwise): then "final" is an average over much of the run, not its end."""
    span = (SMOOTH_EVALS - 1) * eval_every
    if steps <= 0 or span / steps <= share:
        return ""
    return (f"The smoothed final value averages the last {SMOOTH_EVALS} evaluations, which here span steps "
            f"{max(0, steps - span):,}-{steps:,}: {100 * min(1.0, span / steps):.0f}% of this {steps:,}-step "
            "training, so it describes much of the run rather than its end.")
