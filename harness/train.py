"""The common training recipe: one (study, arch, seed) run -> metrics.csv, run.json, model.safetensors.

Every architecture of a study trains under this one loop (AdamW, warmup + cosine, gradient
clipping, bf16 autocast on CUDA / fp32 on CPU, evaluation on validation batches shared by every
run), so a difference between architectures is the architecture's. A resume checkpoint (weights,
optimizer, RNG states, metrics so far) is written atomically every ``checkpoint_every`` steps to a
state folder OUTSIDE the run folder, because Snakemake deletes a job's declared outputs before
running it. On CPU, a resumed run's metrics equal an uninterrupted run's, value for value.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import platform
import shutil
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file, save_model

from harness import __version__, archs, data, shape
from harness.files import atomic, write_atomic
from harness.study import config_hash

METRIC_FIELDS = ("step", "split", "metric", "value", "wall_time")


@dataclass(frozen=True)
class Recipe:
    """The study's training recipe; defaults live once, in workflow/schemas/config.schema.yaml."""

    steps: int
    batch_size: int
    seq_len: int
    lr: float
    min_lr: float
    warmup_steps: int
    betas: tuple[float, float]
    weight_decay: float
    grad_clip: float
    precision: str
    compile: bool
    log_every: int
    eval_every: int
    eval_batches: int
    eval_sampling: str
    eval_seed: int
    checkpoint_every: int

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Recipe":
        fields = {f.name for f in dataclasses.fields(cls)}
        if unknown := sorted(set(d) - fields):
            raise ValueError(f"recipe: unknown key(s) {unknown}")
        if missing := sorted(fields - set(d)):
            raise ValueError(f"recipe: missing key(s) {missing}")
        return cls(**{**d, "betas": tuple(d["betas"])})


def lr_at(step: int, r: Recipe) -> float:
    """Linear warmup to lr over warmup_steps, then cosine down to min_lr at the last step."""
    if step < r.warmup_steps:
        return r.lr * (step + 1) / r.warmup_steps
    progress = (step - r.warmup_steps) / max(1, r.steps - r.warmup_steps)
    return r.min_lr + 0.5 * (r.lr - r.min_lr) * (1 + math.cos(math.pi * min(1.0, progress)))


def _write_metrics(path: Path, rows: list[dict]) -> None:
    def write(tmp):
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=METRIC_FIELDS, lineterminator="\n")
            w.writeheader()
            w.writerows(rows)

    atomic(path, write)


def _versions() -> dict[str, str]:
    import numpy
    import safetensors

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "safetensors": safetensors.__version__,
        "harness": __version__,
        "cuda": torch.version.cuda or "",
    }


def resolve_device(recipe: Recipe) -> tuple[torch.device, torch.dtype | None]:
    """CUDA when present; autocast dtype bf16 there under 'auto', none (fp32) on CPU."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if recipe.precision == "bf16" or (recipe.precision == "auto" and device.type == "cuda"):
        return device, torch.bfloat16
    return device, None


def build_model(spec: dict[str, Any], vocab_size: int) -> tuple[torch.nn.Module, dict[str, Any], dict[str, Any]]:
    """Build the run's architecture at the study's shape; returns (model, hparams, shape record)."""
    base = {**spec["model"], "vocab_size": vocab_size, "max_seq_len": spec["recipe"]["seq_len"]}
    hparams = {**base, **spec["hparams"]}
    ref = spec["reference"]
    ref_params = shape.param_count(ref["build"], {**base, **ref["hparams"]})
    info = archs.info(spec["build"])
    mode, tolerance = spec["shape"]["mode"], spec["shape"]["tolerance"]
    if mode == "matched" and spec["arch"] != spec["shape"]["reference"]:
        hparams, n_params = shape.match(spec["build"], hparams, ref_params, tolerance)
    else:
        n_params = shape.param_count(spec["build"], hparams)
    model = info.build(**hparams)
    record = {
        "mode": mode,
        "reference": spec["shape"]["reference"],
        "reference_params": ref_params,
        "deviation": n_params / ref_params - 1,
        "knob": info.match_knob,
        "knob_value": hparams.get(info.match_knob) if info.match_knob else None,
    }
    return model, hparams, record


# -- checkpoint: unique parameters + buffers + AdamW state + RNG states, one atomic safetensors file


def _named_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Parameters (a tied pair once) and buffers by name."""
    named = dict(model.named_parameters())
    named.update(dict(model.named_buffers()))
    return named


def save_checkpoint(path: Path, model, optimizer, gens: dict[str, torch.Generator], meta: dict) -> None:
    tensors = {f"model.{n}": t.detach().cpu().contiguous() for n, t in _named_state(model).items()}
    names = [n for n, _ in model.named_parameters()]  # the optimizer's parameter order
    for index, st in optimizer.state_dict()["state"].items():
        for k, v in st.items():
            tensors[f"optim.{names[index]}.{k}"] = v.detach().cpu().contiguous()
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    for name, g in gens.items():
        tensors[f"rng.{name}"] = g.get_state()
    atomic(path, lambda tmp: save_file(tensors, tmp, metadata={"meta": json.dumps(meta)}))


