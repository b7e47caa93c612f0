"""Error rates of the study-level verdicts: the stability tables and the verdicts on published claims.

    python benchmarks/verdict_calibration.py [--studies N] [--seeds 3,5,8,12] [--only NAME,...] [--seed S]
                                             [--out PATH] [--list] [--budget START,STEP,MAX]

The collapse detector is calibrated (benchmarks/collapse_calibration.py); this measures the layer above
it. A *scenario* draws whole synthetic studies with a known truth, each as the tables harness.aggregate
builds from run folders (the resolved study dict, runs, trajectories, events, quantization), and hands
them to the public functions the aggregate calls, harness.stability.tables and then
harness.claims.evaluate. A *case* reads one verdict off a scenario's output. Nothing here computes a
statistic of its own: the benchmark measures whatever harness code is on the path.

- A **null** case has no true difference, or sits exactly on a claim's boundary, so every decided
  verdict is a false one; its rate is the share of studies in which the verdict is decided. Target 5%
  (the harness's ALPHA); a row passes when rate <= 0.05 + 2 sqrt(0.05 * 0.95 / n_studies), a
  Monte-Carlo allowance of two standard errors of a 5% rate.
- An **effect** case has a known difference; its rate is the power, the share of studies in which the
  verdict is decided in the right direction. Target 80% at 12 seeds (rows at fewer seeds have none);
  a row passes when rate >= 0.80 - 2 sqrt(0.8 * 0.2 / n_studies). A second table gives the smallest
  seed count at which each effect is found in 80% of studies.

The boundary nulls: a claim that runs have an event, or have none, speaks of the typical run
(harness.claims.TYPICAL: the rate's side of 1/2), so at a true rate of exactly 1/2 neither it nor its
negation holds (events; no_clip_needed, decided on resonance's own rate without clipping); a bound on the
quantization cost is met by the typical seed when the per-seed median sits on it (the costs are skewed,
lognormal, so the mean lies above it); eam keeping exactly the published share of its teacher's gain over
a uniform guess is exactly the published transfer, at bytes loss levels where the ratio of losses
(teacher / eam) is no longer the published 0.979.

"Decided" per verdict (columns are read defensively: the statistics are being fixed as this is written):
- a claim (claims.csv): its verdict at the published setting when the study matches it, else its proxy
  verdict, is one of DECIDED (supported, contradicted, reproduced, not reproduced, partly reproduced,
  consistent); "inconclusive" and "cannot test" decide nothing.
- sensitivity_pairs, ablations: a row with p_holm <= 0.05 (p where the table has no p_holm column). A
  null counts the studies with ANY decided row: the family-wise error of the table the report prints.
- attribution: a null diagnostic is decided when the table lists it as the ``first`` diagnostic of at
  least one event of the study (the summary sentence then names it); the real precursor is found when
  it is first for more than half of the study's events.

With ``--budget start,step,max`` the claims and pairs (LOOK_KINDS) are measured over a seed budget's
looks instead of at fixed seed counts: each study is drawn at max seeds and judged as the workflow judges a
budget (harness.sequential.replay: look by look on the first seeds, each question kept at the look that
decided it, each look at its spent level). ``rate_unspent`` is the same studies with every look deciding
at 5%, what the spending prevents; ``mean_seeds`` the mean seed count of the deciding look (max where
nothing was decided). A pair is decided when the looks table says so (at its look's level).

The synthetic study is the repository's ``stability`` study (config/config.yaml): TinyShakespeare bytes
(vocabulary 256: an untrained model's loss is ln 256 = 5.55 nats), 200 steps, warmup 150, train logs
every 5 steps, evaluations every 10, no gradient clipping, not a smoke study, an lr sweep 3e-3, 1e-2,
3e-2, 0.1, 0.3, 1 (with z_loss 0 / 1e-3 for the ablations), seeds 0..n-1, the architectures named after
the real ones (memnls, transformer, resonance, trn_hybrid, eam, diag_ssm) so that the packaged claims
(harness/claims.yaml) apply. The claims about one architecture's own training (events, no_clip_needed,
quantization, transfer) are tested on a single variant, the study's own recipe, so their scenarios have
no sweep (a study without one is tested on all its runs; the five other lrs would only cost time), and
the events claims that are not general are tested at their published setting (enwik8 bytes, 50,000
steps). Per run (see ``draw_study``): the validation loss at step 0 (ln 256 + 0.02, SD 0.005) and at
every evaluation, decaying to its final level, the scenario's mean for its architecture and lr plus a
per-run offset (SD 0.8 sd) and evaluation noise (SD 0.6 sd), so that the last evaluation has SD ``sd``
over seeds. A collapsed run has a collapse event (onset at an evaluation in steps 80-150) and its loss
stays 0.5 nats up after it; a diverged run has a divergence event and ends with a NaN evaluation in steps
100-190 (status diverged); a failed run has status failed and no metrics. runs carries the columns of
run.json the aggregate flattens (sweep_*, status, steps_done, n_params, data, pipeline_*) and the scores
it merges (final_loss ... testable, computed here from the drawn curves as harness.stats.run_scores
defines them). Train diagnostics are drawn only where attribution is measured; elsewhere the
trajectories hold the validation loss alone.

Cost: judging a study (harness.stability.tables and claims.evaluate loop over runs in pandas) takes, in
CPU time, ~25-50 ms for one or two architectures without a sweep, ~75 ms for a pair over the lr grid,
~140 ms with train diagnostics and ~450 ms for six architectures over lr x z_loss. So each scenario runs
a share of --studies (SHARES): every one for the claims on a boundary and for the pairs over the lr grid
(a correct test decides there in up to 5% of studies, and precision matters: 400 studies, SE 1.1 points
at 5%), a quarter for the attribution studies and the claims' effects (100: SE 2.2 points at 5%), an
eighth for the six-architecture studies (50: SE 3.1 points). `--only CASE --studies N` measures one case more precisely. The packaged
claims are parsed once (``claims_parsed_once``).

Runtime of the full default run (every case, seeds 3,5,8,12, --studies 400; 14,400 studies): 19 minutes
(1,149 s wall, 1,084 s CPU on one core) on this repository's 2-core machine on 2026-12-03, while other jobs
kept it loaded (load average 5-6). Its table on the code of commit 152317d, before the statistics are
fixed, is benchmarks/verdict_calibration_before.csv.
tests/test_verdict_calibration.py checks every case on a few studies (a fast subset).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
import time
import zlib
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pandas as pd

from harness import claims, sequential, stability
from harness.claims import DECIDED
from harness.collapse import testable
from harness.contracts import EVENT_COLUMNS, ID_COLUMNS, QUANTIZATION_COLUMNS, SWEEP_PREFIX
from harness.sequential import SeedBudget
from harness.variants import variants

ALPHA = 0.05  # the false-verdict target of every null (the harness's own ALPHA)
POWER = 0.80  # the power target of every effect ...
POWER_SEEDS = 12  # ... at this many seeds

# ------------------------------------------------------------------------------------ the synthetic study

STUDY = "verdict-calibration"
LRS = (3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0)
Z_LOSS = (0, 1e-3)
VOCAB = 256
UNIFORM = math.log(VOCAB)
TINYSHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
# the stability study's recipe (config/config.yaml: the tiny recipe, warmup 150, logs every 5, no clipping),
# with the schema's defaults filled in as harness.study.resolve leaves them
PROXY_RECIPE = {"steps": 200, "batch_size": 16, "seq_len": 128, "lr": 3e-3, "min_lr": 3e-4, "warmup_steps": 150,
                "betas": [0.9, 0.95], "weight_decay": 0.01, "grad_clip": 0, "precision": "auto", "compile": False,
                "log_every": 5, "eval_every": 10, "eval_batches": 4, "eval_sampling": "fixed", "eval_seed": 1234,
                "checkpoint_every": 100, "optimizer": "adamw", "schedule": "cosine", "z_loss": 0}
# the published 70M setting (config/config.yaml, study seed-enwik8-70m): where the events claims that are
# not general (memnls-no-catastrophe, transformer-collapse-28k) get a verdict
PUBLISHED_RECIPE = {**PROXY_RECIPE, "steps": 50_000, "batch_size": 8, "seq_len": 1024, "lr": 3e-4, "min_lr": 3e-5,
                    "warmup_steps": 500, "grad_clip": 1.0, "log_every": 100, "eval_every": 500,
                    "eval_batches": 16, "checkpoint_every": 1000}
N_PARAMS = {"transformer": 125_000, "memnls": 124_400, "diag_ssm": 125_300, "resonance": 124_800,
            "trn_hybrid": 125_600, "eam": 61_000}
PIPELINES = ("eam",)  # logs one validation loss, at its end, and its own numbers as pipeline_* (harness.eam)
COLLAPSE_JUMP = 0.5  # nats a collapsed run's validation loss stays above its course after the onset
SPIKE_JUMP = 0.3  # nats of a spike's one high evaluation
DECAY_STEPS = 25.0  # the validation loss falls from its initial level with this time constant
COLLAPSE_ONSETS = np.arange(80, 151, 10)  # evaluations at which a collapse starts (during the warmup)
PUBLISHED_ONSETS = np.arange(22_000, 34_001, 500)  # at the published setting: inside the claimed window
DIVERGE_STEPS = np.arange(100, 191, 10)  # the evaluation at which a diverged run's loss is NaN
SPIKE_ONSETS = np.arange(50, 181, 10)

FLAT = 2.20  # final validation loss at every lr (nats): a flat lr response
RISING = (2.40, 2.25, 2.20, 2.20, 2.30, 2.60)  # a realistic response: worse at both ends of the grid
RISING_UNSTABLE = (0.0, 0.0, 0.1, 0.3, 0.5, 0.7)  # share of runs that collapse, rising with the lr
TOP_TWO = np.array([0.0, 0.0, 0.0, 0.0, 1.0, 1.0])  # the top two lrs of the grid
TOP_LR = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 1.0])  # lr 1 alone


def per_lr(value) -> np.ndarray:
    """A number for every lr of LRS, from one number or a tuple over LRS."""
    out = np.broadcast_to(np.asarray(value, dtype=float), (len(LRS),)).copy()
    if len(out) != len(LRS):
        raise ValueError(f"{value!r}: one value, or one per lr of {LRS}")
    return out


@dataclass(frozen=True)
class Arch:
    """One synthetic architecture: its final validation loss and instability per lr of LRS (one number:
    the same at every lr). Without an lr sweep the values at the recipe's lr (LRS[0]) apply."""

    name: str
    final: float | tuple = FLAT  # mean final validation loss (nats) of a run that does not collapse
    sd: float = 0.02  # SD over seeds of the final validation loss
    collapse: float | tuple = 0.0  # share of runs with a collapse event
    diverge: float | tuple = 0.0  # share of runs that diverge
    spike: float = 0.0  # share of runs with a spike event (it recovers: no instability)
    failed: tuple = ()  # lrs whose runs all fail (status failed, no metrics)
    collapse_z_loss: float | tuple | None = None  # share collapsing with z_loss on (None: as with it off)


