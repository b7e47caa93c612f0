"""Admission: an architecture is checked before it costs compute.

A comparison harness is only as good as its admission rule: a model that sees the future, or whose
sequences see each other through the batch, wins every comparison, and every verdict about it is
wrong. Each check below is one function of a ``Candidate`` (a builder at the study's shape) that
returns a ``Result``: the property, its status (passed, failed, warning; skipped when an earlier
failure makes it meaningless), a sentence of evidence that reads after the architecture's name, the
measured number and the tolerance it was held to.

  causality           changing the tokens after t leaves the logits at positions <= t unchanged, at a
                      dense sample of cut points t (every t at the study's length when the four
                      combinations below together cover them), for random and structured tokens, in
                      eval and in train mode (dropout on, the same seed before both forwards), at the
                      study's length and a shorter one
  batch_independence  a sequence's logits do not depend on the other sequences of its batch (eval: alone,
                      in a batch, at another row, with other companions; train: other companions)
  output_contract     logits [B, T, V], floating point, finite at initialisation (eval and train mode)
  init_loss           the loss on random tokens at initialisation is near ln V: its expectation is
                      ln V + KL(uniform || p), so the excess measures how far the initial predictions
                      are from uniform
  determinism         two builds under one seed are bitwise equal (parameters and buffers); two
                      eval-mode forwards give equal logits (no randomness in evaluation: dropout left
                      on); two train-mode forwards under one seed give equal logits; builds under two
                      seeds differ (else a warning: the seeds are not independent replicates)
  accounting          the parameters counted by unique storage (tied weights once) equal the shape
                      solver's count and the parameter elements model.safetensors holds

Causality and batch independence compare logits in float64 (the model converted with ``.double()``),
where honest rounding is at most 2e-14 and the tolerance 1e-9 sits five orders above it; a model that
cannot run in float64 is compared in float32 (tolerance 1e-3; honest FFT rounding measured up to
1.8e-5). The numbers behind every tolerance are in TOLERANCES' comments. Training-mode forwards restore the
model's buffers first, so a step counter (trn_hybrid's warm ramp) or BatchNorm's running statistics
never make two compared forwards differ.

A pipeline architecture (its module's PIPELINE) is checked on its evaluation path: the function its
declaration names (``Pipeline.evaluation``), else its builder at the run's hyperparameters.
``admit(spec)`` checks every distinct model of an architecture of a study (harness.study.admission_spec);
``check_candidate`` runs the checks on one. The workflow runs ``harness check --spec`` once per
architecture of a study before any of its training jobs; ``harness check ARCH`` runs the same checks on demand.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import importlib
import json
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F

from harness import archs, shape

PROPERTIES = ("causality", "batch_independence", "output_contract", "init_loss", "determinism", "accounting")
STATUSES = ("passed", "warning", "failed", "skipped")

TOLERANCES: dict[str, float] = {
    # max |Δ| of a logit (nats) at a position <= t when tokens after t change; float64 comparisons.
    # Honest rounding measured on the built-in architectures at the tiny shape: 0 for transformer,
    # trn_hybrid, eam and examples/gru.py, 2e-16 memnls, 9e-16 diag_ssm, 2e-14 resonance (its FFT
    # convolution). A leak at initialisation moves logits by far more (tests/broken_archs.py: 0.26-0.38
    # for the bidirectional GRU, 0.008-0.035 for an off-by-one attention mask, 3e-5 to 8e-5 for a leak
    # scaled by 1e-4, at the micro and tiny shapes).
    "causality": 1e-9,
    # the same when the model cannot run in float64: float32 rounding measured up to 1.8e-5 (resonance)
    "causality_float32": 1e-3,
    # max |Δ| of a sequence's logits when the other sequences of its batch (or its row) change; honest:
    # 0, 4e-16 for the GRU (float64), 2.4e-7 (float32); BatchNorm over the batch moves them by 0.2
    "batch_independence": 1e-9,
    "batch_independence_float32": 1e-3,
    # |loss - ln V| (nats) above which the initial loss is a warning: logits whose spread is about a nat
    # (the excess is about half their variance). Built-ins measured +0.002 (trn_hybrid, eam) to +0.16 (resonance).
    "init_loss_warning": 0.5,
    # a loss above this multiple of ln V is an error: the initialisation costs more than the whole
    # task of predicting a token from nothing (examples/gru.py with N(0, 1) tied embeddings: 56 = 10 ln V)
    "init_loss_error_factor": 2.0,
    # builds and eval forwards must agree bit for bit; parameter counts exactly
    "determinism": 0.0,
    "accounting": 0.0,
}
PROBE_DROPOUT = 0.1  # dropout of the forward checks when the study trains without (0): its paths run too
SEED = 1234  # the inputs' generator, the same for every architecture
# tokens per forward of the causality check, whose rows are cut points: at the tiny study's length 128,
# 16 rows per combination (58 distinct cut points of 127 over the four), every cut point at its short
# length 42; on a GPU more rows fit in the same time
TOKEN_BUDGET = {"cpu": 2048, "cuda": 16384}
# the shape solver counts on the CPU when the study's width^2 * depth is below this (a few ms a build),
# else on the meta device (nothing allocated, but its kernels import torch._dynamo: ~1 s per process)
SMALL_MODEL = 1 << 20


@dataclass(frozen=True)
class Result:
    """One property's verdict. ``evidence`` follows the architecture's name: 'is not causal: ...'."""

    property: str
    status: str
    evidence: str
    value: float | None = None
    tolerance: float | None = None

    def line(self) -> str:
        return f"  {self.property:<19} {self.status:<8} {self.evidence}"


@dataclass
class Candidate:
    """A model to admit: ``make(seed)`` builds it under that seed at the study's shape."""

    label: str  # how messages name it: the build path, or 'name (build path)'
    make: Callable[..., torch.nn.Module]  # make(seed, dropout=None) -> module in train mode, on CPU
    vocab_size: int
    seq_len: int
    solver_count: int | None  # what the shape solver counted (run.json n_params); None: count_params
    seed: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dropout: float | None = None  # the study's dropout, None when the builder takes none
    compared_in: str = ""  # set by check_candidate: the dtype of the causality and batch comparisons
    probe_note: str = ""  # set by check_candidate: how the forward checks' model differs from the study's


