"""Layers that more than one architecture file uses, so that no model borrows from another's file."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def rms_norm(x: torch.Tensor) -> torch.Tensor:
    """Weightless RMSNorm over the last dim (the parameter-golf entries' norms carry no parameters)."""
    return F.rms_norm(x, (x.size(-1),))
