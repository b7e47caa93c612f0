"""Seeds until decided: a study's seed budget, the level each look spends, and the questions still open.

A study may declare ``seeds: {start: 3, step: 2, max: 11}`` instead of a list. It then trains seeds
0..start-1 of every architecture and variant, and looks: the claims and the learning-rate sensitivity
pairs are judged on the seeds so far, and only the architectures and variants of the questions still
open get ``step`` more seeds, until every question is decided or ``max`` seeds are spent
(workflow/rules/look.smk drives it with a Snakemake checkpoint per look).

Looking repeatedly at accumulating data and stopping at the first significant look inflates the error
rate: five looks at 0.05 each erred in up to 14% of null studies (benchmarks/verdict_calibration.py).
Each look therefore spends a share of ALPHA (Lan & DeMets 1983, Pocock-type spending
alpha * ln(1 + (e - 1) t) at information fraction t = seeds / max), and a question is decided at look k
only at level alpha_k. The shares sum to ALPHA, so by the union bound the chance of any false verdict
over all looks is at most ALPHA whatever the tests and however the looks depend on each other (the
group-sequential boundaries that assume normal statistics would spend it less conservatively, but the
claims here are decided by exact, rank-free and interval tests of several kinds). A question keeps the
verdict of the look that decided it: later seeds never reopen it.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass

import pandas as pd

from harness import claims as claim_rules
from harness import stability
from harness.claims import DECIDED
from harness.contracts import LOOK_COLUMNS
from harness.stats import ALPHA
from harness.variants import setting_name

@dataclass(frozen=True)
class SeedBudget:
    """``seeds: {start, step, max}``: looks at start, start + step, ... seeds, the last at max."""

    start: int
    step: int
    max: int

    def __post_init__(self):
        if not 1 <= self.start <= self.max or self.step < 1:
            raise ValueError(f"seeds: a budget needs 1 <= start <= max and step >= 1 (got start {self.start}, "
                             f"step {self.step}, max {self.max})")

    @classmethod
    def of(cls, seeds) -> "SeedBudget | None":
        """The budget of a study's ``seeds`` value (None for a plain list)."""
        if isinstance(seeds, dict):
            return cls(int(seeds["start"]), int(seeds.get("step", 1)), int(seeds["max"]))
        return None

    def looks(self) -> list[int]:
        """The seed count at each look: start, start + step, ..., and max last."""
        counts = list(range(self.start, self.max, self.step))
        return counts + [self.max]

    def alphas(self, alpha: float = ALPHA) -> list[float]:
        """The level each look spends: the increments of the Pocock-type spending function over the looks'
        information fractions; they sum to ``alpha``. One look spends all of it."""
        spent = [alpha * math.log(1 + (math.e - 1) * n / self.max) for n in self.looks()]
        return [b - a for a, b in zip([0.0] + spent[:-1], spent)]


def looks_key(study: dict) -> str:
    """The folder of a study's look plans (results/STUDY/looks/KEY): a hash of the study the looks judge.
    A changed study (a larger max, so other levels) gets fresh looks over the runs already trained: a
    plan is never read for a study it was not made for (Snakemake does not remake a checkpoint's output
    once the tables downstream of it exist, snakemake PR #4124)."""
    return hashlib.sha256(json.dumps(study, sort_keys=True).encode()).hexdigest()[:8]


def _claim_verdict(row) -> str:
    """The verdict a claim row was decided by: at the published setting, else at proxy scale."""
    return row["verdict"] if row["verdict"] not in ("cannot test", "") else (row["proxy_verdict"] or "")


def questions(claims: pd.DataFrame, pairs: pd.DataFrame, alpha: float) -> pd.DataFrame:
    """The open and decided questions of one look: every claim with a test outcome or short of seeds
    (not 'cannot test': more seeds do not change a setting it cannot be tested at), and every sensitivity
    pair with a common learning rate (one without a p yet is open: it has too few seeds to compare)."""
    rows = []
    for _, c in claims.iterrows():
        verdict = _claim_verdict(c)
        if verdict in DECIDED or verdict == "inconclusive":
            rows.append({"question": f"claim:{c['id']}", "kind": "claim", "archs": c["archs"], "setting": "",
                         "decided": verdict in DECIDED, "verdict": verdict, "p": math.nan})
    for _, r in pairs.iterrows():
        if not r["n_lrs"]:
            continue
        decided = bool(r["p_holm"] <= alpha)  # False for a NaN p
        low = r["arch_a"] if r["difference"] < 0 else r["arch_b"]
        rows.append({"question": f"pair {r['setting']}: {r['arch_a']} vs {r['arch_b']}", "kind": "pair",
                     "archs": f"{r['arch_a']}, {r['arch_b']}", "setting": r["setting"], "decided": decided,
                     "verdict": f"{low} less sensitive" if decided else "inconclusive", "p": float(r["p_holm"])})
    return pd.DataFrame(rows, columns=["question", "kind", "archs", "setting", "decided", "verdict", "p"])


