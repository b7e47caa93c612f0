"""Resume checkpoints: unique parameters + buffers + optimizer state + RNG states, one atomic
safetensors file (never pickle), with the step, the metrics so far and the run's identity as metadata.

On CPU a run resumed from its checkpoint logs the same metrics as an uninterrupted one, value for value.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from harness.files import atomic


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