@dataclass(frozen=True)
class Scenario:
    """A synthetic study: its architectures, its sweep and the extra tables some verdicts need."""

    name: str
    about: str
    archs: tuple[Arch, ...]
    sweep: str = "lr"  # "lr", "lr+z_loss" or "none"
    share: float = 1.0  # of --studies (SHARES): the costly studies get fewer
    published: bool = False  # the published 70M setting (enwik8 bytes, 50,000 steps) instead of the proxy
    diagnostics: str | None = None  # "warmup", "ar1" or "precursor": train diagnostics of every run
    quantization: tuple | None = None  # (arch, bits, median bits-per-token increase, lognormal sigma)
    transfer_share: float = 0.95  # eam keeps this share of its teacher's gain over a uniform guess


@dataclass
class Tables:
    """The aggregate's inputs for one synthetic study, and how many events attribution should explain."""

    study: dict
    runs: pd.DataFrame
    trajectories: pd.DataFrame
    events: pd.DataFrame
    quantization: pd.DataFrame | None
    n_events: int = 0  # collapses, divergences and spikes drawn


def study_dict(scenario: Scenario, n_seeds: int) -> dict:
    """The resolved study (harness.study.resolve's output) of a scenario."""
    sweep = {"none": {}, "lr": {"lr": list(LRS)}, "lr+z_loss": {"lr": list(LRS), "z_loss": list(Z_LOSS)}}[
        scenario.sweep]
    data = ({"name": "enwik8", "tokens": "bytes"} if scenario.published
            else {"name": "tinyshakespeare", "tokens": "bytes"})
    archs = {a.name: {"build": a.name, "hparams": {"teacher": "transformer"} if a.name in PIPELINES else {}}
             for a in scenario.archs}
    return {"name": STUDY, "base": STUDY, "overrides": {}, "description": scenario.about, "smoke": False,
            "data": data, "archs": archs, "seeds": list(range(n_seeds)),
            "model": {"d_model": 64, "n_layers": 2, "n_heads": 4, "dropout": 0.0},
            "shape": {"mode": "matched", "reference": "transformer", "tolerance": 0.01},
            "recipe": dict(PUBLISHED_RECIPE if scenario.published else PROXY_RECIPE),
            "sweep": sweep, "variants": variants(sweep), "detect": {},
            "quantize": {"bits": [8, 5, 4] if scenario.quantization else [], "keep": [],
                         "every_checkpoint": bool(scenario.quantization)},
            "reference_arch": {"name": "transformer", "build": "transformer", "hparams": {}},
            **({"published": "seed-enwik8-70m"} if scenario.published else {})}


@dataclass
class Grid:
    """One entry per run (arch, variant, seed), in the aggregate's order: every per-run number is an array."""

    arch: np.ndarray
    variant: np.ndarray
    seed: np.ndarray
    values: list[dict]  # each run's sweep values
    lr: np.ndarray

    @property
    def n(self) -> int:
        return len(self.seed)

    def identity(self, rows: np.ndarray | slice = slice(None)) -> dict:
        return {"study": STUDY, "arch": self.arch[rows], "variant": self.variant[rows], "seed": self.seed[rows]}


