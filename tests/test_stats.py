"""Multi-seed statistics: known answers for IQM, probability of improvement, intervals and tests."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm, trim_mean

from harness import stats


def _scores(final_ppl: dict[str, list[float]], status: dict[tuple[str, int], str] | None = None,
            collapsed: dict[str, list[bool]] | None = None) -> pd.DataFrame:
    """A scores table from final perplexities per architecture (seed i = i-th value)."""
    rows = []
    for arch, values in final_ppl.items():
        for seed, ppl in enumerate(values):
            loss = math.log(ppl) if np.isfinite(ppl) else ppl
            rows.append({"study": "s", "arch": arch, "variant": "base", "seed": seed,
                         "status": (status or {}).get((arch, seed), "completed"),
                         "final_loss": loss, "final_smoothed_loss": loss, "best_loss": loss, "best_step": 100.0,
                         "time_to_target": math.nan,
                         "collapsed": bool((collapsed or {}).get(arch, [False] * len(values))[seed]),
                         "n_events": 0})
    return pd.DataFrame(rows, columns=stats.SCORE_COLUMNS)


def _trajectory(arch: str, seed: int, val: list[float], study: str = "s") -> pd.DataFrame:
    steps = 100 * np.arange(1, len(val) + 1)
    return pd.DataFrame({"study": study, "arch": arch, "variant": "base", "seed": seed, "step": steps, "split": "val",
                         "metric": "loss", "value": val})


def test_run_scores_reads_final_smoothed_best_and_time_to_target():
    traj = pd.concat([
        _trajectory("a", 0, [3.0, 2.0, 1.5, 1.4, 1.6]),
        _trajectory("a", 1, [3.0, 2.5, 2.4, 2.3, 2.2]),
        _trajectory("a", 2, [3.0, 2.0, math.nan]),
        _trajectory("a", 0, [9.0] * 5).assign(split="train"),  # train rows are not scores
    ], ignore_index=True)
    runs = pd.DataFrame({"study": "s", "arch": "a", "variant": "base", "seed": [0, 1, 2, 3],
                         "status": ["completed", "completed", "diverged", "failed"]})
    events = pd.DataFrame({"study": "s", "arch": "a", "variant": "base", "seed": [0, 1, 1], "type": ["spike", "collapse", "spike"]})
    scores = stats.run_scores(traj, events, runs, target_ppl=math.exp(1.5), min_evals=3)
    assert list(scores.columns) == stats.SCORE_COLUMNS
    s0, s1, s2, s3 = (scores.iloc[i] for i in range(4))
    assert s0["final_loss"] == 1.6 and s0["final_smoothed_loss"] == pytest.approx((1.5 + 1.4 + 1.6) / 3)
    assert (s0["best_loss"], s0["best_step"]) == (1.4, 400)
    assert s0["time_to_target"] == 300 and s1["time_to_target"] == math.inf
    assert (s0["collapsed"], s0["n_events"], s1["collapsed"], s1["n_events"]) == (False, 1, True, 2)
    assert s2["final_loss"] == math.inf and s2["collapsed"] and s2["time_to_target"] == math.inf
    assert s3["status"] == "failed" and math.isnan(s3["final_loss"]) and math.isnan(s3["time_to_target"])
    no_target = stats.run_scores(traj, events, runs)
    assert no_target["time_to_target"].isna().all()


def test_a_run_that_diverged_between_evaluations_scores_infinite_and_a_rare_one_is_not_measured():
    traj = pd.concat([_trajectory("a", 0, [3.0, 2.0, 1.8]),  # its training loss went NaN after the last eval
                      _trajectory("b", 0, [2.0]), _trajectory("b", 1, [2.1])], ignore_index=True)
    runs = pd.DataFrame({"study": "s", "arch": ["a", "a", "b", "b"], "variant": "base", "seed": [0, 1, 0, 1],
                         "status": ["diverged", "diverged", "completed", "completed"]})  # a/1: NaN before any eval
    events = pd.DataFrame(columns=["study", "arch", "variant", "seed", "type"])
    scores = stats.run_scores(traj, events, runs, min_evals=3)
    a0, a1, b0, b1 = (scores.iloc[i] for i in range(4))
    assert a0["final_loss"] == a0["final_smoothed_loss"] == math.inf and a0["best_loss"] == 1.8
    assert a1["final_smoothed_loss"] == math.inf and a0["collapsed"] is True and a1["collapsed"] is True
    assert math.isnan(b0["collapsed"]) and math.isnan(b1["collapsed"])  # one evaluation: nothing to detect
    summary = stats.summarize(scores).set_index("arch")
    assert summary.loc["a", "final_ppl_median"] == math.inf  # both diverged seeds stay in, as infinite
    assert (summary.loc["a", "collapse_count"], summary.loc["a", "collapse_n"]) == (2, 2)
    assert summary.loc["b", "collapse_n"] == 0 and math.isnan(summary.loc["b", "collapse_rate"])
    assert math.isnan(stats.compare(scores).iloc[0]["fisher_p"])  # no measured collapse rate for b


def test_iqm_is_the_mean_of_the_middle_half_and_the_mean_for_three_seeds():
    summary = stats.summarize(_scores({"a": [100, 1, 2, 3, 4, 5, 6, 7], "b": [1.0, 2.0, 6.0]}))
    a, b = summary.iloc[0], summary.iloc[1]
    assert a["final_ppl_iqm"] == pytest.approx(4.5)  # mean of 3, 4, 5, 6: the outlier 100 is trimmed
    assert a["final_ppl_median"] == pytest.approx(4.5)
    assert b["final_ppl_iqm"] == pytest.approx(3.0)  # statistics.md: with 3 seeds it equals the mean
    assert list(summary.columns) == stats.SUMMARY_COLUMNS


def test_interval_is_the_range_below_five_seeds_else_the_trimmed_mean_t_interval():
    scores = _scores({"few": [3.0, 3.5, 4.0], "many": [3.0, 3.1, 3.3, 3.4, 3.6, 3.9, 4.4]})
    summary = stats.summarize(scores, n_boot=500, seed=0).set_index("arch")
    few, many = summary.loc["few"], summary.loc["many"]
    assert few["interval"] == "range (n<5)"
    assert (few["final_ppl_lo"], few["final_ppl_hi"]) == pytest.approx((3.0, 4.0))
    assert many["interval"] == "trimmed-mean t 95%"
    assert 2.5 <= many["final_ppl_lo"] < many["final_ppl_iqm"] < many["final_ppl_hi"] <= 4.6  # t: may pass the data
    again = stats.summarize(scores, n_boot=500, seed=1).set_index("arch")
    pd.testing.assert_frame_equal(summary, again)  # deterministic: nothing is resampled


def test_counts_diverged_and_failed_runs_without_dropping_divergence():
    scores = _scores({"a": [3.0, 4.0, math.inf, math.nan]},
                     status={("a", 2): "diverged", ("a", 3): "failed"}, collapsed={"a": [False, False, True, False]})
    a = stats.summarize(scores).iloc[0]
    assert (a["n_seeds"], a["n_completed"], a["n_diverged"], a["n_failed"]) == (4, 2, 1, 1)
    assert a["final_ppl_median"] == 4.0 and a["final_ppl_hi"] == math.inf  # diverged = infinite ppl
    assert a["collapse_count"] == 1 and a["collapse_rate"] == pytest.approx(1 / 3)


def test_collapse_rate_has_the_wilson_interval():
    scores = _scores({"a": [3.0, 3.0, 3.0]}, collapsed={"a": [True, False, False]})
    a = stats.summarize(scores).iloc[0]
    k, n, z = 1, 3, 1.959963984540054
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert a["collapse_rate_lo"] == pytest.approx(centre - half, abs=1e-9)  # 0.0615
    assert a["collapse_rate_hi"] == pytest.approx(centre + half, abs=1e-9)  # 0.7923


def test_time_to_target_median_keeps_runs_that_never_reach_it():
    scores = _scores({"a": [3.0, 3.0, 3.0], "b": [3.0, 3.0, 3.0]})
    scores["time_to_target"] = [1000.0, 2000.0, math.inf, 1000.0, math.inf, math.inf]
    summary = stats.summarize(scores).set_index("arch")
    assert summary.loc["a", "time_to_target_median"] == 2000.0
    assert summary.loc["b", "time_to_target_median"] == math.inf


def test_perfect_separation_of_three_seeds_is_not_a_claim():
    pairs = stats.compare(_scores({"memnls": [2.0, 3.0, 4.0], "transformer": [5.0, 6.0, 7.0]}))
    assert list(pairs.columns) == stats.PAIR_COLUMNS
    row = pairs.iloc[0]
    assert (row["arch_a"], row["arch_b"], row["n_a"], row["n_b"]) == ("memnls", "transformer", 3, 3)
    assert row["prob_improvement"] == 1.0 and row["mannwhitney_p"] == pytest.approx(0.1)
    assert row["min_possible_p"] == pytest.approx(0.1) and row["holm_p"] == pytest.approx(0.1)
    assert row["verdict"].startswith("memnls vs transformer: no difference detectable with 3 seeds; "
                                     "the smallest possible p with 3 vs 3 is 0.10")
    # Newcombe's score interval, not a degenerate [1, 1] bootstrap: 3 seeds cannot exclude 0.5
    assert row["pi_interval"] == "Newcombe score 95%"
    assert row["pi_lo"] == pytest.approx(0.501, abs=0.001) and row["pi_hi"] == 1.0


def test_newcombe_interval_covers_the_true_probability_with_few_seeds():
    """Coverage on normal seeds with a known P(a < b) = Phi(delta / sqrt 2): near 95% from 3 seeds on."""
    rng = np.random.default_rng(0)
    for n in (3, 4):
        for delta in (0.0, 1.0, 2.0):
            truth = norm.cdf(delta / math.sqrt(2))
            a, b = rng.normal(0, 1, (1000, n)), rng.normal(delta, 1, (1000, n))
            pis = (a[:, :, None] < b[:, None, :]).mean(axis=(1, 2))
            covered = [lo <= truth <= hi for lo, hi in (stats.newcombe_interval(pi, n, n) for pi in pis)]
            assert 0.88 <= np.mean(covered) <= 0.99, (n, delta, np.mean(covered))


def test_newcombe_interval_known_values():
    lo, hi = stats.newcombe_interval(0.5, 100, 100)  # large samples: the Wald interval 0.5 +- 1.96 * 0.0409
    assert (lo, hi) == (pytest.approx(0.4210, abs=1e-4), pytest.approx(0.5790, abs=1e-4))
    lo, hi = stats.newcombe_interval(7 / 9, 3, 3)
    mirror = stats.newcombe_interval(2 / 9, 3, 3)  # symmetric under a <-> b
    assert mirror == (pytest.approx(1 - hi, abs=1e-9), pytest.approx(1 - lo, abs=1e-9))
    assert stats.newcombe_interval(0.0, 3, 3) == (0.0, pytest.approx(1 - 0.50102, abs=1e-4))


def test_five_seeds_each_get_newcombe_too():
    rng = np.random.default_rng(1)
    scores = _scores({"a": list(rng.normal(3, 1, 5)), "b": list(rng.normal(4, 1, 5))})
    first, again = stats.compare(scores, seed=0).iloc[0], stats.compare(scores, seed=0).iloc[0]
    assert first["pi_interval"] == "Newcombe score 95%"
    assert first["pi_lo"] <= first["prob_improvement"] <= first["pi_hi"]
    assert (first["pi_lo"], first["pi_hi"]) == (again["pi_lo"], again["pi_hi"])


def test_probability_of_improvement_counts_ties_as_half():
    row = stats.compare(_scores({"a": [1.0, 2.0], "b": [2.0, 3.0]})).iloc[0]
    assert row["prob_improvement"] == pytest.approx(3.5 / 4)
    assert 0.0 <= row["pi_lo"] <= row["pi_hi"] <= 1.0


@pytest.mark.parametrize("n, p", [(3, 0.10), (4, 0.029), (5, 0.0079), (6, 0.0022)])
def test_min_possible_p_matches_the_spec(n, p):
    assert stats.min_possible_p(n, n) == pytest.approx(p, rel=0.05)


def test_holm_adjusts_in_order_and_a_clear_win_says_so():
    scores = _scores({"a": [1.0, 1.1, 1.2, 1.3, 1.4, 1.5], "b": [2.0, 2.1, 2.2, 2.3, 2.4, 2.5],
                      "c": [1.05, 2.05, 1.15, 2.15, 1.25, 2.6]})
    pairs = stats.compare(scores)
    raw = pairs["mannwhitney_p"].to_numpy()
    order = np.argsort(raw)
    expected = np.maximum.accumulate(np.minimum(1, raw[order] * (len(raw) - np.arange(len(raw)))))
    assert pairs["holm_p"].to_numpy()[order] == pytest.approx(expected)
    ab = pairs[(pairs["arch_a"] == "a") & (pairs["arch_b"] == "b")].iloc[0]
    assert ab["holm_p"] == pytest.approx(3 * 2 / math.comb(12, 6))
    assert ab["verdict"].startswith("a has a lower final perplexity than b")


def test_fisher_compares_collapse_rates():
    scores = _scores({"a": [3.0] * 5, "b": [3.0] * 5}, collapsed={"a": [False] * 5, "b": [True] * 5})
    row = stats.compare(scores).iloc[0]
    assert row["fisher_p"] == pytest.approx(2 / math.comb(10, 5))


def test_bad_input_names_the_missing_columns():
    with pytest.raises(ValueError, match="runs: missing column"):
        stats.run_scores(pd.DataFrame(), pd.DataFrame(), pd.DataFrame({"arch": []}))
    with pytest.raises(ValueError, match="target_ppl"):
        stats.run_scores(_trajectory("a", 0, [1.0]), pd.DataFrame(columns=["study", "arch", "variant", "seed", "type"]),
                         pd.DataFrame({"study": ["s"], "arch": ["a"], "variant": ["base"], "seed": [0], "status": ["completed"]}),
                         target_ppl=0.5)


# --- issue #11 -------------------------------------------------------------------------------------


def _pi_coverage(n: int, delta: float, sims: int, rng: np.random.Generator) -> float:
    """Share of compare()'s P(improvement) intervals that hold the true P(a < b) = Phi(delta / sqrt 2)."""
    truth = norm.cdf(delta / math.sqrt(2))
    covered = 0
    for _ in range(sims):
        scores = _scores({"a": list(np.exp(rng.normal(1, 0.1, n))), "b": list(np.exp(rng.normal(1 + 0.1 * delta, 0.1, n)))})
        row = stats.compare(scores).iloc[0]
        # compare's probability is P(a has the lower perplexity), i.e. P(a < b)
        covered += row["pi_lo"] <= truth <= row["pi_hi"]
    return covered / sims


