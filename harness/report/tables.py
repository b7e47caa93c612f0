"""The report's inputs: the tables `aggregate` wrote for one study (and the published curves its
rule declares), loaded once and checked for the columns the page reads. No torch here."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import seaborn as sns

from harness import stats
from harness.aggregate import read_table
from harness.contracts import (CLAIM_COLUMNS, EVENT_COLUMNS, ID_COLUMNS, METRIC_COLUMNS, QUANTIZATION_COLUMNS,
                               QUANTIZATION_SUMMARY_COLUMNS)
from harness.claims import HEADLINE_COLUMNS
from harness.text import UNITS


@dataclass
class Aggregate:
    """The tables of one study, as `aggregate` wrote them."""

    study: dict
    runs: pd.DataFrame
    trajectories: pd.DataFrame
    events: pd.DataFrame
    summary: pd.DataFrame
    pairs: pd.DataFrame
    claims: pd.DataFrame
    headlines: pd.DataFrame
    notes: dict
    published_curves: pd.DataFrame | None = None
    quantization: pd.DataFrame | None = None  # every run's rows (harness.quantize); empty when the stage is off
    quantization_summary: pd.DataFrame | None = None  # per (arch, step, bits) over the seeds

    @property
    def archs(self) -> list[str]:
        return sorted(set(self.runs["arch"]) | set(self.summary["arch"]))

    @property
    def colours(self) -> dict[str, tuple]:
        """A fixed colour per architecture, from the sorted list, identical in every figure."""
        palette = sns.color_palette("colorblind" if len(self.archs) <= 10 else "husl", len(self.archs))
        return dict(zip(self.archs, palette))

    @property
    def unit(self) -> str:
        return UNITS.get(self.study.get("data", {}).get("tokens"), "token")


def _json(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (written by `python -m harness aggregate`)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e}); rerun aggregate") from e


def load(aggregate_dir: Path, published_curves: Path | None = None) -> Aggregate:
    """The tables of ``aggregate_dir``; ``published_curves`` a long CSV of published curves to overlay."""
    aggregate_dir = Path(aggregate_dir)

    def table(name: str, required: list[str]) -> pd.DataFrame:
        return read_table(aggregate_dir / f"{name}.csv", required, "written by `python -m harness aggregate`")

    curves = None
    if published_curves is not None:
        curves = read_table(Path(published_curves), ["arch", "step", "split", "metric", "value"], "published curves")
    return Aggregate(
        study=_json(aggregate_dir / "study.json"),
        runs=table("runs", ID_COLUMNS + ["status", "reason"]),
        trajectories=table("trajectories", ID_COLUMNS + METRIC_COLUMNS[:4]),
        events=table("events", ID_COLUMNS + EVENT_COLUMNS[:-1]),
        summary=table("summary", stats.SUMMARY_COLUMNS),
        pairs=table("pairs", stats.PAIR_COLUMNS),
        claims=table("claims", CLAIM_COLUMNS),
        headlines=table("headlines", HEADLINE_COLUMNS),
        notes=_json(aggregate_dir / "notes.json"),
        published_curves=curves,
        quantization=table("quantization", QUANTIZATION_COLUMNS[:-1]),
        quantization_summary=table("quantization_summary", QUANTIZATION_SUMMARY_COLUMNS),
    )
