"""Error rates of the collapse detector on synthetic runs with known ground truth.

    python benchmarks/collapse_calibration.py [--runs N] [--seed S] [--config JSON]

Healthy runs (20-200 evaluations, validation noise 0.5-3.5%, the published runs' 1.7% and 3% inside,
1-10 train logs per evaluation) give the false-positive rate; injected events of each type and
magnitude give the detection rate and the onset error in evaluation intervals; collapses are also
run with the validation curve alone, to show what the train curve adds. Every healthy and collapse
cell is repeated under three noise models (harness.synthetic.NOISE_MODELS): normal, heavy-tailed
validation noise (Student t, 3 degrees of freedom) and the train loss logged at every step (2-5%
noise, 2,000-20,000 train points per run). Targets for the defaults, under EVERY noise model: at most
2% of healthy runs flagged, at least 95% of collapses of 1.5x or more found with the onset within two
evaluation intervals.

These runs are drawn from harness.synthetic, not from the published curves some thresholds were
first read from (DetectConfig's docstrings): this is the held-out check of those thresholds.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

import numpy as np
import pandas as pd
from scipy.stats import binomtest

from harness.collapse import DetectConfig, detect
from harness.synthetic import NOISE_MODELS, draw_run, match

MAGNITUDES = (1.2, 1.5, 2.0, 4.0, 8.0)
# (label, injected kind, extra make_run arguments, magnitude is a parameter, validation curve only)
CASES = (("spike", "spike", {}, True, False),
         ("collapse", "collapse", {}, True, False),
         ("collapse, recovers", "collapse", {"recovers": True}, True, False),
         ("collapse, val curve only", "collapse", {}, True, True),
         ("overfit_divergence", "overfit_divergence", {}, True, False),
         ("divergence (NaN)", "divergence", {}, False, False),
         ("divergence (to ln V)", "divergence", {"nan": False}, False, False))
VOCAB = 256
# the every-step model costs ~20x more per run (up to 20,000 train points): fewer runs of it
NOISE_SHARE = {"normal": 1.0, "t3": 1.0, "every step": 0.25}
MAX_ONSET_ERROR = 2  # evaluation intervals


def wilson(k: int, n: int) -> tuple[float, float]:
    ci = binomtest(k, n).proportion_ci(method="wilson")
    return ci.low, ci.high


def calibrate(n_runs: int, seed: int, config: DetectConfig | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per noise model: n_runs healthy runs (a share of them for every-step logging) and n_runs // 4
    runs per (event type, magnitude) cell; the other event types under the normal model only."""
    rng = np.random.default_rng(seed)
    healthy_rows = []
    for noise in NOISE_MODELS:
        runs = max(1, int(n_runs * NOISE_SHARE[noise]))
        flagged = 0
        for _ in range(runs):
            frame, _truth = draw_run("healthy", rng, noise=noise)
            flagged += bool(len(detect(frame, config, vocab_size=VOCAB)))
        lo, hi = wilson(flagged, runs)
        healthy_rows.append({"noise": noise, "runs": runs, "flagged": flagged, "rate": flagged / runs,
                             "lo": lo, "hi": hi})

    rows = []
    cases = [(label, kind, extra, scaled, val_only, "normal") for label, kind, extra, scaled, val_only in CASES]
    cases += [(f"collapse{', recovers' if recovers else ''} [{noise}]", "collapse", {"recovers": recovers},
               True, False, noise) for noise in NOISE_MODELS[1:] for recovers in (False, True)]
    for label, kind, extra, scaled, val_only, noise in cases:
        per_cell = max(1, int(n_runs // 4 * NOISE_SHARE[noise]))
        for magnitude in MAGNITUDES if scaled else (None,):
            found, on_time, errors = 0, 0, []
            for _ in range(per_cell):
                frame, truth = draw_run(kind, rng, magnitude or 2.0, noise=noise, **extra)
                if val_only:
                    frame = frame[frame["split"] == "val"]
                ok, error = match(detect(frame, config, vocab_size=VOCAB), truth)
                found += ok
                if ok:
                    errors.append(error)
                    on_time += error <= MAX_ONSET_ERROR
            rows.append({"event": label, "noise": noise, "magnitude": "-" if magnitude is None else f"{magnitude:g}x",
                         "runs": per_cell, "found": found / per_cell, "on_time": on_time / per_cell,
                         "mean_onset_error": float(np.mean(errors)) if errors else math.nan,
                         "max_onset_error": float(np.max(errors)) if errors else math.nan})
    return pd.DataFrame(healthy_rows), pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=400, help="healthy runs; each event cell gets runs/4")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--config", help="DetectConfig fields as JSON (default: the calibrated defaults)")
    args = parser.parse_args(argv)
    config = DetectConfig.from_dict(json.loads(args.config)) if args.config else DetectConfig()
    start = time.perf_counter()
    healthy, table = calibrate(args.runs, args.seed, config)
    print(f"detector: {config}")
    for h in healthy.itertuples(index=False):
        print(f"healthy runs flagged [{h.noise}]: {h.flagged} of {h.runs} = {h.rate:.1%} "
              f"(Wilson 95%: {h.lo:.1%} - {h.hi:.1%}); target <= 2%")
    print(f"found = an event of the injected type; on time = and its onset within {MAX_ONSET_ERROR} "
          f"evaluation intervals; onset errors in evaluation intervals")
    print(table.drop(columns="noise").to_string(
        index=False, formatters={"found": "{:.1%}".format, "on_time": "{:.1%}".format,
                                 "mean_onset_error": "{:.2f}".format, "max_onset_error": "{:.1f}".format}))
    big = table["magnitude"].isin([f"{m:g}x" for m in MAGNITUDES if m >= 1.5])
    collapse_rows = table["event"].str.startswith("collapse") & ~table["event"].str.contains("val curve only")
    for noise in NOISE_MODELS:
        cells = table[big & collapse_rows & (table["noise"] == noise)]
        print(f"collapses >= 1.5x found on time [{noise}]: "
              f"{(cells['on_time'] * cells['runs']).sum() / cells['runs'].sum():.1%}; target >= 95%")
    cells = table[big & (table["event"] == "collapse, val curve only")]
    print(f"  the same from the validation curve alone [normal]: "
          f"{(cells['on_time'] * cells['runs']).sum() / cells['runs'].sum():.1%} (no target: the trainer logs both)")
    print(f"({time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