@pytest.mark.parametrize("n", [5, 8, 10])
def test_probability_of_improvement_interval_has_nominal_coverage_from_five_seeds(n):
    rng = np.random.default_rng(100 + n)
    coverage = [_pi_coverage(n, delta, 150, rng) for delta in (0.0, 1.0, 2.0)]
    assert all(0.88 <= c <= 1.0 for c in coverage), (n, coverage)
    separated = stats.compare(_scores({"a": [1.0, 1.1, 1.2, 1.3, 1.4], "b": [2.0, 2.1, 2.2, 2.3, 2.4]})).iloc[0]
    assert separated["pi_hi"] == 1.0 and separated["pi_lo"] < 0.9  # not a degenerate [1.00, 1.00]


@pytest.mark.parametrize("n", [5, 8])
def test_iqm_interval_has_nominal_coverage_at_few_seeds(n):
    rng = np.random.default_rng(n)
    # lognormal seeds (skewed, as perplexities are): the population IQM of exp(N(1.1, 0.3))
    truth = float(trim_mean(np.exp(np.random.default_rng(0).normal(1.1, 0.3, 1_000_000)), 0.25))
    covered = []
    for _ in range(300):
        summary = stats.summarize(_scores({"a": list(np.exp(rng.normal(1.1, 0.3, n)))}), n_boot=500).iloc[0]
        covered.append(summary["final_ppl_lo"] <= truth <= summary["final_ppl_hi"])
    assert 0.92 <= np.mean(covered) <= 0.99, (n, np.mean(covered))


