"""Training diagnostics at log steps: what a collapse leaves behind before the loss shows it.

At a log step the trainer measures that one step through a ``Probe``: the output logits (mean log Z,
largest |logit|: PaLM / OLMo output-logit divergence), the token-embedding output's spread, the
pre-clip gradient RMS and the update-to-parameter RMS ratio per parameter group (Molybog et al. 2023
on Adam update instability), and whatever the architecture's modules report through
``harness.archs.layers.collect`` (attention-logit maxima, Dehghani et al. 2023; their own state
magnitudes). Names and units: harness.contracts.METRIC_COLUMNS. Nothing is computed at other steps.
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterator

import torch
import torch.nn as nn

from harness.archs.layers import collect, recording
from harness.contracts import PARAM_GROUPS


def param_groups(model: nn.Module, vocab_size: int) -> dict[str, list[torch.Tensor]]:
    """The model's parameters by group (PARAM_GROUPS), by rule, for any architecture, the first rule
    that holds: embed = an nn.Embedding table, or another 2-D parameter outside any nn.Linear with
    vocab_size rows (a table indexed by token); norm = a parameter of a module whose class name contains
    'Norm'; ffn = under a module path containing 'ffn' or 'mlp'; head = the parameters of an nn.Linear
    with vocab_size outputs (a tied head is the embedding, counted there); mixer = the rest (attention,
    the sequence mixers, their projections). Groups with no parameters are left out."""
    embeds = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    in_linear = {id(p) for m in model.modules() if isinstance(m, nn.Linear) for p in m.parameters()}
    heads = {id(p) for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == vocab_size
             for p in m.parameters()}
    norm_params = {id(p) for m in model.modules() if "Norm" in type(m).__name__ for p in m.parameters()}
    groups: dict[str, list[torch.Tensor]] = {g: [] for g in PARAM_GROUPS}
    for name, p in model.named_parameters():  # a tied parameter is listed once
        path = name.lower().split(".")[:-1]
        if id(p) in embeds or (p.ndim == 2 and p.shape[0] == vocab_size and id(p) not in in_linear):
            group = "embed"
        elif id(p) in norm_params:
            group = "norm"
        elif any("ffn" in part or "mlp" in part for part in path):
            group = "ffn"
        elif id(p) in heads:
            group = "head"
        else:
            group = "mixer"
        groups[group].append(p)
    return {g: ps for g, ps in groups.items() if ps}


def _rms(tensors: list[torch.Tensor]) -> float:
    total = sum(float(t.float().square().sum()) for t in tensors)
    count = sum(t.numel() for t in tensors)
    return math.sqrt(total / count) if count else math.nan


class Probe:
    """Measures one training step of ``model``: wrap the step in ``with probe.step():``, then read
    ``probe.metrics(grad_norm, grad_clip)``. The token embedding is the nn.Embedding with
    ``vocab_size`` rows (the first, if several)."""

    def __init__(self, model: nn.Module, vocab_size: int):
        self.model = model
        self.groups = param_groups(model, vocab_size)
        self.token_embedding = next((m for m in model.modules()
                                     if isinstance(m, nn.Embedding) and m.num_embeddings == vocab_size), None)
        self.values: dict[str, float] = {}
        self._before: dict[str, list[torch.Tensor]] = {}

    @contextlib.contextmanager
    def step(self) -> Iterator[None]:
        """Record the forward pass(es) and the update made inside the block."""
        self.values = {}
        self._before = {g: [p.detach().clone() for p in ps] for g, ps in self.groups.items()}

        def on_logits(module, args, output):
            logits = output.detach().float()
            self.values["logz_mean"] = float(torch.logsumexp(logits, dim=-1).mean())
            self.values["logit_abs_max"] = float(logits.abs().max())

        def on_embedding(module, args, output):
            self.values["embed_std"] = float(output.detach().float().std())

        hooks = [self.model.register_forward_hook(on_logits)]
        if self.token_embedding is not None:
            hooks.append(self.token_embedding.register_forward_hook(on_embedding))
        try:
            with recording(self.model):
                yield
            self.values.update(collect(self.model))
        finally:
            for hook in hooks:
                hook.remove()

    def metrics(self, grad_norm: float, grad_clip: float) -> dict[str, float]:
        """The step's diagnostics by metric name. Gradients are read after the step, clipped; the clip
        factor (torch's max_norm / (norm + 1e-6), at most 1) is divided out to give the pre-clip RMS."""
        values = dict(self.values)
        clip_factor = min(1.0, grad_clip / (grad_norm + 1e-6)) if grad_clip > 0 and math.isfinite(grad_norm) else 1.0
        for group, params in self.groups.items():
            grads = [p.grad for p in params if p.grad is not None]
            if grads:
                values[f"grad_rms/{group}"] = _rms(grads) / clip_factor
            before = self._before[group]
            change = [p.detach() - b for p, b in zip(params, before)]
            scale = _rms(before)
            values[f"update_ratio/{group}"] = _rms(change) / scale if scale > 0 else math.nan
        return values