def needed(study: dict, open_questions: pd.DataFrame) -> dict[str, list[str]]:
    """The architectures and variants the open questions need more seeds of: a claim, every variant of its
    architectures (it may read any of them); a pair, its architectures' variants of its setting."""
    variants = study.get("variants") or {}
    need: dict[str, set[str]] = {}
    for _, q in open_questions.iterrows():
        for arch in q["archs"].split(", "):
            if arch not in study["archs"]:
                continue
            own = _planned(study, arch)  # an architecture without a swept model switch trains its off value alone
            chosen = [v for v in own if q["kind"] == "claim" or setting_name(variants[v]) == q["setting"]] or own
            need.setdefault(arch, set()).update(chosen)
    return {arch: sorted(vs) for arch, vs in sorted(need.items())}


def _planned(study: dict, arch: str) -> list[str]:
    """The variants ``arch`` trains (harness.study.arch_variants; every variant in a study without them)."""
    return list(((study.get("arch_variants") or {}).get(arch)) or study.get("variants") or {})


def seeds_at(study: dict, look: int) -> list[int]:
    """The seeds a study has trained by ``look`` (1-based) wherever it kept going: the first looks()[look-1]."""
    budget = SeedBudget.of(study["seed_budget"])
    return list(study["seeds"])[:budget.looks()[look - 1]]


def _taken(runs: pd.DataFrame, budget: SeedBudget, seeds: list[int]) -> int:
    """How many looks the runs have reached: look k is taken when a run has a seed of it (look 1 always)."""
    counts = budget.looks()
    have = set(runs["seed"].astype(int))
    return max([1] + [k + 1 for k in range(1, len(counts)) if have & set(seeds[counts[k - 1]:counts[k]])])


