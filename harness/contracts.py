"""The file contracts, defined once: every module that writes or reads a run's files imports them here.

A run folder holds metrics.csv (METRIC_COLUMNS), run.json (RUN_KEYS, status one of RUN_STATUSES,
a pipeline's own numbers under PIPELINE_KEY) and events.csv (EVENT_COLUMNS); the aggregate tables
prefix the run's identity (ID_COLUMNS). No torch, no pandas here: this module is imported everywhere.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any, TypeVar

ID_COLUMNS = ["study", "arch", "variant", "seed"]
"""A run's identity: the first columns of every study-level table. ``variant`` names the combination of
the study's sweep values the run trained under (``lr=1e-2,clip=0``); BASE_VARIANT in a study without
a sweep. Every downstream table groups by (arch, variant)."""
BASE_VARIANT = "base"
SWEEP_PREFIX = "sweep_"
"""runs.csv holds one column per sweep key, ``sweep_<key>`` (sweep_lr, sweep_qk_norm, ...): the run's value."""

METRIC_COLUMNS = ["step", "split", "metric", "value", "wall_time"]
"""metrics.csv, long format: split in SPLITS; losses in nats per token; wall_time in seconds.

Metrics of split train, every log step (means over the steps since the last log step):
  loss (nats per token; with z_loss on, the training objective: cross-entropy + z_loss * mean log^2 Z),
  lr, grad_norm (pre-clip global L2 norm), grad_norm_max.
Diagnostics of split train, every log step, measured on that step alone (DIAGNOSTICS; names may carry a
``/<part>`` suffix, the parameter group or the module path):
  logz_mean          mean over positions of log Z = logsumexp of the output logits (nats)
  logit_abs_max      largest |output logit| of the batch
  embed_std          standard deviation of the token-embedding output (the embedding table's rows looked up)
  grad_rms/<group>   RMS of the pre-clip gradient entries of a parameter group (PARAM_GROUPS)
  update_ratio/<group>  RMS(parameter change of the step) / RMS(parameter before it), per group
  attn_logit_max/<module>  largest pre-softmax attention logit q.k/sqrt(d) (causal positions) of one
                     attention module, e.g. attn_logit_max/blocks.0.attn
  state_*/<module>   an architecture's own state magnitudes (its modules' ``diagnostics()``), e.g.
                     state_gate_max/blocks.1.mixer; each module documents its keys
"""
DIAGNOSTICS = ("logz_mean", "logit_abs_max", "embed_std", "grad_rms", "update_ratio", "attn_logit_max", "state_")
"""Prefixes of the diagnostic metrics (see METRIC_COLUMNS); attribution reads these plus grad_norm."""
PARAM_GROUPS = ("embed", "mixer", "ffn", "head", "norm")
"""Parameter groups of the grad_rms and update_ratio diagnostics (harness.diagnostics.param_groups)."""
SPLITS = ("train", "val", "test")

EVENT_TYPES = ("spike", "collapse", "overfit_divergence", "divergence", "nonfinite")
"""nonfinite: a non-finite loss the run went on after (finite values follow it); a run that ENDS
non-finite is a divergence. Statistics count collapse and divergence as collapses, nothing else."""
EVENT_COLUMNS = ["type", "split", "onset_step", "train_onset_step", "peak_step", "end_step", "recovered",
                 "peak_value", "magnitude", "score", "threshold", "note"]
"""events.csv of one run (the detector's output); study-level tables put ID_COLUMNS first."""

RUN_STATUSES = ("completed", "diverged", "failed")
RUN_KEYS = ["arch", "variant", "build", "seed", "study", "config_hash", "versions", "threads", "status", "reason",
            "steps_done", "wall_time_s", "warnings"]
"""run.json keys every run has, whatever happened to it; a run that got far enough adds data, recipe,
device, dtype, hparams, n_params and shape; a run the workflow trained adds ``admission``, its
architecture's admission verdict (harness.admission.summary: passed, the cache key ``checked``, the
tolerances, any warnings, the dtype the logits were compared in)."""
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
QUANTIZATION_SUMMARY_COLUMNS = ["arch", "variant", "step", "final", "bits", "n", "loss_median", "loss_increase_median",
                                "loss_increase_min", "loss_increase_max", "bpt_increase_median",
                                "bpt_increase_min", "bpt_increase_max"]
"""quantization_summary.csv of a study: per (arch, variant, step, bits) over the seeds; final marks the trained model."""

LR_CURVE_COLUMNS = ["arch", "setting", "lr", "n", "n_unstable", "unstable_rate", "initial_loss", "final_loss_median",
                    "final_loss_min", "final_loss_max", "n_diverged"]
"""lr_curves.csv (harness.stability): per (arch, setting, lr) over the seeds. ``setting`` is the variant
without its lr (BASE_VARIANT when lr is the only sweep key); a run is unstable when it diverged or had a
collapse or divergence event; final losses are the last validation loss (a diverged run counts as its
initial loss, the Wortsman et al. convention); n_diverged counts runs that ended non-finite. Failed runs
are left out of n; initial_loss is the median step-0 validation loss. A study needs at least two swept
lrs to have these tables."""
SENSITIVITY_COLUMNS = ["arch", "setting", "n_seeds", "n_lrs", "sensitivity", "lo", "hi", "best_final_loss",
                       "stable_lr", "stable_k", "stable_n", "sentence"]
