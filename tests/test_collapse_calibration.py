"""The detector's defaults hold the calibration targets on a fixed synthetic sample.

Targets (benchmarks/collapse_calibration.py prints the full table): at most 2% of healthy runs
flagged; at least 95% of collapses of 1.5x or more found as collapses with the onset within two
evaluation intervals. Healthy runs span 20-200 evaluations and 0.5-3.5% validation noise.
"""

from __future__ import annotations

import numpy as np

from harness.collapse import detect
from harness.synthetic import draw_run, match

VOCAB = 256


def test_healthy_runs_are_rarely_flagged():
    rng = np.random.default_rng(2024)
    flagged = [len(detect(draw_run("healthy", rng)[0], vocab_size=VOCAB)) > 0 for _ in range(200)]
    assert sum(flagged) <= 4  # 2% of 200


def test_collapses_of_1_5x_or_more_are_found_on_time():
    rng = np.random.default_rng(2025)
    on_time = 0
    cases = [(magnitude, recovers) for magnitude in (1.5, 2.0, 4.0, 8.0) for recovers in (False, True)]
    for i in range(104):
        magnitude, recovers = cases[i % len(cases)]
        frame, truth = draw_run("collapse", rng, magnitude, recovers=recovers)
        found, error = match(detect(frame, vocab_size=VOCAB), truth)
        on_time += found and error <= 2
    assert on_time >= 0.95 * 104