def test_holm_p_and_verdict_agree():
    """4 vs 4 seeds can reach p = 0.029; Holm over 3 pairs multiplies the largest raw p by 1, so the
    pair is significant and the verdict must not call the difference undetectable."""
    scores = _scores({"a": [1.0, 1.1, 1.2, 1.3], "b": [2.0, 2.1, 2.2, 2.3],
                      "c": [5.0 + 0.1 * i for i in range(12)]})
    pairs = stats.compare(scores).set_index(["arch_a", "arch_b"])
    for (a, b), row in pairs.iterrows():
        significant = row["holm_p"] <= stats.ALPHA
        claims = "has a lower final perplexity" in row["verdict"]
        assert significant == claims, (a, b, row["holm_p"], row["verdict"])
    assert pairs.loc[("a", "b"), "holm_p"] <= stats.ALPHA


def test_nan_finals_are_counted_as_dropped_not_silently_lost():
    scores = _scores({"a": [3.0, 3.1, 3.2, 3.3, 3.4, 3.5], "b": [4.0, 4.1, 4.2, 4.3, 4.4, 4.5]})
    scores.loc[scores["seed"] >= 4, ["final_loss", "final_smoothed_loss"]] = math.nan  # no final evaluation
    summary = stats.summarize(scores).set_index("arch")
    assert summary.loc["a", "n_dropped"] == 2 and "no final validation loss" in summary.loc["a", "dropped"]
    row = stats.compare(scores).iloc[0]
    assert (row["n_a"], row["n_b"], row["n_dropped_a"], row["n_dropped_b"]) == (4, 4, 2, 2)
    assert "2 seeds of a" in row["verdict"] and "dropped" in row["verdict"]


