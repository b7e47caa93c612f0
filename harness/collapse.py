"""Instability events (spike, collapse, overfit divergence, divergence) from one run's loss curves.

How it decides, and why:
- Every loss is in nats, so a difference of losses is a ratio of perplexities: all levels and
  magnitudes below are differences of losses, reported as perplexity ratios.
- Noise is measured on the run itself, causally: the robust spread (MAD) of the second differences
  of the evaluations in a trailing window. They cancel the downward trend of training and most of
  its curvature, so the estimate needs no fitted curve, and the MAD ignores past outliers.
- An evaluation leaves the pre-event level when it is BOTH far above the trailing level in units of
  that noise (robust z) AND above it by a minimum perplexity ratio. The z alone would flag tiny wiggles
  of a very smooth curve (train loss averaged over a window); the ratio alone would flag noise on a
  noisy validation curve. Together they make the false-positive rate small at every noise level. A
  jump that holds is also tested on the median of its first evaluations, which is less noisy than
  one point, so a sustained 1.5x jump is found even where one noisy point could not show it.
- The onset is the last evaluation at the pre-event level: evaluations just before the first one
  out that already sat above their level by the minimum ratio (a ramp) belong to the event.
- Once out, an event lasts until the curve is back within ``recovery_tolerance`` of the pre-event
  level (hysteresis: entering needs ``min_ratio``, leaving needs the smaller tolerance), so one
  chaotic collapse is one event, not many.
- A slow rise (overfitting, a creeping collapse) never jumps above a trailing level that follows it,
  so a second test compares the smoothed curve with the best level the run had reached.
- The validation curve defines spikes, collapses and overfit divergence; the train curve tells a
  collapse (train jumps too) from overfitting (train keeps falling) and dates train_onset_step.

No torch here: this module must import fast and stand alone.
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from harness.contracts import EVENT_COLUMNS, from_dict
from harness.logs import LossKeys, is_loss, read
from harness.text import perplexity

MAD_TO_SD = 1.4826  # MAD of a normal sample times this is its standard deviation


@dataclass(frozen=True)
class DetectConfig:
    """Every threshold of the detector.

    Some defaults were first read off the published enwik8 curves (the values quoted below); a
    threshold fitted to the curves it is judged on proves nothing, so every default is validated on
    runs it was not fitted to: benchmarks/collapse_calibration.py (and its test) draws synthetic runs
    under three noise models (normal, t3 heavy-tailed validation, train logged every step) and checks
    the targets (<= 2% of healthy runs flagged, >= 95% of collapses of 1.5x found within two
    evaluations). The score and threshold columns of an event are the statistic that decided it and
    the limit it passed: the robust z (single evaluation or held median, in the same units) and its
    per-run threshold, the slow-rise z and drift_z_threshold, the smoothed loss and ln(vocab) for a
    return to the untrained level, inf (and no threshold) for a non-finite loss."""

    z_threshold: float = 6.0
    """Robust z (excess over the trailing level / noise) an evaluation must exceed to leave the level;
    a jump that holds is also tested on the median of its first min_sustained evaluations. The
    published healthy memnls run peaks at 3.5, and the transformer's last evaluations before its
    collapse (27,000 and 27,500) sit at 1.7 and 1.6 (the spec's "about 4" is against another trend),
    so 6 keeps a margin like the public monitor's 8 over a healthy 4.5. Read off those curves, it is
    validated on synthetic runs (the calibration benchmark); per run it is only a floor: the
    false_alarm_rate thresholds below are higher on long curves and for single evaluations."""

    min_ratio: float = 1.2
    """Minimum perplexity ratio over the trailing level for an evaluation to leave it (ln 1.2 = 0.18
    nats). Above what noise and a hard batch do in the published runs (memnls' largest healthy
    excursion is 1.085x; the transformer's 27,000 and 27,500, which the spec still counts as the
    pre-event level, sit 1.10x and 1.09x above theirs), and twice the recovery tolerance, so entering
    and leaving an event are well apart (hysteresis). A jump of 1.5x is always a candidate. Read off
    the published runs; validated on the synthetic ones (benchmarks/collapse_calibration.py)."""

    recovery_tolerance: float = 0.10
    """An event ends at the first evaluation back within this fraction (in perplexity) of the
    pre-event level (statistics.md: 10%)."""

    level_window: int = 5
    """Evaluations whose median is the trailing level. Short, so the level lags a falling curve by
    only about two evaluations (onsets stay sharp), yet one or two outliers cannot move it."""

    noise_window: int = 20
    """Evaluations whose second differences give the noise estimate (MAD). Eighteen of them estimate
    a spread to about 25%, and 20 evaluations is the shortest run the calibration covers."""

    min_history: int = 6
    """Evaluations needed before any test (a level, and four second differences for the noise). A run
    with fewer evaluations gets no statistical events (only divergence): nothing to compare with."""

    min_sustained: int = 3
    """Evaluations an excursion must last to be sustained (collapse or overfit divergence); a shorter
    excursion that comes back is a spike, and one still open when the run ends is not reported (it can
    be confirmed as neither), unless the train curve confirms it."""

    smoothing: int = 3
    """Evaluations in the running median used for the slow-rise test and the untrained-level test, so
    one noisy point can trigger neither (statistics.md smooths over the last 3 evaluations)."""

    false_alarm_rate: float = 0.005
    """Per curve and run, the chance that noise alone passes the single-evaluation test, and the same
    for the held test (median of min_sustained): each test of a curve with m tested evaluations uses
    false_alarm_rate / m (Bonferroni), so a curve logged at every step (20,000 points) needs a larger
    excursion than one evaluated 100 times: the false-alarm rate is per run, not per point. Both are
    floors on top of z_threshold. Validated on healthy runs the thresholds were not fitted to
    (benchmarks/collapse_calibration.py: normal, t3 and every-step noise models)."""

    tail_dof: float = 3.0
    """Noise model for those per-run thresholds: Student t with this many degrees of freedom, heavy
    tailed (validation batches with hard examples; a t3 validation noise flagged 10% of healthy runs
    under a normal model). Robust to tails heavier than the noise seen, at the cost of single-point
    spikes: on a 3%-noise curve of 100 evaluations one evaluation must sit about 15 robust SDs high
    to be a spike; a jump that holds is tested on the median of min_sustained evaluations, whose tails
    are much lighter, so collapses keep their sensitivity."""

    drift_z_threshold: float = 5.0
    """Robust z for the slow-rise test: (smoothed loss - best smoothed loss so far) / noise, held for
    min_sustained evaluations in a row. Lower than z_threshold because the smoothing and the
    holding already cut the noise; on long dense curves the smoothing widens (smoothing_window), so
    the best level is not a minimum over thousands of noisy points. Fitted on synthetic runs and
    checked on fresh draws of them (the calibration benchmark, other seeds)."""

    onset_noise: float = 2.0
    """How far above the trailing level (in noise SDs) the onset evaluation may sit and still be the
    pre-event loss; higher, it is already on the way up (a ramp) and the level is used instead. The
    published transformer's 27,500 sits 1.3 SD high and is the spec's pre-event 3.10 ppl."""

    rise_ratio: float = 1.5
    """In the note of an unrecovered event: a renewed rise of this ratio above the lowest point after
    the peak, held for two evaluations, is reported as a second rise (the published transformer rises
    again at 42,000 after a partial recovery)."""

    train_lookback: int = 1
    """Validation intervals before the onset in which a train excursion still belongs to the event:
    the train curve, logged more often, moves first (published run: near 27,000, onset 27,500)."""

    def __post_init__(self) -> None:
        positive = {"z_threshold": self.z_threshold, "drift_z_threshold": self.drift_z_threshold,
                    "recovery_tolerance": self.recovery_tolerance, "tail_dof": self.tail_dof}
        if not 0 < self.false_alarm_rate < 1:
            raise ValueError(f"DetectConfig.false_alarm_rate must be in (0, 1), got {self.false_alarm_rate}")
        if not self.onset_noise >= 0:
            raise ValueError(f"DetectConfig.onset_noise must be >= 0, got {self.onset_noise}")
        for name, value in positive.items():
            if not value > 0:
                raise ValueError(f"DetectConfig.{name} must be > 0, got {value}")
        if not self.min_ratio > 1 + self.recovery_tolerance:
            raise ValueError(f"DetectConfig.min_ratio ({self.min_ratio}) must exceed 1 + recovery_tolerance "
                             f"({1 + self.recovery_tolerance}): an event must start above the level it ends at")
        if not self.rise_ratio > 1:
            raise ValueError(f"DetectConfig.rise_ratio must be > 1, got {self.rise_ratio}")
        minimum = {"level_window": 1, "noise_window": 4, "min_history": 3, "min_sustained": 1,
                   "smoothing": 1, "train_lookback": 0}
        for name, low in minimum.items():
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"DetectConfig.{name} must be an integer >= {low}, got {value!r}")

    @classmethod
    def from_dict(cls, d: dict | None) -> DetectConfig:
        """Build from a plain mapping (e.g. JSON); unknown keys are an error that names them."""
        return from_dict(cls, dict(d or {}), "DetectConfig")


def testable(n_evals: int, config: DetectConfig | None = None) -> bool:
    """Whether a curve of ``n_evals`` finite evaluations can show a statistical event: the first
    ``min_history`` evaluations are only history (a level and a noise estimate), so at least one more
    is needed. The one definition the statistics use to call a run's collapse measurable."""
    cfg = DetectConfig() if config is None else config
    return int(n_evals) > cfg.min_history


@dataclass
class _Span:
    """An excursion of one curve, in indices of that curve (end None = still open at the end)."""

    onset: int | None  # last evaluation at the pre-event level (None: the curve starts inside it)
    trigger: int  # first evaluation out of the level
    end: int | None  # first evaluation back within the tolerance
    pre: float  # pre-event loss
    score: float
    threshold: float
    slow: bool = False  # found by the slow-rise test
    diverged: str = ""  # why it is a divergence ("" = it is not)
    untrained: str = ""  # the smoothed loss reached ln(vocab) inside it (a divergence only if training is lost)
    untrained_score: float = math.nan  # that smoothed loss (the statistic that decides a divergence)
    absorbed: list = field(default_factory=list)  # train spans that belong to this validation span


class _Curve:
    """One split's loss: steps and values sorted by step, finite prefix and its spans.

    Non-finite values followed by finite ones (the run went on) are taken out of the curve into
    ``holes`` (full steps and values, one event each stretch), so the finite values around them are
    scanned as one curve; a non-finite tail (the run ended non-finite) stays: x[n_finite:].
    """

    def __init__(self, split: str, steps: np.ndarray, values: np.ndarray):
        finite = np.isfinite(values)
        good = np.flatnonzero(finite)
        tail = int(good[-1]) + 1 if len(good) else 0  # the non-finite tail starts here
        hole = ~finite & (np.arange(len(values)) < tail)
        self.holes = list(zip(steps[hole].tolist(), values[hole].tolist()))
        self.split, self.steps, self.x = split, steps[~hole], values[~hole]
        self.n_finite = int(len(self.x) - (len(values) - tail))
        self.spans: list[_Span] = []

    def step(self, i: int | None) -> float:
        return float(self.steps[i]) if i is not None else math.nan

    def peak(self, s: _Span) -> int:
        """Index of the highest loss inside a span (a non-finite loss is the highest of all)."""
        stop = len(self.x) if s.end is None else s.end
        window = self.x[s.trigger:stop]
        bad = np.flatnonzero(~np.isfinite(window))
        return s.trigger + int(bad[0] if len(bad) else np.argmax(window))

    def duration(self, s: _Span) -> int:
        return (len(self.x) if s.end is None else s.end) - s.trigger


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularized incomplete beta function (Lentz; Numerical Recipes)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1, a - 1
    c, d = 1.0, 1 - qab * x / qap
    d = 1 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        for aa in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1 + aa * d
            d = 1 / (d if abs(d) > tiny else tiny)
            c = 1 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1) < 1e-14:
            break
    return h


