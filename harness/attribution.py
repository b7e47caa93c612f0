"""Precursor attribution: which diagnostics set a run apart from stable runs before each of its collapses.

For every collapse, spike or divergence (``precursor_events``) this module lists the diagnostic series
(train metrics with the DIAGNOSTICS prefixes of harness.contracts, plus grad_norm) that departed from
the same series of *stable runs trained under the same schedule* in the LOOKBACK_LOGS log intervals
before the onset; ``attribution`` gives the rule, ``controls`` which runs are compared with.

Why a comparison with other runs and not each series against its own past: a diagnostic moves for
reasons shared by every run of a study, above all the learning-rate schedule (update_ratio follows the
warmup lr step by step), and some wander slowly. Tested against its own trailing baseline, a series that
follows the warmup "leaves" it in every run, collapsing or not, and was listed as a precursor of every
collapse during the warmup; a slowly wandering one was listed in a quarter of events. A precursor has
to be something that distinguishes the collapsing run from runs that did not collapse under the same
schedule: what all of them do cancels in the comparison, and how far the stable runs spread among
themselves (their own wander included) is the yardstick. Measured error rates and power: Z_THRESHOLD
(benchmarks/attribution_calibration.py). No torch here.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from harness.collapse import MAD_TO_SD, DetectConfig, median_variance
from harness.contracts import (ATTRIBUTION_COLUMNS, ATTRIBUTION_SUMMARY_COLUMNS, BASE_VARIANT, DIAGNOSTICS,
                               ID_COLUMNS, SWEEP_PREFIX)
from harness.text import step
from harness.variants import variant_name

ATTRIBUTED_TYPES = ("collapse", "spike", "divergence")
"""Events whose precursors attribution looks for (a diverged run's end counts as a divergence)."""
EXTRA_DIAGNOSTICS = ("grad_norm",)
"""Train metrics attribution reads besides the DIAGNOSTICS prefixes (exact names)."""
LOOKBACK_LOGS = 20
"""Log intervals before an event's onset within which a departure counts as a precursor. 20 logs cover
several validation intervals (the onset is only dated to one of them) and leads of a few hundred steps at
the usual log intervals; further back a difference is more likely an unrelated drift than the start of
this event. Where the run is shorter, the window starts after the reference (the first
level_window logs)."""
MIN_CHANGE = 0.10
"""Besides its z, a departure must change the case's diagnostic by this fraction more (or less) than the
controls' median change: a z alone flags tiny differences where the controls agree very closely. 10%, the
detector's recovery tolerance. On the calibration's 2% noise a step of 5 noise SDs is this large."""
Z_THRESHOLD = 4.5
"""How many of the controls' spreads (``spread``) the case's deviation from their median change must
exceed, at each of min_sustained (3) points in a row, for a departure. Measured on constructed events
(benchmarks/attribution_calibration.py, defaults: 2,000 events per row, seed 0; the stability preset's
schedule: warmup over 150 of 200 steps, a log every 5 steps, onsets at steps 75 to 175; 2 to 5 controls
at the case's lr and the next lower lr of the preset's grid). The share of events listing a diagnostic
that departs in no run: a warmup ramp shared by all runs and scaled by each run's lr (update_ratio-like)
0.0%; AR(1) wander (phi 0.9) of 2% of the level 0.1%, of 9% 1.3% (3.6% of the events with 2 controls,
the weakest case); white noise (normal 2% and 10%, t3, lognormal 30%) 0.0%. As the first diagnostic of
an event of 30 series (the rest flat noise, half of the events with a real precursor in one more): the
9% wander is first in 0.7% of events as 1 of the 30, in 3.6% as 4 of them, every other null in at most
0.1% (the earlier rule, each series against its own trailing baseline, harness.stability at commit
152317d, on the same events: the ramp 96.7% and 100%, the 9% wander 16.9% and 48.4%). A step in the case alone, 40 steps before the onset, is found
in 44% of events at 6 noise SDs, 88.4% at 8 (81% with 2 controls), 98.5% at 10 and 100% at 15, median
lead 40 (the earlier rule: 40%, 82.5%, 93%, 99.8%). The threshold trades the wander's listings for power:
4.0 finds 95.5% of the 8-SD steps but makes the 9% wander first in 6.2% of events as 4 of 30; 5.0 keeps
that at 2.1% but finds 75.9%. It sits below the detector's 6 because the controls' spread is itself
estimated from a handful of runs: the remaining false listings are wander in events whose two controls
happened to move together."""
MIN_CONTROLS = 2
"""Stable runs an event needs to be compared with: their spread is measured from their differences, and
one run has none. An event with fewer is listed as not attributable (attribution.csv: no diagnostic,
n_controls 0 or 1), never tested against a single run or against the run's own past."""
SPREAD_CLIP = 3.0
"""The controls' spread is the RMS of their deviations after clipping each at this many robust SDs
(1.4826 MAD): as efficient as the RMS on normal noise (the calibration's power), while one blip of one
control (a spike of 10x) cannot inflate it and hide every departure of that diagnostic."""
EVENT_LIST_COLUMNS = ID_COLUMNS + ["event_type", "onset_step"]


# ------------------------------------------------------------------------------------------- events

def run_ids(df: pd.DataFrame) -> pd.Series:
    """Each row's run identity (the ID_COLUMNS tuple), for membership tests between tables."""
    return pd.Series(list(zip(*(df[c] for c in ID_COLUMNS))), index=df.index, dtype=object)


def precursor_events(runs: pd.DataFrame, events: pd.DataFrame) -> pd.DataFrame:
    """The events attribution explains (EVENT_LIST_COLUMNS): every collapse, spike and divergence with an
    onset, and the end of each diverged run (onset steps_done, type divergence) that no divergence event
    of the run already reports. Only runs of ``runs`` that did not fail."""
    trained = runs[runs["status"] != "failed"]
    keep = set(run_ids(trained))
    rows = []
    if len(events):
        dated = pd.to_numeric(events["onset_step"], errors="coerce").notna()
        ev = events[events["type"].isin(ATTRIBUTED_TYPES) & dated]
        ev = ev[run_ids(ev).isin(keep)]
        rows += [{**{c: r[c] for c in ID_COLUMNS}, "event_type": r["type"], "onset_step": float(r["onset_step"])}
                 for _, r in ev.iterrows()]
    reported = set(run_ids(events[events["type"] == "divergence"])) if len(events) else set()
    for _, r in trained[trained["status"] == "diverged"].iterrows():
        if tuple(r[c] for c in ID_COLUMNS) not in reported and pd.notna(r.get("steps_done")):
            rows.append({**{c: r[c] for c in ID_COLUMNS}, "event_type": "divergence",
                         "onset_step": float(r["steps_done"])})
    out = pd.DataFrame(rows, columns=EVENT_LIST_COLUMNS)
    return out.sort_values(ID_COLUMNS + ["onset_step"], kind="stable", ignore_index=True)


def is_diagnostic(metric: pd.Series) -> pd.Series:
    """Which metric names are diagnostics attribution reads (DIAGNOSTICS prefixes, plus grad_norm)."""
    metric = metric.astype(str)
    return metric.str.startswith(DIAGNOSTICS) | metric.isin(EXTRA_DIAGNOSTICS)


def _same_lr(a: float, b: float) -> bool:
    return math.isclose(float(a), float(b), rel_tol=1e-9)


def controls(study: dict, runs: pd.DataFrame, events: pd.DataFrame) -> pd.DataFrame:
    """``precursor_events`` with a column ``controls``: the runs (ID tuples) each event is compared with.

    The controls of an event in run R (architecture a, onset t): the trained runs of architecture a at
    the same setting (the sweep's values other than lr) and at R's lr or the next lower lr of the study's
    grid (without an lr sweep: R's variant), other than R, with no event of ``precursor_events`` before
    t + LOOKBACK_LOGS log intervals (the recipe's log_every): they shared R's schedule and were stable
    through the window, and a later event of theirs is far enough on that its own precursors (up to
    LOOKBACK_LOGS logs before it) cannot fall in R's window and pass for the stable runs' spread (a
    control that collapsed soon after R hid R's real precursor in a third of events). The next lower lr is
    admitted because a 3-seed sweep has only two other runs at R's lr, and the first unstable lr often
    has none stable; a lower lr changes the scale of lr-driven diagnostics, which the comparison of
    relative changes cancels (``departure``), not their schedule."""
    todo = precursor_events(runs, events)
    trained = runs[runs["status"] != "failed"]
    sweep = dict((study or {}).get("sweep") or {})
    grid = sorted({float(v) for v in sweep.get("lr") or []})
    by_lr = len(grid) >= 2 and SWEEP_PREFIX + "lr" in trained.columns
    keys = [k for k in sweep if k != "lr" and SWEEP_PREFIX + k in trained.columns]
    ids = list(run_ids(trained))
    setting = dict(zip(ids, (variant_name({k: r[SWEEP_PREFIX + k] for k in keys}) if by_lr else str(r["variant"])
                             for _, r in trained.iterrows())))
    lr = dict(zip(ids, pd.to_numeric(trained[SWEEP_PREFIX + "lr"], errors="coerce"))) if by_lr else {}
    first_onset = {tuple(k): v for k, v in todo.groupby(ID_COLUMNS, sort=False)["onset_step"].min().items()}
    log_every = float(((study or {}).get("recipe") or {}).get("log_every") or 0)
    found = []
    for ev in todo.itertuples(index=False):
        key = tuple(getattr(ev, c) for c in ID_COLUMNS)
        peers = [i for i in ids if i != key and i[:2] == key[:2] and setting[i] == setting[key]]
        if by_lr:
            lower = [g for g in grid if g < lr[key] and not _same_lr(g, lr[key])]
            allowed = [lr[key]] + lower[-1:]
            peers = [i for i in peers if any(_same_lr(lr[i], a) for a in allowed)]
        horizon = ev.onset_step + LOOKBACK_LOGS * log_every
        found.append([i for i in peers if first_onset.get(i, math.inf) > horizon])
    return todo.assign(controls=pd.Series(found, index=todo.index, dtype=object))


# ---------------------------------------------------------------------------------------- the rule

def _change(x: np.ndarray, reference: np.ndarray, log: bool) -> np.ndarray:
    """Each run's change from its own reference level: log ratio for a positive series (an lr that scales
    it by a constant cancels exactly, and multiplicative noise is additive), else relative to the
    level's magnitude (a series that crosses 0, such as a mean log Z under z-loss)."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return np.log(x / reference) if log else (x - reference) / np.abs(reference)


def _median(a: np.ndarray) -> np.ndarray:
    """The median of each column of ``a``, NaN left out (NaN where a column has none): np.nanmedian's
    masked arrays cost more than the whole rule on these few rows."""
    a = np.sort(a, axis=0)  # NaN sorts last
    count = (~np.isnan(a)).sum(axis=0)
    columns = np.arange(a.shape[1])
    middle = (a[np.maximum(count - 1, 0) // 2, columns] + a[np.minimum(count // 2, len(a) - 1), columns]) / 2
    return np.where(count > 0, middle, np.nan)


def spread(changes: np.ndarray) -> float:
    """The yardstick of a deviation from the controls' median: how far each control's change lies from the
    median change of the OTHER controls, pooled over the window's points and controls (RMS after clipping
    at SPREAD_CLIP robust SDs), scaled from a median of n - 1 controls to the case's median of n (the
    variance of a median, harness.collapse.median_variance). ``changes`` is controls x points; NaN where
    a control has no value. It includes what the controls do differently from each other over the
    window, their slow wander too, which a series' own short-term noise does not show."""
    n = len(changes)
    others = np.array([_median(np.delete(changes, j, axis=0)) for j in range(n)])
    e = (changes - others)[np.isfinite(changes - others)]
    if not len(e):
        return math.nan
    robust = MAD_TO_SD * float(np.median(np.abs(e)))
    rms = math.sqrt(float(np.mean(np.minimum(e ** 2, (SPREAD_CLIP * robust) ** 2))))
    return rms * math.sqrt((1 + median_variance(np.array([n]))[0]) / (1 + median_variance(np.array([n - 1]))[0]))