# --- forwards ----------------------------------------------------------------------------------------

class Probe:
    """Forwards of one model, each from the same buffers and, in train mode, the same RNG seed."""

    def __init__(self, model: torch.nn.Module, device: torch.device):
        self.model = model.to(device)
        self.device = device
        self.buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
        self.dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)

    @torch.no_grad()
    def __call__(self, ids: torch.Tensor, train: bool = False, seed: int = SEED) -> torch.Tensor:
        for name, saved in self.buffers.items():  # a counter or running statistics never differ
            module_name, _, leaf = name.rpartition(".")
            module = self.model.get_submodule(module_name)
            current = module._buffers.get(leaf)
            if current is not None and current.shape == saved.shape and current.dtype == saved.dtype:
                current.copy_(saved)
            else:
                module._buffers[leaf] = saved.clone()
        self.model.train(train)
        torch.manual_seed(seed)
        return self.model(ids.to(self.device))


def _max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| where NaN == NaN (a NaN that moves counts as infinite)."""
    a, b = a.detach().double(), b.detach().double()
    same_nan = torch.isnan(a) & torch.isnan(b)
    d = (a - b).abs().masked_fill(same_nan, 0.0).nan_to_num(nan=math.inf)
    return float(d.max()) if d.numel() else 0.0


def _fmt(x: float) -> str:
    return "0" if x == 0 else f"{x:.2g}"


def _random_ids(gen: torch.Generator, vocab: int, *shape_: int) -> torch.Tensor:
    return torch.randint(0, vocab, shape_, generator=gen)


def _changed(ids: torch.Tensor, gen: torch.Generator, vocab: int) -> torch.Tensor:
    """Every token replaced by another one (a uniform non-zero shift mod V)."""
    return (ids + torch.randint(1, max(vocab, 2), ids.shape, generator=gen)) % vocab


def _structured(gen: torch.Generator, vocab: int, length: int, period: int = 7) -> torch.Tensor:
    """A repeated motif: the pattern a copying (induction) mechanism latches on."""
    motif = _random_ids(gen, vocab, period)
    return motif.repeat(length // period + 1)[:length]


def _cut_points(length: int, rows: int, combos: int, gen: torch.Generator) -> list[list[int]]:
    """For each of ``combos`` checks at ``length``, its cut points t: every t in [0, length - 2] when
    they fit, else disjoint slices of one random permutation (so the combos together cover up to
    combos * rows of them), each with the first and the last cut point."""
    every = list(range(max(length - 1, 1)))
    if len(every) <= rows:
        return [every] * combos
    order = [every[i] for i in torch.randperm(len(every), generator=gen).tolist()]
    inner = [t for t in order if t not in (0, every[-1])]
    out = []
    for c in range(combos):
        take = inner[(c * (rows - 2)) % len(inner):][: rows - 2]
        out.append(sorted({0, every[-1], *take}))
    return out


# --- the checks --------------------------------------------------------------------------------------

def check_output_contract(probe: Probe, c: Candidate) -> Result:
    """Logits [B, T, V], floating point and finite at initialisation, in eval and train mode, at two lengths."""
    gen = torch.Generator().manual_seed(SEED)
    short = _short_length(c.seq_len)
    for train, length in ((False, c.seq_len), (False, short), (True, c.seq_len)):
        mode = "train" if train else "eval"
        ids = _random_ids(gen, c.vocab_size, 2, length)
        try:
            out = probe(ids, train)
        except Exception as e:  # noqa: BLE001 - any error is the evidence
            return Result("output_contract", "failed", f"raises at initialisation ({mode} mode, input ids [2, {length}]): "
                          f"{type(e).__name__}: {e}")
        if not isinstance(out, torch.Tensor):
            return Result("output_contract", "failed", f"returns {type(out).__name__} for input ids [2, {length}]; "
                          f"forward(input_ids[B, T]) must return a logits tensor [B, T, V]")
        if tuple(out.shape) != (2, length, c.vocab_size):
            return Result("output_contract", "failed", f"returns logits of shape {list(out.shape)} for input ids "
                          f"[2, {length}] ({mode} mode); the contract is [B, T, V] = [2, {length}, {c.vocab_size}]")
        if not out.is_floating_point():
            return Result("output_contract", "failed", f"returns logits of dtype {str(out.dtype).removeprefix('torch.')}; "
                          "they must be floating point")
        bad = int((~torch.isfinite(out)).sum())
        if bad:
            return Result("output_contract", "failed", f"returns non-finite logits at initialisation: {bad:,} of "
                          f"{out.numel():,} are NaN or infinite ({mode} mode, length {length})", float(bad), 0.0)
    return Result("output_contract", "passed", f"returns finite {str(out.dtype).removeprefix('torch.')} logits "
                  f"[B, T, {c.vocab_size}] at lengths {c.seq_len} and {short}, in eval and train mode", 0.0, 0.0)


def check_init_loss(probe: Probe, c: Candidate) -> Result:
    """Cross-entropy at initialisation on random tokens against ln V."""
    gen = torch.Generator().manual_seed(SEED + 1)
    rows = max(1, min(8, 2 * TOKEN_BUDGET["cpu"] // c.seq_len))
    ids, targets = _random_ids(gen, c.vocab_size, 2, rows, c.seq_len)
    logits = probe(ids).float()
    loss = float(F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1).to(logits.device)))
    ln_v = math.log(c.vocab_size)
    warn, hard = TOLERANCES["init_loss_warning"], TOLERANCES["init_loss_error_factor"] * ln_v
    said = (f"{loss:.3f} nats per token on random tokens at initialisation against ln V = {ln_v:.3f} "
            f"(warning beyond ±{warn:g}, error above {hard:.2f} = {TOLERANCES['init_loss_error_factor']:g} ln V)")
    if not math.isfinite(loss):
        return Result("init_loss", "failed", f"starts at a non-finite loss: {said}", loss, warn)
    if loss > hard:
        return Result("init_loss", "failed", f"starts far from ln V: {said}; its initial predictions are far "
                      "from uniform (output scale or initialisation broken)", loss - ln_v, warn)
    if abs(loss - ln_v) > warn:
        return Result("init_loss", "warning", f"starts {loss - ln_v:+.2f} nats from ln V: {said}", loss - ln_v, warn)
    return Result("init_loss", "passed", f"starts near ln V: {said}", loss - ln_v, warn)


def _first_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> tuple[str, float] | None:
    for name in sorted(set(a) | set(b)):
        if name not in a or name not in b or a[name].shape != b[name].shape:
            return name, math.inf
        d = _max_abs(a[name], b[name]) if a[name].is_floating_point() else float(not torch.equal(a[name], b[name]))
        if d > 0:
            return name, d
    return None


def check_determinism(c: Candidate, model: torch.nn.Module, forward: Probe) -> Result:
    """Two builds under one seed bitwise equal; eval forwards equal; train forwards equal under one seed."""
    again = _build(c, c.seed)
    if diff := _first_difference(model.state_dict(), again.state_dict()):
        name, d = diff
        return Result("determinism", "failed", f"is not reproducible under the seed: two builds under seed {c.seed} "
                      f"differ in {name!r} (max |Δ| {_fmt(d)}); draw every random number of the initialisation from "
                      "torch's global generator, which the harness seeds before build (no torch.seed(), no "
                      "unseeded generator)", d, 0.0)
    if unrepeatable := _repeat_failure(forward, c):
        return unrepeatable
    other = _build(c, c.seed + 1)
    params = dict(model.named_parameters())
    if params and not _first_difference(params, dict(other.named_parameters())):
        return Result("determinism", "warning", f"ignores the seed: builds under seeds {c.seed} and {c.seed + 1} have "
                      "identical parameters, so its seeds are not independent replicates", 0.0, 0.0)
    return Result("determinism", "passed", f"is reproducible: two builds under seed {c.seed} are bitwise equal, "
                  "another seed gives other parameters, and forwards repeat exactly (eval; train under one seed)",
                  0.0, 0.0)


def _repeat_failure(forward: Probe, c: Candidate) -> Result | None:
    """Eval-mode forwards must repeat whatever the RNG; train-mode forwards under one seed. None: they do."""
    gen = torch.Generator().manual_seed(SEED + 2)
    ids = _random_ids(gen, c.vocab_size, 2, c.seq_len)
    first, second = forward(ids, seed=SEED), forward(ids, seed=SEED + 1)  # eval: the seed must not matter
    if (d := _max_abs(first, second)) > 0:
        return Result("determinism", "failed", f"is random in evaluation: two eval-mode forwards of the same tokens "
                      f"gave different logits (max |Δ| {_fmt(d)}); eval mode must be deterministic (dropout left on?)",
                      d, 0.0)
    first, second = forward(ids, train=True), forward(ids, train=True)
    if (d := _max_abs(first, second)) > 0:
        return Result("determinism", "failed", f"is not reproducible in train mode: two forwards of the same tokens "
                      f"under the same seed gave different logits (max |Δ| {_fmt(d)}); draw randomness (dropout, "
                      "noise) from torch's seeded generator", d, 0.0)
    return None


def unique_parameter_count(model: torch.nn.Module) -> int:
    """Parameter elements counted by storage: parameters sharing memory (a tied head) count once."""
    seen, n = set(), 0
    for p in model.parameters():
        key = (p.device, p.untyped_storage().data_ptr(), p.storage_offset(), tuple(p.shape), p.stride())
        if key not in seen:
            seen.add(key)
            n += p.numel()
    return n


def safetensors_parameter_count(model: torch.nn.Module) -> tuple[int, list[str]]:
    """Parameter elements in model.safetensors as a run writes it (harness.run: save_model), and their names."""
    from safetensors import safe_open
    from safetensors.torch import save_model

    names = {n for n, _ in model.named_parameters(remove_duplicate=False)}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.safetensors"
        save_model(model, str(path))
        with safe_open(str(path), "pt") as f:
            stored = [k for k in f.keys() if k in names]
            n = sum(math.prod(f.get_slice(k).get_shape()) for k in stored)
    return n, stored


def check_accounting(c: Candidate, model: torch.nn.Module) -> Result:
    """Unique-storage count = the shape solver's count = the parameter elements model.safetensors holds."""
    unique = unique_parameter_count(model)
    solver = c.solver_count if c.solver_count is not None else shape.count_params(model)
    try:
        stored, _ = safetensors_parameter_count(model)
    except Exception as e:  # noqa: BLE001
        return Result("accounting", "failed", f"cannot be saved as model.safetensors: {type(e).__name__}: {e}")
    if unique == solver == stored:
        return Result("accounting", "passed", f"counts {unique:,} parameters by unique storage, as the shape solver "
                      "and model.safetensors do", 0.0, 0.0)
    shared = _shared_parameters(model)
    why = (f"; {' and '.join(repr(n) for n in shared[0])} share one storage but are separate parameters, so they "
           "count (and train) twice: tie by assigning the same Parameter (head.weight = emb.weight)") if shared else ""
    return Result("accounting", "failed", f"is miscounted: {unique:,} parameters by unique storage, {solver:,} by the "
                  f"shape solver (run.json n_params, the budget it was matched at), {stored:,} in model.safetensors"
                  f"{why}", float(abs(solver - unique) or abs(stored - unique)), 0.0)