def _grid(scenario: Scenario, study: dict) -> Grid:
    names = sorted(study["variants"])  # the aggregate sorts runs by (arch, variant, seed)
    archs = sorted(a.name for a in scenario.archs)
    arch, variant, seed = (g.ravel() for g in np.meshgrid(np.array(archs, dtype=object),
                                                           np.array(names, dtype=object),
                                                           np.arange(len(study["seeds"])), indexing="ij"))
    values = [study["variants"][v] for v in variant]
    lr = np.array([v.get("lr", study["recipe"]["lr"]) for v in values], dtype=float)
    return Grid(arch, variant, seed, values, lr)


def draw_study(scenario: Scenario, n_seeds: int, rng: np.random.Generator) -> Tables:
    """One synthetic study of ``scenario`` with ``n_seeds`` seeds: the tables harness.aggregate builds."""
    study = study_dict(scenario, n_seeds)
    recipe, steps, every = study["recipe"], study["recipe"]["steps"], study["recipe"]["eval_every"]
    g = _grid(scenario, study)
    # each run's entry of a per-(architecture, lr) table: its architecture's row, its lr's column
    archs = sorted(scenario.archs, key=lambda x: x.name)
    row = np.searchsorted([x.name for x in archs], g.arch.astype(str))
    column = np.array([LRS.index(x) if x in LRS else 0 for x in g.lr])
    z_on = np.array([bool(v.get("z_loss", 0)) for v in g.values])

    def table(get) -> np.ndarray:
        return np.stack([per_lr(get(x)) for x in archs])[row, column]

    mean, sd, p_div = table(lambda x: x.final), table(lambda x: x.sd), table(lambda x: x.diverge)
    p_col = np.where(z_on, table(lambda x: x.collapse if x.collapse_z_loss is None else x.collapse_z_loss),
                     table(lambda x: x.collapse))
    p_spike = table(lambda x: x.spike)
    failed = table(lambda x: [float(lr in x.failed) for lr in LRS]) > 0
    pipeline = np.isin(g.arch, PIPELINES)

    # what happens to each run, and when
    u = rng.random(g.n)
    diverged = ~failed & (u < p_div)
    collapsed = ~failed & ~diverged & (u < p_div + p_col)
    spiked = ~failed & ~diverged & (rng.random(g.n) < p_spike)
    scale = steps / PROXY_RECIPE["steps"]  # the published setting: the same shapes over 50,000 steps
    onset = rng.choice(PUBLISHED_ONSETS if scenario.published else COLLAPSE_ONSETS, g.n)
    end = np.where(diverged, np.round(rng.choice(DIVERGE_STEPS, g.n) * scale).astype(int), steps)
    spike_at = np.round(rng.choice(SPIKE_ONSETS, g.n) * scale).astype(int)

    # the validation loss at step 0 and every evaluation (NaN where a diverged run ends)
    evals = np.arange(0, steps + 1, every)
    initial = UNIFORM + 0.02 + rng.normal(0, 0.005, g.n)
    final = mean + rng.normal(0, 0.8, g.n) * sd
    loss = final[:, None] + (initial - final)[:, None] * np.exp(-evals[None, :] / (DECAY_STEPS * scale))
    loss += rng.normal(0, 0.6, (g.n, len(evals))) * sd[:, None]
    loss[:, 0] = initial
    loss += np.where(collapsed[:, None] & (evals[None, :] > onset[:, None]), COLLAPSE_JUMP, 0.0)
    loss += np.where(spiked[:, None] & (evals[None, :] == spike_at[:, None] + every), SPIKE_JUMP, 0.0)
    loss[diverged[:, None] & (evals[None, :] == end[:, None])] = np.nan
    logged = (evals[None, :] <= end[:, None]) & ~failed[:, None]
    teacher = _teacher_loss(g, loss[:, -1])
    if pipeline.any():  # eam keeps a share of its teacher's gain; it logs one validation loss, at its end
        loss[pipeline, -1] = (UNIFORM - scenario.transfer_share * (UNIFORM - teacher)
                              + rng.normal(0, 0.02, g.n))[pipeline]
        logged[pipeline] = evals[None, :] == steps

    rows, cols = np.nonzero(logged)
    parts = [_long(g, rows, evals[cols], "val", "loss", loss[rows, cols])]
    if pipeline.any():
        p = np.flatnonzero(pipeline)
        parts.append(_long(g, p, np.full(len(p), steps), "val", "teacher_loss", teacher[p]))
    if scenario.diagnostics:
        parts += _diagnostics(scenario.diagnostics, g, recipe, end, failed | pipeline, collapsed | diverged,
                              np.where(diverged, end - every, onset), rng)
    trajectories = pd.concat(parts, ignore_index=True).sort_values(
        ["arch", "variant", "seed", "split", "metric", "step"], ignore_index=True, kind="stable")
    status = np.where(failed, "failed", np.where(diverged, "diverged", "completed"))
    runs = _runs(g, study, status, end, pipeline, loss, logged, evals, teacher,
                 n_events=collapsed.astype(int) + diverged + spiked, unstable=collapsed | diverged)
    events = _events(g, recipe, collapsed, diverged, spiked, onset, end, spike_at, final)
    quantization = _quantization(scenario, g, status, final, rng) if scenario.quantization else None
    return Tables(study, runs, trajectories, events, quantization, int(collapsed.sum() + diverged.sum() + spiked.sum()))


def _teacher_loss(g: Grid, last: np.ndarray) -> np.ndarray:
    """Each run's same-variant, same-seed transformer's last validation loss (an eam run's teacher's)."""
    teacher = {(v, s): x for a, v, s, x in zip(g.arch, g.variant, g.seed, last) if a == "transformer"}
    return np.array([teacher.get((v, s), np.nan) for v, s in zip(g.variant, g.seed)])


def _long(g: Grid, rows: np.ndarray, steps, split: str, metric: str, values) -> pd.DataFrame:
    """trajectories rows: the run's identity, then harness.contracts.METRIC_COLUMNS."""
    steps = np.asarray(steps, dtype=np.int64)
    return pd.DataFrame({**g.identity(rows), "step": steps, "split": split, "metric": metric,
                         "value": np.asarray(values, dtype=float), "wall_time": steps * 0.05})


