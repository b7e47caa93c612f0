"""Published claims and headline figures as data (harness/claims.yaml, plus a study's own file), and
their test against a study's runs. No torch here.

A published claim usually rests on one run with one seed; the harness reruns it over several seeds and
gives a verdict only where the evidence separates: events count beyond the detector's false-alarm rate,
and a number is judged by a 95% interval whose coverage holds at the seeds a study has (exact for rates,
distribution-free for medians); fewer than MIN_SEEDS runs decide nothing. A claim's numbers are
compared in its own units (bits per byte) and on a scale-free statistic where the published one
depends on the loss level. Each claim gets two verdicts: at its published setting (when the study
matches its data, tokens, steps and model size) and at proxy scale (when the claim is general and the
study holds the runs that test it, labelled with the scale it was tested at). "cannot test" names
exactly what is missing; a claim's `conditions` the study does not meet turn a shortfall into
"inconclusive", never "contradicted".
"""

from __future__ import annotations

import json
import math
from typing import Any, Callable

import numpy as np
import pandas as pd
from scipy.stats import binomtest, fisher_exact

from harness.claim_data import (Claim, Evidence, FewSeeds, Outcome, load, published,  # noqa: F401 (the API)
                                recipe_variant)
from harness.contracts import BASE_VARIANT, CLAIM_COLUMNS
from harness.stability import PAIR_MIN_VALUES, SENSITIVITY_TEST, mean_interval
from harness.stats import ALPHA, FALSE_ALARM_RATE, clopper_pearson, median_interval, median_min_seeds
from harness.text import UNITS, bits, num, parse_scale, perplexity, plain, scale_text, spread, step
from harness.variants import own_values, setting_name, value_text, variant_name, variant_of

HEADLINE_COLUMNS = ["arch", "figure", "published", "measured"]
MIN_SEEDS = 3  # no verdict from fewer runs, whatever they show
TYPICAL = 0.5  # "runs collapse" / "runs do not" speak of the typical run: the rate's side of 1/2


# -------------------------------------------------------------------------------------- verdict rules


def level_text(alpha: float) -> str:
    """The confidence level of an interval at ``alpha``, as a sentence says it: 95%, 98.6%."""
    return f"{100 * (1 - alpha):.3g}%"


def decide(expect_event: bool, k: int, n: int, alpha: float = ALPHA) -> str:
    """The verdict on k of n runs with the claimed event, given only when the evidence separates.

    A claim that runs have an event (or have none) is about the typical run, and a detector's false alarm
    must not decide it: events count as real only when a one-sided binomial test rejects the detector's
    false-alarm rate (p <= alpha), and a rate is "typical" or "atypical" only when its exact
    (Clopper-Pearson) 1 - alpha interval lies wholly above or below 1/2, so at a rate of exactly 1/2 each
    side's verdict comes at most alpha / 2 of the time at any n (Wilson's interval gave 6.25% at n = 4).
    At 0.05 that takes 6 seeds: 6 of 6 or 0 of 6. Fewer than MIN_SEEDS runs give no verdict."""
    if n < MIN_SEEDS:
        return "inconclusive"
    lo, hi = clopper_pearson(k, n, 1 - alpha)
    beyond_noise = binomtest(k, n, FALSE_ALARM_RATE, alternative="greater").pvalue <= alpha
    if expect_event:
        if beyond_noise and lo > TYPICAL:
            return "reproduced"
        if hi < TYPICAL:
            return "partly reproduced" if beyond_noise else "not reproduced"
        return "inconclusive"
    if beyond_noise:
        return "contradicted"
    return "consistent" if hi < TYPICAL else "inconclusive"


def seeds_to_settle(expect_event: bool, k: int, n: int, most: int = 50, alpha: float = ALPHA) -> int | None:
    """The fewest runs that would give a verdict if the rate seen so far held (None: more than ``most``)."""
    for m in range(max(n, 1) + 1, most + 1):
        if decide(expect_event, round(m * k / n) if n else 0, m, alpha) != "inconclusive":
            return m
    return None


def _inconclusive_text(expect_event: bool, k: int, n: int, alpha: float) -> str:
    settle = seeds_to_settle(expect_event, k, n, alpha=alpha)
    return (f" Inconclusive: too few runs to tell the claimed behaviour from chance and from the detector's "
            f"false alarms ({FALSE_ALARM_RATE:.0%} of healthy runs); "
            + (f"{settle} seeds would settle it if this rate held." if settle else
               "at this rate even 50 seeds would not settle it."))


# -------------------------------------------------------------------------------------- the kinds


