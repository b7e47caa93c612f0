"""The report's inputs: the tables `aggregate` wrote for one study (and the published curves its
rule declares), loaded once and checked for the columns the page reads. No torch here."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd
import seaborn as sns

from harness import stats
from harness.aggregate import read_table
from harness.contracts import (ABLATION_COLUMNS, ATTRIBUTION_COLUMNS, ATTRIBUTION_SUMMARY_COLUMNS, CLAIM_COLUMNS,
                               EVENT_COLUMNS, ID_COLUMNS, LOOK_COLUMNS, LR_CURVE_COLUMNS, METRIC_COLUMNS,
                               QUANTIZATION_COLUMNS,
                               QUANTIZATION_SUMMARY_COLUMNS, SENSITIVITY_COLUMNS, SENSITIVITY_PAIR_COLUMNS)
from harness.claims import HEADLINE_COLUMNS
from harness.text import UNITS


MAX_SIDE_BY_SIDE = 3  # more variants than this: the per-run figures and tables show the recipe variant only


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
    # the stability tables (harness.stability); empty when the study sweeps no learning rate / has no event
    lr_curves: pd.DataFrame | None = None  # per (arch, setting, lr) over the seeds
    sensitivity: pd.DataFrame | None = None  # per (arch, setting): Wortsman et al. lr sensitivity
    sensitivity_pairs: pd.DataFrame | None = None  # per (setting, pair of archs)
    attribution: pd.DataFrame | None = None  # per (event, diagnostic that left its baseline before it)
    attribution_summary: pd.DataFrame | None = None  # per (arch, variant) with events
    ablations: pd.DataFrame | None = None  # per (arch, stabiliser switch, setting)
    looks: pd.DataFrame | None = None  # per (question, look) of a seed budget (harness.sequential); else empty
    study_archs: list[str] | None = None  # set by `only`: the whole study's, so colours stay the same

    @property
    def archs(self) -> list[str]:
        if self.study_archs is not None:
            return list(self.study_archs)
        return sorted(set(self.runs["arch"]) | set(self.summary["arch"]))

    @property
    def colours(self) -> dict[str, tuple]:
        """A fixed colour per architecture, from the sorted list, identical in every figure."""
        palette = sns.color_palette("colorblind" if len(self.archs) <= 10 else "husl", len(self.archs))
        return dict(zip(self.archs, palette))

    @property
    def variants(self) -> list[str]:
        """The study's variants (BASE_VARIANT alone in a study without a sweep)."""
        return sorted(set(self.runs["variant"].astype(str))) if "variant" in self.runs else []

    @property
    def multi_variant(self) -> bool:
        """Whether the tables' ``variant`` column tells runs apart (shown only then)."""
        return len(self.variants) > 1

    @property
    def recipe_variant(self) -> str | None:
        """The variant the per-run figures show in a study with a sweep: the one at the study's own recipe
        (notes.json's recipe_variant), else the first in table order; None with one variant."""
        if not self.multi_variant:
            return None
        named = self.notes.get("recipe_variant")
        return named if named in self.variants else self.variants[0]

    @property
    def side_by_side(self) -> bool:
        """Whether the figures and tables that can hold every variant side by side (distributions, collapse
        rate, pairs, summary) do: a few variants (up to MAX_SIDE_BY_SIDE); more show the recipe variant only."""
        return self.multi_variant and len(self.variants) <= MAX_SIDE_BY_SIDE

    def only(self, variant: str | None) -> "Aggregate":
        """The same study reduced to one variant's rows (itself when ``variant`` is None): the figures drawn
        from it look as a study without a sweep's do."""
        if variant is None:
            return self

        def keep(table):
            if table is None or "variant" not in table.columns:
                return table
            return table[table["variant"].astype(str) == variant].reset_index(drop=True)

        return replace(self, study_archs=self.archs, runs=keep(self.runs), trajectories=keep(self.trajectories), events=keep(self.events),
                       summary=keep(self.summary), pairs=keep(self.pairs), quantization=keep(self.quantization),
                       quantization_summary=keep(self.quantization_summary))

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
        lr_curves=table("lr_curves", LR_CURVE_COLUMNS),
        sensitivity=table("sensitivity", SENSITIVITY_COLUMNS),
        sensitivity_pairs=table("sensitivity_pairs", SENSITIVITY_PAIR_COLUMNS),
        attribution=table("attribution", ATTRIBUTION_COLUMNS),
        attribution_summary=table("attribution_summary", ATTRIBUTION_SUMMARY_COLUMNS),
        ablations=table("ablations", ABLATION_COLUMNS),
        looks=table("looks", LOOK_COLUMNS),
    )