def _runs(g: Grid, study: dict, status, end, pipeline, loss, logged, evals, teacher, n_events,
          unstable) -> pd.DataFrame:
    """runs: run.json flattened (harness.aggregate._run_row), then the scores harness.stats.run_scores adds
    (final loss: the last finite evaluation, inf for a broken run; smoothed: the mean of the last 3)."""
    failed, diverged = status == "failed", status == "diverged"
    n_params = np.array([N_PARAMS.get(a, 125_000) for a in g.arch], dtype=float)
    n = g.n
    columns = {**g.identity(), **{SWEEP_PREFIX + key: [v[key] for v in g.values] for key in study["sweep"]},
               "status": status,
               "reason": np.where(failed, "synthetic crash", np.where(diverged, "non-finite validation loss", "")),
               "build": g.arch, "recipe_name": "common", "n_params": np.where(failed, np.nan, n_params),
               "reference": "transformer", "reference_params": 125_000.0,
               "deviation": np.where(failed, np.nan, n_params / 125_000 - 1), "shape_mode": "matched", "device": "cpu",
               "dtype": None, "threads": 1, "wall_time_s": np.where(failed, 1.0, 60.0),
               "steps_done": np.where(failed, 0, end), "data_name": study["data"]["name"],
               "data_sha256": TINYSHAKESPEARE_SHA256, "data_tokens": "bytes", "vocab_size": VOCAB}
    if pipeline.any():  # harness.eam's summary: eam_loss, teacher_loss, transfer = teacher / eam
        eam = loss[:, -1]
        columns.update(pipeline_eam_loss=np.where(pipeline, eam, np.nan),
                       pipeline_teacher=np.where(pipeline, "transformer", None),
                       pipeline_teacher_loss=np.where(pipeline, teacher, np.nan),
                       pipeline_transfer=np.where(pipeline, teacher / eam, np.nan))
    # the scores
    finite = logged & np.isfinite(loss)
    n_evals = finite.sum(axis=1)
    from_end = finite[:, ::-1].cumsum(axis=1)[:, ::-1]  # finite evaluations at or after each one
    last3 = finite & (from_end <= 3)
    broken = diverged | (logged & ~np.isfinite(loss)).any(axis=1)
    masked = np.where(finite, loss, np.inf)
    best = masked.argmin(axis=1)
    measured = n_evals > 0
    can_test = ~failed & (n_evals > 0) & np.array([testable(k) for k in n_evals])
    columns.update(
        final_loss=np.where(broken, np.inf, np.where(
            measured, np.where(finite & (from_end == 1), masked, 0).sum(1), np.nan)),
        final_smoothed_loss=np.where(broken, np.inf, np.where(
            measured, np.where(last3, masked, 0).sum(1) / np.maximum(1, last3.sum(1)), np.nan)),
        best_loss=np.where(measured, masked[np.arange(n), best], np.nan),
        best_step=np.where(measured, evals[best].astype(float), np.nan), time_to_target=np.nan,
        collapsed=np.array([bool(x) if (x or t) else math.nan for x, t in zip(unstable, can_test)], dtype=object),
        n_events=n_events, n_evals=n_evals, testable=can_test)
    return pd.DataFrame(columns)


def _lr_at(steps: np.ndarray, lr: np.ndarray, recipe: dict) -> np.ndarray:
    """harness.recipe.lr_at (linear warmup, cosine to min_lr) of the step before each logged step."""
    s = steps[None, :] - 1.0
    warm = lr[:, None] * (s + 1) / recipe["warmup_steps"]
    progress = np.minimum(1.0, (s - recipe["warmup_steps"]) / max(1, recipe["steps"] - recipe["warmup_steps"]))
    cosine = recipe["min_lr"] + 0.5 * (lr[:, None] - recipe["min_lr"]) * (1 + np.cos(np.pi * progress))
    return np.where(s < recipe["warmup_steps"], warm, cosine)


def _diagnostics(kind: str, g: Grid, recipe: dict, end, skip, unstable, onset, rng) -> list[pd.DataFrame]:
    """Train diagnostics at every log step of every trained run (the runs without events too), by ``kind``:
    warmup: update_ratio/mixer follows the lr of the warmup ramp (proportional to it, 3% noise);
    ar1: grad_norm wanders as an AR(1), phi 0.9, 9% of its level (harness.stability.held_z's worst case);
    precursor: attn_logit_max/blocks.0.attn steps up 8 noise SDs (16% of its level) 40 steps before the
    onset of each run that collapses or diverges, and only there; beside it logz_mean, flat noise."""
    logs = np.arange(recipe["log_every"], recipe["steps"] + 1, recipe["log_every"])
    runs = np.flatnonzero(~skip)
    n, m = len(runs), len(logs)
    series = {}
    if kind == "warmup":
        ratio = _lr_at(logs, g.lr[runs], recipe) / g.lr[runs, None]
        series["update_ratio/mixer"] = 0.01 * (0.02 + ratio) * np.exp(rng.normal(0, 0.03, (n, m)))
    elif kind == "ar1":
        e, x = rng.normal(0, 0.2, (n, m)), np.zeros((n, m))
        for j in range(1, m):
            x[:, j] = 0.9 * x[:, j - 1] + e[:, j]
        series["grad_norm"] = 5.0 + x
    elif kind == "precursor":
        rise = unstable[runs, None] & (logs[None, :] >= onset[runs, None] - 40)
        series["attn_logit_max/blocks.0.attn"] = 5.0 + rng.normal(0, 0.1, (n, m)) + np.where(rise, 0.8, 0.0)
        series["logz_mean"] = 3.0 + rng.normal(0, 0.03, (n, m))
    else:
        raise ValueError(f"unknown diagnostics {kind!r}")
    rows, cols = np.nonzero(logs[None, :] <= end[runs, None])
    return [_long(g, runs[rows], logs[cols], "train", metric, x[rows, cols]) for metric, x in series.items()]


def _events(g: Grid, recipe: dict, collapsed, diverged, spiked, onset, end, spike_at, final) -> pd.DataFrame:
    """events rows (ID_COLUMNS + EVENT_COLUMNS) of the drawn collapses, divergences and spikes, each dated
    at the last evaluation before it, as the detector dates them."""
    every = recipe["eval_every"]
    never = np.full(g.n, np.nan)
    parts = []
    for mask, kind, start, peak, jump, recovered, end_step in (
            (collapsed, "collapse", onset, onset + every, COLLAPSE_JUMP, False, never),
            (diverged, "divergence", end - every, end, math.inf, False, never),
            (spiked, "spike", spike_at, spike_at + every, SPIKE_JUMP, True, spike_at + 2.0 * every)):
        j = np.flatnonzero(mask)
        if not len(j):
            continue
        parts.append(pd.DataFrame({
            **g.identity(j), "type": kind, "split": "val", "onset_step": start[j].astype(float),
            "train_onset_step": start[j] - recipe["log_every"], "peak_step": peak[j].astype(float),
            "end_step": end_step[j], "recovered": recovered, "peak_value": final[j] + jump, "magnitude": math.exp(jump),
            "score": 12.0, "threshold": 6.0, "note": ""}))
    if not parts:
        return pd.DataFrame(columns=ID_COLUMNS + EVENT_COLUMNS)
    events = pd.concat(parts, ignore_index=True)[ID_COLUMNS + EVENT_COLUMNS]
    return events.sort_values(["arch", "variant", "seed", "onset_step"], ignore_index=True, kind="stable")