def _runs_with_event(evidence: Evidence, arch: str, types: tuple[str, ...], horizon: int,
                     window: tuple[int, int] | None = None) -> tuple[int, int, list[int], list[str]]:
    """(k, n, onsets that count, what else happened) over the runs of ``arch`` that can test a claim.

    n counts the runs that trained to ``horizon``, and those that diverged (the model broke: a run that
    stops there is an outcome, not a gap). A crash, or a run stopped short of the horizon, says nothing
    and leaves n. A diverged run's end counts as a divergence when the claim counts divergence."""
    runs, events = evidence.runs, evidence.events
    arch_runs = runs[(runs["arch"] == arch) & (runs["status"] != "failed")]
    done = pd.to_numeric(arch_runs["steps_done"], errors="coerce") if "steps_done" in arch_runs else None
    reached = done.fillna(horizon) >= horizon if done is not None else pd.Series(True, index=arch_runs.index)
    testing = arch_runs[reached | (arch_runs["status"] == "diverged")]
    tested = set(zip(testing["variant"], testing["seed"].astype(int)))
    hit = events[(events["arch"] == arch) & events["type"].isin(types)]
    hit = hit[np.array([key in tested for key in zip(hit["variant"], hit["seed"].astype(int))], dtype=bool)]
    hit = hit[["variant", "seed", "onset_step"]].astype({"onset_step": float})
    if "divergence" in types:  # a diverged run's end is a divergence, whether or not an event says so
        ends = testing[testing["status"] == "diverged"]
        ends = pd.DataFrame({"variant": ends["variant"], "seed": ends["seed"].astype(int),
                             "onset_step": pd.to_numeric(ends.get("steps_done"), errors="coerce")})
        hit = pd.concat([hit, ends], ignore_index=True)
    elsewhere: list[str] = []
    if window is not None:
        inside = hit["onset_step"].between(*window)
        elsewhere = [f"seed {int(r.seed)} at step {int(r.onset_step):,}" for r in hit[~inside].dropna().itertuples()]
        hit = hit[inside]
    onsets = sorted({int(s) for s in hit["onset_step"].dropna()})
    return len(set(zip(hit["variant"], hit["seed"]))), len(testing), onsets, sorted(set(elsewhere))


def _events(claim: Claim, evidence: Evidence, at_setting: bool) -> Outcome | str:
    (arch,) = claim.archs
    p = claim.params
    types, expect_event = tuple(p["types"]), p["expect"] == "all"
    horizon = p.get("horizon", evidence.steps) if at_setting else evidence.steps
    window = tuple(p["window"]) if at_setting and "window" in p else None
    k, n, onsets, elsewhere = _runs_with_event(evidence, arch, types, horizon, window)
    if n == 0:
        return f"needs runs of {arch} that reach step {horizon:,} (or diverge)"
    where = f" with onset at steps {window[0]:,}-{window[1]:,}" if window else ""
    lo, hi = clopper_pearson(k, n, 1 - evidence.alpha)
    verdict = decide(expect_event, k, n, evidence.alpha)
    sentence = (f"{k} of {n} seeds of {arch} had a {' or '.join(types)} event{where} in {horizon:,} steps"
                + (f" (onsets at steps {', '.join(f'{s:,}' for s in onsets)})" if onsets else "")
                + (f"; outside that window: {', '.join(elsewhere)}" if elsewhere else "")
                + f"; exact (Clopper-Pearson) {level_text(evidence.alpha)} interval of the rate {lo:.2f} to {hi:.2f}.")
    if verdict == "inconclusive":
        sentence += _inconclusive_text(expect_event, k, n, evidence.alpha)
    elif verdict == "consistent" and k:
        sentence += f" The {k} event(s) are within what the detector's false alarms explain."
    return Outcome(verdict, sentence, k, n, k / n, lo, hi)


def _rates(claim: Claim, evidence: Evidence) -> tuple[tuple[int, int], tuple[int, int]]:
    return tuple(_runs_with_event(evidence, arch, tuple(claim.params["types"]), evidence.steps)[:2]
                 for arch in claim.archs)


def _compare_rates(claim: Claim, ka: int, na: int, kb: int, nb: int, verdicts: tuple[str, str],
                   alpha: float) -> Outcome:
    """A's event rate against B's over seeds (one run each): one two-sided Fisher exact test at alpha, its
    direction the sign of the rate difference (verdicts[0] when A's is lower, verdicts[1] when higher).
    Two one-sided tests at ALPHA each, as before, erred twice as often under the null."""
    a, b = claim.archs
    p = float(fisher_exact([[ka, na - ka], [kb, nb - kb]]).pvalue)
    difference = ka / na - kb / nb
    verdict = "inconclusive" if p > alpha or difference == 0 else verdicts[0] if difference < 0 else verdicts[1]
    sentence = (f"{a}: {ka} of {na} seeds with a {' or '.join(claim.params['types'])} event; {b}: {kb} of {nb}; "
                f"two-sided Fisher exact p = {p:.3g}.")
    if verdict == "inconclusive":
        sentence += " Inconclusive: the rates do not separate at these seed counts."
    return Outcome(verdict, sentence, ka, na, difference, math.nan, math.nan)