def _windows(steps: np.ndarray, onset: float, since: float, cfg: DetectConfig
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(pre, reference, window) point indices: the window is the points of the LOOKBACK_LOGS log intervals
    up to the onset (after ``since``), the reference the level_window points just before it (at the start
    of a short run the window starts after them), pre the LOOKBACK_LOGS log intervals before the
    reference."""
    if len(steps) < 2:
        return None
    interval = float(np.median(np.diff(steps)))
    points = np.flatnonzero((steps <= onset) & (steps > since))
    window = points[steps[points] >= onset - LOOKBACK_LOGS * interval]
    first = int(np.searchsorted(points, window[0])) if len(window) else len(points)
    first = max(first, cfg.level_window)
    if first >= len(points):
        return None
    reference, window = points[first - cfg.level_window:first], points[first:]
    pre = points[:first - cfg.level_window]
    pre = pre[steps[pre] >= steps[reference[0]] - LOOKBACK_LOGS * interval]
    return pre, reference, window


def departure(steps: np.ndarray, case: np.ndarray, controls: np.ndarray, onset: float,
              config: DetectConfig | None = None, since: float = -math.inf) -> tuple[float, float, int] | None:
    """(left_step, z, n_controls) of the case's departure from its controls before ``onset`` (the rule of
    ``attribution``), or None. ``steps`` sorted and unique, ``case`` its values, ``controls`` one row per
    control run with its values at the same steps (NaN where it logged none); n_controls counts the rows
    with a level at the reference, which are compared (at least MIN_CONTROLS, else None)."""
    cfg = DetectConfig() if config is None else config
    steps, case = np.asarray(steps, dtype=float), np.asarray(case, dtype=float)
    others = np.atleast_2d(np.asarray(controls, dtype=float)).reshape(-1, len(steps))
    others = np.where(np.isfinite(others), others, np.nan)  # a control's own blow-up is no yardstick
    parts = _windows(steps, onset, since, cfg)
    if parts is None:
        return None
    pre, reference, window = parts
    span = np.arange(pre[0] if len(pre) else reference[0], min(len(steps), window[-1] + cfg.min_sustained))
    finite = np.isfinite(case[reference])
    if not finite.any():
        return None
    level = float(np.median(case[reference][finite]))
    levels = _median(others[:, reference].T)
    others = others[np.isfinite(levels) & (levels != 0)]
    levels = levels[np.isfinite(levels) & (levels != 0)]
    if len(others) < MIN_CONTROLS or level == 0:
        return None
    seen = np.concatenate([case[span][np.isfinite(case[span])], others[:, span][np.isfinite(others[:, span])]])
    log = bool(level > 0 and np.all(levels > 0) and np.all(seen > 0))
    mine = _change(case[span], level, log)
    theirs = _change(others[:, span], levels[:, None], log)
    at = np.searchsorted(span, window)  # the window's points within span
    s = spread(theirs[:, at])
    if math.isnan(s):
        return None
    with np.errstate(all="ignore"):
        d = mine - _median(theirs)
        z = np.where(d == 0, 0.0, d / s)
    broken = ~np.isfinite(case[span])  # a non-finite value of the case is out, on either side
    bar = math.log1p(MIN_CHANGE) if log else MIN_CHANGE
    out = broken | ((np.abs(z) > Z_THRESHOLD) & (np.abs(d) > bar))
    side = np.sign(d)

    def held(p: int, out: np.ndarray) -> bool:
        if p < 0 or not out[p]:
            return False
        if broken[p]:
            return True
        ahead = slice(p, p + cfg.min_sustained)
        return bool(np.all(out[ahead] & (broken[ahead] | (side[ahead] == side[p]))))

    # apart from its controls before the window already: a standing difference, no precursor (a non-finite
    # point there is a blip the run recovered from, or a value not yet defined, not a difference)
    if any(held(int(p), out & ~broken) for p in np.searchsorted(span, pre)):
        return None
    for p in at:
        if held(int(p), out) and not held(int(p) - 1, out):
            return float(steps[span[p]]), (math.inf if broken[p] else float(z[p])), len(others)
    return None


# ---------------------------------------------------------------------------------------------- tables

def _series(trajectories: pd.DataFrame, wanted: set) -> dict[tuple, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """run ID -> diagnostic -> (steps, values), sorted, a re-logged step keeping its last value."""
    diag = trajectories[(trajectories["split"].astype(str) == "train") & is_diagnostic(trajectories["metric"])]
    diag = diag[run_ids(diag).isin(wanted)]
    diag = diag.assign(value=pd.to_numeric(diag["value"], errors="coerce").astype(float))
    out: dict[tuple, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for key, g in diag.groupby(ID_COLUMNS + ["metric"], sort=True):
        steps, values = g["step"].to_numpy(float), g["value"].to_numpy(float)
        order = np.argsort(steps, kind="stable")
        steps, values = steps[order], values[order]
        last = np.r_[steps[1:] != steps[:-1], True]  # a resume re-logs a step: keep the last value
        out.setdefault(tuple(key[:-1]), {})[str(key[-1])] = (steps[last], values[last])
    return out


def _at(steps: np.ndarray, series: tuple[np.ndarray, np.ndarray] | None) -> np.ndarray:
    """A control's values at the case's steps (NaN where it logged none)."""
    out = np.full(len(steps), np.nan)
    if series is None:
        return out
    where = np.searchsorted(series[0], steps)
    hit = (where < len(series[0])) & (series[0][np.minimum(where, len(series[0]) - 1)] == steps)
    out[hit] = series[1][where[hit]]
    return out


def attribution(study: dict, runs: pd.DataFrame, trajectories: pd.DataFrame, events: pd.DataFrame,
                config: DetectConfig | None = None) -> pd.DataFrame:
    """ATTRIBUTION_COLUMNS: for each event of ``precursor_events``, every diagnostic series of its run (train
    metrics matching DIAGNOSTICS, plus grad_norm) that departed from the same series of its ``controls``
    (stable runs of the same architecture and schedule) before the onset.

    The rule, per diagnostic: the case and each control are read at the case's log steps. Each run's
    change is measured from its own level just before the window (the median of its level_window (5)
    points there): the log ratio for a positive series, else relative to the level's magnitude
    (``_change``), so a schedule all runs share, and an lr that scales the series, cancel. The case's
    deviation d is its change minus the controls' median change at the same step; z = d / ``spread``, the
    spread the controls show among themselves over the window. The case *departs* at the first point of
    the window (the LOOKBACK_LOGS log intervals up to the onset, after the run's previous event's onset,
    whose precursors are its own) from which min_sustained (3) points in a row lie on one side with
    |z| > Z_THRESHOLD and |d| > MIN_CHANGE (a non-finite value of the case is out whatever follows, a
    control's is skipped; the last points may lie after the onset). A single blip is no departure.

    Not listed: a series already apart from its controls over the LOOKBACK_LOGS log intervals before the
    reference (a steady drift of the case that began before the window: a standing difference, not the
    start of this event; in a run too short to show the drift before the window, the case is listed
    where the drift, measured from the reference, crossed the bar); a departure only after the onset; a
    diagnostic fewer than MIN_CONTROLS controls logged. An event with fewer than MIN_CONTROLS controls
    gets one row with no diagnostic: not attributable, n_controls the stable runs found.

    lead_steps = onset - left_step >= 0; z is the departing point's; n_controls the controls it was
    compared with; ``first`` marks the earliest diagnostic(s) of each event. Measured false-listing rates
    and power: Z_THRESHOLD."""
    cfg = DetectConfig() if config is None else config
    todo = controls(study, runs, events)
    if todo.empty:
        return pd.DataFrame(columns=ATTRIBUTION_COLUMNS)
    wanted = set(run_ids(todo)) | {c for cs in todo["controls"] for c in cs}
    series = _series(trajectories, wanted) if len(trajectories) else {}
    onsets: dict[tuple, list[float]] = {}
    for ev in todo.itertuples(index=False):
        onsets.setdefault(tuple(getattr(ev, c) for c in ID_COLUMNS), []).append(ev.onset_step)
    rows = []
    for ev in todo.itertuples(index=False):
        key = tuple(getattr(ev, c) for c in ID_COLUMNS)
        base = {"arch": ev.arch, "variant": ev.variant, "seed": ev.seed, "event_type": ev.event_type,
                "onset_step": ev.onset_step}
        if len(ev.controls) < MIN_CONTROLS:
            rows.append({**base, "diagnostic": "", "left_step": math.nan, "lead_steps": math.nan, "z": math.nan,
                         "first": False, "n_controls": len(ev.controls)})
            continue
        # the window starts after the run's previous event: what moved before it belongs to that one
        since = max((o for o in onsets[key] if o < ev.onset_step), default=-math.inf)
        found = []
        for metric, (steps, values) in series.get(key, {}).items():
            others = np.array([_at(steps, series.get(c, {}).get(metric)) for c in ev.controls])
            hit = departure(steps, values, others, ev.onset_step, cfg, since)
            if hit is not None:
                left, z, n = hit
                found.append({**base, "diagnostic": metric, "left_step": left, "lead_steps": ev.onset_step - left,
                              "z": z, "first": False, "n_controls": n})
        if found:
            earliest = min(f["left_step"] for f in found)
            for f in found:
                f["first"] = f["left_step"] == earliest
        rows += found
    return pd.DataFrame(rows, columns=ATTRIBUTION_COLUMNS)


def family(diagnostic: str) -> str:
    """The diagnostic family: the name before "/" (attn_logit_max/blocks.0.attn -> attn_logit_max)."""
    return str(diagnostic).split("/", 1)[0]


def attributed_rows(attributed: pd.DataFrame) -> pd.DataFrame:
    """The rows of attribution(.csv) that name a diagnostic (not the rows of events not attributable)."""
    if attributed is None or not len(attributed):
        return attributed
    name = attributed["diagnostic"]
    return attributed[name.notna() & (name.astype(str) != "")]


_PLURAL = {"collapse": "collapses", "spike": "spikes", "divergence": "divergences"}


def _runs_text(counts: list[int]) -> str:
    lo, hi = min(counts), max(counts)
    number = f"{lo}" if lo == hi else f"{lo} to {hi}"
    return f"{number} stable run{'s' * (hi != 1)} of the same architecture and schedule"


def attribution_summary(study: dict, attributed: pd.DataFrame, runs: pd.DataFrame,
                        events: pd.DataFrame) -> pd.DataFrame:
    """ATTRIBUTION_SUMMARY_COLUMNS: per (arch, variant) with events (``precursor_events``): the family most
    often among the first diagnostics of an event (each event counts a family once; ties go to the longer
    median lead, then the name), in k of n_events, its median lead over those k events, and a sentence
    that says how many stable runs the events were compared with. An event with no precursor counts in
    n_events, not in n_attributed; one with fewer than MIN_CONTROLS stable runs to compare with counts in
    n_events and n_no_control, and the sentence says so."""
    todo = controls(study, runs, events)
    rows_all = attributed_rows(attributed)
    rows = []
    for (arch, variant), evs in todo.groupby(["arch", "variant"], sort=True):
        rows_av = rows_all[(rows_all["arch"] == arch) & (rows_all["variant"].astype(str) == str(variant))] \
            if len(rows_all) else rows_all
        firsts = rows_av[rows_av["first"].astype(str).str.lower() == "true"] if len(rows_av) else rows_av
        per_family: dict[str, list[tuple[float, float]]] = {}
        event_keys = ["seed", "event_type", "onset_step"]
        n_attributed = len(rows_av.groupby(event_keys)) if len(rows_av) else 0
        if len(firsts):
            for _, e in firsts.groupby(event_keys, sort=False):
                for fam, f in e.groupby(e["diagnostic"].map(family), sort=True):
                    lead, direction = float(f["lead_steps"].iloc[0]), float(np.sign(f["z"]).sum())
                    per_family.setdefault(fam, []).append((lead, direction))
        counts = [len(c) for c in evs["controls"]]
        compared = [c for c in counts if c >= MIN_CONTROLS]
        n, no_control = len(evs), len(counts) - len(compared)
        types = sorted(evs["event_type"].unique())
        noun = (_PLURAL[types[0]] if n != 1 else types[0]) if len(types) == 1 else ("events" if n != 1 else "event")
        where = arch if variant == BASE_VARIANT else f"{arch} {variant}"
        leading, k, median_lead = "", 0, math.nan
        if per_family:
            leading = min(per_family, key=lambda f: (-len(per_family[f]),
                                                     -float(np.median([lead for lead, _ in per_family[f]])), f))
            leads = [lead for lead, _ in per_family[leading]]
            k, median_lead = len(leads), float(np.median(leads))
            motion = "growth" if sum(s for _, s in per_family[leading]) >= 0 else "decline"
            text = (f"{where}: {k} of {n} {noun} preceded by {leading} {motion} against "
                    f"{_runs_text(compared)} (median lead {step(median_lead)} steps)")
            others = sorted((f for f in per_family if f != leading), key=lambda f: (-len(per_family[f]), f))
            if others:
                text += "; first otherwise: " + ", ".join(f"{f} ({len(per_family[f])})" for f in others)
            silent = len(compared) - n_attributed
            if silent:
                text += f"; {silent} with no diagnostic departing from them"
        elif compared:
            kinds = sorted(evs.loc[[c >= MIN_CONTROLS for c in counts], "event_type"].unique())
            m = len(compared)
            if m == 1:
                text = (f"{where}: the {kinds[0] if len(kinds) == 1 else 'event'}{' compared' * (no_control > 0)} "
                        f"was preceded by no diagnostic departing from {_runs_text(compared)} in the "
                        f"{LOOKBACK_LOGS} log intervals before its onset")
            else:
                plural = _PLURAL[kinds[0]] if len(kinds) == 1 else "events"
                text = (f"{where}: none of {m} {plural}{' compared' * (no_control > 0)} preceded by a diagnostic "
                        f"departing from {_runs_text(compared)} in the {LOOKBACK_LOGS} log intervals before the "
                        "onset")
        else:
            text = (f"{where}: {n} {noun} not attributable: fewer than {MIN_CONTROLS} stable runs of the same "
                    "architecture and schedule to compare with")
        if no_control and compared:
            text += (f"; {no_control} not attributable (fewer than {MIN_CONTROLS} stable runs of the same "
                     "architecture and schedule to compare with)")
        rows.append({"arch": arch, "variant": variant, "n_events": n, "n_attributed": n_attributed,
                     "n_no_control": no_control, "leading": leading, "k": k, "median_lead": median_lead,
                     "sentence": text + "."})
    return pd.DataFrame(rows, columns=ATTRIBUTION_SUMMARY_COLUMNS)