def _shared_parameters(model: torch.nn.Module) -> list[list[str]]:
    groups: dict[tuple, list[str]] = {}
    for name, p in model.named_parameters():
        groups.setdefault((p.untyped_storage().data_ptr(), p.storage_offset(), tuple(p.shape)), []).append(name)
    return [names for names in groups.values() if len(names) > 1]


def check_batch_independence(probe: Probe, c: Candidate, tolerance: float) -> Result:
    """A sequence's logits alone, in a batch, at another row and beside other sequences are the same."""
    gen = torch.Generator().manual_seed(SEED + 3)
    length, v = c.seq_len, c.vocab_size
    x = _random_ids(gen, v, 1, length)
    some, others = _random_ids(gen, v, 3, length), _random_ids(gen, v, 3, length)
    eval_alone = probe(x)[0]
    cases = [
        ("eval", "when it ran in a batch of 4 instead of alone", probe(torch.cat([x, some]))[0], eval_alone),
        ("eval", "when it moved from row 0 to row 2 of its batch", probe(torch.cat([some[:2], x, some[2:]]))[2], eval_alone),
        ("eval", "when the other sequences of its batch changed", probe(torch.cat([x, others]))[0],
         probe(torch.cat([x, some]))[0]),
        ("train", "when the other sequences of its batch changed", probe(torch.cat([x, others]), True)[0],
         probe(torch.cat([x, some]), True)[0]),
    ]
    worst = 0.0
    for mode, what, a, b in cases:
        d = _max_abs(a, b)
        worst = max(worst, d)
        if d > tolerance:
            position = int((a.double() - b.double()).abs().nan_to_num(nan=math.inf).amax(-1).argmax())
            return Result("batch_independence", "failed", f"is not batch-independent: the logits of a sequence changed "
                          f"{what} (max |Δ| {_fmt(d)} at position {position}, {mode} mode); a sequence's logits may depend "
                          "only on its own tokens (a normalisation over the batch, such as BatchNorm, mixes them)",
                          d, tolerance)
    return Result("batch_independence", "passed", f"is batch-independent: a sequence's logits stayed the same alone, in a "
                  f"batch, at another row and beside other sequences, eval and train mode (max |Δ| {_fmt(worst)}, "
                  f"tolerance {tolerance:g} in {_dtype_name(probe)})", worst, tolerance)


