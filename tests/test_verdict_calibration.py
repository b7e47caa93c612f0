"""The study-level verdicts hold their error rates on a fixed synthetic sample (a fast subset of
benchmarks/verdict_calibration.py, which prints the full table at 3, 5, 8 and 12 seeds).

Every case of the benchmark is checked here, each on a few studies (24; 20 with train diagnostics; 10
of six architectures):
- a null (no true difference, or a claim exactly on its boundary) decides a verdict in at most 5% of
  studies, plus a Monte-Carlo allowance of two standard errors of a 5% rate over the n studies drawn:
  rate <= 0.05 + 2 sqrt(0.05 * 0.95 / n), i.e. at most 3 of 24, 2 of 20, 1 of 10 studies; at 12 seeds,
  and for the claims on studies without a sweep (cheap) at 5 seeds too;
- an effect is found, in the right direction, in at least 80% of studies at 12 seeds, less the same
  allowance for an 80% rate: rate >= 0.8 - 2 sqrt(0.8 * 0.2 / n), i.e. 16 of 24, 13 of 20, 6 of 10.
These allowances catch a verdict that is wrong in a large share of studies, not one a little above 5%:
the benchmark's table (50-400 studies per cell, see its SHARES) is the precise measurement.
The studies are the benchmark's own first ones (its generator per scenario and seed count, seed 0).
A failing case names the verdict and the scenario: `python benchmarks/verdict_calibration.py --only
<scenario>` measures it precisely.
"""

from __future__ import annotations

import pandas as pd
import pytest

from benchmarks import verdict_calibration as vc

SEED = 0
STUDIES = 24  # per (scenario, seed count), fewer where a study costs more (about 2x and 5x a pair's):
FEWER = {"warmup-diagnostic": 20, "ar1-diagnostic": 20, "precursor-8sd": 20, "six-identical-zloss": 10,
         "zloss-0-90": 10}
CLAIM_KINDS = ("events", "more_stable_than", "no_clip_needed", "quantization", "transfer")


def seeds_of(case: vc.Case) -> tuple[int, ...]:
    """Effects at 12 seeds; nulls at 12, and claims on studies without a sweep at 5 too (they are cheap)."""
    if case.effect:
        return (vc.POWER_SEEDS,)
    cheap = vc.SCENARIOS[case.scenario].sweep == "none"
    return (5, vc.POWER_SEEDS) if cheap and case.kind in CLAIM_KINDS else (vc.POWER_SEEDS,)


# the six-architecture study is judged here for its own verdict, the 36-row ablation table; the sensitivity
# pair and memnls-anti-collapse nulls are checked on the nine two-architecture scenarios (the six-architecture
# rows of the benchmark's table, 25 studies a cell at about 6 s each at 12 seeds, are in
# harness/calibration/verdicts.csv and checked by the last test)
CHECKS = [(case, n_seeds) for case in vc.CASES for n_seeds in seeds_of(case)
          if not (case.scenario == "six-identical-zloss" and case.kind != "ablations")]


@pytest.fixture(scope="module")
def measured():
    """Every case's rate, each scenario's studies drawn and judged once per seed count."""
    by_seeds: dict[int, list[vc.Case]] = {}
    for case, n_seeds in CHECKS:
        by_seeds.setdefault(n_seeds, []).append(case)
    studies = {s: FEWER.get(s, STUDIES) for s in vc.SCENARIOS}
    tables = [vc.measure(cases, studies, [n_seeds], SEED) for n_seeds, cases in by_seeds.items()]
    return {(r.verdict, r.case, r.seeds): r for t in tables for r in t.itertuples(index=False)}


@pytest.mark.parametrize("case, n_seeds", CHECKS, ids=[f"{c.name}@{s}" for c, s in CHECKS])
def test_each_verdict_holds_its_error_rate(measured, case, n_seeds):
    row = measured[case.verdict, case.scenario, n_seeds]
    target = case.target
    about = (f"{case.kind} {case.verdict} on '{case.scenario}' ({vc.SCENARIOS[case.scenario].about}), "
             f"{n_seeds} seeds: {'power' if case.effect else 'false verdicts'} {row.rate:.1%} of {row.n_studies} "
             f"studies, target {'>=' if case.effect else '<='} {target:.0%}")
    assert vc.passes(case.effect, row.rate, target, row.n_studies), about


def test_the_benchmark_is_deterministic_and_a_subset_draws_the_same_studies():
    one = vc.measure(vc.select("identical"), 3, [5], seed=7)
    again = vc.measure(vc.select("sensitivity_pairs:identical"), 3, [5], seed=7)
    row = one[one["verdict"] == "sensitivity_pairs"].reset_index(drop=True)
    assert row.equals(again)


