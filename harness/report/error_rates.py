"""The report's "how often these verdicts err" section: the measured error rates of the verdict rules, from
the table benchmarks/verdict_calibration.py writes (harness/calibration/verdicts.csv, packaged so every
report carries the rates of the code that made it)."""

from __future__ import annotations

import io
from importlib import resources

import pandas as pd
from scipy.stats import binomtest

from harness.report.sections import html_table, p, section
from harness.stats import ALPHA

CALIBRATION = "calibration/verdicts.csv"
COLUMNS = ["kind", "verdict", "case", "null_or_effect", "seeds", "n_studies", "rate", "se", "target", "passes"]


def verdict_error_rates() -> pd.DataFrame:
    """The packaged calibration table (COLUMNS), one row per (case, seed count)."""
    table = pd.read_csv(io.StringIO(resources.files("harness").joinpath(CALIBRATION).read_text()))
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"harness/{CALIBRATION}: missing columns {missing}; rerun benchmarks/verdict_calibration.py")
    return table


def _wide(rows: pd.DataFrame, seeds: list[int]) -> list[list]:
    out = []
    for (verdict, case), g in rows.groupby(["verdict", "case"], sort=False):
        rate = g.set_index("seeds")["rate"]
        out.append([verdict, case] + [f"{rate[n]:.1%}" if n in rate.index else "" for n in seeds])
    return out


def error_rates_section() -> str:
    """Nulls: the share of constructed studies in which each verdict was decided though nothing was there;
    effects: the share in which a known difference was found, and the seeds that finds it in 80% of studies."""
    table = verdict_error_rates()
    seeds = sorted(table["seeds"].unique())
    kind = table["null_or_effect"].astype(str)
    nulls, effects = table[kind.str.startswith("null")], table[kind.str.startswith("effect")]
    n_studies = int(table["n_studies"].min())
    worst = nulls.loc[nulls["rate"].idxmax()]
    k, n = round(worst["rate"] * worst["n_studies"]), int(worst["n_studies"])
    above = binomtest(k, n, ALPHA, alternative="greater").pvalue
    parts = [p(f"Measured by benchmarks/verdict_calibration.py: whole studies with a known truth, constructed as "
               f"the aggregate's input tables and judged through the same code that made this report ({n_studies} "
               f"to {int(table['n_studies'].max())} studies per cell). A null has nothing to find, so any verdict it "
               f"gets is false; the rule is that it gets one in at most 5% of studies. Worst null: "
               f"{worst['rate']:.1%} ({k} of {n} studies, {worst['verdict']} on '{worst['case']}' at "
               f"{int(worst['seeds'])} seeds; one-sided binomial p = {above:.2f} against a true rate of 5%)."),
             html_table(["verdict", "null (nothing to find)"] + [f"{n} seeds" for n in seeds], _wide(nulls, seeds),
                    numeric=set(range(2, 2 + len(seeds))))]
    if len(effects):
        found = []
        for (verdict, case), g in effects.groupby(["verdict", "case"], sort=False):
            enough = g[g["rate"] >= 0.8]["seeds"]
            found.append(f"{int(enough.min())} seeds" if len(enough) else f"more than {max(seeds)} seeds")
        rows = [row + [f] for row, f in zip(_wide(effects, seeds), found)]
        parts.append(html_table(["verdict", "effect (known difference)"] + [f"{n} seeds" for n in seeds]
                            + ["found in 80% of studies at"], rows, numeric=set(range(2, 3 + len(seeds)))))
    return section("error-rates", "How often these verdicts err", parts)