def replay(study: dict, runs: pd.DataFrame, trajectories: pd.DataFrame, events: pd.DataFrame,
           quantization: pd.DataFrame | None, last_look: int | None = None, alphas: list[float] | None = None
           ) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, pd.DataFrame]]:
    """(looks, claims, stability tables) of a study with a seed budget, judged look by look on the seeds
    each look had (up to ``last_look``, default every look its runs reached) at the budget's levels
    (``alphas``: others, for benchmarks/verdict_calibration.py to measure looks without spending). Each
    question keeps the claims row or sensitivity pair of the look that decided it, its sentence saying at
    which look, with how many seeds and at what level; the other tables are the last look's (its level
    the smallest: the ablations are judged conservatively)."""
    budget = SeedBudget.of(study["seed_budget"])
    seeds, counts, alphas = list(study["seeds"]), budget.looks(), alphas or budget.alphas()
    last = last_look or _taken(runs, budget, seeds)
    frozen: dict[str, tuple[int, pd.Series, tuple]] = {}  # question: (look, its row then, its row's key)
    rows, final = [], None
    for k in range(1, last + 1):
        kept = set(seeds[:counts[k - 1]])

        def only(table):
            return table if table is None or table.empty else table[table["seed"].astype(int).isin(kept)]

        at_runs, at_events = only(runs), only(events)
        tables = stability.tables(study, at_runs, only(trajectories), at_events, alpha=alphas[k - 1])
        verdicts = claim_rules.evaluate(study, at_runs, at_events, only(quantization), tables, alpha=alphas[k - 1])
        final = (verdicts, tables)
        asked = questions(verdicts, tables["sensitivity_pairs"], alphas[k - 1])
        for _, q in asked.iterrows():
            if q["question"] in frozen:
                continue
            n = int(at_runs[at_runs["arch"].isin(q["archs"].split(", "))].groupby("arch")["seed"].nunique().min())
            rows.append({**q.to_dict(), "look": k, "seeds": n, "alpha": alphas[k - 1]})
            if q["decided"]:
                key = (q["question"][len("claim:"):],) if q["kind"] == "claim" else \
                    (q["setting"], *q["archs"].split(", "))
                table = verdicts if q["kind"] == "claim" else tables["sensitivity_pairs"]
                frozen[q["question"]] = (k, table.loc[_row(table, key)].iloc[0], key)
    looks = pd.DataFrame(rows, columns=LOOK_COLUMNS)
    verdicts, tables = final
    verdicts, pairs = verdicts.copy(), tables["sensitivity_pairs"].copy()
    for question, (k, source, key) in frozen.items():
        n = int(looks.loc[(looks["question"] == question) & (looks["look"] == k), "seeds"].iloc[0])
        table = verdicts if question.startswith("claim:") else pairs
        i = table.index[_row(table, key)][0]
        for column, value in source.items():
            table.at[i, column] = value
        table.at[i, "sentence"] += (f" Decided at look {k} of at most {len(counts)}, with {n} seeds of each "
                                    f"architecture, at the level that look spends, {alphas[k - 1]:.3g} (seeds "
                                    "until decided: harness.sequential).")
    budget_text = (f" Undecided after {last} look{'s' * (last != 1)} ({counts[last - 1]} seeds"
                   + (", the budget's most)." if last == len(counts) else f"; the budget goes on to {budget.max})."))
    for _, q in looks[(looks["look"] == last) & ~looks["question"].isin(frozen)].iterrows():
        table = verdicts if q["kind"] == "claim" else pairs
        key = (q["question"][len("claim:"):],) if q["kind"] == "claim" else (q["setting"], *q["archs"].split(", "))
        table.loc[_row(table, key), "sentence"] += budget_text
    return looks, verdicts, {**tables, "sensitivity_pairs": pairs}


def _row(table: pd.DataFrame, key: tuple) -> pd.Series:
    """The mask of a question's row: a claim by (id,), a pair by (setting, arch_a, arch_b)."""
    if len(key) == 1:
        return table["id"] == key[0]
    return (table["setting"] == key[0]) & (table["arch_a"] == key[1]) & (table["arch_b"] == key[2])


def plan(study: dict, runs: pd.DataFrame, trajectories: pd.DataFrame, events: pd.DataFrame,
         quantization: pd.DataFrame | None, look: int) -> dict:
    """What look ``look`` decided and what the next needs: {look, seeds, alpha, decided, open, need, done}.
    ``need`` maps each architecture to the variants that get the next look's seeds; done when nothing is
    open or the budget is spent."""
    budget = SeedBudget.of(study["seed_budget"])
    looks, _, _ = replay(study, runs, trajectories, events, quantization, last_look=look)
    now = looks[looks["look"] == look]
    open_ = now[~now["decided"].astype(bool)]
    done = open_.empty or look == len(budget.looks())
    return {"look": look, "seeds": budget.looks()[look - 1], "alpha": budget.alphas()[look - 1],
            "decided": sorted(looks.loc[looks["decided"].astype(bool), "question"]), "open": sorted(open_["question"]),
            "need": {} if done else needed(study, open_), "done": done}


def budget_runs(study: dict, plan_of_look, upto: int | None = None) -> list[tuple[str, str, int]]:
    """(arch, variant, seed) of every run a seed budget asks for: each look's new seeds of the
    architectures and variants the look before it left open, up to look ``upto`` (default: as far as
    the plans go). ``plan_of_look(k)`` gives look k's plan (``plan``), or None where it is not made yet
    (then the runs asked for so far). The workflow passes Snakemake's checkpoint, `harness status` the
    plan files on disk."""
    counts = study["seed_budget"]["looks"]
    need = {arch: _planned(study, arch) for arch in study["archs"]}
    taken = []
    for k in range(1, (upto or len(counts)) + 1):
        start = counts[k - 2] if k > 1 else 0
        taken += [(arch, variant, seed) for arch, variants in need.items() for variant in variants
                  for seed in study["seeds"][start:counts[k - 1]]]
        if k == upto:
            break
        plan_k = plan_of_look(k)
        if plan_k is None or plan_k["done"]:
            break
        need = plan_k["need"]
    return taken
