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
from harness.stats import wilson
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
            Claim(arch="transformer", statement="matched 70M transformer collapses at ~28k steps",
                  expect_collapse=True, counts=("collapse",), horizon=34_000, onset_window=(21_000, 35_000)),
        ),
    ),
}

HEADLINE_COLUMNS = ["arch", "figure", "published", "measured"]


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


def _runs_with_event(runs: pd.DataFrame, events: pd.DataFrame,
                     claim: Claim) -> tuple[int, int, list[int], list[int]]:
    """(k, n, onsets that count, onsets outside the claim's window): n = runs of the arch that trained
    (a crash says nothing about stability)."""
    trained = runs[(runs["arch"] == claim.arch) & (runs["status"] != "failed")]
    hit = events[(events["arch"] == claim.arch) & events["type"].isin(claim.counts)]
    elsewhere: list[int] = []
    if claim.onset_window is not None:
        start, end = claim.onset_window
        inside = hit["onset_step"].between(start, end)
        elsewhere = sorted(int(s) for s in hit.loc[~inside, "onset_step"].dropna())
        hit = hit[inside]
    seeds_hit = set(hit["seed"].astype(int))
    if "divergence" in claim.counts:
        seeds_hit |= set(trained.loc[trained["status"] == "diverged", "seed"].astype(int))
    seeds_hit &= set(trained["seed"].astype(int))
    onsets = sorted(int(s) for s in hit.loc[hit["seed"].isin(seeds_hit), "onset_step"].dropna())
    return len(seeds_hit), len(trained), onsets, elsewhere


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
            k, n, onsets, elsewhere = _runs_with_event(runs, events, claim)
            lo, hi = wilson(k, n)  # 95% Wilson: sensible at k = 0 and k = n, unlike the normal interval
            kind = "with a " + " or ".join(claim.counts)
            window = (f" with onset at steps {claim.onset_window[0]:,}-{claim.onset_window[1]:,}"
                      if claim.onset_window else "")
            test = (f"seeds {kind} event{window} (k of n trained runs), 95% Wilson interval; "
                    f"needs {pub.data} {pub.tokens} and at least {claim.horizon:,} steps")
            untestable = _why_untestable(study, pub, claim, steps)
            measured = (f"{k} of {n} seeds had a {' or '.join(claim.counts)} event{window} in {steps:,} steps"
                        + (f" (onsets at steps {', '.join(f'{s:,}' for s in onsets)})" if onsets else "")
                        + (f"; outside that window, onsets at steps {', '.join(f'{s:,}' for s in elsewhere)}"
                           if elsewhere else ""))
            if n == 0:
                verdict, sentence = "no runs", "Every run of this architecture failed, so nothing was measured."
            elif untestable:
                verdict = "cannot test"
                sentence = f"This study cannot test the claim: {untestable}. Measured here: {measured}."
            else:
                verdict, sentence = _verdict(claim, k, n, lo, hi, measured)
            rows.append({"published": pub.key, "arch": claim.arch, "claim": claim.statement,
                         "source": pub.source, "verdict": verdict, "k": k, "n": n,
                         "rate": k / n if n else float("nan"), "lo": lo, "hi": hi, "steps": steps,
                         "test": test, "sentence": sentence})
    return pd.DataFrame(rows, columns=CLAIM_COLUMNS)


def _verdict(claim: Claim, k: int, n: int, lo: float, hi: float, measured: str) -> tuple[str, str]:
    interval = f"95% Wilson interval of the rate {lo:.2f} to {hi:.2f}"
    if claim.expect_collapse:
        verdict = "reproduced" if k == n else "not reproduced" if k == 0 else "partly reproduced"
        sentence = f"{measured}; {interval}."
        if k == 0:
            sentence += f" With {n} seeds a true collapse rate up to {hi:.2f} is still possible."
    else:
        verdict = "consistent" if k == 0 else "contradicted"
        sentence = f"{measured}; {interval}."
        if k == 0:
            sentence += f" No event seen, yet with {n} seeds the event rate could still be as high as {hi:.2f}."
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