def _quantization(scenario: Scenario, g: Grid, status, final, rng) -> pd.DataFrame:
    """quantization rows of every completed run, as harness.aggregate.quantization_tables gives them to the
    claims: the weights at steps 100 and 200 (every_checkpoint), widths 32 (fp32), 8, 5 and 4 bits. The
    scenario's (arch, bits) cell draws a lognormal bits-per-token increase with the given median and
    sigma; every other cell a lognormal (sigma 0.5) around a plausible level. At step 100 the increase is
    70% of the final one."""
    target_arch, target_bits, median, sigma = scenario.quantization
    done = np.flatnonzero((status == "completed") & ~np.isin(g.arch, PIPELINES))
    mine = g.arch[done] == target_arch
    levels = {8: 0.001, 5: 0.02, 4: 0.06}
    parts = []
    for bits in (32, 8, 5, 4):
        if bits == 32:
            bpt = np.zeros(len(done))
        elif bits == target_bits:
            bpt = np.where(mine, median, levels[bits]) * np.exp(rng.normal(0, np.where(mine, sigma, 0.5)))
        else:
            bpt = levels[bits] * np.exp(rng.normal(0, 0.5, len(done)))
        for step, share in ((100, 0.7), (200, 1.0)):
            increase = bpt * share * math.log(2)
            parts.append(pd.DataFrame({**g.identity(done), "step": step, "final": step == 200, "bits": bits,
                                       "loss": final[done] + 0.2 * (step == 100) + increase, "loss_increase": increase,
                                       "bpt_increase": increase / math.log(2), "note": ""}))
    at = len(ID_COLUMNS) + 1
    columns = QUANTIZATION_COLUMNS[:at] + ["final"] + QUANTIZATION_COLUMNS[at:]
    table = pd.concat(parts, ignore_index=True).sort_values(
        ["arch", "variant", "seed", "step", "bits"], ascending=[True, True, True, True, False], ignore_index=True)
    return table[columns]


# ------------------------------------------------------------------------------------ the verdicts

@dataclass
class Verdicts:
    """What the harness says about one synthetic study."""

    tables: Tables
    stability: dict[str, pd.DataFrame]
    claims: pd.DataFrame
    looks: pd.DataFrame | None = None  # with a seed budget: harness.sequential's looks (what each decided)


def judge(t: Tables) -> Verdicts:
    """The aggregate's calls: harness.stability.tables, then harness.claims.evaluate on its output."""
    tables = stability.tables(t.study, t.runs, t.trajectories, t.events)
    return Verdicts(t, tables, claims.evaluate(t.study, t.runs, t.events, t.quantization, tables))


@contextlib.contextmanager
def claims_parsed_once():
    """harness.claims.evaluate parses and validates the packaged claims.yaml at every call (about 20 ms, a
    quarter of a small study's time). For the benchmark's duration harness.claims.load remembers what it
    returned for the same arguments: the files do not change during a run, so no verdict changes."""
    original = getattr(claims, "load", None)
    if original is None:
        yield
        return
    memo = {}

    def load(*args, **kwargs):
        key = (args, tuple(sorted(kwargs.items())))
        try:
            hash(key)
        except TypeError:
            return original(*args, **kwargs)
        if key not in memo:
            memo[key] = original(*args, **kwargs)
        return memo[key]

    claims.load = load
    try:
        yield
    finally:
        claims.load = original


def claim_verdict(v: Verdicts, claim_id: str) -> str:
    """A claim's verdict at its published setting when the study matches it, else at proxy scale."""
    row = v.claims[v.claims["id"] == claim_id]
    if row.empty:
        raise ValueError(f"claim {claim_id!r} was not tested (are its architectures in the scenario?)")
    at_setting = str(row["verdict"].iloc[0])
    return at_setting if at_setting not in ("cannot test", "", "nan") else str(row["proxy_verdict"].iloc[0])


def _p(table: pd.DataFrame) -> pd.Series:
    """The p a row is decided on: Holm-corrected where the table has it."""
    return pd.to_numeric(table["p_holm" if "p_holm" in table.columns else "p"], errors="coerce")


def _truthy(values: pd.Series) -> pd.Series:
    return values.astype(str).str.strip().str.lower().isin(("true", "1", "1.0"))


Reader = Callable[[Verdicts], tuple[float, float]]
"""One study's verdicts -> (a verdict is decided at all, it is decided in the effect's direction): True /
False, or for attribution the share of the study's events (a rate is the mean over studies)."""


def read_claim(claim_id: str, expected: str | None = None, false: tuple[str, ...] = DECIDED) -> Reader:
    """A claim's verdict: decided when it is one of ``false`` (for a null: the verdicts that are wrong in it;
    at a rate of exactly 1/2 a claim that runs have NO event is rightly "contradicted" when the events are
    beyond the detector's false alarms, so only "consistent" is false there), right when it is ``expected``."""
    def read(v: Verdicts) -> tuple[bool, bool]:
        verdict = claim_verdict(v, claim_id)
        return verdict in false, verdict == expected
    return read


def read_pairs(better: str = "memnls", worse: str = "transformer") -> Reader:
    """sensitivity_pairs: any pair decided; right: the pair of ``better`` and ``worse`` decided, ``better``
    the less sensitive."""
    def read(v: Verdicts) -> tuple[bool, bool]:
        pairs = v.stability["sensitivity_pairs"]
        if pairs.empty:
            return False, False
        if v.looks is None:
            decided = _p(pairs) <= ALPHA
        else:  # decided at some look, each at its own level
            settled = v.looks.loc[v.looks["decided"] & (v.looks["kind"] == "pair"), ["setting", "archs"]]
            keys = set(zip(settled["setting"], settled["archs"]))
            decided = pd.Series([(s, f"{a}, {b}") in keys for s, a, b in
                                 zip(pairs["setting"], pairs["arch_a"], pairs["arch_b"])], index=pairs.index)
        diff = pd.to_numeric(pairs["difference"], errors="coerce")  # a - b
        right = decided & (((pairs["arch_a"] == better) & (pairs["arch_b"] == worse) & (diff < 0))
                           | ((pairs["arch_a"] == worse) & (pairs["arch_b"] == better) & (diff > 0)))
        return bool(decided.any()), bool(right.any())
    return read


def read_ablations(arch: str = "transformer") -> Reader:
    """ablations: any row decided; right: a row of ``arch`` decided with fewer unstable runs switched on."""
    def read(v: Verdicts) -> tuple[bool, bool]:
        rows = v.stability["ablations"]
        if rows.empty:
            return False, False
        decided = _p(rows) <= ALPHA
        fewer = rows["on_k"] / rows["on_n"].clip(lower=1) < rows["off_k"] / rows["off_n"].clip(lower=1)
        return bool(decided.any()), bool((decided & fewer & (rows["arch"] == arch)).any())
    return read


def read_attribution(diagnostic: str) -> Reader:
    """attribution, per event (the issue's unit: "named as the precursor of at most 5% of events"): the share
    of the study's drawn events whose ``first`` diagnostic is ``diagnostic`` (a null's false verdicts), and
    the share whose listed precursors include it (an effect's power: the real precursor found)."""
    event = ["arch", "variant", "seed", "event_type", "onset_step"]

    def read(v: Verdicts) -> tuple[float, float]:
        rows = v.stability["attribution"]
        if rows.empty or not v.tables.n_events:
            return 0.0, 0.0
        mine = rows[rows["diagnostic"] == diagnostic]
        first = len(mine[_truthy(mine["first"])].drop_duplicates(event))
        listed = len(mine.drop_duplicates(event))
        return first / v.tables.n_events, listed / v.tables.n_events
    return read


