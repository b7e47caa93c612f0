"""Quantization evaluation: the loss a trained model loses when its weight matrices are rounded to b bits.

Every parameter of two or more dimensions (linear weights, embeddings, and any other matrix) is
quantized per row (its first dimension; further dimensions are flattened into the row), symmetric:
``scale = max|row| / (2^(b-1) - 1)``, ``q = clamp(round(w / scale), -(2^(b-1) - 1), 2^(b-1) - 1)``,
``w' = q * scale`` (round to nearest, ties to even; an all-zero row stays zero). One-dimensional
parameters (biases, norm gains) and buffers stay as they are. ``keep`` names parameters by glob
pattern (``fnmatch`` on the dotted name, any of a tied tensor's names): ``"tok_emb.*"`` keeps a
tensor at full precision, ``"*.resonance.*=8"`` keeps it at 8 bits whatever the row's width.

``evaluate_bits`` evaluates the model on the run's fixed validation batches (the trainer's:
``harness.data.fixed_batches`` with the recipe's ``eval_seed``) at full precision and at each width,
and returns one row per width: bits (32 = the stored fp32 weights), loss, loss_increase (nats per
token over full precision) and bpt_increase (the same in bits per token, / ln 2). ``quantize_run``
does it for a run folder (and its weight snapshots) and writes quantization.csv; a run that did not
complete, or a pipeline architecture, gets one row with a note instead of numbers.

Weight snapshots (``save_snapshot``) are the plain weights the trainer keeps at every
``checkpoint_every`` step when a study asks for ``quantize.every_checkpoint``.
"""

from __future__ import annotations

import csv
import fnmatch
import json
import math
import re
import sys
from pathlib import Path
from typing import Any, Sequence

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_model

from harness import archs, data
from harness.contracts import BASE_VARIANT, FULL_PRECISION_BITS, ID_COLUMNS, QUANTIZATION_COLUMNS
from harness.files import atomic
from harness.recipe import Recipe, evaluate, resolve_device

FULL_PRECISION = FULL_PRECISION_BITS
SNAPSHOT = re.compile(r"^step(\d+)\.safetensors$")


def quantize_rows(w: torch.Tensor, bits: int) -> torch.Tensor:
    """``w`` (>= 2-D) quantized per row, symmetric, to ``bits`` bits and dequantized; same shape and dtype."""
    if bits < 2:
        raise ValueError(f"bits must be at least 2 (symmetric quantization), got {bits}")
    if w.dim() < 2:
        raise ValueError(f"per-row quantization needs a tensor of 2 or more dimensions, got shape {tuple(w.shape)}")
    qmax = 2 ** (bits - 1) - 1
    rows = w.detach().reshape(w.shape[0], -1).float()
    scale = rows.abs().amax(dim=1, keepdim=True) / qmax
    q = torch.clamp(torch.round(rows / torch.where(scale > 0, scale, torch.ones_like(scale))), -qmax, qmax)
    return (q * scale).reshape(w.shape).to(w.dtype)


def parse_keep(keep: Sequence[str]) -> list[tuple[str, int | None]]:
    """``["tok_emb.*", "*.proj.*=8"]`` -> [(pattern, None = full precision), (pattern, 8)]."""
    parsed = []
    for entry in keep:
        pattern, sep, bits = entry.rpartition("=") if "=" in entry else (entry, "", "")
        if sep and not bits.isdigit():
            raise ValueError(f"keep {entry!r}: write PATTERN (full precision) or PATTERN=BITS")
        if sep and int(bits) < 2:
            raise ValueError(f"keep {entry!r}: bits must be at least 2")
        parsed.append((pattern, int(bits) if sep else None))
    return parsed


def _tensor_names(model: torch.nn.Module) -> list[tuple[torch.nn.Parameter, list[str]]]:
    """Each parameter once, with every name it has (a tied embedding and head share one tensor)."""
    names: dict[int, tuple[torch.nn.Parameter, list[str]]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(param), (param, []))[1].append(name)
    return list(names.values())


def kept(model: torch.nn.Module, keep: Sequence[str] = ()) -> dict[str, int | None]:
    """First name of every >= 2-D parameter a ``keep`` rule holds back -> its bits (None: full precision);
    the first matching rule wins."""
    rules = parse_keep(keep)
    held = {}
    for param, names in _tensor_names(model):
        if param.dim() < 2:
            continue
        for pattern, width in rules:
            if any(fnmatch.fnmatchcase(n, pattern) for n in names):
                held[names[0]] = width
                break
    return held


def plan(model: torch.nn.Module, bits: int, keep: Sequence[str] = ()) -> dict[str, int | None]:
    """First name of every >= 2-D parameter -> the bits it gets at width ``bits`` (None: full precision)."""
    held = kept(model, keep)
    return {names[0]: held.get(names[0], bits) for param, names in _tensor_names(model) if param.dim() >= 2}


@torch.no_grad()
def quantize_(model: torch.nn.Module, bits: int, keep: Sequence[str] = ()) -> dict[str, int | None]:
    """Quantize ``model``'s >= 2-D parameters in place (see ``plan``); returns the plan."""
    widths = plan(model, bits, keep)
    params = dict(model.named_parameters())
    for name, width in widths.items():
        if width is not None:
            params[name].copy_(quantize_rows(params[name], width))
    return widths


def kept_note(model: torch.nn.Module, keep: Sequence[str]) -> str:
    """Which tensors ``keep`` holds back, in words ('' when none)."""
    held = kept(model, keep)
    return "; ".join(f"kept {n} at {'full precision' if w is None else f'{w} bits'}" for n, w in sorted(held.items()))