def check_causality(probe: Probe, c: Candidate, tolerance: float, batched: bool = True) -> Result:
    """Changing the tokens after t leaves the logits at positions <= t unchanged."""
    gen = torch.Generator().manual_seed(SEED + 4)
    v = c.vocab_size
    worst, moved, cuts = 0.0, 0.0, 0
    lengths = sorted({c.seq_len, _short_length(c.seq_len)}, reverse=True)
    combos = [(kind, train) for kind in ("random", "structured") for train in (False, True)]
    budget = TOKEN_BUDGET.get(c.device.type, TOKEN_BUDGET["cpu"])
    for length in lengths:
        needed = -(-max(length - 3, 0) // len(combos)) + 2  # rows at which the combinations cover every t
        rows = min(max(budget // length, 8), max(needed, 64)) if batched else min(8, length - 1)
        for (kind, train), ts in zip(combos, _cut_points(length, rows, len(combos), gen)):
            if kind == "random":
                base = _random_ids(gen, v, len(ts), length)
                changed = torch.stack([torch.cat([b[: t + 1], _changed(b[t + 1:], gen, v)]) for b, t in zip(base, ts)])
            else:  # a motif, then after t a run of one other token
                motif = _structured(gen, v, length)
                base = motif.expand(len(ts), length).clone()
                changed = torch.stack([torch.cat([motif[: t + 1], _changed(motif[t + 1:t + 2], gen, v).expand(length - t - 1)])
                                       for t in ts])
            if batched:
                a, b = probe(base, train), probe(changed, train)
            else:  # sequences that see each other through the batch are checked one at a time
                a = torch.cat([probe(row[None], train) for row in base])
                b = torch.cat([probe(row[None], train) for row in changed])
            for i, t in enumerate(ts):
                d = _max_abs(a[i, : t + 1], b[i, : t + 1])
                worst = max(worst, d)
                moved = max(moved, _max_abs(a[i, t + 1:], b[i, t + 1:]))
                if d > tolerance:
                    where = f"{'train' if train else 'eval'} mode, length {length}, {kind} tokens"
                    return Result("causality", "failed", f"is not causal: {_localize(probe, base[i], changed[i], t, train, tolerance)}"
                                  f"; {where}); a language model's logits at t may depend only on tokens <= t", d, tolerance)
            cuts += len(ts)
    said = (f"over {cuts} cut points t (lengths {' and '.join(map(str, lengths))}, random and structured tokens, eval "
            f"and train mode; max |Δ| {_fmt(worst)} at positions <= t, tolerance {tolerance:g} in {_dtype_name(probe)}; "
            f"max |Δ| {_fmt(moved)} after t)")
    if moved <= tolerance:
        return Result("causality", "warning", f"never changed its logits when tokens changed {said}: the check saw no "
                      "dependence on the input at all", worst, tolerance)
    return Result("causality", "passed", f"is causal: the logits at positions <= t never moved when the tokens after t "
                  f"changed, {said}", worst, tolerance)


def _localize(probe: Probe, base: torch.Tensor, changed: torch.Tensor, t: int, train: bool, tolerance: float) -> str:
    """Which single later token moves which earlier position most: the evidence sentence of a leak."""
    length = base.numel()
    candidates = sorted({t + 1, length - 1, *torch.linspace(t + 1, length - 1, 48).round().long().tolist()})
    a = probe(base[None], train)[0]
    best = (0.0, -1, -1)
    for s in candidates:
        one = base.clone()
        one[s] = changed[s]
        b = probe(one[None], train)[0]
        per_position = (a[:s].double() - b[:s].double()).abs().nan_to_num(nan=math.inf).amax(-1)
        if per_position.numel() and float(per_position.max()) > best[0]:
            best = (float(per_position.max()), s, int(per_position.argmax()))
    d, s, p = best
    if d > tolerance:
        return f"changing token {s} changed the logits at position {p} (max |Δ| {_fmt(d)}"
    b = probe(changed[None], train)[0]
    per_position = (a[: t + 1].double() - b[: t + 1].double()).abs().nan_to_num(nan=math.inf).amax(-1)
    return (f"changing tokens {t + 1}..{length - 1} changed the logits at position {int(per_position.argmax())} "
            f"(max |Δ| {_fmt(float(per_position.max()))}, no single token alone")


# --- one model, all checks ---------------------------------------------------------------------------

def _short_length(length: int) -> int:
    """The second length: a third of the study's (not a power of two, so FFT and padding paths change)."""
    return max(2, length // 3)


def _dtype_name(probe: Probe) -> str:
    return str(probe.dtype).removeprefix("torch.")


def _build(c: Candidate, seed: int, dropout: float | None = None) -> torch.nn.Module:
    with _rng_kept():
        torch.manual_seed(seed)
        return c.make(seed, dropout)


@contextlib.contextmanager
def _rng_kept() -> Iterator[None]:
    """The caller's global RNG state is left as it was."""
    with torch.random.fork_rng(devices=[]):
        yield


def _forward_model(c: Candidate, model: torch.nn.Module) -> tuple[Probe, str]:
    """The model the forward checks compare: with dropout PROBE_DROPOUT when the study trains without
    and the builder takes it, in float64 when it runs there (else its own dtype)."""
    note = ""
    if c.dropout == 0:
        try:
            model = _build(c, c.seed, PROBE_DROPOUT)
            note = f"dropout {PROBE_DROPOUT:g} in the forward checks (the study trains at 0)"
        except Exception:  # noqa: BLE001 - a builder that takes no dropout keeps the study's model
            pass
    wide = copy.deepcopy(model).double()
    probe = Probe(wide, c.device)
    try:
        out = probe(torch.zeros(1, min(c.seq_len, 8), dtype=torch.long))
        if isinstance(out, torch.Tensor) and out.dtype == torch.float64:
            return probe, note
    except Exception:  # noqa: BLE001 - checked in its own dtype instead
        pass
    return Probe(model, c.device), note


def check_candidate(c: Candidate) -> list[Result]:
    """Every property of one candidate, in PROPERTIES order."""
    with _rng_kept():
        try:
            model = _build(c, c.seed)
        except Exception as e:  # noqa: BLE001
            failed = Result("output_contract", "failed", f"cannot be built: {type(e).__name__}: {e}")
            return [failed if p == "output_contract" else _skipped(p, "it cannot be built") for p in PROPERTIES]
        native = Probe(model, c.device)
        results = {"accounting": _guarded("accounting", lambda: check_accounting(c, model)),
                   "output_contract": _guarded("output_contract", lambda: check_output_contract(native, c))}
        if results["output_contract"].status == "failed":  # forwards of the wrong contract compare nothing
            nonfinite = "non-finite" in results["output_contract"].evidence
            results["init_loss"] = (_guarded("init_loss", lambda: check_init_loss(native, c)) if nonfinite
                                    else _skipped("init_loss", "the output contract failed"))
            results["determinism"] = _guarded("determinism", lambda: check_determinism(c, model, native))
            for p in ("causality", "batch_independence"):
                results[p] = _skipped(p, "the output contract failed")
            return [results[p] for p in PROPERTIES]
        results["init_loss"] = _guarded("init_loss", lambda: check_init_loss(native, c))
        probe, c.probe_note = _forward_model(c, model)
        c.compared_in = _dtype_name(probe)
        wide = probe.dtype == torch.float64
        tol_b = TOLERANCES["batch_independence" if wide else "batch_independence_float32"]
        tol_c = TOLERANCES["causality" if wide else "causality_float32"]
        results["determinism"] = _guarded("determinism", lambda: check_determinism(c, model, probe))
        if results["determinism"].status == "failed" and _guarded("determinism", lambda: _repeat_failure(probe, c)):
            for p in ("batch_independence", "causality"):  # forwards that do not repeat compare nothing
                results[p] = _skipped(p, "its forwards do not repeat (see determinism)")
            return [results[p] for p in PROPERTIES]
        results["batch_independence"] = _guarded("batch_independence", lambda: check_batch_independence(probe, c, tol_b))
        batched = results["batch_independence"].status == "passed"
        results["causality"] = _guarded("causality", lambda: check_causality(probe, c, tol_c, batched))
    return [results[p] for p in PROPERTIES]


def _skipped(prop: str, why: str) -> Result:
    return Result(prop, "skipped", f"was not checked: {why}")


def _guarded(prop: str, check: Callable[[], Result]) -> Result:
    try:
        return check()
    except Exception as e:  # noqa: BLE001 - a model that raises fails the property it was checked for
        return Result(prop, "failed", f"raised while checked for {prop.replace('_', ' ')}: {type(e).__name__}: {e}")


# --- an architecture of a study ----------------------------------------------------------------------

def vocab_size_of(data_spec: dict[str, Any]) -> int:
    """The vocabulary of a study's data: 256 for bytes without reading the file, else its characters."""
    return _vocab_size(data_spec["name"], data_spec.get("tokens", "bytes"))


@functools.cache
def _vocab_size(name: str, tokens: str) -> int:
    if tokens == "bytes":
        return 256
    from harness import data

    return data.load_corpus(name, tokens=tokens).vocab_size


def _evaluation(build: str) -> Callable[[dict, int], torch.nn.Module] | None:
    pipeline = archs.info(build).pipeline
    if pipeline is None:
        return None
    if pipeline.evaluation:
        module, _, function = pipeline.evaluation.partition(":")
        return getattr(importlib.import_module(module), function)
    return lambda spec, vocab: archs.build(build, vocab_size=vocab, **spec["hparams"])


def label_of(arch: str, build: str) -> str:
    """'examples.gru:build' for a dotted path named after its module, else 'name (build)' or the name."""
    if arch == build:
        return arch
    if ":" in build and build.partition(":")[0].rsplit(".", 1)[-1] == arch:
        return build
    return f"{arch} ({build})"


def candidate(run: dict[str, Any], vocab_size: int, device: torch.device | None = None) -> Candidate:
    """The model one run spec trains (or, for a pipeline, evaluates), at its shape."""
    device = device or torch.device("cpu")
    label = label_of(run["arch"], run["build"])
    seq_len = run["recipe"]["seq_len"]
    evaluation = _evaluation(run["build"])
    if evaluation is not None:
        def make_pipeline(seed: int, dropout: float | None = None) -> torch.nn.Module:
            return evaluation({**run, "seed": seed}, vocab_size)
        return Candidate(label, make_pipeline, vocab_size, seq_len, None, run["seed"], device, None)
    model = run["model"]
    small = model.get("d_model", 1 << 16) ** 2 * model.get("n_layers", 1 << 16) < SMALL_MODEL
    solved = shape.for_spec(run, vocab_size, device="cpu" if small else "meta")

    def make(seed: int, dropout: float | None = None) -> torch.nn.Module:
        hparams = solved.hparams if dropout is None else {**solved.hparams, "dropout": dropout}
        return archs.build(run["build"], **hparams)

    return Candidate(label, make, vocab_size, seq_len, solved.n_params, run["seed"], device,
                     solved.hparams.get("dropout"))


def admit(spec: dict[str, Any], device: torch.device | None = None) -> dict[str, Any]:
    """Check every distinct model of one architecture of a study (harness.study.admission_spec): the
    admission record, with ``passed`` False when any property failed. The global RNG is left as it was."""
    with _rng_kept():
        return _admit(spec, device)


def _admit(spec: dict[str, Any], device: torch.device | None) -> dict[str, Any]:
    t0 = time.time()
    vocab = spec.get("vocab_size") or vocab_size_of(spec["runs"][0]["data"])
    models = []
    for run in spec["runs"]:
        t1 = time.time()
        try:
            c = candidate(run, vocab, device)
        except Exception as e:  # noqa: BLE001 - its runs would fail the same way, before their first step
            c = Candidate(label_of(run["arch"], run["build"]), lambda *_: None, vocab, run["recipe"]["seq_len"], None)
            failed = Result("accounting", "failed", f"cannot be sized at the study's shape: {type(e).__name__}: {e}")
            results = [failed if p == "accounting" else _skipped(p, "it cannot be sized") for p in PROPERTIES]
        else:
            results = check_candidate(c)
        models.append({"switches": run.get("switches") or {}, "label": c.label, "seq_len": c.seq_len,
                       "vocab_size": vocab, "n_params": c.solver_count, "seconds": round(time.time() - t1, 3),
                       "compared_in": c.compared_in, "note": c.probe_note,
                       "results": [dataclasses.asdict(r) for r in results]})
    statuses = [r["status"] for m in models for r in m["results"]]
    arch, build = spec["runs"][0]["arch"], spec["runs"][0]["build"]
    record = {"study": spec.get("study"), "arch": arch, "build": build, "label": label_of(arch, build),
              "checked": spec.get("checked"), "passed": "failed" not in statuses,
              "warnings": [f"{r['property']}: {r['evidence']}" for m in models for r in m["results"]
                           if r["status"] == "warning"],
              "tolerances": dict(TOLERANCES), "models": models, "wall_time_s": round(time.time() - t0, 3)}
    record["failures"] = failures(record)  # what a reader of the record prints, without loading torch
    return record


def admit_study(spec: dict[str, Any], cache: Path, device: torch.device | None = None) -> dict[str, Any]:
    """Check every architecture of a study (harness.study.admission_specs) in one process, each verdict
    written to ``cache``/{checked}.json unless it is there already, where the workflow's per-architecture
    admission jobs find it (`harness check --spec ARCH_SPEC --cache`) without loading torch again.
    Returns {study, checked, archs: {arch: {checked, passed, cached}}}."""
    t0 = time.time()
    verdicts = {}
    for arch, arch_spec in spec["archs"].items():
        path = Path(cache) / f"{arch_spec['checked']}.json"
        cached = path.is_file()
        record = json.loads(path.read_text()) if cached else admit(arch_spec, device)
        if not cached:
            write_record(path, record)
        print(report(record) + (" (cached)" if cached else ""), flush=True)
        verdicts[arch] = {"checked": arch_spec["checked"], "passed": record["passed"], "cached": cached}
    return {"study": spec.get("study"), "checked": spec.get("checked"), "archs": verdicts,
            "wall_time_s": round(time.time() - t0, 3)}


def failures(record: dict[str, Any]) -> list[str]:
    """One line per failed property: the architecture, the property's evidence."""
    return [f"{m['label']} {r['evidence']}" for m in record["models"] for r in m["results"] if r["status"] == "failed"]


def summary(record: dict[str, Any]) -> dict[str, Any]:
    """What run.json keeps of the admission record (its ``admission`` key)."""
    return {"passed": record["passed"], "checked": record["checked"], "tolerances": record["tolerances"],
            "warnings": record["warnings"],
            "compared_in": sorted({m["compared_in"] for m in record["models"] if m["compared_in"]})}


def report(record: dict[str, Any]) -> str:
    """The record as the lines `harness check` prints: one heading per model, one line per property."""
    lines = []
    for m in record["models"]:
        switches = "".join(f", {k}={v}" for k, v in m["switches"].items())
        count = f", {m['n_params']:,} parameters" if m["n_params"] is not None else ""
        lines.append(f"{m['label']}: seq_len {m['seq_len']}, vocab {m['vocab_size']}{count}{switches} "
                     f"({m['seconds']:.1f} s)")
        lines += [Result(**r).line() for r in m["results"]]
    verdict = "admitted" if record["passed"] else "NOT admitted"
    warned = f", {len(record['warnings'])} warning(s)" if record["warnings"] else ""
    lines.append(f"{verdict}: {record['label']}{warned} ({record['wall_time_s']:.1f} s)")
    return "\n".join(lines)


def write_record(path: Path, record: dict[str, Any]) -> None:
    from harness.files import write_atomic

    write_atomic(Path(path), json.dumps(record, indent=2, sort_keys=True) + "\n")