# ------------------------------------------------------------------------------------ the cases

SHARES = {"boundary": 1.0, "claim effect": 0.25, "pair": 1.0, "diagnostics": 0.25, "six": 0.125}
"""Shares of --studies by what a study costs to judge and where precision matters (the module's docstring):
the claims judged on a boundary, where a correct test decides in up to 5% of studies, get every study."""
SIX = ("diag_ssm", "eam", "memnls", "resonance", "transformer", "trn_hybrid")  # the stability study's


def _pair(name: str, about: str, memnls: dict | None = None, transformer: dict | None = None,
          **scenario) -> Scenario:
    """memnls vs transformer over the lr sweep (Arch keywords per architecture)."""
    scenario.setdefault("share", SHARES["diagnostics" if scenario.get("diagnostics") else "pair"])
    return Scenario(name, about, (Arch("memnls", **(memnls or {})), Arch("transformer", **(transformer or {}))),
                    **scenario)


SHARED_RISE = {"final": RISING, "collapse": RISING_UNSTABLE}  # both architectures alike: collapses rising with lr

SCENARIOS = {s.name: s for s in (
    # -- memnls vs transformer over the lr grid: the sensitivity pair and "memnls is more stable"
    _pair("identical", "two identical architectures, the realistic lr response, final-loss SD 0.02",
          {"final": RISING}, {"final": RISING}),
    _pair("noise-0.01-0.04", "a flat lr response alike; final-loss SD 0.01 (memnls) vs 0.04 (transformer)",
          {"sd": 0.01}, {"sd": 0.04}),
    _pair("noise-0.02-0.03", "a flat lr response alike; final-loss SD 0.02 (memnls) vs 0.03 (transformer)",
          {"sd": 0.02}, {"sd": 0.03}),
    _pair("unstable-30", "both: 30% of runs collapse, at every lr", {"collapse": 0.3}, {"collapse": 0.3}),
    _pair("unstable-rising", "both: collapses rising with the lr (0, 0, 10, 30, 50, 70%)", SHARED_RISE, SHARED_RISE),
    _pair("diverge-10", "both: 10% of the runs at lr 1 diverge", {"final": RISING, "diverge": tuple(0.1 * TOP_LR)},
          {"final": RISING, "diverge": tuple(0.1 * TOP_LR)}),
    _pair("diverge-30", "both: 30% of the runs at lr 1 diverge", {"final": RISING, "diverge": tuple(0.3 * TOP_LR)},
          {"final": RISING, "diverge": tuple(0.3 * TOP_LR)}),
    _pair("failed-lr1", "identical realistic responses, but every memnls run at lr 1 failed (crashed)",
          {"final": RISING, "failed": (1.0,)}, {"final": RISING}),
    _pair("sensitivity+0.3", "effect: the transformer's final loss is 0.3 nats higher at the top two lrs",
          {"final": RISING}, {"final": tuple(np.add(RISING, 0.3 * TOP_TWO))}),
    _pair("instability-0-60", "effect: at the top two lrs memnls never collapses, the transformer in 60% of runs",
          {"final": RISING}, {"final": RISING, "collapse": tuple(0.6 * TOP_TWO)}),
    # -- the stability study's shape: six architectures x 6 lrs x z_loss 0 / 1e-3 (36 ablation rows, 30 pairs)
    Scenario("six-identical-zloss", "six identical architectures, collapses rising with the lr (none in eam, a "
             "pipeline the detector cannot see), z_loss changing nothing",
             tuple(Arch(a, final=RISING, collapse=0.0 if a in PIPELINES else RISING_UNSTABLE) for a in SIX),
             sweep="lr+z_loss", share=SHARES["six"]),
    Scenario("zloss-0-90", "effect: z_loss 1e-3 stops the transformer's collapses at the top two lrs (90% -> 0%); "
             "five other architectures never collapse",
             tuple(Arch(a, final=RISING, collapse=tuple(0.9 * TOP_TWO) if a == "transformer" else 0.0,
                        collapse_z_loss=0.0) for a in SIX), sweep="lr+z_loss", share=SHARES["six"]),
    # -- attribution: collapses rising with the lr in both, diagnostics logged by every run
    _pair("warmup-diagnostic", "update_ratio follows the warmup's lr ramp in every run; collapses (rising with "
          "the lr) start at steps 80-150, during the warmup", SHARED_RISE, SHARED_RISE, diagnostics="warmup"),
    _pair("ar1-diagnostic", "grad_norm wanders as an AR(1) (phi 0.9, 9% of its level) in every run; collapses "
          "rising with the lr", SHARED_RISE, SHARED_RISE, diagnostics="ar1"),
    _pair("precursor-8sd", "effect: attn_logit_max steps up 8 noise SDs 40 steps before each collapse (rising "
          "with the lr), in the collapsing runs only", SHARED_RISE, SHARED_RISE, diagnostics="precursor"),
    # -- claims about one architecture's own training: one variant, the study's own recipe (lr 3e-3)
    Scenario("events-half", "resonance: a spike in each run with probability exactly 1/2",
             (Arch("resonance", spike=0.5),), sweep="none"),
    Scenario("events-false-alarm", "resonance: a spike in each run with probability 0.02, the detector's false-alarm "
             "rate (harness.stats.FALSE_ALARM_RATE): the boundary of 'no spikes'", (Arch("resonance", spike=0.02),),
             sweep="none"),
    Scenario("events-false-alarm-published", "the published setting (enwik8 bytes, 50,000 steps): memnls collapses "
             "with probability 0.02, the detector's false-alarm rate", (Arch("memnls", collapse=0.02),),
             sweep="none", published=True),
    Scenario("events-half-published", "the published setting (enwik8 bytes, 50,000 steps): memnls and the "
             "transformer each collapse with probability exactly 1/2 (onsets at steps 22,000-34,000)",
             (Arch("memnls", collapse=0.5), Arch("transformer", collapse=0.5)), sweep="none", published=True),
    Scenario("no-clip-half", "without clipping resonance and the transformer collapse with probability exactly 1/2",
             (Arch("resonance", collapse=0.5), Arch("transformer", collapse=0.5)), sweep="none"),
    Scenario("no-clip-0-60", "effect: without clipping resonance never collapses, the transformer in 60% of runs",
             (Arch("resonance"), Arch("transformer", collapse=0.6)), sweep="none", share=SHARES["claim effect"]),
    Scenario("quant-point-at-edge", "resonance's int8 cost per seed lognormal (sigma 0.75) with its median at the "
             "edge of the point claim's tolerance, 0.002 + 0.001 bits per byte (the mean is 32% above it)",
             (Arch("resonance"),), sweep="none", quantization=("resonance", 8, 0.003, 0.75)),
    Scenario("quant-bound-at-bound", "trn_hybrid's int8 cost per seed lognormal (sigma 0.75) with its median at "
             "the claimed bound, 0.008 bits per byte (the mean is 32% above it)",
             (Arch("trn_hybrid"),), sweep="none", quantization=("trn_hybrid", 8, 0.008, 0.75)),
    Scenario("healthy", "effect: resonance has no event; its int8 cost is lognormal (sigma 0.3) with its median "
             "at the claimed 0.002 bits per byte", (Arch("resonance"),), sweep="none",
             quantization=("resonance", 8, 0.002, 0.3), share=SHARES["claim effect"]),
    Scenario("transfer-published-share", "eam keeps exactly the published share of its teacher's gain over a "
             "uniform guess, (ln 1024 - 4.308) / (ln 1024 - 4.219) = 0.967, at bytes loss levels (teacher ~2.2 "
             "nats of ln 256 = 5.55)", (Arch("transformer"), Arch("eam")), sweep="none",
             transfer_share=(math.log(1024) - 4.308) / (math.log(1024) - 4.219)),
)}