def _more_stable(claim: Claim, evidence: Evidence, at_setting: bool) -> Outcome | str:
    """With an lr sweep (the stability study) the claim's one declared test is learning-rate sensitivity
    (Wortsman et al. 2023): A's per-seed sensitivity against B's on their common lr grid
    (harness.stability.pair_sensitivities), the two-sided test of harness.stability.sensitivity_test at
    ALPHA (its raw p: this claim is one
    pre-declared comparison; the table's Holm covers the exploratory all-pairs table). The unstable runs
    over the grid are described, not tested: runs at several lrs of one seed are not independent
    replicates. Without a sweep: the event rates over the seeds at the study's recipe (``_compare_rates``)."""
    a, b = claim.archs
    pairs = evidence.stability.get("sensitivity_pairs")
    if pairs is None or pairs.empty:
        recipe = evidence.variant(evidence.recipe) if evidence.recipe else None
        if recipe is None:
            return "needs an lr sweep (sweep.lr) or a variant at the study's own recipe"
        (ka, na), (kb, nb) = _rates(claim, recipe)
        if min(na, nb) < MIN_SEEDS:
            return FewSeeds(f"needs at least {MIN_SEEDS} seeds of each of {a} and {b}")
        return _compare_rates(claim, ka, na, kb, nb, ("supported", "contradicted"), evidence.alpha)
    setting = _recipe_setting(evidence)
    pair = pairs[(pairs["setting"] == setting) & pairs["arch_a"].isin(claim.archs) & pairs["arch_b"].isin(claim.archs)]
    if pair.empty:
        return f"needs an lr sweep of both {a} and {b} in the setting {setting}"
    row = pair.iloc[0]
    sign = 1 if row["arch_a"] == a else -1  # difference of A minus B
    difference, p = sign * float(row["difference"]), float(row["p"])
    n_a, n_b = (int(row["n_a"]), int(row["n_b"]))[::sign]
    if min(n_a, n_b) < MIN_SEEDS or math.isnan(p):
        return FewSeeds(f"needs at least {PAIR_MIN_VALUES + 1} seeds of each of {a} and {b} with a final loss at "
                        f"every learning rate of their common grid (has {n_a} and {n_b}; the first seeds only choose "
                        "the optimum)")
    verdict = "inconclusive" if not p <= evidence.alpha else "supported" if difference < 0 else "contradicted"
    sentence = (f"Learning-rate sensitivity (Wortsman et al. 2023; each seed's loss over the grid above its loss at "
                f"the learning rate best for both architectures' earlier seeds) of {a} minus that of {b}: "
                f"{difference:+.3f} nats over {int(row['n_lrs'])} common learning rates, {n_a} and {n_b} seeds "
                f"(two-sided {SENSITIVITY_TEST}, p = {p:.3g}).")
    if row.get("missing"):
        sentence += f" Left out: {row['missing']}."
    curves = evidence.stability.get("lr_curves")
    if curves is not None and not curves.empty:
        grid = curves[curves["setting"] == setting]
        counts = {arch: (int(g["n_unstable"].sum()), int(g["n"].sum())) for arch, g in grid.groupby("arch")}
        if a in counts and b in counts:
            sentence += (f" Unstable runs over the grid (described, not tested): {a} {counts[a][0]} of {counts[a][1]}, "
                         f"{b} {counts[b][0]} of {counts[b][1]}.")
    if verdict == "inconclusive":
        sentence += " Inconclusive: the sensitivities do not separate at these seed counts."
    return Outcome(verdict, sentence, math.nan, min(n_a, n_b), difference, math.nan, math.nan)


def _setting_of(evidence: Evidence, variant: str) -> str:
    return setting_name((evidence.study.get("variants") or {}).get(variant, {}))


def _recipe_setting(evidence: Evidence) -> str:
    """The setting (variant without its lr) at the study's own recipe and switches."""
    return setting_name(own_values(evidence.study))