def evaluate_bits(model: torch.nn.Module, batches: list, bits: Sequence[int], keep: Sequence[str] = (),
                  device: torch.device | None = None, dtype: torch.dtype | None = None) -> list[dict[str, Any]]:
    """Loss on ``batches`` at full precision and at each width; the model's weights are restored after.

    Rows: bits (FULL_PRECISION first), loss, loss_increase (nats per token), bpt_increase (bits per token).
    """
    if any(not 2 <= int(b) < FULL_PRECISION for b in bits):
        raise ValueError(f"bits {list(bits)}: each width must be from 2 to {FULL_PRECISION - 1}")
    device = device or next(model.parameters()).device
    original = {n: t.detach().clone() for n, t in model.state_dict().items()}
    base = evaluate(model, batches, device, dtype)
    rows = [{"bits": FULL_PRECISION, "loss": base, "loss_increase": 0.0, "bpt_increase": 0.0}]
    try:
        for b in bits:
            quantize_(model, int(b), keep)
            loss = evaluate(model, batches, device, dtype)
            rows.append({"bits": int(b), "loss": loss, "loss_increase": loss - base,
                         "bpt_increase": (loss - base) / math.log(2)})
            model.load_state_dict(original)
    finally:
        model.load_state_dict(original)
    return rows


def save_snapshot(folder: Path, model: torch.nn.Module, step: int, meta: dict[str, Any]) -> Path:
    """The model's weights at ``step`` as ``folder/step{step}.safetensors`` (atomic), ``meta`` (the run's
    config_hash and seed) in its header so that a snapshot of another config is never evaluated."""
    path = Path(folder) / f"step{step}.safetensors"
    header = {"step": str(step), **{k: str(v) for k, v in meta.items()}}
    atomic(path, lambda tmp: save_model(model, tmp, metadata=header))
    return path


def snapshots(folder: Path, run: dict[str, Any]) -> list[tuple[int, Path]]:
    """(step, path) of the snapshots in ``folder`` written by this run's config and seed before its last step."""
    found = []
    for path in sorted(Path(folder).glob("step*.safetensors")) if Path(folder).is_dir() else []:
        match = SNAPSHOT.match(path.name)
        if not match:
            continue
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        step = int(match[1])
        if (meta.get("config_hash"), meta.get("seed")) != (run.get("config_hash"), str(run.get("seed"))):
            print(f"skipping {path}: written by config {meta.get('config_hash')} seed {meta.get('seed')}, "
                  f"the run is config {run.get('config_hash')} seed {run.get('seed')}", file=sys.stderr)
        elif step < int(run.get("steps_done") or 0):
            found.append((step, path))
    return sorted(found)


def load_weights(model: torch.nn.Module, path: Path) -> None:
    """Strict load of a run's weights. ``save_model`` stores a tied tensor once, under one of its names
    (which one depends on the model): the others are filled from it, so any model with tied weights loads."""
    state = load_file(str(path))
    for _, names in _tensor_names(model):
        stored = [n for n in names if n in state]
        for name in names:
            if stored and name not in state:
                state[name] = state[stored[0]]
    model.load_state_dict(state, strict=True)


def skip_reason(run: dict[str, Any]) -> str | None:
    """Why a run has no quantization numbers (None: it has)."""
    if run.get("status") != "completed":
        return f"not quantized: run {run.get('status')}" + (f" ({run['reason']})" if run.get("reason") else "")
    if archs.info(run["build"]).pipeline is not None:
        return "not quantized: a pipeline architecture (its model is not one network of weight matrices)"
    return None


def quantize_run(run_dir: Path, bits: Sequence[int], keep: Sequence[str] = (), snapshot_dir: Path | None = None,
                 data_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """The rows of one run's quantization.csv: its final model (at steps_done) and each valid snapshot."""
    run_dir = Path(run_dir)
    run = json.loads((run_dir / "run.json").read_text())
    identity = {"study": run["study"], "arch": run["arch"], "variant": run.get("variant", BASE_VARIANT),
                "seed": int(run["seed"])}
    reason = skip_reason(run)
    if reason:
        return [{**identity, "note": reason}]
    recipe = Recipe.from_dict(run["recipe"])
    device, dtype = resolve_device(recipe)
    corpus = data.load_corpus(run["data"]["name"], tokens=run["data"]["tokens"], data_dir=data_dir)
    if corpus.sha256 != run["data"]["sha256"]:
        raise ValueError(f"{run_dir}: trained on data sha256 {run['data']['sha256'][:12]}, the file found now "
                         f"({corpus.source}) has {corpus.sha256[:12]}")
    batches = data.fixed_batches(corpus.splits["val"], recipe.eval_batches, recipe.batch_size, recipe.seq_len,
                                 recipe.eval_seed)
    model = archs.build(run["build"], **run["hparams"]).to(device)
    weights = snapshots(snapshot_dir, run) if snapshot_dir else []
    weights.append((int(run["steps_done"]), run_dir / "model.safetensors"))
    rows = []
    for step, path in weights:
        load_weights(model, path)
        note = kept_note(model, keep)
        for row in evaluate_bits(model, batches, bits, keep, device, dtype):
            rows.append({**identity, "step": step, **row, "note": note})
    return rows


def write_table(path: Path, rows: list[dict[str, Any]]) -> None:
    """quantization.csv (harness.contracts.QUANTIZATION_COLUMNS), atomically; losses as exact reprs."""
    def write(tmp):
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=QUANTIZATION_COLUMNS, lineterminator="\n")
            w.writeheader()
            for row in rows:
                w.writerow({k: repr(float(v)) if isinstance(v, float) else v for k, v in row.items()})

    assert QUANTIZATION_COLUMNS[:len(ID_COLUMNS)] == ID_COLUMNS
    atomic(Path(path), write)
