"""The report's "seeds until decided" section: each question of a study with a seed budget, look by look
(looks.csv, harness.sequential), so a reader sees at which look and with how many seeds each verdict
was decided, at what level, and what stayed open."""

from __future__ import annotations

from harness.report.sections import html_table, p, section
from harness.report.tables import Aggregate

METHOD = (
    "How it was decided: the study declared a seed budget (seeds: start, step, max). After each look the claims "
    "and sensitivity pairs were judged on the seeds so far, and only the architectures and variants of the "
    "questions still open trained more seeds. Each look decides at a share of the 5% level (Lan-DeMets "
    "Pocock-type spending over the fraction of the budget's seeds), the shares summing to 5%, so the chance of "
    "any false verdict over all looks stays at most 5% (union bound). A decided question keeps the verdict of "
    "its look; later seeds never reopen it.")


def looks_section(agg: Aggregate) -> str:
    """Empty for a study without a seed budget."""
    looks = agg.looks
    if looks is None or looks.empty:
        return ""
    budget = agg.study.get("seed_budget") or {}
    rows = [[r["question"], int(r["look"]), int(r["seeds"]), f"{r['alpha']:.3g}",
             r["verdict"] if r["decided"] else "open"] for r in looks.to_dict("records")]
    last = looks.groupby("question")["decided"].last()
    text = (f"Budget: {budget.get('start')} seeds, then {budget.get('step')} more per look up to "
            f"{budget.get('max')} ({len(budget.get('looks', []))} looks at most); {int(last.sum())} of "
            f"{len(last)} questions decided, {int((~last).sum())} still open after look {int(looks['look'].max())}.")
    return section("looks", "Seeds until decided", [
        p(text), html_table(["question", "look", "seeds", "level", "verdict"], rows, numeric={1, 2, 3}),
        p(METHOD, "note")])