def _no_clip(claim: Claim, evidence: Evidence, at_setting: bool) -> Outcome | str:
    """A's unstable-seed rate against the reference architecture B's, both trained without clipping at the
    study's own recipe otherwise: the study's runs when its recipe has grad_clip 0 (in a sweep, its
    own-recipe variant), or the variant of a grad_clip sweep that is the study's own recipe but for
    grad_clip 0. Not the whole grid: at a learning rate far above the recipe's every architecture breaks,
    with or without clipping. "Prevents gradient explosion without clipping" is a comparison: A's rate
    alone, 0 of 4 say, says nothing when B's is 0 of 4 too (unclipped training at that recipe is simply
    stable), so the claim is supported only when A's rate is lower than B's."""
    a, b = claim.archs
    unclipped = {**own_values(evidence.study), **({"grad_clip": 0} if "grad_clip" in (evidence.study.get("sweep") or {})
                                                  else {})}
    variant = variant_of(evidence.study, unclipped)
    clipped = float(evidence.study.get("recipe", {}).get("grad_clip", 1.0)) != 0 and "grad_clip" not in unclipped
    if clipped or variant is None:
        return (f"needs a grad_clip=0 variant of {a} and {b} at the study's own recipe "
                f"({variant_name({**unclipped, 'grad_clip': 0})})")
    (ka, na), (kb, nb) = _rates(claim, evidence.variant(variant))
    if min(na, nb) < MIN_SEEDS:
        return FewSeeds(f"needs at least {MIN_SEEDS} trained seeds of each of {a} and {b} without gradient clipping")
    outcome = _compare_rates(claim, ka, na, kb, nb, ("supported", "contradicted"), evidence.alpha)
    where = "" if variant == BASE_VARIANT else f" (variant {variant})"
    outcome.sentence = f"Without gradient clipping{where}, {outcome.sentence}"
    return outcome


ASCII_CORPORA = frozenset({"tinyshakespeare"})
"""Registry corpora whose file is plain ASCII (TinyShakespeare has no byte above 127), so that one of its
character tokens is one byte. enwik8 is UTF-8 with multi-byte characters: a character token there has
no fixed number of bytes, nor has a local text file the harness knows nothing about."""


def bytes_per_token(data: dict) -> float | None:
    """Bytes per token of a study's data ({name, tokens}); None when the harness cannot know it."""
    if data.get("tokens") == "bytes":
        return 1.0
    if data.get("tokens") == "chars" and data.get("name") in ASCII_CORPORA:
        return 1.0  # an ASCII character is one byte
    return None


def _per_byte_text(data: dict) -> str:
    """How bits per token became bits per byte, in words."""
    return ("byte tokens: bits per token = bits per byte" if data.get("tokens") == "bytes" else
            f"character tokens of ASCII {data.get('name')}: 1 character = 1 byte")


