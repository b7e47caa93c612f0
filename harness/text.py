"""Numbers as the tables and sentences show them, one definition each. No torch, no pandas here."""

from __future__ import annotations

import math
from typing import Any, Iterable

UNITS = {"bytes": "byte", "chars": "character"}
"""What one token is, by the study's token kind (perplexity and bits are per this unit)."""


def missing(x: Any) -> bool:
    """None, NaN, pandas' NA or an empty string: a cell with nothing to show."""
    return x is None or (isinstance(x, float) and math.isnan(x)) or str(x) == "<NA>" or (isinstance(x, str) and not x)


def num(x: Any, digits: int = 2) -> str:
    """A number with thousands separators; infinities as symbols; missing as empty."""
    if missing(x):
        return ""
    x = float(x)
    if math.isinf(x):
        return "∞" if x > 0 else "-∞"
    return f"{x:,.{digits}f}"


def step(x: Any) -> str:
    """A step or count as an integer with separators; missing or non-finite as empty."""
    return "" if missing(x) or not math.isfinite(float(x)) else f"{int(x):,}"


def plain(x: Any) -> str:
    """A hyperparameter as written: 96.0 read back from a CSV is 96."""
    if missing(x):
        return ""
    return f"{int(x):,}" if float(x).is_integer() else f"{float(x):g}"


SCALE_SUFFIXES = {"k": 1e3, "M": 1e6, "B": 1e9}


def parse_scale(text: str) -> float:
    """A parameter count as published ("70M", "14.8M", "125k") -> the number."""
    number, suffix = str(text)[:-1], str(text)[-1:]
    try:
        return float(number) * SCALE_SUFFIXES[suffix]
    except (KeyError, ValueError):
        raise ValueError(f"scale {text!r} is not a parameter count like 70M, 14.8M or 125k") from None


def scale_text(count: float) -> str:
    """A parameter count as a scale is written: 1.0M, 70M, 125k."""
    for suffix, factor in sorted(SCALE_SUFFIXES.items(), key=lambda kv: -kv[1]):
        if count >= factor:
            value = count / factor
            return f"{value:.1f}{suffix}" if value < 10 else f"{value:.3g}{suffix}"
    return f"{count:.0f}"


def perplexity(loss: Any) -> float:
    """Perplexity of a loss in nats: inf for an infinite or overflowing one, NaN for a missing one."""
    if missing(loss):
        return math.nan
    loss = float(loss)
    return math.nan if math.isnan(loss) else math.exp(loss) if loss < 709 else math.inf


def bits(ppl: float) -> float:
    """Bits per token of a perplexity."""
    return math.log2(ppl) if ppl > 0 and math.isfinite(ppl) else math.nan


def spread(values: Iterable[float], digits: int = 2) -> str:
    """median (range, n) of per-seed values: the honest summary of a handful of seeds."""
    values = sorted(float(v) for v in values if not missing(v))
    if not values:
        return "no value"
    if len(values) == 1:
        return f"{num(values[0], digits)} (1 seed)"
    n = len(values)
    median = values[n // 2] if n % 2 else (values[n // 2 - 1] + values[n // 2]) / 2
    return f"{num(median, digits)} (range {num(values[0], digits)}–{num(values[-1], digits)}, {n} seeds)"
