"""The detector's defaults hold the calibration targets on a fixed synthetic sample, under every
noise model of harness.synthetic (normal, heavy-tailed t3 validation noise, train logged every step).

Targets (benchmarks/collapse_calibration.py prints the full table): at most 2% of healthy runs
flagged; at least 95% of collapses of 1.5x or more found as collapses with the onset within two
evaluation intervals. Healthy runs span 20-200 evaluations and 0.5-3.5% validation noise.
"""

from __future__ import annotations

import numpy as np
import pytest

from harness.collapse import detect
from harness.synthetic import draw_run, match

VOCAB = 256
# runs per noise model: every-step logging (2,000-20,000 train points a run) costs ~20x more
HEALTHY = {"normal": 200, "t3": 200, "every step": 50}
COLLAPSES = {"normal": 104, "t3": 104, "every step": 48}


@pytest.mark.parametrize("noise", list(HEALTHY))
def test_healthy_runs_are_rarely_flagged(noise):
    rng = np.random.default_rng(2024)
    n = HEALTHY[noise]
    flagged = [len(detect(draw_run("healthy", rng, noise=noise)[0], vocab_size=VOCAB)) > 0 for _ in range(n)]
    assert sum(flagged) <= 0.02 * n, (noise, sum(flagged), n)


@pytest.mark.parametrize("noise", list(COLLAPSES))
def test_collapses_of_1_5x_or_more_are_found_on_time(noise):
    rng = np.random.default_rng(2025)
    on_time, n = 0, COLLAPSES[noise]
    cases = [(magnitude, recovers) for magnitude in (1.5, 2.0, 4.0, 8.0) for recovers in (False, True)]
    for i in range(n):
        magnitude, recovers = cases[i % len(cases)]
        frame, truth = draw_run("collapse", rng, magnitude, noise=noise, recovers=recovers)
        found, error = match(detect(frame, vocab_size=VOCAB), truth)
        on_time += found and error <= 2
    assert on_time >= 0.95 * n, (noise, on_time, n)