def test_run_scores_smooths_over_finite_evaluations_and_a_run_ending_nan_is_infinite():
    traj = pd.concat([_trajectory("a", 0, [3.0, 2.0, 1.5, math.nan, 1.4, 1.6]),  # an isolated NaN
                      _trajectory("a", 1, [3.0, 2.0, 1.5, 1.4, math.nan])], ignore_index=True)  # ends NaN
    runs = pd.DataFrame({"study": "s", "arch": "a", "variant": "base", "seed": [0, 1], "status": ["completed", "completed"]})
    scores = stats.run_scores(traj, pd.DataFrame(columns=["study", "arch", "variant", "seed", "type"]), runs)
    assert scores.iloc[0]["final_smoothed_loss"] == pytest.approx((1.5 + 1.4 + 1.6) / 3)
    assert scores.iloc[1]["final_loss"] == scores.iloc[1]["final_smoothed_loss"] == math.inf


def test_mann_whitney_with_ties_uses_the_exact_permutation_distribution():
    from scipy.stats import permutation_test
    a = [3.0, 3.1, math.inf, math.inf, 3.3]
    b = [4.0, math.inf, 4.2, 4.1, 4.3]
    row = stats.compare(_scores({"a": a, "b": b})).iloc[0]

    def u(x, y, axis=-1):
        return stats._prob_improvement(x, y, axis=axis)

    xa, xb = np.minimum(np.array(a), stats.HUGE), np.minimum(np.array(b), stats.HUGE)
    exact = permutation_test((xa, xb), u, permutation_type="independent", n_resamples=np.inf,
                             vectorized=True, alternative="two-sided").pvalue
    assert row["mannwhitney_p"] == pytest.approx(exact, rel=1e-9)