@dataclass(frozen=True)
class Case:
    """One verdict read off one scenario. A null's target is the highest false-verdict rate allowed, an
    effect's the lowest power at POWER_SEEDS."""

    kind: str  # the claim's kind, or the stability table
    verdict: str  # the claim's id, or the table
    scenario: str
    effect: bool
    target: float
    read: Reader = field(compare=False, repr=False)

    @property
    def name(self) -> str:
        return f"{self.verdict}:{self.scenario}"


def null(kind: str, verdict: str, scenario: str, read: Reader) -> Case:
    return Case(kind, verdict, scenario, False, ALPHA, read)


def effect(kind: str, verdict: str, scenario: str, read: Reader) -> Case:
    return Case(kind, verdict, scenario, True, POWER, read)


ANTI = "memnls-anti-collapse"  # more_stable_than: memnls vs transformer
PAIR_NULLS = ("identical", "noise-0.01-0.04", "noise-0.02-0.03", "unstable-30", "unstable-rising", "diverge-10",
              "diverge-30", "failed-lr1", "six-identical-zloss")
PAIR_EFFECTS = ("sensitivity+0.3", "instability-0-60")
CASES = (
    [null("sensitivity_pairs", "sensitivity_pairs", s, read_pairs()) for s in PAIR_NULLS]
    + [effect("sensitivity_pairs", "sensitivity_pairs", s, read_pairs()) for s in PAIR_EFFECTS]
    + [null("more_stable_than", ANTI, s, read_claim(ANTI)) for s in PAIR_NULLS + ("events-half-published",)]
    + [effect("more_stable_than", ANTI, s, read_claim(ANTI, "supported")) for s in PAIR_EFFECTS]
    + [null("ablations", "ablations", "six-identical-zloss", read_ablations()),
       effect("ablations", "ablations", "zloss-0-90", read_ablations("transformer")),
       null("attribution", "attribution", "warmup-diagnostic", read_attribution("update_ratio/mixer")),
       null("attribution", "attribution", "ar1-diagnostic", read_attribution("grad_norm")),
       effect("attribution", "attribution", "precursor-8sd", read_attribution("attn_logit_max/blocks.0.attn")),
       null("events", "resonance-no-spikes", "events-half", read_claim("resonance-no-spikes", false=("consistent",))),
       null("events", "resonance-no-spikes", "events-false-alarm",
            read_claim("resonance-no-spikes", false=("contradicted",))),
       null("events", "memnls-no-catastrophe", "events-half-published",
            read_claim("memnls-no-catastrophe", false=("consistent",))),
       null("events", "memnls-no-catastrophe", "events-false-alarm-published",
            read_claim("memnls-no-catastrophe", false=("contradicted",))),
       null("events", "transformer-collapse-28k", "events-half-published", read_claim("transformer-collapse-28k")),
       effect("events", "resonance-no-spikes", "healthy", read_claim("resonance-no-spikes", "consistent")),
       null("no_clip_needed", "resonance-no-clip-needed", "no-clip-half", read_claim("resonance-no-clip-needed")),
       effect("no_clip_needed", "resonance-no-clip-needed", "no-clip-0-60",
              read_claim("resonance-no-clip-needed", "supported")),
       null("quantization", "resonance-int8", "quant-point-at-edge", read_claim("resonance-int8")),
       null("quantization", "trn-int8-within", "quant-bound-at-bound", read_claim("trn-int8-within")),
       effect("quantization", "resonance-int8", "healthy", read_claim("resonance-int8", "supported")),
       null("transfer", "eam-transfer", "transfer-published-share", read_claim("eam-transfer"))]
)


def select(only: str | None) -> list[Case]:
    """The cases ``only`` names (comma-separated): case names (verdict:scenario), scenarios, verdicts or kinds."""
    if not only:
        return list(CASES)
    wanted = {w.strip() for w in only.split(",") if w.strip()}
    unknown = wanted - {x for c in CASES for x in (c.name, c.scenario, c.verdict, c.kind)}
    if unknown:
        raise ValueError(f"--only: unknown {sorted(unknown)}; --list names the cases")
    return [c for c in CASES if wanted & {c.name, c.scenario, c.verdict, c.kind}]


# ------------------------------------------------------------------------------------ measuring

def rng_for(seed: int, scenario: str, n_seeds: int) -> np.random.Generator:
    """One generator per (seed, scenario, seed count): a subset (--only) draws the same studies."""
    return np.random.default_rng([seed, zlib.crc32(scenario.encode()), n_seeds])


def target_of(case: Case, n_seeds: int) -> float:
    """A null's target holds at every seed count, an effect's at POWER_SEEDS and more."""
    return case.target if not case.effect or n_seeds >= POWER_SEEDS else math.nan


def passes(effect: bool, rate: float, target: float, n: int) -> bool | None:
    """Null: rate <= target + 2 SE; effect: rate >= target - 2 SE; SE = that of a rate AT the target over n
    studies (None without a target)."""
    if math.isnan(target):
        return None
    allowance = 2 * math.sqrt(target * (1 - target) / n)
    return bool(rate >= target - allowance if effect else rate <= target + allowance)


def studies_for(scenario: str, n_studies: int | dict[str, int]) -> int:
    """Studies per cell: the scenario's share of ``n_studies``, or its own entry when a dict is given."""
    if isinstance(n_studies, dict):
        return n_studies[scenario]
    return max(1, round(n_studies * SCENARIOS[scenario].share))


COLUMNS = ["kind", "verdict", "case", "null_or_effect", "seeds", "n_studies", "rate", "se", "target", "passes"]
# what ``rate`` is in a row; not a bare "null", which CSV readers (pandas) take for a missing value
NULL, EFFECT = "null (false verdicts)", "effect (power)"


