"""Positive and negative controls of a study: can the harness find an effect known to exist, and does it
keep two copies of one architecture together?

A study declares them (``controls`` in its config, validated by harness.study):

- ``positive``: a claim of the study's claims (a published, well-replicated effect) and the verdict it must
  get (``expect``, default "supported"). The control passes when the claim gets that verdict, at the
  published setting or at proxy scale, whichever the study gives.
- ``negative``: two architectures of the study that are copies of one another but for their
  initialisation seed (an entry's ``init_seed_offset``; the data order is the seed's for both). The control
  passes when no measure the report prints separates them.

``evaluate`` judges both from the aggregate's tables and returns one table (CONTROL_COLUMNS: one row per
measure of a control's pair of architectures, as the report's own tables decide it) and the opening lines
of the report. The measures, for the control's pair:

- ``claim``: the positive control's claim, with its verdict; for the negative control, every claim about the
  original architecture tested again with the copy in its place (the same runs, renamed): a verdict that
  changes separates the copies;
- ``sensitivity``: the learning-rate sensitivity pair (harness.stability.sensitivity_pairs, per setting): the
  difference of mean sensitivities and its p (harness.stability.sensitivity_test); it separates when the raw p
  is at most ALPHA (the rule of a single declared comparison, as a claim uses; the table's Holm p is shown too);
- ``instability``: unstable runs k of n per learning rate (harness.stability.lr_curves, per setting), which the
  stability map prints without a test: two-sided Fisher exact test per learning rate, Holm over the
  setting's learning rates;
- ``final perplexity`` and ``collapse rate``: the pairwise table (harness.stats.compare, per variant): it
  separates when its Holm-corrected Mann-Whitney p (final perplexity) or Fisher p (collapse rate) is at most
  ALPHA, as the table says.

No statistic here is new to the report but the per-lr Fisher test; the rest reads what the report prints.
No torch here.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd
from scipy.stats import fisher_exact

from harness import claims, stability
from harness.contracts import CONTROL_COLUMNS
from harness.logs import is_loss
from harness.stats import ALPHA, holm
from harness.variants import own_values, setting_name, value_text

SEPARATING_VERDICTS = ("supported", "contradicted", "reproduced", "partly reproduced", "not reproduced", "consistent")
"""Claim verdicts that decide something (every verdict but "inconclusive" and "cannot test")."""


def _row(control: str, a: str, b: str, measure: str, where: str, lr=math.nan, k_a=math.nan, n_a=math.nan,
         k_b=math.nan, n_b=math.nan, estimate=math.nan, p=math.nan, p_adjusted=math.nan, separates: bool = False,
         sentence: str = "") -> dict[str, Any]:
    return {"control": control, "arch_a": a, "arch_b": b, "measure": measure, "where": where, "lr": lr, "k_a": k_a,
            "n_a": n_a, "k_b": k_b, "n_b": n_b, "estimate": estimate, "p": p, "p_adjusted": p_adjusted,
            "separates": bool(separates), "sentence": sentence}


def _pair(table: pd.DataFrame, a: str, b: str, first: str = "arch_a", second: str = "arch_b") -> pd.DataFrame:
    """The rows of ``table`` about the pair {a, b}, in either order."""
    if table is None or table.empty:
        return pd.DataFrame(columns=[] if table is None else table.columns)
    ordered = (table[first] == a) & (table[second] == b)
    return table[ordered | ((table[first] == b) & (table[second] == a))]


def _where(setting) -> str:
    return "learning rate only" if str(setting) in ("", "base", "nan") else str(setting)


def sensitivity_rows(control: str, a: str, b: str, pairs: pd.DataFrame) -> list[dict]:
    """One row per setting with a sensitivity pair of a and b: the difference a - b (sign turned to the
    control's order), its p (sensitivity_test) and the table's Holm p; separates when p <= ALPHA."""
    rows = []
    for r in _pair(pairs, a, b).sort_values("setting", key=lambda c: c.astype(str)).to_dict("records"):
        sign = 1 if r["arch_a"] == a else -1
        difference, p = sign * float(r["difference"]), float(r["p"])
        n_a, n_b = (int(r["n_a"]), int(r["n_b"]))[::sign]
        decided = p <= ALPHA
        text = (f"{_where(r['setting'])}: learning-rate sensitivity of {a} minus {b} {difference:+.3f} nats over "
                f"{int(r['n_lrs'])} learning rates, {n_a} and {n_b} seeds; {stability.SENSITIVITY_TEST} p = {p:.2g}, "
                f"Holm over the study's pairs {float(r['p_holm']):.2g}: "
                + (f"{a if difference < 0 else b} is less sensitive" if decided else "no difference"))
        rows.append(_row(control, a, b, "sensitivity", _where(r["setting"]), n_a=n_a, n_b=n_b, estimate=difference,
                         p=p, p_adjusted=float(r["p_holm"]), separates=decided, sentence=text + "."))
    return rows


def instability_rows(control: str, a: str, b: str, curves: pd.DataFrame) -> list[dict]:
    """Per setting and learning rate, unstable runs k of n of a and b: two-sided Fisher exact p, Holm over the
    setting's learning rates (the stability map prints the counts without a test)."""
    rows = []
    if curves is None or curves.empty:
        return rows
    mine = curves[curves["arch"].isin([a, b])]
    for setting, g in mine.groupby(mine["setting"].astype(str), sort=True):
        by_lr = {lr: h.set_index("arch") for lr, h in g.groupby("lr", sort=True)}
        found = []
        for lr, h in by_lr.items():
            if a not in h.index or b not in h.index:
                continue
            (ka, na), (kb, nb) = ((int(h.loc[x, "n_unstable"]), int(h.loc[x, "n"])) for x in (a, b))
            p = float(fisher_exact([[ka, na - ka], [kb, nb - kb]]).pvalue) if na and nb else math.nan
            found.append((lr, ka, na, kb, nb, p))
        if not found:
            continue
        adjusted = holm(pd.Series([f[-1] for f in found], dtype=float)).to_numpy()
        for (lr, ka, na, kb, nb, p), p_holm in zip(found, adjusted):
            decided = bool(p_holm <= ALPHA)
            text = (f"{_where(setting)}, lr={value_text(lr)}: unstable runs {a} {ka} of {na}, {b} {kb} of {nb}; Fisher "
                    f"exact p = {p:.2g}, Holm over the {len(found)} learning rates {p_holm:.2g}"
                    + (": the rates differ" if decided else ""))
            rows.append(_row(control, a, b, "instability", _where(setting), float(lr), ka, na, kb, nb,
                             ka / na - kb / nb if na and nb else math.nan, p, float(p_holm), decided, text + "."))
    return rows


def pair_rows(control: str, a: str, b: str, pairs: pd.DataFrame) -> list[dict]:
    """Per variant, the pairwise table's two tests of a and b, as the table decides them (Holm over the
    variant's pairs): final perplexity (Mann-Whitney) and collapse rate (Fisher)."""
    rows = []
    for r in _pair(pairs, a, b).sort_values("variant", key=lambda c: c.astype(str)).to_dict("records"):
        flip = r["arch_a"] != a
        n_a, n_b = (int(r["n_b"]), int(r["n_a"])) if flip else (int(r["n_a"]), int(r["n_b"]))
        pi = float(r["prob_improvement"])
        pi = 1 - pi if flip and not math.isnan(pi) else pi
        holm_p, fisher_holm_p = float(r["holm_p"]), float(r["fisher_holm_p"])
        where = _where(r["variant"])
        rows.append(_row(control, a, b, "final perplexity", where, n_a=n_a, n_b=n_b, estimate=pi,
                         p=float(r["mannwhitney_p"]), p_adjusted=holm_p, separates=holm_p <= ALPHA,
                         sentence=f"{where}: P({a} has the lower final perplexity) = {pi:.2f}; Mann-Whitney p = "
                         f"{float(r['mannwhitney_p']):.2g}, Holm over the variant's pairs {holm_p:.2g}."))
        rows.append(_row(control, a, b, "collapse rate", where, n_a=n_a, n_b=n_b, p=float(r["fisher_p"]),
                         p_adjusted=fisher_holm_p, separates=fisher_holm_p <= ALPHA,
                         sentence=f"{where}: collapse rates compared by Fisher's exact test, p = "
                         f"{float(r['fisher_p']):.2g}, Holm over the variant's pairs {fisher_holm_p:.2g}."))
    return rows


def _verdict_of(row: dict) -> str:
    """A claim row's verdict: at the published setting when given there, else at proxy scale."""
    verdict = str(row.get("verdict") or "")
    return verdict if verdict not in ("", "cannot test", "nan") else str(row.get("proxy_verdict") or "cannot test")


def _renamed(table: pd.DataFrame | None, original: str, copy: str) -> pd.DataFrame | None:
    """``table`` with the copy's rows under the original's name and the original's rows left out."""
    if table is None or "arch" not in table.columns:
        return table
    kept = table[table["arch"] != original]
    return kept.assign(arch=kept["arch"].replace({copy: original}))


def swapped_claims(study: dict, original: str, copy: str, runs: pd.DataFrame, trajectories: pd.DataFrame,
                   events: pd.DataFrame, quantization: pd.DataFrame | None) -> pd.DataFrame:
    """The claims table (harness.claims.evaluate) of the study with ``copy``'s runs in place of
    ``original``'s: the same tests on the copy. Only the stability tables a claim reads are rebuilt."""
    runs_, events_ = _renamed(runs, original, copy), _renamed(events, original, copy)
    val = trajectories[(trajectories["split"].astype(str) == "val") & is_loss(trajectories["metric"])]
    outcomes = stability.run_outcomes(study, runs_, _renamed(val, original, copy), events_)
    tables = {"lr_curves": stability.lr_curves(outcomes), "sensitivity_pairs": stability.sensitivity_pairs(outcomes)}
    return claims.evaluate(study, runs_, events_, _renamed(quantization, original, copy), tables)


def claim_rows_negative(control: str, original: str, copy: str, verdicts: pd.DataFrame,
                        swapped: pd.DataFrame) -> list[dict]:
    """Every claim about ``original``: its verdict, and the verdict with ``copy`` in its place; a change
    separates the copies."""
    rows = []
    if verdicts.empty:
        return rows
    again = {r["id"]: r for r in swapped.to_dict("records")}
    for r in verdicts.to_dict("records"):
        if original not in [x.strip() for x in str(r["archs"]).split(",")] or r["id"] not in again:
            continue
        first, second = _verdict_of(r), _verdict_of(again[r["id"]])
        rows.append(_row(control, original, copy, "claim", r["id"], separates=first != second,
                         sentence=f"claim {r['id']}: {first} with {original}, {second} with {copy} in its place."))
    return rows


def _recipe_setting(study: dict) -> str:
    return setting_name(own_values(study))


def _decisive(rows: list[dict], measure: str, setting: str) -> dict | None:
    """The row of ``measure`` at the study's own setting (else the first)."""
    found = [r for r in rows if r["measure"] == measure]
    return next((r for r in found if r["where"] == _where(setting)), found[0] if found else None)


def _p_text(p: float) -> str:
    return f"{p:.2g}" if p >= 0.001 else f"{p:.1e}"


def _positive(study: dict, spec: dict, verdicts: pd.DataFrame, pairs: pd.DataFrame, stability_tables: dict,
              ran: set[str]) -> tuple[list[dict], str, bool | None]:
    _, known = claims.load(study.get("claims"))
    claim = next(c for c in known if c.id == spec["claim"])
    a, b = (claim.archs + claim.archs)[:2]
    name = spec.get("name") or f"the effect of claim {claim.id}"
    expect = spec.get("expect", "supported")
    if not set(claim.archs) <= ran:
        return [], (f"Positive control not run: the study's runs lack {', '.join(sorted(set(claim.archs) - ran))}, "
                    f"so it cannot say whether the harness finds {name}."), None
    row = verdicts[verdicts["id"] == claim.id].to_dict("records")
    verdict = _verdict_of(row[0]) if row else "cannot test"
    rows = [_row("positive", a, b, "claim", claim.id, separates=verdict in SEPARATING_VERDICTS,
                 sentence=f"claim {claim.id} ({claim.statement}): {verdict}, expected {expect}."
                 + (f" {row[0]['sentence']}" if row else ""))]
    if a != b:  # a claim about two architectures: what else compares them
        rows += sensitivity_rows("positive", a, b, stability_tables.get("sensitivity_pairs"))
        rows += instability_rows("positive", a, b, stability_tables.get("lr_curves"))
        rows += pair_rows("positive", a, b, pairs)
    passed = verdict == expect
    setting = _recipe_setting(study)
    decisive = _decisive(rows, "sensitivity", setting) if claim.kind == "more_stable_than" else None
    how = ""
    if decisive and not math.isnan(decisive["p"]):
        n_a, n_b = int(decisive["n_a"]), int(decisive["n_b"])
        seeds = f"{n_a} seeds" if n_a == n_b else f"{n_a} and {n_b} seeds"
        how = (f"{'decided' if passed else 'tested'} at {seeds} each, learning-rate sensitivity {a} minus {b} "
               f"{decisive['estimate']:+.3f} nats, {stability.SENSITIVITY_TEST} p = {_p_text(decisive['p'])}")
    unstable = [r for r in rows if r["measure"] == "instability" and r["where"] == _where(setting) and r["separates"]]
    more = "".join(f"; at lr={value_text(r['lr'])} {r['k_a']} of {r['n_a']} runs of {a} unstable against {r['k_b']} "
                   f"of {r['n_b']} of {b} (Fisher p = {_p_text(r['p'])})" for r in unstable)
    said = f"claim {claim.id}: {verdict}" + ("" if passed else f", expected {expect}")
    if passed:
        line = f"Positive control: the harness finds {name} ({'; '.join(filter(None, [how + more, said]))})."
    else:
        line = (f"Positive control failed: the harness does not find {name} ({'; '.join(filter(None, [how, said]))}). "
                "An 'inconclusive' in this report may mean that this design cannot see an effect, not that there is "
                "none.")
    return rows, line, passed


def _negative(study: dict, spec: dict, verdicts: pd.DataFrame, pairs: pd.DataFrame, stability_tables: dict,
              ran: set[str], runs: pd.DataFrame, trajectories: pd.DataFrame, events: pd.DataFrame,
              quantization: pd.DataFrame | None) -> tuple[list[dict], str, bool | None]:
    a, b = spec["archs"]
    name = spec.get("name") or "two copies of one architecture"
    if not {a, b} <= ran:
        return [], (f"Negative control not run: the study's runs lack {', '.join(sorted({a, b} - ran))}, so it "
                    f"cannot say whether the harness keeps {name} together."), None
    swapped = swapped_claims(study, a, b, runs, trajectories, events, quantization)
    rows = claim_rows_negative("negative", a, b, verdicts, swapped)
    rows += sensitivity_rows("negative", a, b, stability_tables.get("sensitivity_pairs"))
    rows += instability_rows("negative", a, b, stability_tables.get("lr_curves"))
    rows += pair_rows("negative", a, b, pairs)
    separated = [r for r in rows if r["separates"]]
    decisive = _decisive(rows, "sensitivity", _recipe_setting(study))
    sens = f"sensitivity p = {_p_text(decisive['p'])}; " if decisive and not math.isnan(decisive["p"]) else ""
    measures = sorted({r["measure"] for r in rows}, key=[
        "claim", "sensitivity", "instability", "final perplexity", "collapse rate"].index)
    if not rows:
        return rows, f"Negative control: nothing of this study compares {a} with {b}.", None
    if not separated:
        line = (f"Negative control: it finds no difference between {name} ({a} and {b}, another initialisation seed; "
                f"{sens}none of the {len(rows)} comparisons of {', '.join(measures)} separates them).")
    else:
        listed = "; ".join(r["sentence"].rstrip(".") for r in separated)
        line = (f"Negative control failed: {len(separated)} of the {len(rows)} comparisons of {name} ({a} and {b}, "
                f"another initialisation seed) separate them: {listed}. A difference of that size elsewhere in this "
                "report may be noise.")
    return rows, line, not separated


def evaluate(study: dict, runs: pd.DataFrame, trajectories: pd.DataFrame, events: pd.DataFrame,
             quantization: pd.DataFrame | None, pairs: pd.DataFrame, verdicts: pd.DataFrame,
             stability_tables: dict[str, pd.DataFrame]) -> tuple[pd.DataFrame, dict[str, Any]]:
    """(CONTROL_COLUMNS table, notes) of the study's declared controls: notes holds ``lines`` (the report's
    opening sentences, positive first) and ``passed`` (control -> True, False, or None when not run); an
    empty table and empty notes when the study declares none. Inputs are the aggregate's tables:
    ``verdicts`` harness.claims.evaluate's, ``pairs`` harness.stats.compare's, ``stability_tables``
    harness.stability.tables'."""
    declared = study.get("controls") or {}
    rows, lines, passed = [], [], {}
    ran = set(runs["arch"]) if len(runs) else set()
    if declared.get("positive"):
        found, line, ok = _positive(study, declared["positive"], verdicts, pairs, stability_tables, ran)
        rows += found
        lines.append(line)
        passed["positive"] = ok
    if declared.get("negative"):
        found, line, ok = _negative(study, declared["negative"], verdicts, pairs, stability_tables, ran, runs,
                                    trajectories, events, quantization)
        rows += found
        lines.append(line)
        passed["negative"] = ok
    table = pd.DataFrame(rows, columns=CONTROL_COLUMNS)
    return table, ({"lines": lines, "passed": passed} if declared else {})