def test_fisher_p_is_holm_corrected_over_the_pairs():
    scores = _scores({"a": [3.0] * 6, "b": [3.0] * 6, "c": [3.0] * 6},
                     collapsed={"a": [False] * 6, "b": [True] * 6, "c": [True] * 5 + [False]})
    pairs = stats.compare(scores)
    raw = pairs["fisher_p"].to_numpy()
    from statsmodels.stats.multitest import multipletests
    assert pairs["fisher_holm_p"].to_numpy() == pytest.approx(multipletests(raw, method="holm")[1])


def test_run_scores_marks_runs_the_detector_cannot_test():
    from harness.collapse import DetectConfig, testable
    cfg = DetectConfig()
    n = cfg.min_history  # exactly min_history evaluations: none of them is ever tested
    traj = pd.concat([_trajectory("a", 0, list(np.linspace(3, 2, n))),
                      _trajectory("a", 1, list(np.linspace(3, 2, n + 1)))], ignore_index=True)
    runs = pd.DataFrame({"study": "s", "arch": "a", "variant": "base", "seed": [0, 1], "status": ["completed", "completed"]})
    scores = stats.run_scores(traj, pd.DataFrame(columns=["study", "arch", "variant", "seed", "type"]), runs,
                              min_evals=cfg.min_history)
    assert not testable(n, cfg) and testable(n + 1, cfg)
    assert scores["testable"].tolist() == [False, True]
    assert math.isnan(scores.iloc[0]["collapsed"]) and scores.iloc[1]["collapsed"] is False


