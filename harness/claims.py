"""Published claims and headline figures as data (harness/claims.yaml, plus a study's own file), and
their test against a study's runs. No torch here.

A published claim usually rests on one run with one seed; the harness reruns it over several seeds and
gives a verdict only where the evidence separates: events count beyond the detector's false-alarm rate,
rates and means are judged by their 95% intervals, and fewer than MIN_SEEDS runs decide nothing. Each
claim gets two verdicts: at its published setting (when the study matches it) and at proxy scale (when
the claim is general and the study holds the runs that test it, labelled with the scale it was tested
at). "cannot test" names exactly what is missing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import yaml
from jsonschema import Draft202012Validator
from scipy.stats import binomtest, fisher_exact, t as student_t

from harness.contracts import BASE_VARIANT, CLAIM_COLUMNS
from harness.stats import ALPHA, FALSE_ALARM_RATE, wilson
from harness.text import UNITS, bits, num, perplexity, spread, step
from harness.variants import own_values, setting_name, value_text, variant_name

HEADLINE_COLUMNS = ["arch", "figure", "published", "measured"]
MIN_SEEDS = 3  # no verdict from fewer runs, whatever they show
TYPICAL = 0.5  # "runs collapse" / "runs do not" speak of the typical run: the rate's side of 1/2


@dataclass(frozen=True)
class Claim:
    id: str
    source: str
    statement: str
    kind: str
    archs: tuple[str, ...]
    setting: dict[str, Any]
    params: dict[str, Any]
    proxy: bool = False
    note: str = ""


@dataclass
class Outcome:
    """What a study's runs say about one claim."""

    verdict: str
    sentence: str
    k: float = math.nan  # events counted (rate kinds) ...
    n: float = math.nan  # ... of n runs
    estimate: float = math.nan  # the rate, mean or difference the verdict judged
    lo: float = math.nan  # its 95% interval
    hi: float = math.nan


@dataclass
class Evidence:
    """The study-level tables a claim is tested on (``quantization`` None: the study has no such stage;
    ``stability``: harness.stability's tables, empty without an lr sweep)."""

    study: dict
    runs: pd.DataFrame
    events: pd.DataFrame
    quantization: pd.DataFrame | None = None
    stability: dict[str, pd.DataFrame] = field(default_factory=dict)
    steps: int = field(init=False)

    def __post_init__(self):
        self.steps = int(self.study.get("recipe", {}).get("steps", 0))
        self.recipe = recipe_variant(self.study)

    def variant(self, name: str) -> "Evidence":
        """The evidence of one variant's runs."""
        def only(table):
            return None if table is None else table[table["variant"] == name]
        return Evidence(self.study, only(self.runs), only(self.events), only(self.quantization), self.stability)


def recipe_variant(study: dict) -> str | None:
    """The variant trained at the study's own recipe with every stabiliser off (the published
    setting's training), where claims about one architecture's own behaviour are tested; None when
    the sweep has no such variant. BASE_VARIANT without a sweep."""
    name = variant_name(own_values(study))
    return name if name in (study.get("variants") or {BASE_VARIANT: {}}) else None


# -------------------------------------------------------------------------------------- the data


def _validated(path: Path) -> dict:
    try:
        document = yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML ({e})") from e
    schema = yaml.safe_load(resources.files("harness").joinpath("claims.schema.yaml").read_text())
    errors = sorted(Draft202012Validator(schema).iter_errors(document), key=lambda e: list(e.absolute_path))
    if errors:
        first = errors[0]
        where = "/".join(str(p) for p in first.absolute_path) or "(top)"
        raise ValueError(f"{path}: {where}: {first.message}")
    return document


def load(extra: str | Path | None = None) -> tuple[dict[str, dict], list[Claim]]:
    """The packaged publications and claims, plus those of ``extra`` (a study's own claims file)."""
    documents = [_validated(Path(str(resources.files("harness").joinpath("claims.yaml"))))]
    if extra:
        documents.append(_validated(Path(extra)))
    publications, found = {}, []
    for document in documents:
        publications.update(document.get("publications", {}))
        found += [Claim(**{**c, "archs": tuple(c["archs"])}) for c in document.get("claims", [])]
    ids = [c.id for c in found]
    if repeated := sorted({i for i in ids if ids.count(i) > 1}):
        raise ValueError(f"claim id(s) {repeated} defined twice (packaged claims and {extra})")
    return publications, found


def published(key: str) -> dict:
    publications, _ = load()
    if key not in publications:
        raise ValueError(f"unknown published study {key!r}: choose one of {sorted(publications)} (study key 'published')")
    return publications[key]


# -------------------------------------------------------------------------------------- verdict rules


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


