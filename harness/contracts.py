"""The file contracts, defined once: every module that writes or reads a run's files imports them here.

A run folder holds metrics.csv (METRIC_COLUMNS), run.json (RUN_KEYS, status one of RUN_STATUSES,
a pipeline's own numbers under PIPELINE_KEY) and events.csv (EVENT_COLUMNS); the aggregate tables
prefix the run's identity (ID_COLUMNS). No torch, no pandas here: this module is imported everywhere.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any, TypeVar

ID_COLUMNS = ["study", "arch", "seed"]
"""A run's identity: the first columns of every study-level table."""

METRIC_COLUMNS = ["step", "split", "metric", "value", "wall_time"]
"""metrics.csv, long format: split in SPLITS; losses in nats per token; wall_time in seconds."""
SPLITS = ("train", "val", "test")

EVENT_TYPES = ("spike", "collapse", "overfit_divergence", "divergence", "nonfinite")
"""nonfinite: a non-finite loss the run went on after (finite values follow it); a run that ENDS
non-finite is a divergence. Statistics count collapse and divergence as collapses, nothing else."""
EVENT_COLUMNS = ["type", "split", "onset_step", "train_onset_step", "peak_step", "end_step", "recovered",
                 "peak_value", "magnitude", "score", "threshold", "note"]
"""events.csv of one run (the detector's output); study-level tables put ID_COLUMNS first."""

RUN_STATUSES = ("completed", "diverged", "failed")
RUN_KEYS = ["arch", "build", "seed", "study", "config_hash", "versions", "threads", "status", "reason",
            "steps_done", "wall_time_s", "warnings"]
"""run.json keys every run has, whatever happened to it; a run that got far enough adds data, recipe,
device, dtype, hparams, n_params and shape."""
PIPELINE_KEY = "pipeline"
"""run.json key holding a pipeline architecture's own numbers (flat name -> number or text); the
aggregate prefixes them with ``pipeline_`` and the report shows them in one generic table."""

CLAIM_COLUMNS = ["id", "claim", "archs", "kind", "source", "note", "setting", "verdict", "proxy_verdict", "scale",
                 "k", "n", "estimate", "lo", "hi", "sentence"]
"""claims.csv of a study: one row per published claim whose architectures the study ran: the verdict at
the claim's published setting, the verdict at proxy scale (labelled with the scale), the numbers it was
decided on (k of n runs for event kinds; an estimate with its 95% interval) and the sentence saying how."""

QUANTIZATION_COLUMNS = ID_COLUMNS + ["step", "bits", "loss", "loss_increase", "bpt_increase", "note"]
"""quantization.csv of one run (harness.quantize): one row per (weights at step, bits); bits 32 is the
unquantized fp32 model; losses in nats per token on the fixed validation batches; bpt_increase =
loss_increase / ln 2. A run not quantized (not completed, a pipeline) has one row: identity and note."""
FULL_PRECISION_BITS = 32
"""The ``bits`` of the unquantized row: training keeps fp32 weights (bf16 is only the autocast)."""
QUANTIZATION_SUMMARY_COLUMNS = ["arch", "step", "final", "bits", "n", "loss_median", "loss_increase_median",
                                "loss_increase_min", "loss_increase_max", "bpt_increase_median",
                                "bpt_increase_min", "bpt_increase_max"]
"""quantization_summary.csv of a study: per (arch, step, bits) over the seeds; final marks the trained model."""

AGGREGATE_TABLES = ("runs", "trajectories", "events", "summary", "pairs", "claims", "headlines", "quantization",
                    "quantization_summary")
AGGREGATE_FILES = ["study.json", "notes.json"] + [f"{name}.csv" for name in AGGREGATE_TABLES]
"""What `aggregate` writes per study (harness.aggregate documents each), the report's only inputs
besides the published curves."""

T = TypeVar("T")


def from_dict(cls: type[T], values: dict[str, Any], what: str) -> T:
    """Build dataclass ``cls`` from ``values``, naming any unknown key (with the closest known one)."""
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(known))
    if unknown:
        hints = [f"{k!r} -> {close[0]!r}" for k in unknown if (close := difflib.get_close_matches(k, known, 1))]
        hint = f" (did you mean {', '.join(hints)}?)" if hints else ""
        raise ValueError(f"{what}: unknown key(s) {unknown}{hint}; known: {sorted(known)}")
    required = [f.name for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing := sorted(set(required) - set(values)):
        raise ValueError(f"{what}: missing key(s) {missing}")
    return cls(**values)
