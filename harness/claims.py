"""Published claims and headline figures, as data with attribution, and their test against a study.

A published comparison is usually one seed per architecture; the harness reruns it over several
seeds, so each claim becomes "k of n seeds": a rate with a Wilson interval, and a plain sentence
that says when the study is too short, or on other data, to test the claim at all. No torch here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from harness.contracts import CLAIM_COLUMNS
from scipy.stats import binomtest

from harness.stats import ALPHA, wilson
from harness.text import UNITS, bits, num, perplexity, spread, step


@dataclass(frozen=True)
class Headline:
    """One architecture's published validation figures (perplexity per token of the study's kind)."""

    arch: str
    final_ppl: float  # the last evaluation, as published
    min_ppl: float
    min_step: int
    collapse_start: int | None = None  # published collapse window (None = no collapse)
    collapse_end: int | None = None
    peak_ppl: float | None = None  # highest validation perplexity inside the collapse window
    peak_step: int | None = None


@dataclass(frozen=True)
class Claim:
    """A published statement about one architecture's stability, testable as k of n seeds."""

    arch: str
    statement: str
    expect_collapse: bool  # True: the claim is that runs collapse; False: that they do not
    counts: tuple[str, ...]  # event types that count as the claimed (or excluded) event
    horizon: int  # a run must train at least this many steps to test the claim
    onset_window: tuple[int, int] | None = None  # a claimed event counts only with its onset in here


@dataclass(frozen=True)
class PublishedStudy:
    key: str
    title: str
    source: str  # attribution: who published it and where
    data: str  # dataset name as the harness spells it
    tokens: str  # "bytes" | "chars"
    steps: int
    seeds: int  # seeds per architecture in the publication
    headlines: tuple[Headline, ...]
    claims: tuple[Claim, ...]


PUBLISHED: dict[str, PublishedStudy] = {
    "seed-enwik8-70m": PublishedStudy(
        key="seed-enwik8-70m",
        title="Memory-NLS vs a matched 70M transformer on enwik8 (50,000 steps)",
        source="Memory-NLS authors, qrv0/triad model cards and outputs/scale_up/*/history.json, first release",
        data="enwik8",
        tokens="bytes",
        steps=50_000,
        seeds=1,
        headlines=(
            Headline(arch="memnls", final_ppl=4.27, min_ppl=3.86, min_step=48_000),
            Headline(arch="transformer", final_ppl=4.87, min_ppl=2.54, min_step=22_500,
                     collapse_start=28_000, collapse_end=34_000, peak_ppl=27.17, peak_step=33_500),
        ),
        claims=(
            Claim(arch="memnls", statement="memnls: no catastrophic event in 50k steps",
                  expect_collapse=False, counts=("collapse", "divergence"), horizon=50_000),
            # the published collapse runs from 28,000 to 34,000: a shorter run cannot show it whole
            # "at ~28k": a collapse counts with its onset within 25% of 28,000 steps
            # a run that collapses and then diverges, or diverges inside the window, shows the claimed failure
            Claim(arch="transformer", statement="matched 70M transformer collapses at ~28k steps",
                  expect_collapse=True, counts=("collapse", "divergence"), horizon=34_000,
                  onset_window=(21_000, 35_000)),
        ),
    ),
}

HEADLINE_COLUMNS = ["arch", "figure", "published", "measured"]
FALSE_ALARM_RATE = 0.02
"""The share of healthy runs the detector may flag: the target benchmarks/collapse_calibration.py measures
and tests/test_collapse_calibration.py enforces under every noise model. A claim's events count as real
only beyond it."""
MIN_SEEDS = 3  # no verdict from fewer runs, whatever they show
TYPICAL = 0.5  # "runs collapse" / "runs do not" speak of the typical run: the rate's side of 1/2


def published(key: str) -> PublishedStudy:
    if key not in PUBLISHED:
        raise ValueError(f"unknown published study {key!r}: choose one of {sorted(PUBLISHED)} (study key 'published')")
    return PUBLISHED[key]


def relevant(study: dict) -> list[PublishedStudy]:
    """The study's own published reference, or else every publication with a claim about one of its archs."""
    if study.get("published"):
        return [published(study["published"])]
    archs = set(study.get("archs", {}))
    return [p for _, p in sorted(PUBLISHED.items()) if archs & {c.arch for c in p.claims}]


