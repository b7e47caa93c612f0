"""Parameter counts and budget matching.

A comparison of architectures means something only at a stated budget. Two modes:
``as_published`` keeps every shape and reports each count's deviation from a reference
architecture; ``matched`` turns each other architecture's integer knob (its ``match_knob``,
default ``ffn_hidden``) until its count lies within a tolerance of the reference's.
Models are built on the meta device, so counting a 70M model allocates nothing (``device="cpu"`` counts
small models faster: the meta device's Python kernels import torch._dynamo, about a second per process).
"""

from __future__ import annotations

import dataclasses
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
    """One run's shape, as its run.json records it."""

    hparams: dict[str, Any]  # final hyperparameters (the knob filled in when solved)
    n_params: int
    reference_params: int | None  # None when no reference was named (as_published only)
    mode: str
    reference: str | None
    knob: str | None  # the architecture's width knob (None: it has none)
    knob_value: int | None  # its value (None: left at the architecture's default)

    @property
    def deviation(self) -> float | None:
        return None if self.reference_params is None else self.n_params / self.reference_params - 1

    def record(self) -> dict[str, Any]:
        return {"mode": self.mode, "reference": self.reference, "reference_params": self.reference_params,
                "deviation": self.deviation, "knob": self.knob, "knob_value": self.knob_value}


def count_params(model: nn.Module) -> int:
    """Unique learnable parameters: a tied pair counts once, buffers not at all."""
    return sum(p.numel() for p in model.parameters())


def param_count(arch: str, hparams: dict[str, Any], device: str = "meta") -> int:
    """Parameters of ``arch`` built with ``hparams``, counted on ``device`` (default meta: nothing allocated)."""
    with torch.device(device):
        return count_params(build(arch, **hparams))


def match(arch: str, hparams: dict[str, Any], target: int, tolerance: float = 0.01,
          device: str = "meta") -> tuple[dict[str, Any], int]:
    """Set ``arch``'s knob so its count is as close as possible to ``target``; returns (hparams, count).

    Binary search: counts grow monotonically with the knob. Raises ValueError when the arch has no
    knob, does not accept it, or no knob value lands within ``tolerance`` (relative) of target.
    """
    knob = info(arch).match_knob
    if knob is None:
        raise ValueError(f"{arch}: has no match knob, so it cannot be shape-matched; use mode as_published")
    param_count(arch, hparams, device)  # the other hyperparameters raise their own errors first

    @functools.cache
    def count(value: int) -> int:
        return param_count(arch, {**hparams, knob: value}, device)

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


def shape_of(arch: str, build_name: str, hparams: dict[str, Any], mode: str, reference: str | None,
             reference_params: int | None, tolerance: float = 0.01, device: str = "meta") -> Shape:
    """The one matching rule: ``matched`` solves every architecture but the reference to within
    ``tolerance`` of ``reference_params``; ``as_published`` keeps the shape and reports its deviation."""
    if mode not in MODES:
        raise ValueError(f"shape mode {mode!r} is unknown: choose one of {list(MODES)}")
    knob = info(build_name).match_knob
    if mode == "matched" and arch != reference:
        if reference_params is None:
            raise ValueError("shape mode 'matched' needs a reference architecture")
        hparams, n = match(build_name, hparams, reference_params, tolerance, device)
    else:
        n = param_count(build_name, hparams, device)
    return Shape(dict(hparams), n, reference_params, mode, reference, knob, hparams.get(knob) if knob else None)


def _model_base(spec: dict[str, Any], vocab_size: int) -> dict[str, Any]:
    """The study's common hyperparameters every architecture of a run spec receives."""
    return {**spec["model"], "vocab_size": vocab_size, "max_seq_len": spec["recipe"]["seq_len"]}


def reference_params(spec: dict[str, Any], vocab_size: int, device: str = "meta") -> int:
    """The parameter budget of a run spec: its study's reference architecture at the study's shape."""
    ref = spec["reference"]
    return param_count(ref["build"], {**_model_base(spec, vocab_size), **ref["hparams"]}, device)


def for_spec(spec: dict[str, Any], vocab_size: int, device: str = "meta") -> Shape:
    """The shape one run of the common loop trains at (harness.study.run_spec's fields). A variant's
    stabiliser switches (spec ``switches``) join the hyperparameters after matching, so every variant of
    an architecture has the same width and a switch adds only its own parameters."""
    solved = shape_of(spec["arch"], spec["build"], {**_model_base(spec, vocab_size), **spec["hparams"]},
                      spec["shape"]["mode"], spec["shape"]["reference"], reference_params(spec, vocab_size, device),
                      spec["shape"]["tolerance"], device)
    if not spec.get("switches"):
        return solved
    hparams = {**solved.hparams, **spec["switches"]}
    return dataclasses.replace(solved, hparams=hparams, n_params=param_count(spec["build"], hparams, device))


def as_built(model: nn.Module, spec: dict[str, Any], vocab_size: int, hparams: dict[str, Any]) -> Shape:
    """The shape of a model a pipeline built itself (no width knob): reported against the budget."""
    return Shape(dict(hparams), count_params(model), reference_params(spec, vocab_size), "as_published",
                 spec["shape"]["reference"], None, None)


def plan(
    archs: dict[str, dict[str, Any]], mode: str, reference: str | None, tolerance: float = 0.01
) -> dict[str, Shape]:
    """Shapes for a study: ``archs`` maps an arch (registry name or dotted path) to its hparams."""
    if mode not in MODES:
        raise ValueError(f"shape mode {mode!r} is unknown: choose one of {list(MODES)}")
    if reference is not None and reference not in archs:
        raise ValueError(f"reference {reference!r} is not one of the study's architectures {sorted(archs)}")
    ref_params = None if reference is None else param_count(reference, archs[reference])
    return {arch: shape_of(arch, arch, hparams, mode, reference, ref_params, tolerance)
            for arch, hparams in archs.items()}