def test_the_synthetic_tables_have_the_aggregates_columns():
    """The generator writes what harness.aggregate writes: the contract's columns, and a resolved study."""
    from harness.contracts import EVENT_COLUMNS, ID_COLUMNS, METRIC_COLUMNS

    t = vc.draw_study(vc.SCENARIOS["precursor-8sd"], 3, vc.rng_for(SEED, "precursor-8sd", 3))
    assert list(t.trajectories.columns) == ID_COLUMNS + METRIC_COLUMNS
    assert list(t.events.columns) == ID_COLUMNS + EVENT_COLUMNS
    assert {"sweep_lr", "status", "steps_done", "n_params", "vocab_size", "data_name"} <= set(t.runs.columns)
    assert set(t.runs["variant"]) == set(t.study["variants"]) and len(t.study["variants"]) == len(vc.LRS)
    assert t.runs.groupby(["arch", "variant"]).size().eq(3).all()
    diagnostics = t.trajectories[t.trajectories["split"] == "train"]
    assert set(diagnostics["metric"]) == {"attn_logit_max/blocks.0.attn", "logz_mean"}
    assert set(diagnostics["step"]) <= set(range(5, 201, 5))  # the trainer's log steps (log_every 5)
    order = ["arch", "variant", "seed", "split", "metric", "step"]  # the aggregate's order
    assert t.trajectories.equals(t.trajectories.sort_values(order, kind="stable", ignore_index=True))
    # a study without diagnostics carries the validation loss only
    plain = vc.draw_study(vc.SCENARIOS["identical"], 3, vc.rng_for(SEED, "identical", 3))
    assert set(plain.trajectories["split"]) == {"val"}


@pytest.mark.parametrize("scenario", ["diverge-30", "failed-lr1", "transfer-published-share", "events-half-published"])
def test_the_runs_carry_the_scores_the_aggregate_merges(scenario):
    """runs holds harness.stats.run_scores' columns as the aggregate merges them (diverged, failed and
    pipeline runs included)."""
    from harness import stats

    t = vc.draw_study(vc.SCENARIOS[scenario], 4, vc.rng_for(SEED, scenario, 4))
    scores = stats.run_scores(t.trajectories, t.events, t.runs)
    mine = t.runs[list(scores.columns)]
    for column in scores.columns:
        expected, got = scores[column].tolist(), mine[column].tolist()
        assert all((pd.isna(a) and pd.isna(b)) or b == pytest.approx(a) for a, b in zip(expected, got)), column


def test_the_packaged_error_rates_cover_every_case_pass_and_reach_the_report():
    """harness/calibration/verdicts.csv is the benchmark's full table (written with --out): every case of
    the benchmark at 3, 5, 8 and 12 seeds, every null within its target, and the report's section prints it."""
    from harness.report.error_rates import error_rates_section, verdict_error_rates

    table = verdict_error_rates()
    assert set(zip(table["verdict"], table["case"])) == {(c.verdict, c.scenario) for c in vc.CASES}
    assert sorted(table["seeds"].unique()) == [3, 5, 8, 12]
    nulls = table[table["null_or_effect"] == vc.NULL]
    assert all(vc.passes(False, r.rate, r.target, r.n_studies) for r in nulls.itertuples()), \
        nulls[["verdict", "case", "seeds", "rate"]]
    assert nulls["n_studies"].min() >= 25
    section = error_rates_section()
    assert 'id="error-rates"' in section and f"Worst null: {nulls['rate'].max():.1%}" in section
    # no null's rate is significantly above 5%
    from scipy.stats import binomtest
    for r in nulls.itertuples():
        assert binomtest(round(r.rate * r.n_studies), r.n_studies, 0.05, alternative="greater").pvalue > 0.01, r
    assert "found in 80% of studies at" in section


def test_looks_hold_the_error_rate_that_deciding_at_every_look_loses():
    """Over a seed budget's five looks (3 to 11 seeds), a claim on identical architectures is decided as
    the workflow decides it (each look at its spent level) and, for comparison, at 5% at every look; an
    effect is still found, at fewer seeds than the budget's max on average."""
    budget = vc.SeedBudget(3, 2, 11)
    null = vc.measure_looks(vc.select("memnls-anti-collapse:identical"), 12, budget)
    effect = vc.measure_looks(vc.select("sensitivity_pairs:sensitivity+0.3"), 6, budget)
    assert list(null.columns) == vc.LOOKS_COLUMNS and len(null) == 1
    assert null["rate"].iloc[0] <= null["rate_unspent"].iloc[0]
    assert null["rate"].iloc[0] <= 0.05 + 2 * (0.05 * 0.95 / 12) ** 0.5
    assert effect["rate"].iloc[0] >= 0.8 and effect["mean_seeds"].iloc[0] < 11