def _runs_with_event(runs: pd.DataFrame, events: pd.DataFrame, claim: Claim,
                     horizon: int) -> tuple[int, int, list[int], list[str]]:
    """(k, n, onsets that count, what else happened) over the runs that can test the claim.

    n counts the runs of the arch that trained to ``horizon`` (the claim's), and those that diverged (the model
    broke: a run that stops there is an outcome, not a gap). A crash, or a run stopped short of the
    horizon, says nothing and leaves n. A divergence (an event, or a diverged run's last step) inside the
    claim's window counts as the claimed catastrophe when the claim counts divergence."""
    arch_runs = runs[(runs["arch"] == claim.arch) & (runs["status"] != "failed")]
    reached = pd.to_numeric(arch_runs.get("steps_done", pd.Series(horizon, index=arch_runs.index)),
                            errors="coerce").fillna(horizon) >= horizon
    testing = arch_runs[reached | (arch_runs["status"] == "diverged")]
    seeds = set(testing["seed"].astype(int))
    hit = events[(events["arch"] == claim.arch) & events["type"].isin(claim.counts) & events["seed"].isin(seeds)]
    hit = hit.assign(onset_step=hit["onset_step"].astype(float))
    if "divergence" in claim.counts:  # a diverged run's end is a divergence, whether or not an event says so
        ends = testing[testing["status"] == "diverged"]
        ends = pd.DataFrame({"seed": ends["seed"].astype(int),
                             "onset_step": pd.to_numeric(ends.get("steps_done"), errors="coerce")})
        hit = pd.concat([hit[["seed", "onset_step"]], ends], ignore_index=True)
    elsewhere: list[str] = []
    if claim.onset_window is not None:
        start, end = claim.onset_window
        inside = hit["onset_step"].between(start, end)
        elsewhere = [f"seed {int(r.seed)} at step {int(r.onset_step):,}" for r in hit[~inside].dropna().itertuples()]
        hit = hit[inside]
    onsets = sorted({int(s) for s in hit["onset_step"].dropna()})
    return hit["seed"].nunique(), len(testing), onsets, sorted(set(elsewhere))


def _why_untestable(study: dict, pub: PublishedStudy, claim: Claim, steps: int) -> str | None:
    reasons = []
    data = study.get("data", {}).get("name")
    if data != pub.data:
        reasons.append(f"it trains on {data}, not {pub.data}")
    tokens = study.get("data", {}).get("tokens")
    if tokens != pub.tokens:
        reasons.append(f"its tokens are {tokens}, not {pub.tokens}")
    if steps < claim.horizon:
        reasons.append(f"its runs train {steps:,} steps, and a test of this claim needs at least {claim.horizon:,}")
    if study.get("smoke"):
        reasons.append("it is a smoke study")
    return "; ".join(reasons) or None


def evaluate(study: dict, runs: pd.DataFrame, events: pd.DataFrame) -> pd.DataFrame:
    """One row per published claim whose architecture the study ran: verdict, k of n, Wilson interval.

    ``runs`` needs arch, seed, status; ``events`` needs arch, seed, type, onset_step. A failed run (a crash)
    is left out of n: it says nothing about stability.
    """
    rows = []
    steps = int(study["recipe"]["steps"])
    for pub in relevant(study):
        for claim in pub.claims:
            if claim.arch not in set(runs["arch"]):
                continue
            untestable = _why_untestable(study, pub, claim, steps)
            # a study that cannot test the claim still says what its runs did, however short
            k, n, onsets, elsewhere = _runs_with_event(runs, events, claim, 0 if untestable else claim.horizon)
            lo, hi = wilson(k, n)  # 95% Wilson: sensible at k = 0 and k = n, unlike the normal interval
            kind = "with a " + " or ".join(claim.counts)
            window = (f" with onset at steps {claim.onset_window[0]:,}-{claim.onset_window[1]:,}"
                      if claim.onset_window else "")
            test = (f"seeds {kind} event{window} (k of n runs that reached step {claim.horizon:,} or diverged), "
                    f"95% Wilson interval, one-sided binomial test against the detector's false-alarm rate "
                    f"{FALSE_ALARM_RATE:.0%}; needs {pub.data} {pub.tokens} and at least {claim.horizon:,} steps")
            measured = (f"{k} of {n} seeds had a {' or '.join(claim.counts)} event{window} in {steps:,} steps"
                        + (f" (onsets at steps {', '.join(f'{s:,}' for s in onsets)})" if onsets else "")
                        + (f"; outside that window: {', '.join(elsewhere)}" if elsewhere else ""))
            if untestable:
                verdict = "cannot test"
                sentence = f"This study cannot test the claim: {untestable}. Measured here: {measured}."
            elif n == 0:
                verdict, sentence = "no runs", ("No run of this architecture reached the claim's horizon (or each "
                                                "failed), so nothing was measured.")
            else:
                verdict, sentence = _verdict(claim, k, n, lo, hi, measured)
            rows.append({"published": pub.key, "arch": claim.arch, "claim": claim.statement,
                         "source": pub.source, "verdict": verdict, "k": k, "n": n,
                         "rate": k / n if n else float("nan"), "lo": lo, "hi": hi, "steps": steps,
                         "test": test, "sentence": sentence})
    return pd.DataFrame(rows, columns=CLAIM_COLUMNS)


