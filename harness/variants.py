"""Variant names: a study's sweep values -> the readable folder level of its runs, defined once.

A study's ``sweep`` maps recipe keys and stabiliser switches to lists of values; every combination is
a variant (harness.study trains each architecture under each). A model switch (MODEL_SWITCHES) is scoped
to the architectures that declare it: the others train only its off value (``arch_values``), so under a
sweep ``qk_norm: [false, true]`` memnls runs the ``qk_norm=off`` variants alone, under the same names as
the transformer's off variants, and is compared with them like with like. Its name, ``lr=0.01,clip=0``, is the
run folder level, the ``variant`` column of every table, and what the report prints; the same values
read back from a CSV (numpy numbers and bools, "True"/"False") give the same name. No torch, no pandas.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from harness.contracts import BASE_VARIANT

MODEL_SWITCHES = ("qk_norm",)
"""Stabiliser switches that change the model: hyperparameters the architectures that can honour them
declare in their module's SWITCHES."""
STABILISERS = ("qk_norm", "z_loss")
"""The stabiliser switches whose on/off contrast the ablation table reports (z_loss, which changes only
the loss, is a recipe key every architecture honours)."""
SWITCH_OFF = {"qk_norm": False, "z_loss": 0}
"""The value that leaves each stabiliser off: the published models and recipes."""
SHORT_NAMES = {"grad_clip": "clip", "warmup_steps": "warmup", "precision": "prec"}


def value_text(value: Any) -> str:
    if isinstance(value, str):
        return {"true": "on", "false": "off"}.get(value.strip().lower(), value)
    if isinstance(value, (bool, np.bool_)):  # numpy's bool is no int subclass
        return "on" if value else "off"
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        return format(float(value), "g")
    return str(value)


def variant_name(values: dict[str, Any]) -> str:
    """{lr: 0.01, grad_clip: 0} -> 'lr=0.01,clip=0': keys in the given (the sweep's) order, a few long
    ones shortened, bools on/off, floats as format(v, 'g'); {} -> BASE_VARIANT."""
    return ",".join(f"{SHORT_NAMES.get(k, k)}={value_text(v)}" for k, v in values.items()) or BASE_VARIANT


def setting_name(values: dict[str, Any]) -> str:
    """The name of a variant without its lr: what an lr sweep's curves are drawn per."""
    return variant_name({k: v for k, v in values.items() if k != "lr"})


def variants(sweep: dict[str, list] | None) -> dict[str, dict[str, Any]]:
    """Every combination of a sweep's values, by variant name, in the order the values are listed
    (the last key varies fastest); {BASE_VARIANT: {}} without a sweep."""
    combos: list[dict[str, Any]] = [{}]
    for key, values in (sweep or {}).items():
        combos = [{**c, key: v} for c in combos for v in values]
    return {variant_name(c): c for c in combos}


def variant_of(study: dict, values: dict[str, Any]) -> str | None:
    """The name of the study's variant trained with exactly ``values``, whatever their key order (a study
    read back from sorted JSON keeps its variants' names but not its sweep's order); None where the
    sweep has no such variant, BASE_VARIANT for {} in a study without a sweep."""
    def texts(v: dict[str, Any]) -> dict[str, str]:
        return {k: value_text(x) for k, x in v.items()}

    found = (study.get("variants") or {BASE_VARIANT: {}}).items()
    return next((name for name, v in found if texts(v) == texts(values)), None)


def own_values(study: dict) -> dict[str, Any]:
    """The values of the study's own recipe (every stabiliser off) for each of its sweep's keys: the
    variant of a sweep that trains as the study's recipe says."""
    own = {**SWITCH_OFF, **study.get("recipe", {})}
    return {k: own.get(k) for k in study.get("sweep") or {}}


def arch_values(values: dict[str, Any], honoured: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """The values of a sweep combination an architecture trains under: a model switch (MODEL_SWITCHES) it
    does not declare (``honoured``: its module's SWITCHES) at its off value, everything else as given. Its
    variant is ``variant_name`` of these: the off variant of the switch, never a copy of it under the on
    value's name."""
    return {k: SWITCH_OFF[k] if k in MODEL_SWITCHES and k not in honoured else v for k, v in values.items()}