def judge_number(lo: float, hi: float, params: dict) -> str:
    """An interval against a claimed number (bits per byte). A point claim (``about`` +- ``tolerance``) is
    supported when the interval lies within the band and contradicted when it lies wholly outside it, so
    +0.0025 is no contradiction of "+0.002"; a bound (``at_most``) is supported when the interval's upper
    end is below it and contradicted when its lower end is above it. No interval, no verdict."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return "inconclusive"
    if "about" in params:
        low, high = params["about"] - params["tolerance"], params["about"] + params["tolerance"]
        return "supported" if low <= lo and hi <= high else "contradicted" if hi < low or lo > high else "inconclusive"
    bound = params["at_most"]
    return "supported" if hi < bound else "contradicted" if lo > bound else "inconclusive"


def quantization_verdict(per_seed: np.ndarray, params: dict, alpha: float = ALPHA) -> tuple[str, float, float, float]:
    """(verdict, median, lo, hi) of per-seed increases (bits per byte) against a quantization claim: the
    median over seeds with its distribution-free 1 - alpha interval (harness.stats.median_interval), whose
    coverage holds for skewed increases too, where a t interval on 3-5 of them does not."""
    median, lo, hi = median_interval(per_seed, 1 - alpha)
    return judge_number(lo, hi, params), median, lo, hi


def _claimed_text(params: dict) -> str:
    if "about" in params:
        return f"about {params['about']:+.4f} (within {params['tolerance']:.4f})"
    return f"at most {params['at_most']:+.4f}"


def _too_few_text(n: int, alpha: float) -> str:
    needed = median_min_seeds(1 - alpha)
    return (f" Inconclusive: a distribution-free {level_text(alpha)} interval of the median needs {needed} seeds "
            f"(this study: {n})." if n < needed else "")


def _quantization(claim: Claim, evidence: Evidence, at_setting: bool) -> Outcome | str:
    """The loss increase at b bits (harness.quantize's bits per token, converted to the claim's bits per
    byte), per seed at its final weights, or its growth over the steps the weights were kept at."""
    (arch,) = claim.archs
    p = claim.params
    b = p["bits"]
    q = evidence.quantization
    if q is None or q.empty or not (q["bits"] == b).any():
        return f"needs the quantization stage at {b} bits (study key quantize.bits)"
    mine = q[(q["arch"] == arch) & (q["bits"] == b)]
    if mine.empty:
        return f"needs quantization results of {arch} at {b} bits"
    data = evidence.study.get("data", {})
    per_byte = bytes_per_token(data)
    if p.get("grows_with_training"):
        return _growth(claim, mine, per_byte, data, evidence.alpha)
    if per_byte is None:
        return (f"needs bytes per token of this tokenizer ({data.get('name')} {data.get('tokens')}): the claim "
                "is in bits per byte, the study measures bits per token")
    final = mine[mine["step"] == mine.groupby("seed")["step"].transform("max")]
    per_seed = final.groupby("seed")["bpt_increase"].mean().to_numpy() / per_byte
    verdict, median, lo, hi = quantization_verdict(per_seed, p, evidence.alpha)
    level = level_text(evidence.alpha)
    interval = f", distribution-free {level} interval {lo:+.4f} to {hi:+.4f}" if math.isfinite(lo) else ""
    return Outcome(verdict, f"At {b} bits the loss of {arch} rises by {median:+.4f} bits per byte (median over "
                   f"{len(per_seed)} seeds{interval}; {_per_byte_text(data)}); the claim: {_claimed_text(p)} bits "
                   f"per byte." + _too_few_text(len(per_seed), evidence.alpha), n=len(per_seed), estimate=median, lo=lo, hi=hi)


def _growth(claim: Claim, mine: pd.DataFrame, per_byte: float | None, data: dict, alpha: float) -> Outcome | str:
    """The per-seed slope of the loss increase over training steps: its median's interval above 0
    supports "grows with training", below 0 contradicts it. The sign needs no unit conversion."""
    (arch,) = claim.archs
    slopes = [np.polyfit(g["step"], g["bpt_increase"], 1)[0] for _, g in mine.groupby("seed") if g["step"].nunique() > 1]
    if not slopes:
        return f"needs {arch}'s weights quantized at several training steps (quantize.every_checkpoint)"
    unit = "bits per byte" if per_byte else "bits per token"
    median, lo, hi = median_interval(np.array(slopes) * 1000 / (per_byte or 1.0), 1 - alpha)
    verdict = "inconclusive" if not math.isfinite(lo) else "supported" if lo > 0 else "contradicted" if hi < 0 \
        else "inconclusive"
    interval = f", distribution-free {level_text(alpha)} interval {lo:+.4f} to {hi:+.4f}" if math.isfinite(lo) else ""
    return Outcome(verdict, f"The {claim.params['bits']}-bit loss increase of {arch} changes by {median:+.4f} "
                   f"{unit} per 1,000 steps (median over {len(slopes)} seeds{interval}"
                   + (f"; {_per_byte_text(data)}" if per_byte else "; the sign needs no bytes per token") + ")."
                   + _too_few_text(len(slopes), alpha), n=len(slopes), estimate=median, lo=lo, hi=hi)


TRANSFER_LOSSES = ("pipeline_teacher_loss", "pipeline_eam_loss")
"""runs.csv columns of a transfer pipeline's validation losses, the teacher's and its own (nats per token),
from run.json's pipeline key (harness.eam records them)."""


def published_share(params: dict) -> float:
    """The share of its teacher's gain over a uniform guess that a claim's published losses imply,
    (ln V - L_model) / (ln V - L_teacher). Unlike the loss ratio L_teacher / L_model it does not depend on
    the loss level: PR #1146's 4.219 and 4.308 nats (V = 1,024) are a ratio of 0.979 and a share of 0.967,
    and a model keeping a share of 0.967 of a byte-level teacher at 2.3 nats has a ratio of 0.956."""
    uniform = math.log(params["vocab_size"])
    return (uniform - params["model_loss"]) / (uniform - params["teacher_loss"])