def checkpoint_meta(path: Path) -> dict:
    """The step, metrics, config hash and seed a checkpoint was written with (no tensors read)."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return json.loads(f.metadata()["meta"])


def load_checkpoint(path: Path, model, optimizer, gens: dict[str, torch.Generator]) -> dict:
    meta = checkpoint_meta(path)
    tensors = load_file(str(path))
    state = _named_state(model)
    with torch.no_grad():
        for n, t in state.items():
            t.copy_(tensors[f"model.{n}"])
    index = {n: i for i, (n, _) in enumerate(model.named_parameters())}
    optim_state: dict[int, dict[str, torch.Tensor]] = {}
    for key, v in tensors.items():
        if key.startswith("optim."):
            name, _, k = key[len("optim."):].rpartition(".")
            optim_state.setdefault(index[name], {})[k] = v
    # load_state_dict places each state tensor where this optimizer (fused or not) expects it
    optimizer.load_state_dict({"state": optim_state, "param_groups": optimizer.state_dict()["param_groups"]})
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    for name, g in gens.items():
        g.set_state(tensors[f"rng.{name}"])
    return meta


def _evaluate(model, batches, device, autocast_dtype) -> float:
    model.eval()
    total = 0.0
    with torch.no_grad(), torch.autocast(device.type, dtype=autocast_dtype or torch.float32,
                                         enabled=autocast_dtype is not None):
        for x, y in batches:
            x, y = x.to(device), y.to(device)
            logits = model(x)
            total += F.cross_entropy(logits.float().flatten(0, 1), y.flatten()).item()
    model.train()
    return total / len(batches)


def write_run_files(out_dir: Path, rows: list[dict], model: torch.nn.Module | None, manifest: dict) -> None:
    """A run's three declared outputs, run.json last: its presence says the other two are whole."""
    _write_metrics(out_dir / "metrics.csv", rows)
    meta = {"status": manifest["status"]}
    if model is not None:
        atomic(out_dir / "model.safetensors", lambda tmp: save_model(model, tmp, metadata=meta))
    else:  # a run that failed before its model existed still leaves every output the DAG expects
        atomic(out_dir / "model.safetensors", lambda tmp: save_file({}, tmp, metadata=meta))
    write_atomic(out_dir / "run.json", json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def manifest_head(spec: dict[str, Any], threads: int) -> dict[str, Any]:
    """The run.json fields every run has from its first moment, whatever happens to it later."""
    return {"arch": spec.get("arch"), "build": spec.get("build"), "seed": spec.get("seed"),
            "study": spec.get("study"), "config_hash": config_hash(spec), "versions": _versions(),
            "threads": threads}


def train_run(spec: dict[str, Any], out_dir: Path, state_dir: Path | None = None, threads: int = 1) -> str:
    """Train one run; always writes metrics.csv, run.json and model.safetensors; returns the status.

    Status is 'completed', 'diverged' (a non-finite loss ended it) or 'failed' (an exception,
    recorded with its reason). Resumes from ``state_dir/checkpoint.safetensors`` when one of the
    same config and seed exists.
    """
    if spec.get("build") == "eam":  # a pipeline over a teacher run, not one network: harness/eam.py
        from harness.eam import run_eam

        return run_eam(spec, out_dir, state_dir, threads, spec.get("teacher_dir"))
    out_dir = Path(out_dir)
    state_dir = Path(state_dir) if state_dir else out_dir.parent / ".state" / out_dir.name
    checkpoint = state_dir / "checkpoint.safetensors"
    torch.set_num_threads(threads)
    t0 = time.time()
    elapsed_before = 0.0
    rows: list[dict] = []
    step = 0
    status, reason = "completed", None
    model = None
    manifest = manifest_head(spec, threads)

    def log(step_: int, split: str, metric: str, value: float) -> None:
        rows.append({"step": step_, "split": split, "metric": metric, "value": repr(float(value)),
                     "wall_time": f"{elapsed_before + time.time() - t0:.3f}"})

    try:
        recipe = Recipe.from_dict(spec["recipe"])
        device, autocast_dtype = resolve_device(recipe)
        corpus = data.load_corpus(spec["data"]["name"], tokens=spec["data"]["tokens"])
        manifest["data"] = {"name": corpus.name, "sha256": corpus.sha256, "tokens": corpus.tokens,
                            "vocab_size": corpus.vocab_size}
        manifest["recipe"] = dataclasses.asdict(recipe)
        manifest["device"] = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.machine()})"
        manifest["dtype"] = str(autocast_dtype or torch.float32).removeprefix("torch.")

        torch.manual_seed(spec["seed"])  # model init and dropout
        model, hparams, shape_record = build_model(spec, corpus.vocab_size)
        model.to(device)
        n_params = shape.count_params(model)
        manifest.update(hparams=hparams, n_params=n_params, shape=shape_record,
                        reconstruction=archs.info(spec["build"]).reconstruction)
        optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, betas=recipe.betas,
                                      weight_decay=recipe.weight_decay, fused=device.type == "cuda")
        forward = torch.compile(model) if recipe.compile else model
        gens = {"train": torch.Generator().manual_seed(spec["seed"]),
                "eval": torch.Generator().manual_seed(recipe.eval_seed + spec["seed"])}
        val = corpus.splits["val"]
        fixed_val = data.fixed_batches(val, recipe.eval_batches, recipe.batch_size, recipe.seq_len, recipe.eval_seed)

        def val_batches():
            if recipe.eval_sampling == "fixed":
                return fixed_val
            return [data.get_batch(val, recipe.batch_size, recipe.seq_len, gens["eval"])
                    for _ in range(recipe.eval_batches)]

        if checkpoint.exists():
            written = checkpoint_meta(checkpoint)
            if (written["config_hash"], written["seed"]) != (manifest["config_hash"], spec["seed"]):
                # a run killed before the config changed: its state cannot continue this run
                print(f"discarding {checkpoint}: written by config {written['config_hash']} seed {written['seed']}, "
                      f"this run is config {manifest['config_hash']} seed {spec['seed']}", file=sys.stderr)
                checkpoint.unlink()
        if checkpoint.exists():
            meta = load_checkpoint(checkpoint, model, optimizer, gens)
            step, rows, elapsed_before = meta["step"], meta["rows"], meta["elapsed"]
            print(f"resumed from {checkpoint} at step {step}", file=sys.stderr)
        else:
            log(0, "val", "loss", _evaluate(forward, val_batches(), device, autocast_dtype))

        model.train()
        window_loss, window_gn = [], []
        while step < recipe.steps:
            if hasattr(model, "on_train_step"):
                model.on_train_step(step)
            lr = lr_at(step, recipe)
            for group in optimizer.param_groups:
                group["lr"] = lr
            x, y = data.get_batch(corpus.splits["train"], recipe.batch_size, recipe.seq_len, gens["train"])
            x, y = x.to(device), y.to(device)
            with torch.autocast(device.type, dtype=autocast_dtype or torch.float32,
                                enabled=autocast_dtype is not None):
                logits = forward(x)
            loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
            loss_value = loss.item()
            if not math.isfinite(loss_value):
                step += 1
                log(step, "train", "loss", loss_value)
                status, reason = "diverged", f"non-finite training loss at step {step}"
                break
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            max_norm = recipe.grad_clip if recipe.grad_clip > 0 else float("inf")
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm).item()
            optimizer.step()
            step += 1
            window_loss.append(loss_value)
            window_gn.append(grad_norm)
            if step % recipe.log_every == 0 or step == recipe.steps:
                log(step, "train", "loss", sum(window_loss) / len(window_loss))
                log(step, "train", "lr", lr)
                log(step, "train", "grad_norm", sum(window_gn) / len(window_gn))
                log(step, "train", "grad_norm_max", max(window_gn))
                window_loss, window_gn = [], []
            if step % recipe.eval_every == 0 or step == recipe.steps:
                val_loss = _evaluate(forward, val_batches(), device, autocast_dtype)
                log(step, "val", "loss", val_loss)
                if not math.isfinite(val_loss):
                    status, reason = "diverged", f"non-finite validation loss at step {step}"
                    break
            if step % recipe.checkpoint_every == 0 and step < recipe.steps:
                save_checkpoint(checkpoint, model, optimizer, gens, {
                    "step": step, "rows": rows, "seed": spec["seed"],
                    "config_hash": manifest["config_hash"], "elapsed": elapsed_before + time.time() - t0})
        if status == "completed" and "test" in corpus.splits:
            test = data.fixed_batches(corpus.splits["test"], recipe.eval_batches, recipe.batch_size,
                                      recipe.seq_len, recipe.eval_seed + 1)
            log(step, "test", "loss", _evaluate(forward, test, device, autocast_dtype))
    except Exception as e:  # recorded, not hidden: the DAG and the report go on and show it
        traceback.print_exc()
        status, reason = "failed", f"{type(e).__name__}: {e}"

    manifest.update(status=status, reason=reason, steps_done=step,
                    wall_time_s=round(elapsed_before + time.time() - t0, 3))
    write_run_files(out_dir, rows, model, manifest)
    if status != "failed" and state_dir.exists():
        shutil.rmtree(state_dir)  # a finished run needs no resume state; a failed one may be retried
    return status