def decide(expect_event: bool, k: int, n: int) -> str:
    """The verdict on k of n runs with the claimed event, given only when the evidence separates.

    A claim that runs have an event (or have none) is about the typical run, and a detector's false alarm
    must not decide it: events count as real only when a one-sided binomial test rejects the detector's
    false-alarm rate (p <= ALPHA), and a rate is "typical" or "atypical" only when its 95% Wilson interval
    lies wholly above or below 1/2. Fewer than MIN_SEEDS runs give no verdict."""
    if n < MIN_SEEDS:
        return "inconclusive"
    lo, hi = wilson(k, n)
    beyond_noise = binomtest(k, n, FALSE_ALARM_RATE, alternative="greater").pvalue <= ALPHA
    if expect_event:
        if beyond_noise and lo > TYPICAL:
            return "reproduced"
        if hi < TYPICAL:
            return "partly reproduced" if beyond_noise else "not reproduced"
        return "inconclusive"
    if beyond_noise:
        return "contradicted"
    return "consistent" if hi < TYPICAL else "inconclusive"


def seeds_to_settle(expect_event: bool, k: int, n: int, most: int = 50) -> int | None:
    """The fewest runs that would give a verdict if the rate seen so far held (None: more than ``most``)."""
    for m in range(max(n, 1) + 1, most + 1):
        if decide(expect_event, round(m * k / n) if n else 0, m) != "inconclusive":
            return m
    return None


def _verdict(claim: Claim, k: int, n: int, lo: float, hi: float, measured: str) -> tuple[str, str]:
    verdict = decide(claim.expect_collapse, k, n)
    sentence = f"{measured}; 95% Wilson interval of the rate {lo:.2f} to {hi:.2f}."
    if verdict == "inconclusive":
        settle = seeds_to_settle(claim.expect_collapse, k, n)
        sentence += (f" Inconclusive: too few runs to tell the claimed behaviour from chance and from the "
                     f"detector's false alarms ({FALSE_ALARM_RATE:.0%} of healthy runs); "
                     + (f"{settle} seeds would settle it if this rate held." if settle else
                        "at this rate even 50 seeds would not settle it."))
    elif not claim.expect_collapse and verdict == "consistent" and k:
        sentence += f" The {k} event(s) are within what the detector's false alarms explain."
    return verdict, sentence


def headlines(study: dict, runs: pd.DataFrame, events: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, Any] | None]:
    """The study's published reference figures beside the measured ones (HEADLINE_COLUMNS), and what
    the report says about the publication (title, seeds, steps, data, source, how the study differs).

    ``runs`` needs arch, status, final_loss, final_smoothed_loss, best_loss, best_step; ``events`` arch,
    seed, type, onset_step, peak_value, peak_step. (empty table, None) when the study names no publication.
    """
    if not study.get("published"):
        return pd.DataFrame(columns=HEADLINE_COLUMNS), None
    pub = published(study["published"])
    unit = UNITS.get(pub.tokens, "token")
    rows = []

    def with_bits(ppl: float) -> str:
        return f"{num(ppl)} ({num(bits(ppl))} bits/{unit})"

    for h in pub.headlines:
        mine = runs[(runs["arch"] == h.arch) & (runs["status"] != "failed")]
        if mine.empty:
            rows.append([h.arch, "any", "", "not run in this study"])
            continue
        final, smoothed, best = (mine[c].map(perplexity) for c in ("final_loss", "final_smoothed_loss", "best_loss"))
        rows.append([h.arch, "final val perplexity (last evaluation)", with_bits(h.final_ppl), spread(final)])
        rows.append([h.arch, "final val perplexity (smoothed, last 3 evaluations)", "not published", spread(smoothed)])
        rows.append([h.arch, "minimum val perplexity", f"{with_bits(h.min_ppl)} at step {h.min_step:,}",
                     f"{spread(best)}; at steps {', '.join(step(s) for s in mine['best_step'])}"])
        collapses = events[(events["arch"] == h.arch) & (events["type"] == "collapse")]
        claimed = "none" if h.collapse_start is None else (
            f"steps {h.collapse_start:,}–{h.collapse_end:,}, peak {num(h.peak_ppl)} at step {h.peak_step:,}")
        measured = f"{collapses['seed'].nunique()} of {len(mine)} seeds"
        if len(collapses):
            measured += ": " + "; ".join(
                f"seed {int(e.seed)} onset {step(e.onset_step)}, peak {num(e.peak_value)} at {step(e.peak_step)}"
                for e in collapses.itertuples(index=False))
        rows.append([h.arch, "collapse", claimed, measured])
    data, steps = study.get("data", {}).get("name"), int(study.get("recipe", {}).get("steps", 0))
    differs = [f"{data} (not {pub.data})"] if data != pub.data else []
    differs += [f"{steps:,} steps (not {pub.steps:,})"] if steps != pub.steps else []
    about = {"title": pub.title, "seeds": pub.seeds, "steps": pub.steps, "data": pub.data, "source": pub.source,
             "differs": differs}
    return pd.DataFrame(rows, columns=HEADLINE_COLUMNS), about