def _transfer(claim: Claim, evidence: Evidence, at_setting: bool) -> Outcome | str:
    """The share of the teacher's gain over a uniform guess each seed's model keeps (ln V of its own
    vocabulary), its mean's 95% t interval against the share the published losses imply."""
    (arch,) = claim.archs
    runs = evidence.runs
    columns = [*TRANSFER_LOSSES, "vocab_size"]
    done = runs[(runs["arch"] == arch) & (runs["status"] == "completed")]
    done = done.dropna(subset=columns) if set(columns) <= set(runs) else done.iloc[:0]
    if len(done) < MIN_SEEDS:
        reason = f"needs {MIN_SEEDS}+ completed runs of {arch} that record the teacher's and its own validation loss"
        return FewSeeds(reason) if set(columns) <= set(runs) else reason  # a run that records none never will
    uniform = np.log(done["vocab_size"].astype(float))
    teacher, model = (done[c].astype(float) for c in TRANSFER_LOSSES)
    shares = ((uniform - model) / (uniform - teacher)).to_numpy()
    mean, (lo, hi) = float(shares.mean()), mean_interval(shares, 1 - evidence.alpha)
    p, target = claim.params, published_share(claim.params)
    verdict = "supported" if lo >= target else "contradicted" if hi < target else "inconclusive"
    vocab = ", ".join(f"{int(v):,}" for v in sorted(done["vocab_size"].unique()))
    return Outcome(verdict, f"{arch} keeps {mean:.3f} of its teacher's gain over a uniform guess ((ln V - its loss) / "
                   f"(ln V - the teacher's), V = {vocab}; mean over {len(shares)} seeds, {level_text(evidence.alpha)} t interval {lo:.3f} to "
                   f"{hi:.3f}); the published losses (teacher {p['teacher_loss']}, model {p['model_loss']} nats, "
                   f"V = {p['vocab_size']:,}; a loss ratio of {p['teacher_loss'] / p['model_loss']:.3f}) imply "
                   f"{target:.3f}.", n=len(shares), estimate=mean, lo=lo, hi=hi)


KINDS: dict[str, Callable[[Claim, Evidence, bool], Outcome | str]] = {
    "events": _events, "more_stable_than": _more_stable, "no_clip_needed": _no_clip,
    "quantization": _quantization, "transfer": _transfer}


# -------------------------------------------------------------------------------------- a study's verdicts


SCALE_TOLERANCE = 0.25
"""How far the median parameter count of a study's models of a claim's architectures may be from the
claim's ``setting.scale``, as a share of it, for the study to count as the published setting. Whether and
when training breaks depends on the model's size, so a ~1M-parameter proxy of a 70M claim is another
setting whatever its data and steps; within a quarter of the size, the size is not what separates them
(the harness matches budgets to 1%, published "matched" models differ by a few percent)."""


def _model_size(evidence: Evidence, claim: Claim) -> float | None:
    """The median parameter count of the study's runs of the claim's architectures (None: not recorded)."""
    runs = evidence.runs
    sizes = pd.to_numeric(runs.loc[runs["arch"].isin(claim.archs), "n_params"], errors="coerce").dropna() \
        if "n_params" in runs else pd.Series(dtype=float)
    return float(sizes.median()) if len(sizes) else None


def _setting_gap(evidence: Evidence, claim: Claim) -> list[str]:
    """How the study differs from the setting the claim was made at ([] = it matches): data, tokens,
    steps, model size (within SCALE_TOLERANCE), and a smoke study never matches."""
    gaps, study = [], evidence.study
    data, tokens = study.get("data", {}).get("name"), study.get("data", {}).get("tokens")
    setting = claim.setting
    if (data, tokens) != (setting["data"], setting["tokens"]):
        gaps.append(f"{setting['data']} {setting['tokens']} data (this study: {data} {tokens})")
    steps = int(study.get("recipe", {}).get("steps", 0))
    if setting.get("steps") and steps < setting["steps"]:
        gaps.append(f"{setting['steps']:,} steps (this study: {steps:,})")
    size = _model_size(evidence, claim)
    if setting.get("scale") and (size is None or abs(size / parse_scale(setting["scale"]) - 1) > SCALE_TOLERANCE):
        gaps.append(f"a ~{setting['scale']}-parameter model (this study: "
                    + (f"~{scale_text(size)})" if size is not None else "no parameter count recorded)"))
    if study.get("smoke"):
        gaps.append("a study that is not a smoke study")
    return gaps


def _scale(evidence: Evidence, claim: Claim) -> str:
    data, size = evidence.study.get("data", {}), _model_size(evidence, claim)
    size = f", ~{int(size):,} parameters" if size is not None else ""
    if claim.kind == "more_stable_than" and evidence.stability.get("sensitivity_pairs") is not None \
            and not evidence.stability["sensitivity_pairs"].empty:
        runs = f", the lr grid {', '.join(value_text(v) for v in sorted(evidence.runs['sweep_lr'].unique()))}"
    elif claim.kind == "no_clip_needed":
        runs = ", without gradient clipping"
    else:
        runs = f", variant {evidence.recipe}" if evidence.recipe not in (None, BASE_VARIANT) else ""
    return f"{data.get('name')} {data.get('tokens')}, {evidence.steps:,} steps{size}{runs}"