"""sensitivity.csv: learning-rate sensitivity per (arch, setting), Wortsman et al. 2023: per seed, the mean
over the lr grid of min(final loss, initial loss) minus the loss at the optimum lr chosen on the seeds
before it (harness.stability.prequential_sensitivity, nats; the first seed only chooses); the mean over seeds with its interval (lo, hi:
Student t over the seeds, NaN below 2; its measured coverage: harness.stability.INTERVAL_LABEL); n_seeds
counts the seeds with a final loss at every lr the (arch, setting) has trained runs at (only they enter).
best_final_loss: the lowest per-lr median final loss of the grid. stable_lr: harness.stability.stable_range
over the study's grid (the largest stable lr with no unstable or unmeasured lr below it); stable_k of
stable_n runs were stable at it (NaN lr: none; then the smallest lr's counts)."""
SENSITIVITY_PAIR_COLUMNS = ["setting", "arch_a", "arch_b", "n_a", "n_b", "n_lrs", "difference", "p", "p_holm",
                            "missing", "sentence"]
"""sensitivity_pairs.csv: the per-seed sensitivities of two architectures compared on their common lr grid
(n_lrs: the lrs both have trained runs at; n_a, n_b: the seeds with a final loss at each, the first only
choosing): difference of mean sensitivities a - b, each seed's optimum chosen on both architectures'
earlier seeds (harness.stability.pair_sensitivities), its two-sided p (harness.stability.sensitivity_test),
Holm-corrected over the study's pairs; ``missing`` names the lrs and seeds left out."""
ATTRIBUTION_COLUMNS = ["arch", "variant", "seed", "event_type", "onset_step", "diagnostic", "left_step",
                       "lead_steps", "z", "first", "n_controls"]
"""attribution.csv: per (collapse, spike or divergence event, diagnostic of its run that departed from the
same diagnostic of stable runs of the same architecture and schedule before the event): the step it
departed, the lead in steps (onset - left_step), its z (the case's change minus the stable runs' median
change, in the spread the stable runs show), n_controls (the stable runs it was compared with); ``first``
marks the earliest diagnostic(s) of each event. An event with fewer than two stable runs to compare with
has one row with an empty diagnostic (not attributable; n_controls the stable runs found). A diverged
run without a divergence event contributes its end (onset steps_done, type divergence). The rule:
harness.attribution.attribution."""
ATTRIBUTION_SUMMARY_COLUMNS = ["arch", "variant", "n_events", "n_attributed", "n_no_control", "leading", "k",
                               "median_lead", "sentence"]
"""attribution_summary.csv: per (arch, variant) with events: the diagnostic family most often first
(``leading``), in k of n_events events, its median lead in steps, n_no_control events not attributable
(too few stable runs to compare with), and the sentence the report prints."""
ABLATION_COLUMNS = ["arch", "switch", "setting", "off_k", "off_n", "on_k", "on_n", "p", "p_holm", "sentence"]
"""ablations.csv: per (arch, stabiliser switch of the sweep, rest of the variant): unstable runs k of n
without and with the switch, two-sided Fisher exact p, Holm-corrected over the table's rows (p_holm: a
row says the switch matters only when p_holm <= 0.05; otherwise it gives the smallest difference its
runs could have detected). ``switch`` names the on value as a variant does
(qk_norm=on, z_loss=0.0001): one row per on value of the sweep; failed runs are left out."""

CONTROL_COLUMNS = ["control", "arch_a", "arch_b", "measure", "where", "lr", "k_a", "n_a", "k_b", "n_b", "estimate", "p",
                   "p_adjusted", "separates", "sentence"]
"""controls.csv (harness.controls): per declared control (positive | negative) of a study, one row per measure
that compares its two architectures as the report prints it: measure claim (where: the claim's id), sensitivity
(where: the setting; estimate: sensitivity of a minus b, nats; p: the sensitivity test's p; p_adjusted: the table's Holm p),
instability (where: the setting, lr; k of n unstable runs each; estimate: the rate difference; p: Fisher exact,
p_adjusted: Holm over the setting's lrs), final perplexity (where: the variant; estimate: P(a has the lower final
perplexity); p: Mann-Whitney, p_adjusted: the pairs table's Holm p) and collapse rate (Fisher, likewise).
``separates``: the measure tells the two apart (a claim: it decides, or for the negative control's copy, its
verdict changes). Empty in a study that declares no control."""

LOOK_COLUMNS = ["question", "kind", "archs", "setting", "look", "seeds", "alpha", "decided", "verdict", "p"]
"""looks.csv of a study with a seed budget (empty otherwise): one row per question (a claim:
``claim:<id>``; a sensitivity pair: ``pair <setting>: <a> vs <b>``) and look, up to the look that decided
it: the fewest seeds of its architectures at that look, the level the look spent (harness.sequential),
whether it was decided, the verdict (a claim's, or for a pair '<arch> less sensitive' or 'inconclusive')
and the pair's Holm-corrected p."""

AGGREGATE_TABLES = ("runs", "trajectories", "events", "summary", "pairs", "claims", "headlines", "quantization",
                    "quantization_summary", "lr_curves", "sensitivity", "sensitivity_pairs", "attribution",
                    "attribution_summary", "ablations", "looks", "controls")
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
