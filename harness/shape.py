"""Parameter counts and budget matching.

A comparison of architectures means something only at a stated budget. Two modes:
``as_published`` keeps every shape and reports each count's deviation from a reference
architecture; ``matched`` turns each other architecture's integer knob (its ``match_knob``,
default ``ffn_hidden``) until its count lies within a tolerance of the reference's.
Models are built on the meta device, so counting a 70M model allocates nothing.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from harness.archs import build, info

MODES = ("as_published", "matched")
_KNOB_CEILING = 1 << 31  # a knob this wide means the target is out of reach, not a real model


@dataclass(frozen=True)
class Shape:
    hparams: dict[str, Any]  # final hyperparameters (the knob filled in when solved)
    n_params: int
    reference_params: int | None  # None when no reference was named (as_published only)
    deviation: float | None  # n_params / reference_params - 1
    knob: str | None  # the knob that was solved, None when the shape was kept
    knob_value: int | None


def count_params(model: nn.Module) -> int:
    """Unique learnable parameters: a tied pair counts once, buffers not at all."""
    return sum(p.numel() for p in model.parameters())


def param_count(arch: str, hparams: dict[str, Any]) -> int:
    """Parameters of ``arch`` built with ``hparams``, counted on the meta device."""
    with torch.device("meta"):
        return count_params(build(arch, **hparams))


def match(arch: str, hparams: dict[str, Any], target: int, tolerance: float = 0.01) -> tuple[dict[str, Any], int]:
    """Set ``arch``'s knob so its count is as close as possible to ``target``; returns (hparams, count).

    Binary search: counts grow monotonically with the knob. Raises ValueError when the arch has no
    knob, does not accept it, or no knob value lands within ``tolerance`` (relative) of target.
    """
    knob = info(arch).match_knob
    if knob is None:
        raise ValueError(f"{arch}: has no match knob, so it cannot be shape-matched; use mode as_published")
    param_count(arch, hparams)  # the other hyperparameters raise their own errors first

    @functools.cache
    def count(value: int) -> int:
        return param_count(arch, {**hparams, knob: value})

    try:
        count(1)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{arch}: does not accept its match knob {knob!r}: {e}") from e

    lo = hi = 1  # bracket the target: count(lo) < target <= count(hi), unless count(1) >= target
    while count(hi) < target:
        lo, hi = hi, hi * 2
        if hi > _KNOB_CEILING:
            raise ValueError(f"{arch}: {knob} up to {_KNOB_CEILING:,} stays below the target {target:,} parameters")
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if count(mid) < target else (lo, mid)
    value = min((lo, hi), key=lambda v: abs(count(v) - target))
    if abs(count(value) / target - 1) > tolerance:
        raise ValueError(
            f"{arch}: no {knob} lands within {tolerance:.3%} of {target:,} parameters: the nearest are "
            f"{knob}={lo} -> {count(lo):,} and {knob}={hi} -> {count(hi):,}; achievable counts start at "
            f"{count(1):,} ({knob}=1) and step by about {count(lo + 1) - count(lo):,}"
        )
    return {**hparams, knob: value}, count(value)


def plan(
    archs: dict[str, dict[str, Any]], mode: str, reference: str | None, tolerance: float = 0.01
) -> dict[str, Shape]:
    """Shapes for a study: ``archs`` maps an arch (registry name or dotted path) to its hparams.

    ``as_published`` keeps every shape (``reference`` may be None: no deviations then);
    ``matched`` solves each non-reference arch's knob to within ``tolerance`` of the reference's count.
    """
    if mode not in MODES:
        raise ValueError(f"shape mode {mode!r} is unknown: choose one of {list(MODES)}")
    if reference is None and mode == "matched":
        raise ValueError("shape mode 'matched' needs a reference architecture")
    if reference is not None and reference not in archs:
        raise ValueError(f"reference {reference!r} is not one of the study's architectures {sorted(archs)}")

    ref_params = None if reference is None else param_count(reference, archs[reference])
    shapes = {}
    for arch, hparams in archs.items():
        knob, knob_value = None, None
        if mode == "matched" and arch != reference:
            hparams, n = match(arch, hparams, ref_params, tolerance)
            knob = info(arch).match_knob
            knob_value = hparams[knob]
        else:
            n = param_count(arch, hparams)
        deviation = None if ref_params is None else n / ref_params - 1
        shapes[arch] = Shape(dict(hparams), n, ref_params, deviation, knob, knob_value)
    return shapes