DECIDED = ("supported", "contradicted", "reproduced", "not reproduced", "partly reproduced", "consistent")
"""The verdicts that decide a claim (the others: inconclusive, cannot test)."""
ACROSS_VARIANTS = ("more_stable_than", "no_clip_needed")
"""Kinds tested on the variants of a sweep (the lr grid; the grad_clip=0 variants); the other kinds speak
of one architecture's own training and are tested on the runs at the study's own recipe (recipe_variant)."""


SHORTFALLS = ("contradicted", "not reproduced")
"""Verdicts that a study's falling short of a claim's conditions could explain (fewer memory locations than
published, say): there they become "inconclusive"."""


def _unmet_conditions(claim: Claim, evidence: Evidence) -> list[str]:
    """The claim's conditions (``conditions``: hparam -> {at_least | at_most: value}) that the study's runs of
    its architectures do not meet, each as "name value (published: at least value)". A run that does not
    record the hparam does not meet it."""
    runs = evidence.runs[evidence.runs["arch"].isin(claim.archs)]
    recorded = runs["hparams"] if "hparams" in runs else pd.Series(None, index=runs.index, dtype=object)
    hparams = [json.loads(h) if isinstance(h, str) else {} for h in recorded]
    unmet = []
    for name, bound in claim.conditions.items():
        (side, limit), = bound.items()
        values = sorted({h.get(name) for h in hparams}, key=lambda v: (v is None, v))
        if any(v is None or (v < limit if side == "at_least" else v > limit) for v in values):
            seen = ", ".join("not recorded" if v is None else plain(v) for v in values)
            unmet.append(f"{name} {seen} (published: {side.replace('_', ' ')} {plain(limit)})")
    return unmet


def _test(claim: Claim, evidence: Evidence, at_setting: bool) -> Outcome | str:
    """The claim's kind on the runs that test it; a shortfall where the study does not meet the claim's
    conditions is no contradiction, and the sentence says which condition differs."""
    if claim.kind not in ACROSS_VARIANTS and evidence.recipe is None:
        wanted = variant_name(own_values(evidence.study))
        return f"needs the variant at the study's own recipe ({wanted}) in its sweep"
    runs = evidence if claim.kind in ACROSS_VARIANTS else evidence.variant(evidence.recipe)
    outcome = KINDS[claim.kind](claim, runs, at_setting)
    unmet = _unmet_conditions(claim, runs)
    if isinstance(outcome, Outcome) and unmet:
        if outcome.verdict in SHORTFALLS:
            outcome.sentence += (f" Inconclusive rather than {outcome.verdict}: this study's runs do not meet the "
                                 f"conditions the published number holds under, which could explain a shortfall: "
                                 f"{'; '.join(unmet)}.")
            outcome.verdict = "inconclusive"
        else:
            outcome.sentence += f" This study's runs differ from the claim's conditions: {'; '.join(unmet)}."
    return outcome


def _verdict_of(outcome: Outcome | str) -> str:
    """A test's verdict; a claim short of seeds is inconclusive (more seeds decide it), else cannot test."""
    if isinstance(outcome, Outcome):
        return outcome.verdict
    return "inconclusive" if isinstance(outcome, FewSeeds) else "cannot test"