def mean_interval(values: np.ndarray) -> tuple[float, float, float]:
    """Mean of per-seed values and its 95% Student-t interval (NaN interval below 2 values)."""
    values = np.asarray(values, dtype=float)
    mean = float(values.mean()) if len(values) else math.nan
    if len(values) < 2:
        return mean, math.nan, math.nan
    half = student_t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))
    return mean, mean - half, mean + half


def _inconclusive_text(expect_event: bool, k: int, n: int) -> str:
    settle = seeds_to_settle(expect_event, k, n)
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
    lo, hi = wilson(k, n)
    verdict = decide(expect_event, k, n)
    sentence = (f"{k} of {n} seeds of {arch} had a {' or '.join(types)} event{where} in {horizon:,} steps"
                + (f" (onsets at steps {', '.join(f'{s:,}' for s in onsets)})" if onsets else "")
                + (f"; outside that window: {', '.join(elsewhere)}" if elsewhere else "")
                + f"; 95% Wilson interval of the rate {lo:.2f} to {hi:.2f}.")
    if verdict == "inconclusive":
        sentence += _inconclusive_text(expect_event, k, n)
    elif verdict == "consistent" and k:
        sentence += f" The {k} event(s) are within what the detector's false alarms explain."
    return Outcome(verdict, sentence, k, n, k / n, lo, hi)


def _rates(claim: Claim, evidence: Evidence) -> tuple[tuple[int, int], tuple[int, int]]:
    return tuple(_runs_with_event(evidence, arch, tuple(claim.params["types"]), evidence.steps)[:2]
                 for arch in claim.archs)


def _compare_rates(claim: Claim, ka: int, na: int, kb: int, nb: int, verdicts: tuple[str, str]) -> Outcome:
    """A's event rate against B's over seeds (one run each): one two-sided Fisher exact test at ALPHA, its
    direction the sign of the rate difference (verdicts[0] when A's is lower, verdicts[1] when higher).
    Two one-sided tests at ALPHA each, as before, erred twice as often under the null."""
    a, b = claim.archs
    p = float(fisher_exact([[ka, na - ka], [kb, nb - kb]]).pvalue)
    difference = ka / na - kb / nb
    verdict = "inconclusive" if p > ALPHA or difference == 0 else verdicts[0] if difference < 0 else verdicts[1]
    sentence = (f"{a}: {ka} of {na} seeds with a {' or '.join(claim.params['types'])} event; {b}: {kb} of {nb}; "
                f"two-sided Fisher exact p = {p:.3g}.")
    if verdict == "inconclusive":
        sentence += " Inconclusive: the rates do not separate at these seed counts."
    return Outcome(verdict, sentence, ka, na, difference, math.nan, math.nan)


def _more_stable(claim: Claim, evidence: Evidence, at_setting: bool) -> Outcome | str:
    """With an lr sweep (the stability study) the claim's one declared test is learning-rate sensitivity
    (Wortsman et al. 2023): A's per-seed sensitivity against B's on their common lr grid, the two-sided
    permutation test of harness.stability.sensitivity_test at ALPHA (its raw p: this claim is one
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
            return f"needs at least {MIN_SEEDS} seeds of each of {a} and {b}"
        return _compare_rates(claim, ka, na, kb, nb, ("supported", "contradicted"))
    setting = _recipe_setting(evidence)
    pair = pairs[(pairs["setting"] == setting) & pairs["arch_a"].isin(claim.archs) & pairs["arch_b"].isin(claim.archs)]
    if pair.empty:
        return f"needs an lr sweep of both {a} and {b} in the setting {setting}"
    row = pair.iloc[0]
    sign = 1 if row["arch_a"] == a else -1  # difference of A minus B
    difference, p = sign * float(row["difference"]), float(row["p"])
    n_a, n_b = (int(row["n_a"]), int(row["n_b"]))[::sign]
    if min(n_a, n_b) < MIN_SEEDS:
        return (f"needs at least {MIN_SEEDS} seeds of each of {a} and {b} with a final loss at every learning rate "
                f"of their common grid (has {n_a} and {n_b})")
    verdict = "inconclusive" if not p <= ALPHA else "supported" if difference < 0 else "contradicted"
    sentence = (f"Learning-rate sensitivity (Wortsman et al. 2023, each seed's optimum chosen on the other seeds) of "
                f"{a} minus that of {b}: {difference:+.3f} nats over {int(row['n_lrs'])} common learning rates, "
                f"{n_a} and {n_b} seeds (two-sided permutation test of that difference, p = {p:.3g}).")
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
    """The runs trained without clipping at the study's own recipe otherwise: the study's runs when its
    recipe has grad_clip 0 (in a sweep, its own-recipe variant), or the variant of a grad_clip sweep that
    is the study's own recipe but for grad_clip 0. Not the whole grid: at a learning rate far above the
    recipe's every architecture breaks, with or without clipping."""
    a, b = claim.archs
    unclipped = {**own_values(evidence.study), **({"grad_clip": 0} if "grad_clip" in (evidence.study.get("sweep") or {})
                                                  else {})}
    variant = variant_name(unclipped)
    clipped = float(evidence.study.get("recipe", {}).get("grad_clip", 1.0)) != 0 and "grad_clip" not in unclipped
    if clipped or variant not in (evidence.study.get("variants") or {BASE_VARIANT: {}}):
        return (f"needs a grad_clip=0 variant of {a} and {b} at the study's own recipe "
                f"({variant_name({**unclipped, 'grad_clip': 0})})")
    evidence = evidence.variant(variant)
    (ka, na), (kb, nb) = _rates(claim, evidence)
    own = decide(False, ka, na)
    outcome = _compare_rates(claim, ka, na, kb, nb, ("supported", "contradicted"))
    outcome.verdict = ("contradicted" if own == "contradicted" else "supported" if own == "consistent"
                       else "inconclusive")
    where = "" if variant == BASE_VARIANT else f" (variant {variant})"
    outcome.sentence = f"Without gradient clipping{where}, {outcome.sentence} {a} alone: {own}."
    return outcome