def _t_sf(t: float, dof: float) -> float:
    """P(T > t) for Student's t (t >= 0), in pure Python: scipy would slow the detector's import."""
    x = dof / (dof + t * t)
    a, b = dof / 2, 0.5
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    ibeta = front * _betacf(a, b, x) / a if x < (a + 1) / (a + b + 2) else 1 - front * _betacf(b, a, 1 - x) / b
    return 0.5 * ibeta


def _t_isf(p: float, dof: float) -> float:
    """The t with P(T > t) = p (0 < p < 0.5), by bisection on the log scale."""
    lo, hi = 0.0, 1.0
    while _t_sf(hi, dof) > p:
        lo, hi = hi, hi * 2
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _t_sf(mid, dof) > p else (lo, mid)
    return hi


@functools.lru_cache(maxsize=256)
def tail_thresholds(m: int, rate: float, dof: float, k: int) -> tuple[float, float]:
    """Robust-z thresholds (single evaluation, median of k) that t(dof) noise passes with chance
    rate / m each: per run, over m tested evaluations. The robust SD of t(dof) noise, which the
    detector's MAD measures, is MAD_TO_SD * its quartile, so the thresholds are in those units."""
    p = rate / max(m, 1)
    robust_sd = MAD_TO_SD * _t_isf(0.25, dof)
    single = _t_isf(p, dof) / robust_sd
    need = k // 2 + 1  # the median of k exceeds c when more than half of them do

    def med_sf(c: float) -> float:
        q = _t_sf(c, dof)
        return sum(math.comb(k, j) * q ** j * (1 - q) ** (k - j) for j in range(need, k + 1))

    lo, hi = 0.0, _t_isf(p, dof)
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if med_sf(mid) > p else (lo, mid)
    return single, hi / robust_sd


