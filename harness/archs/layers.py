"""Layers that more than one architecture file uses, so that no model borrows from another's file.

Also the diagnostics protocol the training loop reads (contracts.METRIC_COLUMNS, DIAGNOSTICS): a module
may have an attribute ``recording`` (False by default: a recorded quantity costs nothing otherwise)
and a method ``diagnostics() -> dict[str, float]`` returning magnitudes from its most recent recorded
forward or from its parameters. ``recording(model)`` turns recording on around a forward, and
``collect(model)`` gathers every module's diagnostics as ``{f"{key}/{module_path}": value}``.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F


def rms_norm(x: torch.Tensor) -> torch.Tensor:
    """Weightless RMSNorm over the last dim (the parameter-golf entries' norms carry no parameters)."""
    return F.rms_norm(x, (x.size(-1),))


class QKNorm(nn.Module):
    """The ``qk_norm`` stabiliser (Dehghani et al. 2023; Wortsman et al. 2023): queries or keys
    normalised per head over head_dim before the dot product, with a learnable gain (init 1).

    RMSNorm rather than LayerNorm: after it every head vector has norm sqrt(head_dim) (up to eps), so
    a logit q.k / sqrt(head_dim) is at most sqrt(head_dim) * max|g_q| * max|g_k| whatever the weights
    do, with no mean or bias to move that bound; it is also the norm trn_hybrid already applies
    weightless, so there the switch adds only the gains. One gain vector, shared by all heads.
    """

    def __init__(self, head_dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.size(-1),), self.weight.to(x.dtype))


class RecordsLogits:
    """Mixin for an attention module: with ``recording`` on, its forward calls ``record(q, k)`` and
    ``diagnostics()`` reports ``attn_logit_max``, the largest pre-softmax logit of that forward."""

    recording = False
    max_logit: float | None = None

    def record(self, q: torch.Tensor, k: torch.Tensor) -> None:
        if self.recording:
            self.max_logit = causal_logit_max(q, k)

    def diagnostics(self) -> dict[str, float]:
        return {} if self.max_logit is None else {"attn_logit_max": self.max_logit}


@torch.no_grad()
def causal_logit_max(q: torch.Tensor, k: torch.Tensor) -> float:
    """max over heads and causal pairs (key position <= query position) of q.k / sqrt(hd), the logit
    softmax sees at SDPA's default scale (every attention path here uses it). q [B, H, T, hd];
    k [B, H_kv, T, hd] with H_kv dividing H (query head h reads key head h // (H / H_kv), as SDPA's
    enable_gqa). In float32, one sequence at a time (also under autocast), so recording holds H T^2
    scores, not B H T^2."""
    H, T, hd = q.shape[1:]
    scale = hd**-0.5
    k = k.repeat_interleave(H // k.size(1), dim=1)
    future = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1)
    with torch.autocast(device_type=q.device.type, enabled=False):
        maxima = [(qb.float() @ kb.float().transpose(-1, -2) * scale).masked_fill(future, float("-inf")).amax()
                  for qb, kb in zip(q, k)]
    return torch.stack(maxima).max().item()


@contextmanager
def recording(model: nn.Module) -> Iterator[nn.Module]:
    """Turn ``recording`` on in every submodule that has the attribute; restore it afterwards, also on error."""
    modules = [m for m in model.modules() if hasattr(m, "recording")]
    before = [m.recording for m in modules]
    try:
        for m in modules:
            m.recording = True
        yield model
    finally:
        for m, was in zip(modules, before):
            m.recording = was


def collect(model: nn.Module) -> dict[str, float]:
    """Every submodule's ``diagnostics()`` as ``{f"{key}/{module_path}": value}`` (the root's: ``key``)."""
    found = {}
    for path, module in model.named_modules():
        diagnostics = getattr(module, "diagnostics", None)
        if callable(diagnostics):
            found |= {f"{key}/{path}" if path else key: float(v) for key, v in diagnostics().items()}
    return found
