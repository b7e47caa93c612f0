"""Synthetic loss trajectories with known ground truth, to calibrate and test the collapse detector.

A healthy run is a power-law decay from the untrained level ln(vocab) toward a floor, sampled like
the trainer logs it: validation every ``eval_every`` steps as the mean of 16 random batches (each
batch's loss multiplicatively noisy, and now and then one much harder batch, so one evaluation in
a hundred or so sits a few percent high, as real ones do), train loss as a window mean every ``eval_every /
logs_per_eval`` steps. An event adds an excess (in nats, i.e. a perplexity ratio) as a function
of the step, so both curves see it where they sample it, and the train curve, logged more often,
sees it first. The published enwik8 runs have a validation noise of 1.7% (memnls) to 3%
(transformer) of the loss and a train noise of 0.6-1%; the healthy population spans and exceeds
that. No torch here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from harness.contracts import EVENT_TYPES

KINDS = ("healthy",) + EVENT_TYPES
VAL_BATCHES = 16
HARD_BATCH_RATE = 0.005  # share of validation batches that are much harder than the rest
# their loss relative to a typical batch (a table, a code block): one or two of them in an evaluation
# reproduce the published memnls run's largest healthy excursion (1.085x at 43,000, robust z 3.5)
HARD_BATCH_FACTOR = (1.2, 1.5)


@dataclass(frozen=True)
class Truth:
    """What was injected: the event type (None = healthy), the last step at the pre-event level
    (dated on the validation evaluations like the detector's onset: the evaluation before a jump,
    the minimum of the noise-free curve for a gradual rise) and the perplexity ratio."""

    type: str | None
    onset_step: int | None
    magnitude: float
    recovered: bool
    eval_every: int


def make_run(kind: str = "healthy", rng: np.random.Generator | int | None = None, *, n_evals: int = 100,
             magnitude: float = 2.0, onset: int | None = None, val_noise: float = 0.02,
             train_noise: float = 0.006, recovers: bool = False, eval_every: int = 500,
             logs_per_eval: int = 5, vocab_size: int = 256, nan: bool = True,
             val_dof: float | None = None) -> tuple[pd.DataFrame, Truth]:
    """One run in the long format (step, split, metric, value) and its ground truth.

    kind: healthy | nonfinite (one NaN train log after the onset, then the run goes on) | spike (back within one or two evaluations) | collapse (train jumps too; with
    ``recovers`` it decays back after a plateau, else it only partly recovers) | overfit_divergence
    (validation rises toward ``magnitude`` at the end while train keeps falling) | divergence (the
    loss becomes NaN and the run stops; with ``nan=False`` it climbs back to ln(vocab_size) instead).
    onset: index of the last evaluation before the event (default: random, with room on both sides).
    val_noise / train_noise: relative standard deviation of one validation evaluation / train log.
    val_dof: heavy-tailed validation noise: each evaluation's relative error is Student t with this
    many degrees of freedom, scaled to the standard deviation val_noise (None: the mean of 16 batches).
    logs_per_eval = eval_every logs the train loss at every step (give it a per-step train_noise).
    """
    if kind not in KINDS:
        raise ValueError(f"make_run: unknown kind {kind!r}; one of {KINDS}")
    if n_evals < 4:
        raise ValueError(f"make_run: n_evals must be >= 4, got {n_evals}")
    if not magnitude > 1:
        raise ValueError(f"make_run: magnitude is a perplexity ratio > 1, got {magnitude}")
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    log_every = eval_every // logs_per_eval
    total = n_evals * eval_every
    val_steps = np.arange(1, n_evals + 1) * eval_every
    train_steps = np.arange(1, n_evals * logs_per_eval + 1) * log_every

    ln_vocab = math.log(vocab_size)
    floor = rng.uniform(0.15, 0.45) * ln_vocab  # enwik8 bytes end near 0.17-0.25 ln(256)
    alpha = rng.uniform(0.3, 0.9)
    t0 = total * rng.uniform(0.002, 0.03)
    gap = rng.uniform(0.0, 0.04)  # validation ends this much above train (nats)

    def law(t: np.ndarray) -> np.ndarray:
        return floor + (ln_vocab - floor) * (1 + t / t0) ** -alpha

    if kind == "healthy":
        o = None
    elif onset is None:
        o = int(rng.integers(max(8, n_evals // 5), max(9, n_evals - 8)))
    else:
        o = onset
    if o is not None and not 0 <= o < n_evals - 1:
        raise ValueError(f"make_run: onset {o} must leave at least one evaluation after it (n_evals={n_evals})")
    t_on = 0.0 if o is None else val_steps[o] + rng.uniform(0.0, 0.5) * eval_every  # between two evals
    lift = math.log(magnitude)
    spike_len = rng.integers(1, 3) * eval_every - 1  # ends before the evaluation after it
    power = rng.choice([1.0, 2.0])  # overfitting: a linear or an accelerating rise
    rise = rng.choice([0.0, 0.5, 1.0]) * eval_every  # a collapse jumps within up to one interval
    plateau = rng.integers(3, 8) * eval_every
    decay = rng.uniform(1.0, 4.0) * eval_every
    rest = 0.0 if recovers else rng.uniform(0.7, 1.0)  # unrecovered: the excess decays only partly
    stop = math.inf  # the step after which nothing is logged (a NaN run stops)
    if kind == "divergence" and nan:
        stop = float(val_steps[o + 1])
    elif kind == "divergence":  # climb above the untrained level within one interval and stay there
        lift = ln_vocab + 0.3 - float(law(np.array([t_on]))[0])
        rise, plateau, rest = float(eval_every), math.inf, 1.0
        magnitude = math.exp(lift)

    def excess(t: np.ndarray, split: str) -> np.ndarray:
        """The injected excess loss (nats) at steps t."""
        after = t > t_on
        if kind in ("healthy", "nonfinite") or (kind == "divergence" and nan) or (
                kind == "overfit_divergence" and split == "train"):
            return np.zeros(len(t))
        if kind == "spike":
            return np.where(after & (t <= t_on + spike_len), lift, 0.0)
        if kind == "overfit_divergence":
            return np.where(after, lift * ((t - t_on) / (total - t_on)) ** power, 0.0)
        ramp = np.clip((t - t_on) / rise, 0.0, 1.0) if rise > 0 else after.astype(float)
        held = np.clip((t - t_on - rise - plateau) / decay, 0.0, None)
        return np.where(after, lift * ramp * (rest + (1 - rest) * np.exp(-held)), 0.0)

    s = 4 * val_noise  # per-batch relative spread: the mean of 16 batches has val_noise
    batches = np.exp(s * rng.standard_normal((n_evals, VAL_BATCHES)) - s * s / 2)
    hard = rng.random((n_evals, VAL_BATCHES)) < HARD_BATCH_RATE  # heavier tails than a normal mean
    batches = np.where(hard, batches * rng.uniform(*HARD_BATCH_FACTOR, size=batches.shape), batches)
    factor = batches.mean(axis=1)
    if val_dof is not None:  # heavy tails: t noise of the same standard deviation
        factor = np.exp(val_noise * rng.standard_t(val_dof, n_evals) / math.sqrt(val_dof / (val_dof - 2)))
    val = (law(val_steps) + gap * val_steps / total + excess(val_steps, "val")) * factor
    train = (law(train_steps) + excess(train_steps, "train")) * np.exp(
        train_noise * rng.standard_normal(len(train_steps)))
    if kind == "nonfinite":  # one non-finite train log after the onset; the run goes on
        train = np.where(train_steps == train_steps[train_steps > t_on][0], np.nan, train)
    if math.isfinite(stop):  # NaN from the first log after the event, then the trainer stops
        val, train = np.where(val_steps > t_on, np.nan, val), np.where(train_steps > t_on, np.nan, train)
        val, val_steps = val[val_steps <= stop], val_steps[val_steps <= stop]
        train, train_steps = train[train_steps <= stop], train_steps[train_steps <= stop]
    frame = pd.concat([
        pd.DataFrame({"step": train_steps, "split": "train", "metric": "loss", "value": train}),
        pd.DataFrame({"step": val_steps, "split": "val", "metric": "loss", "value": val}),
    ], ignore_index=True).sort_values(["step", "split"], ignore_index=True, kind="stable")
    if o is None:
        return frame, Truth(None, None, 1.0, True, eval_every)
    recovered = kind == "spike" or (kind == "collapse" and recovers)
    # an event that takes the loss back to the untrained level is a divergence by definition
    noise_free = law(val_steps) + gap * val_steps / total + excess(val_steps, "val")
    if kind != "divergence" and np.any(noise_free[o + 1:] >= ln_vocab - math.log(1.1)):
        kind, recovered = "divergence", False
    if kind == "overfit_divergence":  # a gradual rise leaves the level where the curve turns
        o += int(np.argmin(noise_free[o:]))
    return frame, Truth(kind, int(val_steps[o]), magnitude, recovered, eval_every)


NOISE_MODELS = ("normal", "t3", "every step")


def random_settings(rng: np.random.Generator, min_evals: int = 20, max_evals: int = 200,
                    noise: str = "normal") -> dict:
    """Run settings drawn over the range the detector must handle (lengths, noise, logging rate):
    validation noise 0.5-3.5% log-uniform (the published runs: 1.7% and 3%), train noise 0.3-1.2%.
    noise: "normal" (validation as the mean of 16 batches, train as a window mean 1-10 times per
    evaluation), "t3" (validation noise Student t with 3 degrees of freedom, heavy tails), or
    "every step" (the train loss of every step, 2-5% noise, evaluations every 100 steps: 2,000 to
    20,000 train points)."""
    if noise not in NOISE_MODELS:
        raise ValueError(f"random_settings: noise must be one of {NOISE_MODELS}, got {noise!r}")
    settings = {"n_evals": int(rng.integers(min_evals, max_evals + 1)),
                "val_noise": float(np.exp(rng.uniform(math.log(0.005), math.log(0.035)))),
                "train_noise": float(rng.uniform(0.003, 0.012)),
                "logs_per_eval": int(rng.choice([1, 2, 5, 10]))}
    if noise == "t3":
        settings["val_dof"] = 3.0
    elif noise == "every step":
        settings |= {"eval_every": 100, "logs_per_eval": 100, "train_noise": float(rng.uniform(0.02, 0.05))}
    return settings


def match(events: pd.DataFrame, truth: Truth) -> tuple[bool, float]:
    """Was the injected event found with the right type, and how far off (in evaluation intervals)
    is the closest such onset? (False, nan) when no event of that type was found."""
    if truth.type is None:
        raise ValueError("match: a healthy run has no event to match; count its events instead")
    same = events[events["type"] == truth.type]
    if same.empty:
        return False, math.nan
    error = (same["onset_step"] - truth.onset_step).abs().min() / truth.eval_every
    return True, float(error)


def draw_run(kind: str, rng: np.random.Generator, magnitude: float = 2.0, noise: str = "normal",
             **kwargs) -> tuple[pd.DataFrame, Truth]:
    """A run with random settings of a noise model (``kwargs`` override them) and ``kind`` injected
    ("healthy": none), redrawn while the event would reach the untrained level (it is then a
    divergence by definition, not an instance of ``kind``)."""
    for _ in range(100):
        frame, truth = make_run(kind, rng, magnitude=magnitude, **(random_settings(rng, noise=noise) | kwargs))
        if truth.type == (None if kind == "healthy" else kind):
            return frame, truth
    raise ValueError(f"draw_run: could not draw a {kind} of {magnitude}x below the untrained level")
