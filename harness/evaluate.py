"""Any architecture's published or trained weights on a dataset's test split: loss, perplexity, bits.

A model folder holds config.json (the builder's hyperparameters, as the published model cards and
this harness's run.json "hparams" write them; an optional "arch" key names the architecture) and
model.safetensors (published tensor names, loaded strictly). The batches are the harness's fixed
evaluation batches of the split, so two checkpoints evaluated with the same options see the same tokens.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from harness import archs, data
from harness.recipe import evaluate
from harness.text import UNITS


@dataclass(frozen=True)
class Evaluation:
    arch: str
    split: str
    tokens: int  # tokens scored
    loss: float  # mean cross-entropy, nats per token

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss) if self.loss < 709 else math.inf

    @property
    def bits_per_token(self) -> float:
        return self.loss / math.log(2)


def load_weights(arch: str | None, config_path: Path, weights_path: Path) -> tuple[str, torch.nn.Module]:
    """Build the architecture from config.json and load model.safetensors into it (strict)."""
    for path in (config_path, weights_path):
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: missing (a model folder holds config.json and model.safetensors)")
    config = json.loads(Path(config_path).read_text())
    named = config.pop("arch", None)
    arch = arch or named
    if arch is None:
        raise ValueError(f"{config_path}: no 'arch' key; name the architecture with --arch "
                         f"(one of {archs.available()} or a dotted path)")
    model = archs.build(arch, **config)
    try:  # strict: the grid's tied models fill in the tied name a saved file leaves out
        model.load_state_dict(load_file(str(weights_path)), strict=True)
    except RuntimeError as e:
        raise ValueError(f"{weights_path} does not fit {arch} built from {config_path}: {e}") from e
    return arch, model.eval()


def evaluate_weights(model: torch.nn.Module, arch: str, dataset: str, tokens: str, split: str = "test",
                     n_batches: int = 16, batch_size: int = 8, seq_len: int = 256, seed: int = 1) -> Evaluation:
    """The model's loss on the split's fixed batches (seed 1 = the trainer's test batches)."""
    corpus = data.load_corpus(dataset, tokens=tokens)
    if split not in corpus.splits:
        raise ValueError(f"dataset {dataset!r} has no {split!r} split: it has {sorted(corpus.splits)}")
    batches = data.fixed_batches(corpus.splits[split], n_batches, batch_size, seq_len, seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    loss = evaluate(model.to(device), batches, device, None)  # fp32: the weights as published
    return Evaluation(arch, split, n_batches * batch_size * seq_len, loss)


def describe(result: Evaluation, token_kind: str) -> str:
    unit = UNITS.get(token_kind, "token")
    return (f"{result.arch} on the {result.split} split ({result.tokens:,} {unit}s): loss {result.loss:.4f} nats per "
            f"{unit}, perplexity {result.perplexity:.3f}, {result.bits_per_token:.4f} bits per {unit}")
