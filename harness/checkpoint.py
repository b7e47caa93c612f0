"""Resume checkpoints: unique parameters + buffers + optimizer state + RNG states, one atomic
safetensors file (never pickle), with the step, the metrics so far and the run's identity as metadata.

A state folder keeps two slots, the latest checkpoint and the one before it, so a checkpoint that
cannot be read (a truncated file, garbage bytes, tensors that do not fit the model) never fails a run
for good: ``resume`` moves it aside (``*.corrupt``), says so, and falls back to the other slot or to
a fresh start. On CPU a run resumed from its checkpoint logs the same metrics as an uninterrupted one,
value for value.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Callable

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from harness.files import atomic

SLOTS = ("checkpoint.safetensors", "checkpoint.previous.safetensors")  # newest first


def _named_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Parameters (a tied pair once) and buffers by name."""
    named = dict(model.named_parameters())
    named.update(dict(model.named_buffers()))
    return named


def save_checkpoint(state_dir: Path, model, optimizer, gens: dict[str, torch.Generator], meta: dict) -> None:
    """Write the latest slot; the checkpoint it replaces becomes the previous slot once the new one is whole."""
    latest, previous = (Path(state_dir) / slot for slot in SLOTS)
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

    def write(tmp: str) -> None:
        save_file(tensors, tmp, metadata={"meta": json.dumps(meta)})
        if latest.exists():
            os.replace(latest, previous)

    atomic(latest, write)


def checkpoint_meta(path: Path) -> dict:
    """The step, metrics, config hash and seed a checkpoint was written with (no tensors read)."""
    with safe_open(str(path), "pt") as f:
        return json.loads(f.metadata()["meta"])


def load_checkpoint(path: Path, model, optimizer, gens: dict[str, torch.Generator]) -> dict:
    """Restore model, optimizer and RNG states from ``path``; returns its metadata.

    Every tensor is checked (present, of the model's shape) before anything changes, so a checkpoint
    that does not fit raises and leaves the model, optimizer and generators as they were.
    """
    meta = checkpoint_meta(path)
    tensors = load_file(str(path))

    def tensor(key: str, like: torch.Tensor | None = None) -> torch.Tensor:
        if key not in tensors:
            raise ValueError(f"no tensor {key!r}")
        if like is not None and tensors[key].shape != like.shape:
            raise ValueError(f"tensor {key!r} has shape {tuple(tensors[key].shape)}, the model's is {tuple(like.shape)}")
        return tensors[key]

    model_state = {n: tensor(f"model.{n}", t) for n, t in _named_state(model).items()}
    params = dict(model.named_parameters())
    index = {n: i for i, n in enumerate(params)}
    optim_state: dict[int, dict[str, torch.Tensor]] = {}
    for key in tensors:
        if key.startswith("optim."):
            name, _, k = key[len("optim."):].rpartition(".")
            if name not in params:
                raise ValueError(f"optimizer state {key!r} of a parameter the model does not have")
            per_element = tensors[key].dim() > 0  # moments have the parameter's shape; a step count is a scalar
            optim_state.setdefault(index[name], {})[k] = tensor(key, params[name] if per_element else None)
    rngs = {name: tensor(f"rng.{name}") for name in ("torch", *gens)}

    with torch.no_grad():
        for n, t in _named_state(model).items():
            t.copy_(model_state[n])
    # load_state_dict places each state tensor where this optimizer (fused or not) expects it
    optimizer.load_state_dict({"state": optim_state, "param_groups": optimizer.state_dict()["param_groups"]})
    torch.set_rng_state(rngs["torch"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    for name, g in gens.items():
        g.set_state(rngs[name])
    return meta


def resume(state_dir: Path, model, optimizer, gens: dict[str, torch.Generator], identity: dict,
           warn: Callable[[str], None]) -> dict | None:
    """Load the newest checkpoint in ``state_dir`` of this run (``identity``: config hash and seed).

    A checkpoint of another identity is deleted (its state cannot continue this run); one that does
    not load is renamed ``*.corrupt`` and reported through ``warn``; the next slot is tried. Returns
    the loaded checkpoint's metadata, or None when the run has to start over.
    """
    for slot in SLOTS:
        path = Path(state_dir) / slot
        if not path.exists():
            continue
        try:
            meta = checkpoint_meta(path)
            written = {key: meta.get(key) for key in identity}
            if written != identity:  # a run killed before the config changed
                print(f"discarding {path}: written by {written}, this run is {identity}", file=sys.stderr)
                path.unlink()
                continue
            meta = load_checkpoint(path, model, optimizer, gens)
        except Exception as e:  # any reason a file does not load: it must never stop the run for good
            aside = path.with_name(path.name + ".corrupt")
            os.replace(path, aside)
            warn(f"checkpoint {path} does not load ({type(e).__name__}: {e}); moved to {aside}")
            continue
        print(f"resumed from {path} at step {meta['step']}", file=sys.stderr)
        return meta
    return None