def measure(cases: list[Case], n_studies: int | dict[str, int], seeds: list[int], seed: int = 0,
            progress: Callable[[str], None] | None = None) -> pd.DataFrame:
    """The rate of every case at every seed count (COLUMNS). A scenario's studies are drawn and judged once
    for all its cases; each (scenario, seed count) has its own generator (``rng_for``)."""
    rows = []
    with claims_parsed_once():
        for scenario in dict.fromkeys(c.scenario for c in cases):
            mine = [c for c in cases if c.scenario == scenario]
            n = studies_for(scenario, n_studies)
            for n_seeds in seeds:
                start, rng = time.process_time(), rng_for(seed, scenario, n_seeds)
                hits = np.zeros((len(mine), n), dtype=float)
                for i in range(n):
                    verdicts = judge(draw_study(SCENARIOS[scenario], n_seeds, rng))
                    for k, case in enumerate(mine):
                        decided, right = case.read(verdicts)
                        hits[k, i] = right if case.effect else decided
                for k, case in enumerate(mine):
                    rate, target = float(hits[k].mean()), target_of(case, n_seeds)
                    rows.append([case.kind, case.verdict, case.scenario, EFFECT if case.effect else NULL,
                                 n_seeds, n, rate, math.sqrt(rate * (1 - rate) / n), target,
                                 passes(case.effect, rate, target, n)])
                if progress:
                    progress(f"{scenario}, {n_seeds} seeds: {n} studies in {time.process_time() - start:.1f} s CPU")
    table = pd.DataFrame(rows, columns=COLUMNS)
    order = {c.name: i for i, c in enumerate(CASES)}
    table["_order"] = [order[f"{v}:{s}"] for v, s in zip(table["verdict"], table["case"])]
    return table.sort_values(["_order", "seeds"], kind="stable").drop(columns="_order").reset_index(drop=True)


LOOK_KINDS = ("sensitivity_pairs", "more_stable_than", "events", "no_clip_needed", "quantization", "transfer")
"""The verdicts a seed budget's looks decide (harness.sequential.questions): the claims and the pairs."""
LOOKS_COLUMNS = ["kind", "verdict", "case", "null_or_effect", "budget", "n_studies", "rate", "se", "target",
                 "passes", "rate_unspent", "mean_seeds"]


def judge_looks(t: Tables, budget: SeedBudget, alphas: list[float] | None = None) -> Verdicts:
    """A study drawn at the budget's max seeds, judged as the workflow judges a seed budget: look by look on
    the first seeds (harness.sequential.replay), each question at the look that decided it."""
    study = {**t.study, "seed_budget": {"start": budget.start, "step": budget.step, "max": budget.max,
                                        "looks": budget.looks()}}
    looks, verdicts, tables = sequential.replay(study, t.runs, t.trajectories, t.events, t.quantization,
                                                alphas=alphas)
    return Verdicts(t, tables, verdicts, looks)


def measure_looks(cases: list[Case], n_studies: int | dict[str, int], budget: SeedBudget, seed: int = 0,
                  progress: Callable[[str], None] | None = None) -> pd.DataFrame:
    """LOOKS_COLUMNS: per case of LOOK_KINDS, its rate over the budget's looks (each look at its spent
    level), the rate when every look decides at ALPHA (what spending prevents), and the mean seeds of the
    looks that decided (the budget's max where none did)."""
    rows = []
    with claims_parsed_once():
        for scenario in dict.fromkeys(c.scenario for c in cases if c.kind in LOOK_KINDS):
            mine = [c for c in cases if c.scenario == scenario and c.kind in LOOK_KINDS]
            n = studies_for(scenario, n_studies)
            start, rng = time.process_time(), rng_for(seed, scenario, budget.max)
            hits, unspent, seeds = (np.zeros((len(mine), n)) for _ in range(3))
            for i in range(n):
                t = draw_study(SCENARIOS[scenario], budget.max, rng)
                spent, naive = judge_looks(t, budget), judge_looks(t, budget, [ALPHA] * len(budget.looks()))
                for k, case in enumerate(mine):
                    decided, right = case.read(spent)
                    hits[k, i] = right if case.effect else decided
                    unspent[k, i] = case.read(naive)[1 if case.effect else 0]
                    decided_at = spent.looks.loc[spent.looks["decided"], "seeds"]
                    seeds[k, i] = decided_at.max() if (decided or right) and len(decided_at) else budget.max
            for k, case in enumerate(mine):
                rate = float(hits[k].mean())
                target = POWER if case.effect else case.target
                rows.append([case.kind, case.verdict, case.scenario, EFFECT if case.effect else NULL,
                             f"{budget.start}+{budget.step} to {budget.max} ({len(budget.looks())} looks)", n, rate,
                             math.sqrt(rate * (1 - rate) / n), target, passes(case.effect, rate, target, n),
                             float(unspent[k].mean()), float(seeds[k].mean())])
            if progress:
                progress(f"{scenario}, looks {budget.looks()}: {n} studies in {time.process_time() - start:.1f} s CPU")
    return pd.DataFrame(rows, columns=LOOKS_COLUMNS)


def seeds_for_power(table: pd.DataFrame) -> pd.DataFrame:
    """Per effect: the smallest seed count of the table at which it is found in POWER of the studies."""
    rows = []
    for (kind, verdict, case), g in table[table["null_or_effect"] == EFFECT].groupby(
            ["kind", "verdict", "case"], sort=False):
        enough = g.loc[g["rate"] >= POWER, "seeds"]
        rows.append([kind, verdict, case, str(int(enough.min())) if len(enough) else f"> {int(g['seeds'].max())}"])
    return pd.DataFrame(rows, columns=["kind", "verdict", "case", "seeds_for_80%"])


def markdown(table: pd.DataFrame) -> str:
    def cell(column, value) -> str:
        if column in ("rate", "se", "target", "rate_unspent", "mean_seeds"):
            return "" if pd.isna(value) else f"{value:.3f}"
        if column == "passes":
            return "" if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)) \
                else ("yes" if value else "**NO**")
        return str(value)
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(cell(c, v) for c, v in zip(table.columns, r)) + " |"
              for r in table.itertuples(index=False)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", type=int, default=400,
                        help="synthetic studies per (case, seed count); costly scenarios run a share (SHARES)")
    parser.add_argument("--seeds", default="3,5,8,12", help="seed counts, comma-separated")
    parser.add_argument("--only", help="cases to run: case names (verdict:scenario), scenarios, verdicts or kinds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="write the table as CSV here")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    parser.add_argument("--budget", help="start,step,max: measure the claims and pairs over a seed budget's looks "
                                         "(harness.sequential) instead of at fixed seed counts")
    args = parser.parse_args(argv)
    if args.list:
        for c in CASES:
            print(f"{c.name:50} {c.kind:18} {'effect' if c.effect else 'null':6} {SCENARIOS[c.scenario].about}")
        return 0
    start, cpu = time.perf_counter(), time.process_time()
    progress = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    if args.budget:
        table = measure_looks(select(args.only), args.studies, SeedBudget(*(int(x) for x in args.budget.split(","))),
                              args.seed, progress=progress)
        power = pd.DataFrame()  # over looks the table's own mean_seeds says where effects are found
    else:
        table = measure(select(args.only), args.studies, [int(s) for s in args.seeds.split(",")], args.seed,
                        progress=progress)
        power = seeds_for_power(table)
    print(markdown(table))
    if len(power):
        print("\nThe smallest seed count at which each effect is found in 80% of studies:\n")
        print(markdown(power))
    if args.out:
        table.to_csv(args.out, index=False)
    print(f"\n({time.perf_counter() - start:.0f} s wall, {time.process_time() - cpu:.0f} s CPU; --studies "
          f"{args.studies}, seed {args.seed}" + (f", budget {args.budget})" if args.budget else ")"))
    return 0

if __name__ == "__main__":
    sys.exit(main())