def test_architectures_are_compared_within_each_variant_and_holm_corrects_per_variant():
    low = _scores({"a": [1.0, 1.1, 1.2, 1.3, 1.4], "b": [2.0, 2.1, 2.2, 2.3, 2.4], "c": [3.0, 3.1, 3.2, 3.3, 3.4]})
    high = _scores({"a": [5.0, 5.1, 5.2, 5.3, 5.4], "b": [2.0, 2.1, 2.2, 2.3, 2.4], "c": [3.0, 3.1, 3.2, 3.3, 3.4]})
    scores = pd.concat([low.assign(variant="lr=0.01"), high.assign(variant="lr=1")], ignore_index=True)
    pairs = stats.compare(scores).set_index(["variant", "arch_a", "arch_b"])
    assert len(pairs) == 2 * 3  # 3 pairs in each variant, none across variants
    alone = stats.compare(low).set_index(["arch_a", "arch_b"])
    for key, row in alone.iterrows():  # the same numbers as the variant compared on its own
        assert pairs.loc[("lr=0.01", *key), "holm_p"] == pytest.approx(row["holm_p"])
    # separated 5 vs 5: exact p = 2/252 = 0.0079; Holm over this variant's 3 pairs: at most 3 x 0.0079
    assert pairs.loc[("lr=1", "a", "b"), "holm_p"] == pytest.approx(3 * 2 / 252)
    assert pairs.loc[("lr=0.01", "a", "b"), "prob_improvement"] == 1.0 and pairs.loc[("lr=1", "a", "b"), "prob_improvement"] == 0.0
    summary = stats.summarize(scores).set_index(["arch", "variant"])
    assert summary.loc[("a", "lr=1"), "final_ppl_median"] == pytest.approx(5.2)
    assert summary.loc[("a", "lr=0.01"), "final_ppl_median"] == pytest.approx(1.2)