def evaluate(study: dict, runs: pd.DataFrame, events: pd.DataFrame, quantization: pd.DataFrame | None = None,
             stability: dict[str, pd.DataFrame] | None = None, alpha: float = ALPHA) -> pd.DataFrame:
    """One row per claim (packaged, plus the study's own `claims` file) whose architectures the study ran,
    each decided at level ``alpha`` (a look of a seed budget spends less: harness.sequential).

    ``runs`` needs arch, variant, seed, status (and steps_done, n_params, sweep_*, pipeline_* where a kind
    reads them); ``events`` arch, variant, seed, type, onset_step; ``quantization`` arch, variant, seed,
    step, bits, bpt_increase; ``stability`` harness.stability.tables' output."""
    _, all_claims = load(study.get("claims"))
    evidence = Evidence(study, runs, events, quantization, stability or {}, alpha)
    ran = set(runs["arch"])
    rows = []
    for claim in all_claims:
        if not set(claim.archs) <= ran:
            continue
        gaps = _setting_gap(evidence, claim)
        verdict, proxy_verdict, scale, outcome = "cannot test", "", "", None
        if not gaps:
            outcome = _test(claim, evidence, True)
            verdict, proxy_verdict = _verdict_of(outcome), "same setting" if isinstance(outcome, Outcome) else ""
            scale = f"the published setting ({_scale(evidence, claim)})"
        elif claim.proxy and not study.get("smoke"):
            outcome = _test(claim, evidence, False)
            proxy_verdict = _verdict_of(outcome)
            scale = f"proxy scale ({_scale(evidence, claim)})"
        elif claim.proxy:
            proxy_verdict = "cannot test"
        testable = isinstance(outcome, (Outcome, FewSeeds))
        missing = ([f"needs {' and '.join(gaps)}"] if gaps else []) + ([outcome] if not testable and outcome else [])
        if claim.proxy and gaps and study.get("smoke"):
            missing.append("a smoke study gives no proxy verdict either")
        sentence = outcome.sentence if isinstance(outcome, Outcome) else ""
        if isinstance(outcome, FewSeeds):
            sentence = (f"Inconclusive{' at proxy scale' if gaps else ''}: {outcome}; more seeds can decide it "
                        "(a seed budget trains them).")
        if missing:
            sentence = ("Cannot test " + ("at the published setting" if testable else "here")
                        + ": " + "; ".join(missing) + "." + (" " + sentence if sentence else ""))
        measured = outcome if isinstance(outcome, Outcome) else Outcome("", "")
        rows.append({"id": claim.id, "claim": claim.statement, "archs": ", ".join(claim.archs), "kind": claim.kind,
                     "source": claim.source, "note": claim.note,
                     "setting": ", ".join(f"{k} {v}" for k, v in claim.setting.items() if v is not None),
                     "verdict": verdict, "proxy_verdict": proxy_verdict, "scale": scale,
                     "k": measured.k, "n": measured.n, "estimate": measured.estimate, "lo": measured.lo,
                     "hi": measured.hi, "sentence": sentence})
    return pd.DataFrame(rows, columns=CLAIM_COLUMNS)


def headlines(study: dict, runs: pd.DataFrame, events: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, Any] | None]:
    """The study's published reference figures beside the measured ones (HEADLINE_COLUMNS), and what
    the report says about the publication (title, seeds, steps, data, source, how the study differs).

    ``runs`` needs arch, status, final_loss, final_smoothed_loss, best_loss, best_step; ``events`` arch,
    seed, type, onset_step, peak_value, peak_step. (empty table, None) when the study names no publication.
    """
    if not study.get("published"):
        return pd.DataFrame(columns=HEADLINE_COLUMNS), None
    pub = published(study["published"])
    unit = UNITS.get(pub["tokens"], "token")
    rows = []

    def with_bits(ppl: float) -> str:
        return f"{num(ppl)} ({num(bits(ppl))} bits/{unit})"

    for h in pub["headlines"]:
        arch, collapse = h["arch"], h.get("collapse")
        mine = runs[(runs["arch"] == arch) & (runs["status"] != "failed")]
        if mine.empty:
            rows.append([arch, "any", "", "not run in this study"])
            continue
        final, smoothed, best = (mine[c].map(perplexity) for c in ("final_loss", "final_smoothed_loss", "best_loss"))
        rows.append([arch, "final val perplexity (last evaluation)", with_bits(h["final_ppl"]), spread(final)])
        rows.append([arch, "final val perplexity (smoothed, last 3 evaluations)", "not published", spread(smoothed)])
        rows.append([arch, "minimum val perplexity", f"{with_bits(h['min_ppl'])} at step {h['min_step']:,}",
                     f"{spread(best)}; at steps {', '.join(step(s) for s in mine['best_step'])}"])
        collapses = events[(events["arch"] == arch) & (events["type"] == "collapse")]
        claimed = "none" if collapse is None else (
            f"steps {collapse['start']:,}–{collapse['end']:,}, peak {num(collapse['peak_ppl'])} at step "
            f"{collapse['peak_step']:,}")
        measured = f"{collapses['seed'].nunique()} of {len(mine)} seeds"
        if len(collapses):
            measured += ": " + "; ".join(
                f"seed {int(e.seed)} onset {step(e.onset_step)}, peak {num(e.peak_value)} at {step(e.peak_step)}"
                for e in collapses.itertuples(index=False))
        rows.append([arch, "collapse", claimed, measured])
    data, steps = study.get("data", {}).get("name"), int(study.get("recipe", {}).get("steps", 0))
    differs = [f"{data} (not {pub['data']})"] if data != pub["data"] else []
    differs += [f"{steps:,} steps (not {pub['steps']:,})"] if steps != pub["steps"] else []
    about = {key: pub[key] for key in ("title", "seeds", "steps", "data", "source")} | {"differs": differs}
    return pd.DataFrame(rows, columns=HEADLINE_COLUMNS), about
