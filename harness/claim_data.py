"""Published claims as data: the claim files (harness/claims.yaml, plus a study's own), validated by
harness/claims.schema.yaml with errors that name the file and the entry, and the records a claim's test
reads and writes (Claim, Evidence, Outcome). harness.claims tests them. No torch here."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from jsonschema import Draft202012Validator

from harness.stats import ALPHA
from harness.variants import own_values, variant_of


@dataclass(frozen=True)
class Claim:
    """One entry of a claims file (its schema says what each field holds)."""

    id: str
    source: str
    statement: str
    kind: str
    archs: tuple[str, ...]
    setting: dict[str, Any]
    params: dict[str, Any]
    proxy: bool = False
    note: str = ""
    conditions: dict[str, dict[str, float]] = field(default_factory=dict)  # hparam -> {at_least|at_most: value}


class FewSeeds(str):
    """Why a claim is not decided when more seeds of the same runs would let it be tested: the claim is
    "inconclusive" (a seed budget trains more), not "cannot test" (no seed count helps)."""


@dataclass
class Outcome:
    """What a study's runs say about one claim."""

    verdict: str
    sentence: str
    k: float = math.nan  # events counted (rate kinds) ...
    n: float = math.nan  # ... of n runs
    estimate: float = math.nan  # the rate, median, share or difference the verdict judged
    lo: float = math.nan  # its 95% interval
    hi: float = math.nan


@dataclass
class Evidence:
    """The study-level tables a claim is tested on (``quantization`` None: the study has no such stage;
    ``stability``: harness.stability's tables, empty without an lr sweep)."""

    study: dict
    runs: pd.DataFrame
    events: pd.DataFrame
    quantization: pd.DataFrame | None = None
    stability: dict[str, pd.DataFrame] = field(default_factory=dict)
    alpha: float = ALPHA  # the level each verdict is decided at (less at a look of a seed budget)
    steps: int = field(init=False)

    def __post_init__(self):
        self.steps = int(self.study.get("recipe", {}).get("steps", 0))
        self.recipe = recipe_variant(self.study)

    def variant(self, name: str) -> "Evidence":
        """The evidence of one variant's runs."""
        def only(table):
            return None if table is None else table[table["variant"] == name]
        return Evidence(self.study, only(self.runs), only(self.events), only(self.quantization), self.stability,
                        self.alpha)


def recipe_variant(study: dict) -> str | None:
    """The variant trained at the study's own recipe with every stabiliser off (the published
    setting's training), where claims about one architecture's own behaviour are tested; None when
    the sweep has no such variant. BASE_VARIANT without a sweep."""
    return variant_of(study, own_values(study))


# -------------------------------------------------------------------------------------- the files


def _validated(path: Path) -> dict:
    try:
        document = yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML ({e})") from e
    schema = yaml.safe_load(resources.files("harness").joinpath("claims.schema.yaml").read_text())
    errors = sorted(Draft202012Validator(schema).iter_errors(document), key=lambda e: list(e.absolute_path))
    if errors:
        first = errors[0]
        where = "/".join(str(p) for p in first.absolute_path) or "(top)"
        raise ValueError(f"{path}: {where}: {first.message}")
    for i, claim in enumerate(document.get("claims", [])):
        p = claim["params"]
        if claim["kind"] == "transfer" and not max(p["teacher_loss"], p["model_loss"]) < math.log(p["vocab_size"]):
            raise ValueError(f"{path}: claims/{i}/params: published losses must lie below ln(vocab_size) = "
                             f"{math.log(p['vocab_size']):.3f}, a uniform guess's, for a share of the teacher's gain")
    return document


def load(extra: str | Path | None = None) -> tuple[dict[str, dict], list[Claim]]:
    """The packaged publications and claims, plus those of ``extra`` (a study's own claims file)."""
    documents = [_validated(Path(str(resources.files("harness").joinpath("claims.yaml"))))]
    if extra:
        documents.append(_validated(Path(extra)))
    publications, found = {}, []
    for document in documents:
        publications.update(document.get("publications", {}))
        found += [Claim(**{**c, "archs": tuple(c["archs"])}) for c in document.get("claims", [])]
    ids = [c.id for c in found]
    if repeated := sorted({i for i in ids if ids.count(i) > 1}):
        raise ValueError(f"claim id(s) {repeated} defined twice (packaged claims and {extra})")
    return publications, found


def published(key: str) -> dict:
    publications, _ = load()
    if key not in publications:
        raise ValueError(f"unknown published study {key!r}: choose one of {sorted(publications)} (study key 'published')")
    return publications[key]