def _quantization(claim: Claim, evidence: Evidence, at_setting: bool) -> Outcome | str:
    (arch,) = claim.archs
    b = claim.params["bits"]
    q = evidence.quantization
    if q is None or q.empty or not (q["bits"] == b).any():
        return f"needs the quantization stage at {b} bits (study key quantize.bits)"
    mine = q[(q["arch"] == arch) & (q["bits"] == b)]
    if mine.empty:
        return f"needs quantization results of {arch} at {b} bits"
    if claim.params.get("grows_with_training"):
        per_seed = [np.polyfit(g["step"], g["bpt_increase"], 1)[0] for _, g in mine.groupby("seed") if g["step"].nunique() > 1]
        if len(per_seed) < MIN_SEEDS:
            return f"needs {arch}'s weights quantized at several training steps in {MIN_SEEDS}+ runs (quantize.every_checkpoint)"
        slope, lo, hi = mean_interval(np.array(per_seed) * 1000)
        verdict = "supported" if lo > 0 else "contradicted" if hi < 0 else "inconclusive"
        return Outcome(verdict, f"The {b}-bit loss increase of {arch} changes by {slope:+.4f} bits per token per "
                       f"1,000 steps (mean over {len(per_seed)} seeds, 95% t interval {lo:+.4f} to {hi:+.4f}).",
                       n=len(per_seed), estimate=slope, lo=lo, hi=hi)
    final = mine[mine["step"] == mine.groupby("seed")["step"].transform("max")]
    if final["seed"].nunique() < MIN_SEEDS:
        return f"needs {MIN_SEEDS}+ runs of {arch} quantized at {b} bits"
    mean, lo, hi = mean_interval(final.groupby("seed")["bpt_increase"].mean().to_numpy())
    bound = claim.params["at_most"]
    verdict = "supported" if hi <= bound else "contradicted" if lo > bound else "inconclusive"
    return Outcome(verdict, f"At {b} bits the loss of {arch} rises by {mean:+.4f} bits per token (mean over "
                   f"{final['seed'].nunique()} seeds, 95% t interval {lo:+.4f} to {hi:+.4f}); the claim allows "
                   f"at most {bound:+.4f}.", n=final["seed"].nunique(), estimate=mean, lo=lo, hi=hi)


def _transfer(claim: Claim, evidence: Evidence, at_setting: bool) -> Outcome | str:
    (arch,) = claim.archs
    runs = evidence.runs
    column = "pipeline_transfer"
    values = runs.loc[(runs["arch"] == arch) & (runs["status"] == "completed"), column].dropna() \
        if column in runs else pd.Series(dtype=float)
    if len(values) < MIN_SEEDS:
        return f"needs {MIN_SEEDS}+ completed runs of {arch} that record a transfer ratio"
    mean, lo, hi = mean_interval(values.to_numpy())
    bound = claim.params["at_least"]
    verdict = "supported" if lo >= bound else "contradicted" if hi < bound else "inconclusive"
    return Outcome(verdict, f"{arch} keeps {mean:.3f} of its teacher's loss (teacher loss / own loss, mean over "
                   f"{len(values)} seeds, 95% t interval {lo:.3f} to {hi:.3f}); the claim is at least {bound:.3f}.",
                   n=len(values), estimate=mean, lo=lo, hi=hi)