def _windows(v: np.ndarray, size: int) -> np.ndarray:
    """Row p holds v[p - size : p] (NaN where that runs off the start): trailing windows, vectorised."""
    padded = np.concatenate([np.full(size, np.nan), v])
    return np.lib.stride_tricks.sliding_window_view(padded, size)[:len(v)]


def median_variance(count: np.ndarray) -> np.ndarray:
    """Variance of the median of ``count`` noisy points, in units of one point's variance."""
    return np.where(count >= 3, np.pi / (2 * np.maximum(count, 1)), 1 / np.maximum(count, 1))


def smoothing_window(n: int, cfg: DetectConfig) -> int:
    """Evaluations in the running median of the slow-rise test for a curve of n points: the
    configured ``smoothing``, widened on long curves (about n / 200, odd) so that the best level,
    a minimum over the curve, is a minimum over about 200 independent values whatever the logging
    density: the minimum of 20,000 noisy per-step losses sits far in the noise's lower tail, and
    every later point would then look like a rise."""
    return max(cfg.smoothing, 2 * (n // 400) + 1)


def _trailing_stats(v: np.ndarray, cfg: DetectConfig, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For every position p of the curve v (evaluations at the pre-event level, then the ones to
    test): the trailing level (median of the last level_window before p) and its variance in units
    of the noise, the noise (robust SD of the second differences among the last noise_window before
    p, / sqrt 6: they cancel the trend and most of its curvature, so early training's steep descent
    does not pass for noise) and the running median over smoothing evaluations ending at p."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN windows at the start
        level_window = _windows(v, cfg.level_window)
        level = np.nanmedian(level_window, axis=1)
        level_variance = median_variance(np.sum(~np.isnan(level_window), axis=1))
        # position p: the noise_window - 2 second differences among v[p - noise_window : p]
        d = _windows(np.diff(v, 2), cfg.noise_window - 2)
        d = np.concatenate([np.full((2, d.shape[1]), np.nan), d])[:len(v)]
        sigma = MAD_TO_SD * np.nanmedian(np.abs(d - np.nanmedian(d, axis=1, keepdims=True)), axis=1) / math.sqrt(6)
        smoothed = np.nanmedian(np.concatenate([_windows(v, k - 1), v[:, None]], axis=1), axis=1) \
            if k > 1 else v.copy()
    return level, level_variance, np.maximum(np.nan_to_num(sigma), 1e-12), smoothed


def trailing_baseline(x: np.ndarray, config: DetectConfig | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The detector's trailing baseline of every point of a finite series, from earlier points only
    (causal): (level, spread), the median of the last level_window points and the robust noise of
    the last noise_window (MAD of second differences / sqrt 6) widened by the level's own variance,
    exactly what the scan tests against. ``(x - level) / spread`` is the detector's robust z
    (robust_z); NaN for the first min_history points, which have too little history."""
    cfg = DetectConfig() if config is None else config
    x = np.asarray(x, dtype=float)
    if len(x) == 0:
        return np.empty(0), np.empty(0)
    level, level_variance, sigma, _ = _trailing_stats(x, cfg, 1)
    spread = sigma * np.sqrt(1 + level_variance)
    early = np.arange(len(x)) < cfg.min_history
    return np.where(early, np.nan, level), np.where(early, np.nan, spread)


def robust_z(x: np.ndarray, config: DetectConfig | None = None) -> np.ndarray:
    """The detector's robust z of every point of a finite series against its own trailing baseline
    (trailing_baseline; signed, NaN where the history is too short)."""
    level, spread = trailing_baseline(x, config)
    return (np.asarray(x, dtype=float) - level) / spread


def _centred_median(x: np.ndarray, k: int) -> np.ndarray:
    """Median of the k values centred on each position (fewer at the ends), vectorised."""
    half = k // 2
    padded = np.concatenate([np.full(half, np.nan), x, np.full(half, np.nan)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmedian(np.lib.stride_tricks.sliding_window_view(padded, 2 * half + 1), axis=1)


def _find_end(x: np.ndarray, start: int, stop: int, ceiling: float) -> int | None:
    back = np.flatnonzero(x[start:stop] <= ceiling)
    return start + int(back[0]) if len(back) else None


def _scan(x: np.ndarray, cfg: DetectConfig) -> list[_Span]:
    """Excursions of one finite curve (the core of the detector, see the module docstring).

    Between events every evaluation is tested at once against the evaluations before it that were
    at the pre-event level ("clean"); the first one out starts an event, which runs to its recovery,
    and testing resumes after it with the event's evaluations left out of the history.
    """
    n = len(x)
    m_tests = max(1, n - cfg.min_history)  # evaluations the curve tests: the per-run thresholds' m
    k_smooth = smoothing_window(n, cfg)
    # where an event ends: the curve itself, or on a long dense curve its centred running median
    # (one noisy per-step loss back within the tolerance does not end a collapse)
    back = x if k_smooth <= cfg.smoothing else _centred_median(x, k_smooth)
    lift, tol = math.log(cfg.min_ratio), math.log1p(cfg.recovery_tolerance)
    clean = np.empty(0, dtype=np.int64)
    fresh = 0  # position from which the best level is measured (it restarts after an event)
    spans: list[_Span] = []
    start = 0
    while start < n:
        index = np.concatenate([clean, np.arange(start, n)])  # clean history, then the untested rest
        v = x[index]
        level, level_variance, sigma, smoothed = _trailing_stats(v, cfg, k_smooth)
        known = np.where(np.arange(len(v)) >= max(fresh, k_smooth - 1), smoothed, np.inf)
        best = np.concatenate([[np.inf], np.minimum.accumulate(known)[:-1]])  # before p
        tested = np.arange(len(v)) >= max(len(clean), cfg.min_history)
        # the level is itself a median of noisy points: its variance adds to the tested one's
        spread = sigma * np.sqrt(1 + level_variance)
        z = (v - level) / spread
        # a jump that holds: the median of this and the next evaluations, less noisy than one point
        ahead = np.lib.stride_tricks.sliding_window_view(
            np.concatenate([v, np.full(cfg.min_sustained - 1, np.nan)]), cfg.min_sustained)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            held = np.nanmedian(ahead, axis=1)
        count = np.sum(~np.isnan(ahead), axis=1)
        held_z = (held - level) / spread  # in the same units as z, so one threshold column compares
        # thresholds per run: z_threshold (normal noise, one test), raised to what t(tail_dof) noise
        # passes with chance false_alarm_rate over the curve's m tested evaluations; for the held
        # median, z_threshold applies to its own (smaller) spread, rescaled here to the point's
        single_limit, held_limit = tail_thresholds(m_tests, cfg.false_alarm_rate, cfg.tail_dof, cfg.min_sustained)
        single_threshold = max(cfg.z_threshold, single_limit)
        held_threshold = np.where(
            count >= cfg.min_sustained,
            np.maximum(cfg.z_threshold * np.sqrt((median_variance(count) + level_variance) / (1 + level_variance)),
                       held_limit),
            np.inf)  # a median of fewer than min_sustained (the end of the curve) is no held jump
        use_held = (held - level > lift) & (held_z - held_threshold > z - single_threshold)
        z = np.where(use_held, held_z, z)
        threshold = np.where(use_held, held_threshold, single_threshold)
        point = tested & (v - level > lift) & (z > threshold)
        with np.errstate(invalid="ignore"):
            drift_z = (smoothed - best) / sigma
        rising = tested & (smoothed - best > lift) & (drift_z > cfg.drift_z_threshold)
        run = np.convolve(rising, np.ones(cfg.min_sustained, dtype=int))[:len(v)]
        sustained = np.flatnonzero(run >= cfg.min_sustained)
        first_point = np.flatnonzero(point)
        p_point = first_point[0] if len(first_point) else len(v)
        p_drift = sustained[0] if len(sustained) else len(v)
        if p_point == p_drift == len(v):
            break
        if p_point <= p_drift:
            p = int(p_point)
            # evaluations just before it that already sat above their own level by min_ratio, too
            # few to pass the z test then, belong to the event: the onset is before them
            first_out = p
            while first_out > cfg.min_history and v[first_out - 1] - level[first_out - 1] > lift:
                first_out -= 1
            # the onset evaluation may sit a little high (the published 3.10 at 27,500); higher, it is
            # already part of a ramp and the level is the better pre-event loss
            pre = float(np.clip(v[first_out - 1], level[first_out],
                                level[first_out] + cfg.onset_noise * sigma[first_out]))
            span = _Span(int(index[first_out - 1]), int(index[first_out]),
                         _find_end(back, int(index[p]) + 1, n, pre + tol), pre, float(z[p]), float(threshold[p]))
        else:
            p = int(p_drift)
            first_out = p - cfg.min_sustained + 1  # the rise began at the first of the sustained points
            pre = float(best[p])
            end = _find_end(back, int(index[p]) + 1, n, pre + tol)
            # a gradual rise leaves the level where the smoothed curve was at its best, the bottom of
            # the U (calibrated: a changepoint fit or a noise band around the best date it later)
            onset = int(index[np.flatnonzero(smoothed[:first_out] <= pre)[-1]])
            span = _Span(onset, int(index[first_out]), end, pre, float(drift_z[p]), cfg.drift_z_threshold,
                         slow=True)
        spans.append(span)
        if span.end is None:
            break
        clean = np.concatenate([index[:first_out], [span.end]])
        fresh = len(clean)
        start = span.end + 1
    return spans


def _running_median(x: np.ndarray, k: int) -> np.ndarray:
    """Median of the last k values ending at each position (fewer at the start), vectorised."""
    if k <= 1:
        return x.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmedian(np.concatenate([_windows(x, k - 1), x[:, None]], axis=1), axis=1)


def _mark_untrained(curve: _Curve, cfg: DetectConfig, ln_vocab: float | None) -> None:
    """Note, on each span the scan found, whether the smoothed loss climbed back to ln(vocab) after the
    run had clearly left it (pre-event loss below it by more than the recovery tolerance). Only a span
    can: a return to the untrained level is a significant rise, and noise near ln(vocab) in the first
    steps of a curve (before it has fallen) is no excursion. Whether it is a divergence depends on
    the train curve (detect): a validation loss past ln(vocab) while training keeps falling is
    overfitting, however high."""
    if ln_vocab is None or not curve.spans:
        return
    tol = math.log1p(cfg.recovery_tolerance)
    smoothed = _running_median(curve.x[:curve.n_finite], cfg.smoothing)
    for s in curve.spans:
        if not s.pre < ln_vocab - tol:
            continue
        stop = curve.n_finite if s.end is None else min(s.end, curve.n_finite)
        back = np.flatnonzero(smoothed[s.trigger:stop] >= ln_vocab)
        if len(back):
            i = s.trigger + int(back[0])
            s.untrained = (f"smoothed {curve.split} loss {smoothed[i]:.3g} at or above ln(vocab) = {ln_vocab:.3g} "
                           f"at {curve.steps[i]:,}")
            s.untrained_score = float(np.max(smoothed[s.trigger:stop]))


def _diverge_untrained(s: _Span, ln_vocab: float) -> None:
    s.diverged, s.score, s.threshold = s.untrained, s.untrained_score, ln_vocab


def _mark_nonfinite(curve: _Curve, cfg: DetectConfig, ln_vocab: float | None) -> None:
    """A run that ends non-finite diverged: the span holding its first non-finite loss becomes the
    divergence, or a new span from the last evaluation at the pre-event level. Other spans stay."""
    if curve.n_finite == len(curve.x):
        return
    x, tol, i = curve.x, math.log1p(cfg.recovery_tolerance), curve.n_finite
    why = f"non-finite {curve.split} loss ({x[i]}) at {curve.steps[i]:,}"
    for s in curve.spans:
        if s.trigger <= i and (s.end is None or i < s.end):
            s.diverged, s.score, s.threshold = why, math.inf, math.nan
            return
    ended = [s.end for s in curve.spans if s.end is not None]
    after = max(ended) if ended else 0  # the new span starts after every other event
    onset = next((j for j in range(i - 1, after - 1, -1) if ln_vocab is None or x[j] < ln_vocab - tol), None)
    if onset is None and i > after:
        onset = i - 1
    trigger = i if onset is None else onset + 1
    pre = float(x[onset]) if onset is not None else math.nan
    curve.spans.append(_Span(onset, trigger, None, pre, math.inf, math.nan, diverged=why))


def _hole_rows(curve: _Curve, cfg: DetectConfig) -> list[dict]:
    """One ``nonfinite`` event per stretch of non-finite losses the run went on after."""
    rows, tol = [], math.log1p(cfg.recovery_tolerance)
    stretches: list[list[tuple[int, float]]] = []
    for step, value in curve.holes:
        if stretches and not np.any((curve.steps > stretches[-1][-1][0]) & (curve.steps < step)):
            stretches[-1].append((step, value))
        else:
            stretches.append([(step, value)])
    for stretch in stretches:
        first, last = stretch[0][0], stretch[-1][0]
        before = np.flatnonzero(curve.steps < first)
        onset = int(before[-1]) if len(before) else None
        resume = int(np.flatnonzero(curve.steps > last)[0])
        pre = float(curve.x[onset]) if onset is not None else math.nan
        end = resume if onset is None else _find_end(curve.x, resume, curve.n_finite, pre + tol)
        n_after = curve.n_finite - resume
        unit = "log" if curve.split == "train" else "evaluation"
        note = (f"non-finite {curve.split} loss ({stretch[0][1]}) at {first:,}"
                + (f" to {last:,} ({len(stretch)} values)" if len(stretch) > 1 else "")
                + f"; the run went on: {n_after} finite {unit}{'s' if n_after != 1 else ''} after it, scanned as usual")
        if end is not None and onset is not None:
            note += f"; back within {cfg.recovery_tolerance:.0%} of {_ppl_text(pre)} at {curve.steps[end]:,}"
        rows.append({"type": "nonfinite", "split": curve.split, "onset_step": curve.step(onset),
                     "train_onset_step": math.nan, "peak_step": float(first), "end_step": curve.step(end),
                     "recovered": end is not None, "peak_value": math.inf, "magnitude": math.inf,
                     "score": math.inf, "threshold": math.nan, "note": note})
    return rows


def _overlaps(train: _Curve, s: _Span, start: float, stop: float) -> bool:
    first = train.step(s.trigger)
    last = math.inf if s.end is None else train.step(s.end)
    return first <= stop and last >= start


def _ppl_text(loss: float) -> str:
    v = perplexity(loss)
    if not np.isfinite(v):
        return str(v)
    return f"{v:.2f}" if v < 100 else f"{v:.4g}"


def _note(curve: _Curve, s: _Span, cfg: DetectConfig) -> str:
    """A short human account of the event's course after its peak."""
    x, tol, parts = curve.x, math.log1p(cfg.recovery_tolerance), []
    if s.diverged:
        parts.append(s.diverged)
    elif s.untrained:
        parts.append(f"crossed ln(vocab): {s.untrained}, but training was not lost (no divergence)")
    peak = curve.peak(s)
    pre = _ppl_text(s.pre)
    if s.end is not None:
        n_out = s.end - s.trigger
        unit = "log" if curve.split == "train" else "evaluation"
        parts.append(f"back within {cfg.recovery_tolerance:.0%} of {pre} at {curve.steps[s.end]:,} "
                     f"after {n_out} {unit}{'s' if n_out > 1 else ''}")
        return "; ".join(parts)
    last = curve.n_finite - 1
    if not s.diverged and peak >= last:
        parts.append(f"still rising at the last evaluation ({curve.steps[last]:,})")
    elif not s.diverged:
        rise, low = math.log(cfg.rise_ratio), peak + 1
        second = None
        for j in range(peak + 1, last + 1):
            if x[j] < x[low]:
                low = j
            elif j < last and min(x[j], x[j + 1]) >= x[low] + rise:
                second = j
                break
        if second is None:
            low = peak + 1 + int(np.argmin(x[peak + 1:last + 1]))
        if x[low] > s.pre + tol:
            parts.append(f"partial recovery to {_ppl_text(x[low])} at {curve.steps[low]:,}")
        if second is not None:
            top = second + int(np.argmax(x[second:last + 1]))
            parts.append(f"second rise from {curve.steps[second]:,} (to {_ppl_text(x[top])} at {curve.steps[top]:,})")
        parts.append(f"never back within {cfg.recovery_tolerance:.0%} of {pre} "
                     f"({_ppl_text(x[last])} at the last evaluation, {curve.steps[last]:,})")
    return "; ".join(parts)


def _row(kind: str, curve: _Curve, s: _Span, cfg: DetectConfig, train_onset: float = math.nan) -> dict:
    peak = curve.peak(s)
    peak_loss = float(curve.x[peak]) if np.isfinite(curve.x[peak]) else math.inf
    note = _note(curve, s, cfg)
    if kind == "overfit_divergence":
        note = "train loss kept falling; " + note
    return {"type": kind, "split": curve.split, "onset_step": curve.step(s.onset),
            "train_onset_step": train_onset, "peak_step": curve.step(peak),
            "end_step": curve.step(s.end), "recovered": s.end is not None,
            "peak_value": perplexity(peak_loss),
            "magnitude": math.nan if math.isnan(s.pre) else perplexity(peak_loss - s.pre),
            "score": float(s.score), "threshold": float(s.threshold), "note": note}


def _loss_curves(df: pd.DataFrame) -> dict[str, _Curve]:
    missing = [c for c in ("step", "split", "value") if c not in df.columns]
    if missing:
        raise ValueError(f"detect: missing column(s) {missing}; expected the long format "
                         f"step,split,metric,value (has {list(df.columns)})")
    rows = df[is_loss(df["metric"])] if "metric" in df.columns else df
    curves = {}
    for split, g in rows.groupby(rows["split"].astype(str), sort=True):
        g = g.assign(step=pd.to_numeric(g["step"]), value=pd.to_numeric(g["value"]).astype(float))
        g = g.sort_values("step", kind="stable").drop_duplicates("step", keep="last")  # a resume re-logs
        curves[split] = _Curve(split, g["step"].to_numpy(dtype=np.int64), g["value"].to_numpy(dtype=float))
    return curves


def _refuse_perplexity(curves: dict[str, _Curve], ln_vocab: float, vocab_size: int) -> None:
    """A loss starts near ln(vocab) (a uniform prediction) and falls; a perplexity starts near vocab.
    A curve whose first values sit far above ln(vocab) is refused rather than read as a loss."""
    for curve in curves.values():
        start = curve.x[:curve.n_finite][:3]
        if len(start) and float(np.median(start)) > max(2 * ln_vocab, ln_vocab + 3):
            raise ValueError(
                f"detect: the {curve.split} curve starts at {float(np.median(start)):.4g}, far above "
                f"ln(vocab) = {ln_vocab:.3g} (vocab {vocab_size}), where an untrained model's loss in nats "
                f"starts: it looks like perplexity (or a loss in another unit). Give the loss in nats "
                f"per token (ln of the perplexity).")


def detect(df: pd.DataFrame, config: DetectConfig | None = None, vocab_size: int | None = None,
           nats: bool = False) -> pd.DataFrame:
    """Events of ONE run given in the long format (step, split, metric, value; other columns ignored).

    ``vocab_size`` enables the untrained-level test (divergence when the smoothed loss climbs back to
    ln(vocab_size)); without it only non-finite losses count as divergence. A curve that starts far above
    ln(vocab_size) is refused as perplexity unless ``nats`` says the loss is known to be in nats (the
    harness's own runs: a badly initialised model can start there).
    """
    cfg = DetectConfig() if config is None else config
    if not isinstance(cfg, DetectConfig):
        raise TypeError(f"detect: config must be a DetectConfig (use DetectConfig.from_dict), got {type(cfg).__name__}")
    if vocab_size is not None and not (isinstance(vocab_size, (int, np.integer)) and vocab_size >= 2):
        raise ValueError(f"detect: vocab_size must be an integer >= 2, got {vocab_size!r}")
    ln_vocab = math.log(vocab_size) if vocab_size is not None else None
    curves = _loss_curves(df)
    if ln_vocab is not None and not nats:
        _refuse_perplexity(curves, ln_vocab, vocab_size)
    for curve in curves.values():
        curve.spans = _scan(curve.x[:curve.n_finite], cfg) if curve.split in ("train", "val") else []
        _mark_untrained(curve, cfg, ln_vocab)
        _mark_nonfinite(curve, cfg, ln_vocab)
    val, train = curves.get("val"), curves.get("train")
    if val is not None and len(val.x) and train is not None and train.n_finite:
        # a validation loss back at ln(vocab) is a divergence only when training is lost too (its own
        # loss diverged over the same steps); while the train loss keeps falling it is overfitting
        for s in val.spans:
            if s.untrained and not s.diverged:
                start = val.step(s.onset if s.onset is not None else s.trigger)
                stop = math.inf if s.end is None else val.step(s.end)
                if any(t.diverged for t in train.spans if _overlaps(train, t, start, stop)):
                    _diverge_untrained(s, ln_vocab)
        for t in train.spans:
            if t.untrained and not t.diverged:
                _diverge_untrained(t, ln_vocab)
    else:  # one curve: it is all there is to tell
        for curve in curves.values():
            for s in curve.spans:
                if s.untrained and not s.diverged:
                    _diverge_untrained(s, ln_vocab)
    defining = val if val is not None and len(val.x) else train
    if defining is None:
        return pd.DataFrame(columns=EVENT_COLUMNS)
    other = train if defining is val else None
    rows = [row for s in defining.spans for row in _classify(defining, s, other, cfg)]
    if other is not None:
        # a train span a validation event absorbed is reported with it, unless the training diverged
        # inside a validation event that did not: that divergence is an event of its own
        taken = {id(t) for s in defining.spans for t in s.absorbed if s.diverged or not t.diverged}
        rows += [row for t in other.spans if id(t) not in taken for row in _train_only(other, t, defining, cfg)]
    for curve in (defining, other):
        if curve is not None:
            rows += _hole_rows(curve, cfg)
    events = pd.DataFrame(rows, columns=EVENT_COLUMNS)
    return events.sort_values(["onset_step", "peak_step"], ignore_index=True, kind="stable")


def _train_rise(train: _Curve, curve: _Curve, s: _Span, cfg: DetectConfig) -> float:
    """Median train loss over the event's first min_sustained validation intervals (up to its peak)
    minus the median over the level_window intervals before its onset: did training jump too?"""
    onset = s.onset if s.onset is not None else s.trigger
    if onset is None or len(curve.steps) < 2:
        return math.nan
    interval = float(np.median(np.diff(curve.steps)))
    at, peak = curve.step(onset), curve.step(curve.peak(s))
    steps, x = train.steps[:train.n_finite], train.x[:train.n_finite]
    before = x[(steps > at - cfg.level_window * interval) & (steps <= at)]
    after = x[(steps > at) & (steps <= max(at + interval, min(peak, at + cfg.min_sustained * interval)))]
    if len(before) == 0 or len(after) == 0:
        return math.nan
    return float(np.median(after) - np.median(before))


def _classify(curve: _Curve, s: _Span, train: _Curve | None, cfg: DetectConfig) -> list[dict]:
    """Type one span of the defining curve, using the train curve to tell collapse from overfitting."""
    train_onset, train_jumped, train_seen, train_confirms, train_rose = math.nan, [], False, False, False
    if train is not None:
        back = max(0, (s.onset if s.onset is not None else s.trigger) - cfg.train_lookback)
        start = curve.step(back)
        stop = math.inf if s.end is None else curve.step(s.end)
        peak_step = curve.step(curve.peak(s))
        s.absorbed = [t for t in train.spans if _overlaps(train, t, start, stop)]
        onsets = [train.step(t.onset) for t in s.absorbed if t.onset is not None]
        train_onset = min(onsets) if onsets else math.nan
        onset_step = curve.step(s.onset if s.onset is not None else s.trigger)
        train_jumped = [t for t in s.absorbed if _overlaps(train, t, onset_step, peak_step)]
        train_seen = bool(np.any((train.steps >= start) & (train.steps <= peak_step)))
        # a train curve too noisy for its own tests (every step logged) still shows the jump in the
        # median of its many points: the same event, without a span to date its onset
        train_rose = train_seen and not train_jumped and \
            _train_rise(train, curve, s, cfg) > math.log1p(cfg.recovery_tolerance)
        train_confirms = any(t.end is None and train.duration(t) >= cfg.min_sustained for t in s.absorbed)
    if s.slow and train_jumped:
        # a slow test dates a jump loosely; the train curve saw it: the onset is the last
        # validation evaluation before the train loss left its level
        jump = min(train.step(t.trigger) for t in train_jumped)
        earlier = np.flatnonzero(curve.steps < jump)
        if len(earlier) and s.onset is not None:
            s.onset = max(s.onset, int(earlier[-1]))
    if s.diverged:
        return [_row("divergence", curve, s, cfg, train_onset)]
    sustained = curve.duration(s) >= cfg.min_sustained
    if s.end is None and not sustained and not train_confirms:
        s.absorbed = []  # unconfirmed at the end of the run: neither a spike nor a collapse
        return []
    if s.end is not None and not sustained:
        return [_row("spike", curve, s, cfg, train_onset)]
    kind = "overfit_divergence" if train_seen and not (train_jumped or train_rose) else "collapse"
    return [_row(kind, curve, s, cfg, train_onset)]


def _train_only(train: _Curve, t: _Span, val: _Curve, cfg: DetectConfig) -> list[dict]:
    """Type a train excursion that no validation event explains.

    Short and back: a spike. Sustained (at least min_sustained validation intervals): a collapse when
    the validation loss over the same steps rose by min_ratio too (a jump the validation noise hid
    from its own test), or when no validation evaluation fell inside it (the run ended first);
    otherwise the train loss alone moved, which is no collapse, and it is not reported.
    """
    if t.diverged:
        return [_row("divergence", train, t, cfg)]
    interval = float(np.median(np.diff(val.steps))) if len(val.steps) > 1 else math.inf
    first = train.step(t.trigger)
    last = train.step(t.end) if t.end is not None else float(train.steps[train.n_finite - 1])
    if last - first < cfg.min_sustained * interval:
        return [_row("spike", train, t, cfg)] if t.end is not None else []
    finite = val.x[:val.n_finite]
    steps = val.steps[:val.n_finite]
    inside = finite[(steps >= first) & ((steps < last) if t.end is not None else True)]
    before = finite[steps < first]
    if len(inside) == 0:
        return [_row("collapse", train, t, cfg, train.step(t.onset))]
    if len(before) == 0:
        return []
    rise = float(np.median(inside[:cfg.min_sustained]) - np.median(before[-cfg.level_window:]))
    if rise <= math.log(cfg.min_ratio):
        return []
    row = _row("collapse", train, t, cfg, train.step(t.onset))
    row["note"] = (f"validation rose {math.exp(rise):.2f}x over the same steps, inside its noise; "
                   + row["note"])
    return [row]


def detect_file(path: str | Path, config: DetectConfig | None = None, vocab_size: int | None = None,
                keys: LossKeys | None = None) -> pd.DataFrame:
    """Events of every run in a training log of any format harness.logs reads (CSV, W&B history,
    JSON lines, TensorBoard), grouped by its identity columns (arch, seed, ...), which lead."""
    return detect_runs(*read(path, keys), config, vocab_size)


def detect_runs(long: pd.DataFrame, identity: list[str], config: DetectConfig | None = None,
                vocab_size: int | None = None) -> pd.DataFrame:
    """Events of every run of a long table, one run per value of its identity columns."""
    if not identity:
        return detect(long, config, vocab_size)
    tables = []
    for key, group in long.groupby(identity, sort=True, dropna=False):
        events = detect(group, config, vocab_size)
        for name, value in zip(identity, key):
            events.insert(len(events.columns) - len(EVENT_COLUMNS), name, value)
        tables.append(events)
    nonempty = [t for t in tables if len(t)]
    if not nonempty:
        return pd.DataFrame(columns=identity + EVENT_COLUMNS)
    return pd.concat(nonempty, ignore_index=True)