KINDS: dict[str, Callable[[Claim, Evidence, bool], Outcome | str]] = {
    "events": _events, "more_stable_than": _more_stable, "no_clip_needed": _no_clip,
    "quantization": _quantization, "transfer": _transfer}


# -------------------------------------------------------------------------------------- a study's verdicts


def _setting_gap(study: dict, claim: Claim) -> list[str]:
    """How the study differs from the setting the claim was made at ([] = it matches)."""
    gaps = []
    data, tokens = study.get("data", {}).get("name"), study.get("data", {}).get("tokens")
    setting = claim.setting
    if (data, tokens) != (setting["data"], setting["tokens"]):
        gaps.append(f"{setting['data']} {setting['tokens']} data (this study: {data} {tokens})")
    steps = int(study.get("recipe", {}).get("steps", 0))
    if setting.get("steps") and steps < setting["steps"]:
        gaps.append(f"{setting['steps']:,} steps (this study: {steps:,})")
    if study.get("smoke"):
        gaps.append("a study that is not a smoke study")
    return gaps


def _scale(evidence: Evidence, claim: Claim) -> str:
    data = evidence.study.get("data", {})
    sizes = evidence.runs.loc[evidence.runs["arch"].isin(claim.archs), "n_params"].dropna() \
        if "n_params" in evidence.runs else pd.Series(dtype=float)
    size = f", ~{int(sizes.median()):,} parameters" if len(sizes) else ""
    if claim.kind == "more_stable_than" and evidence.stability.get("sensitivity_pairs") is not None \
            and not evidence.stability["sensitivity_pairs"].empty:
        runs = f", the lr grid {', '.join(value_text(v) for v in sorted(evidence.runs['sweep_lr'].unique()))}"
    elif claim.kind == "no_clip_needed":
        runs = ", without gradient clipping"
    else:
        runs = f", variant {evidence.recipe}" if evidence.recipe not in (None, BASE_VARIANT) else ""
    return f"{data.get('name')} {data.get('tokens')}, {evidence.steps:,} steps{size}{runs}"


ACROSS_VARIANTS = ("more_stable_than", "no_clip_needed")
"""Kinds tested on the variants of a sweep (the lr grid; the grad_clip=0 variants); the other kinds speak
of one architecture's own training and are tested on the runs at the study's own recipe (recipe_variant)."""


def _test(claim: Claim, evidence: Evidence, at_setting: bool) -> Outcome | str:
    if claim.kind in ACROSS_VARIANTS:
        return KINDS[claim.kind](claim, evidence, at_setting)
    if evidence.recipe is None:
        wanted = variant_name(own_values(evidence.study))
        return f"needs the variant at the study's own recipe ({wanted}) in its sweep"
    return KINDS[claim.kind](claim, evidence.variant(evidence.recipe), at_setting)


def evaluate(study: dict, runs: pd.DataFrame, events: pd.DataFrame, quantization: pd.DataFrame | None = None,
             stability: dict[str, pd.DataFrame] | None = None) -> pd.DataFrame:
    """One row per claim (packaged, plus the study's own `claims` file) whose architectures the study ran.

    ``runs`` needs arch, variant, seed, status (and steps_done, n_params, sweep_*, pipeline_* where a kind
    reads them); ``events`` arch, variant, seed, type, onset_step; ``quantization`` arch, variant, seed,
    step, bits, bpt_increase; ``stability`` harness.stability.tables' output."""
    _, all_claims = load(study.get("claims"))
    evidence = Evidence(study, runs, events, quantization, stability or {})
    ran = set(runs["arch"])
    rows = []
    for claim in all_claims:
        if not set(claim.archs) <= ran:
            continue
        gaps = _setting_gap(study, claim)
        verdict, proxy_verdict, scale, outcome = "cannot test", "", "", None
        if not gaps:
            outcome = _test(claim, evidence, True)
            verdict, proxy_verdict = (outcome.verdict, "same setting") if isinstance(outcome, Outcome) else (
                "cannot test", "")
            scale = f"the published setting ({_scale(evidence, claim)})"
        elif claim.proxy and not study.get("smoke"):
            outcome = _test(claim, evidence, False)
            proxy_verdict = outcome.verdict if isinstance(outcome, Outcome) else "cannot test"
            scale = f"proxy scale ({_scale(evidence, claim)})"
        elif claim.proxy:
            proxy_verdict = "cannot test"
        missing = ([f"needs {' and '.join(gaps)}"] if gaps else []) + ([outcome] if isinstance(outcome, str) else [])
        if claim.proxy and gaps and study.get("smoke"):
            missing.append("a smoke study gives no proxy verdict either")
        sentence = outcome.sentence if isinstance(outcome, Outcome) else ""
        if missing:
            sentence = ("Cannot test " + ("at the published setting" if isinstance(outcome, Outcome) else "here")
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
