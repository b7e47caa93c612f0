"""The report's HTML sections, from the loaded tables: text and tables only, every number formatted
from what `aggregate` computed. No torch here."""

from __future__ import annotations

import base64
import html
import json
import math

from harness.attribution import LOOKBACK_LOGS, MIN_CHANGE, MIN_CONTROLS, Z_THRESHOLD
from harness.contracts import BASE_VARIANT, FULL_PRECISION_BITS, PIPELINE_KEY
from harness import stability
from harness.stats import ALPHA
from harness.report.figures import collapse_k_n
from harness.report.tables import Aggregate
from harness.text import missing, num, perplexity, plain, step

DETECTOR_READS = ("The detector reads only the loss curves (training and validation); gradient norms and "
                  "other metrics are shown for context and are not tested for events.")
PREFIX = f"{PIPELINE_KEY}_"  # runs.csv columns of a pipeline's own numbers (harness.aggregate)


def html_table(header: list[str], rows: list[list], row_classes: list[str] | None = None,
           numeric: set[int] = frozenset()) -> str:
    """An HTML table of escaped text; ``numeric`` column indices are right-aligned."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = []
    for r, row in enumerate(rows):
        cls = f' class="{row_classes[r]}"' if row_classes and row_classes[r] else ""
        cells = "".join(('<td class="num">' if c in numeric else "<td>") + html.escape(str(v)) + "</td>"
                        for c, v in enumerate(row))
        body.append(f"<tr{cls}>{cells}</tr>")
    # a wide table scrolls inside its own box instead of widening the page
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def p(text: str, cls: str = "") -> str:
    return f'<p class="{cls}">{html.escape(text)}</p>' if cls else f"<p>{html.escape(text)}</p>"


def img(name: str, png: bytes, caption: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (f'<figure id="fig-{name}"><img alt="{html.escape(name)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def section(anchor: str, title: str, parts: list[str]) -> str:
    return f'<section id="{anchor}"><h2>{html.escape(title)}</h2>{"".join(parts)}</section>'


def claims_section(agg: Aggregate) -> str:
    verdicts = agg.claims
    parts = []
    if verdicts.empty:
        parts.append(p("No published claim concerns the architectures of this study."))
    else:
        rows = [[v["claim"], v["archs"], v["verdict"], v["proxy_verdict"], _measured(v), v["scale"],
                 v["sentence"] + (f" ({v['note']})" if v["note"] else ""), v["source"]]
                for v in verdicts.astype(object).fillna("").to_dict("records")]
        parts.append(html_table(["published claim", "archs", "verdict at the published setting", "verdict at proxy scale",
                             "measured", "tested at", "how it was decided", "source"], rows))
        parts.append(p("A verdict is given only where the evidence separates: events count beyond the detector's "
                       "false-alarm rate (one-sided binomial test); a rate is judged by its exact (Clopper-Pearson) 95% "
                       "interval, a quantization cost (in bits per byte, as published) by the distribution-free 95% "
                       "interval of its median over seeds (6 seeds at least), a transfer by the share of the teacher's "
                       "gain over a uniform guess; fewer than 3 runs decide nothing ('inconclusive' says how many "
                       "would). The published setting includes the model's size; a proxy verdict tests a general claim "
                       "at this study's scale, never the published number itself. A comparison of two architectures "
                       "(more_stable_than, no_clip_needed) rests on one declared two-sided test at 0.05 over seeds. "
                       "How often each verdict errs is measured below.", "note"))
    if agg.notes.get("publication"):
        parts.append(_published_vs_measured(agg))
    return section("claims", "Published claims, tested", parts)


def _measured(v: dict) -> str:
    """k/n with the rate's interval for event kinds, else the estimate with its interval (4 decimals: a
    quantization cost of 0.0008 bits per byte is not 0.00)."""
    if not missing(v["k"]) and not missing(v["n"]):
        interval = f" [{num(v['lo'])}, {num(v['hi'])}]" if not missing(v["lo"]) else ""
        return f"{int(v['k'])}/{int(v['n'])} seeds" + interval
    interval = f" [{num(v['lo'], 4)}, {num(v['hi'], 4)}]" if not missing(v["lo"]) else ""
    return "" if missing(v["estimate"]) else f"{num(v['estimate'], 4)}{interval}"


def _published_vs_measured(agg: Aggregate) -> str:
    pub = agg.notes["publication"]
    rows = agg.headlines.fillna("").to_numpy().tolist()
    return ('<h3 id="published">Published headline figures beside the measured ones</h3>'
            + p(f"{pub['title']}. Published: {pub['seeds']} seed per architecture, {pub['steps']:,} steps on "
                 f"{pub['data']}. Source: {pub['source']}.", "note")
            + (p("Not like for like: this study uses " + " and ".join(pub["differs"]) + ".", "warn")
               if pub["differs"] else "")
            + html_table(["arch", "figure", "published", "measured here (median, range over seeds)"], rows))


def summary_section(agg: Aggregate) -> str:
    target = agg.study.get("target_ppl")
    header = ["arch", "completed/diverged/failed", "final ppl median", "final ppl IQM", "final ppl interval",
              f"final bits/{agg.unit}", "best ppl median", "best ppl interval", "interval kind"]
    header += [f"median steps to ppl {target:g}"] if target else []
    header += ["collapsed or diverged", "collapse rate [95% Wilson]", "seeds without a score"]
    rows = []
    by_variant = _variant_shown(agg, agg.summary)
    summary = _focus(agg, agg.summary)
    records = summary.sort_values(["arch", "variant"] if by_variant else "arch").to_dict("records")
    for s in records:
        k, n = collapse_k_n(s)
        row = [s["arch"], f"{s['n_completed']}/{s['n_diverged']}/{s['n_failed']} of {s['n_seeds']}",
               num(s["final_ppl_median"]), num(s["final_ppl_iqm"]),
               f"{num(s['final_ppl_lo'])}–{num(s['final_ppl_hi'])}", num(s["final_bpb_median"], 3),
               num(s["best_ppl_median"]), f"{num(s['best_ppl_lo'])}–{num(s['best_ppl_hi'])}", s["interval"]]
        if target:
            reach = s["time_to_target_median"]
            row.append("never" if not math.isfinite(reach) else step(reach))
        if n:
            row += [f"{k}/{n}", f"{num(s['collapse_rate'])} [{num(s['collapse_rate_lo'])}, {num(s['collapse_rate_hi'])}]"]
        else:
            row += ["not measurable", "evaluated too rarely for the detector"]
        dropped = int(s.get("n_dropped") or 0)
        row.append(f"{dropped}: {s['dropped']}" if dropped and not missing(s.get("dropped")) else str(dropped))
        rows.append(row)
    published = "; the last evaluation alone is in the published comparison above" if agg.study.get("published") else ""
    note = p(f"Perplexity is per {agg.unit} on the validation split. Final = exp(mean validation loss of the "
              f"last 3 evaluations), the value the statistics use{published}. A diverged run is kept and counts "
              "as infinite perplexity; a failed run (a crash) has no score.", "note")
    numeric = {2, 3, 5, 6} | ({9} if target else set())
    if by_variant:
        header, rows, numeric = _insert_variant(header, rows, [s["variant"] for s in records], numeric)
    table = html_table(header, rows, numeric=numeric)
    caveats = [p(agg.notes[key], "warn") for key in ("seed_caveat", "final_window") if agg.notes.get(key)]
    shown = [_shown(agg, f"the other {len(agg.variants) - 1} variants' rows are in summary.csv.")
             ] if len(summary) < len(agg.summary) else []
    return section("summary", "Summary over seeds", [*shown, table, note, *caveats])


def not_completed_section(agg: Aggregate) -> str:
    runs = agg.runs.sort_values(["arch", "variant", "seed"] if _variant_shown(agg, agg.runs) else ["arch", "seed"])
    bad = runs[runs["status"] != "completed"]
    expected = {(a, int(s)) for a in agg.study.get("archs", {}) for s in agg.study.get("seeds", [])}
    absent = sorted(expected - set(zip(runs["arch"], runs["seed"].astype(int))))
    parts = []
    if bad.empty and not absent:
        parts.append(p(f"All {len(runs)} runs completed."))
    if len(bad):
        rows = [[r.arch, int(r.seed), r.status, step(r.steps_done) if "steps_done" in runs else "", r.reason]
                for r in bad.itertuples(index=False)]
        header = ["arch", "seed", "status", "steps done", "reason"]
        if _variant_shown(agg, bad):
            header, rows, _ = _insert_variant(header, rows, list(bad["variant"]))
        parts.append(p(f"{len(bad)} of {len(runs)} runs did not complete, listed here with their reason. A "
                        "diverged run stays in every statistic, as infinite perplexity and as a collapse; a failed "
                        "run (a crash of the harness, not of the model) has no score and is only counted."))
        parts.append(html_table(header, rows, row_classes=list(bad["status"])))
    if absent:
        parts.append(p("Runs of the study with no run folder in the aggregate: "
                        + ", ".join(f"{a} seed {s}" for a, s in absent) + ".", "warn"))
    return section("not-completed", "Runs that did not complete", parts)


def _untested(agg: Aggregate) -> str:
    """The runs the detector could not test: too few evaluations past its history (collapse.testable)."""
    if "testable" not in agg.runs:
        return ""
    runs = agg.runs[(agg.runs["testable"].astype(str).str.lower() == "false") & (agg.runs["status"] != "failed")]
    if runs.empty:
        return ""
    listed = ", ".join(f"{r.arch} seed {int(r.seed)} ({step(getattr(r, 'n_evals', None)) or '?'} evaluations)"
                       for r in runs.sort_values(["arch", "seed"]).itertuples(index=False))
    return p("Runs the detector could not test (no evaluation past its history window), so their collapse "
             f"rate is not measured: {listed}.", "warn")


def events_section(agg: Aggregate) -> str:
    by_variant = _variant_shown(agg, agg.events)
    ev = agg.events.sort_values(["arch", "variant", "seed", "onset_step"] if by_variant else ["arch", "seed", "onset_step"])
    if ev.empty:
        return section("events", "Events", [p("The detector found no event in any run."), _untested(agg),
                                            p(DETECTOR_READS, "note")])
    notes = "note" in ev.columns
    rows = [[e["arch"], int(e["seed"]), e["type"], e["split"], step(e["onset_step"]), step(e["train_onset_step"]),
             step(e["peak_step"]), num(e["peak_value"]), f"{num(e['magnitude'])}x",
             "never" if missing(e["end_step"]) else step(e["end_step"]),
             "yes" if str(e["recovered"]).lower() == "true" else "no", num(e["score"]), num(e["threshold"])]
            + ([e["note"] if not missing(e["note"]) else ""] if notes else [])
            for e in ev.to_dict("records")]
    header = (["arch", "seed", "type", "split", "onset step", "train onset step", "peak step",
               f"peak ppl (per {agg.unit})", "magnitude", "end step", "recovered", "score", "threshold"]
              + (["note"] if notes else []))
    numeric = {4, 5, 6, 7, 8, 9, 11, 12}
    if by_variant:
        header, rows, numeric = _insert_variant(header, rows, list(ev["variant"]), numeric)
    return section("events", "Events", [
        html_table(header, rows, numeric=numeric),
        _untested(agg),
        p(DETECTOR_READS, "note"),
        p("Onset: the last evaluation still at the pre-event level, on the curve that defines the event; "
           "train onset: the same on the training curve. Magnitude: peak / pre-event perplexity. End: the first "
           "evaluation back within 10% of the pre-event level.", "note")])


def pipeline_section(agg: Aggregate) -> str:
    """Each pipeline run's own numbers (run.json's pipeline block), one row per run, whatever the pipeline."""
    columns = sorted(c for c in agg.runs.columns if c.startswith(PREFIX))
    if not columns:
        return ""
    by_variant = _variant_shown(agg, agg.runs)
    runs = agg.runs.dropna(subset=columns, how="all").sort_values(["arch", "variant", "seed"] if by_variant
                                                                 else ["arch", "seed"])
    shown = [c for c in columns if runs[c].notna().any()]
    rows = [[r["arch"], int(r["seed"])] + [_cell(c, r[c]) for c in shown] for r in runs.to_dict("records")]
    header = ["arch", "seed"] + [(c.removeprefix(PREFIX).removesuffix("_loss") + " ppl" if c.endswith("_loss")
                                  else c.removeprefix(PREFIX)).replace("_", " ") for c in shown]
    numeric = set(range(1, len(shown) + 2))
    if by_variant:
        header, rows, numeric = _insert_variant(header, rows, list(runs["variant"]), numeric)
    return section("pipelines", "Pipeline architectures", [
        html_table(header, rows, numeric=numeric),
        p("Numbers each pipeline run recorded about itself (run.json, key 'pipeline'): a loss is shown as its "
          f"perplexity per {agg.unit}; a throughput is a timing of this machine, not a model property.", "note")])


def _cell(column: str, value) -> str:
    """A pipeline number: a loss as its perplexity, large numbers as integers, small ones to 3 decimals."""
    if missing(value) or isinstance(value, str):
        return "" if missing(value) else value
    if column.endswith("_loss"):
        return num(perplexity(value))
    value = float(value)
    return step(value) if value.is_integer() or abs(value) >= 1000 else num(value, 3)


def quantization_section(agg: Aggregate, figure: str) -> str:
    """The trained models' loss increase per width (median and range over seeds), from quantization_summary."""
    summary = agg.quantization_summary
    if summary is None or (summary.empty and not agg.notes.get("quantization")):
        return ""
    settings = agg.study.get("quantize") or {}
    variant = agg.recipe_variant if _variant_shown(agg, summary) else None
    if variant is not None:  # a sweep: the recipe variant's rows, as in the figure; the rest in the csv
        summary = summary[summary["variant"].astype(str) == variant]
    final = summary[summary["final"].astype(bool)].sort_values(["arch", "bits"], ascending=[True, False])
    rows = []
    for r in final.to_dict("records"):
        full = r["bits"] == FULL_PRECISION_BITS
        rows.append([r["arch"], "full precision (fp32)" if full else step(r["bits"]), step(r["step"]), step(r["n"]),
                     num(r["loss_median"], 4), "" if full else num(r["loss_increase_median"], 4),
                     "" if full else f"{num(r['bpt_increase_median'], 4)} "
                     + (f"({num(r['bpt_increase_min'], 4)} to {num(r['bpt_increase_max'], 4)})" if r["n"] > 1
                        else "(1 seed)")])
    keep = settings.get("keep") or []
    parts = [figure] if figure else []
    if variant is not None:
        parts.insert(0, _shown(agg, f"the other {len(agg.variants) - 1} variants' rows are in "
                                    "quantization_summary.csv."))
    if rows:
        header, numeric = ["arch", "weight bits", "step", "seeds", "val loss (median, nats)",
                           "loss increase (median, nats)", f"increase in bits per {agg.unit} (median, range)"], \
            {1, 2, 3, 4, 5, 6}
        if variant is not None:
            header, rows, numeric = _insert_variant(header, rows, [variant] * len(rows), numeric)
        parts.append(html_table(header, rows, numeric=numeric))
    parts.append(p("Every parameter of two or more dimensions (linear weights, embeddings, any other matrix) is "
                   "quantized per row, symmetric, round to nearest, and dequantized; vectors (biases, norm gains) "
                   "stay as they are. Held back: " + (", ".join(keep) if keep else "nothing") + ". The loss is the "
                   "mean over the study's fixed validation batches, the ones the trainer evaluates on. "
                   + ("Per-step numbers of the weight snapshots are in quantization_summary.csv."
                      if summary.groupby("arch")["step"].nunique().max() > 1 else ""), "note"))
    if agg.notes.get("quantization"):
        parts.append(p(agg.notes["quantization"], "note"))
    return section("quantization", "Quantized weights", parts)


def params_section(agg: Aggregate) -> str:
    shape = agg.study.get("shape", {})
    mode, tolerance = shape.get("mode"), shape.get("tolerance")
    # seeds of an architecture share its shape: one row per distinct shape, so a disagreement shows
    known = agg.runs.dropna(subset=["n_params"]).drop_duplicates(["arch", "n_params", "knob_value", "deviation"])
    rows = []
    for r in known.sort_values(["arch", "seed"]).to_dict("records"):
        deviation = r["deviation"]
        if missing(deviation) or tolerance is None or mode != "matched":
            within = ""
        elif missing(r["knob"]) and r["arch"] != shape.get("reference"):
            within = "not matched: no width knob"
        else:
            within = "yes" if abs(float(deviation)) <= tolerance else "NO"
        reconstruction = {True: "yes", False: "no"}.get(r["reconstruction"], "")
        recipe = r.get("recipe_name")
        rows.append([r["arch"], r["build"] or "", "common" if missing(recipe) else recipe, reconstruction, "" if missing(r["knob"]) else r["knob"],
                     plain(r["knob_value"]),
                     step(r["n_params"]), r["reference"] or "", step(r["reference_params"]),
                     "" if missing(deviation) else f"{100 * float(deviation):+.3f}%", within,
                     "not checked" if missing(r.get("admission")) else r["admission"]])
    parts = [p(f"Shape mode: {mode}; reference: {shape.get('reference')}"
                + (f"; tolerance {100 * tolerance:g}% (matched mode)." if tolerance is not None else ".")),
             html_table(["arch", "build", "recipe", "reconstruction", "width knob", "knob value", "parameters",
                     "reference", "reference parameters", "deviation", "within tolerance", "admission"], rows,
                    numeric={5, 6, 8, 9}),
             p(admission_note(agg.runs), "note")]
    unrecorded = sorted(set(agg.runs["arch"]) - set(known["arch"]))
    if unrecorded:
        parts.append(p(f"No run of {', '.join(unrecorded)} recorded a parameter count (each failed before).",
                        "warn"))
    if known["arch"].duplicated().any():
        parts.append(p("Seeds of one architecture disagree on their shape: see the rows above.", "warn"))
    return section("params", "Parameter matching", parts)


def admission_note(runs) -> str:
    """What the admission column means: the checks every architecture passed before its runs, with the
    tolerances its runs recorded (harness/admission.py), and any warning."""
    if "admission" not in runs or runs["admission"].isna().all():
        return ("Admission: no run recorded an admission check (runs trained outside the workflow, whose "
                "admission rule checks every architecture before its runs).")
    recorded = runs.dropna(subset=["admission"])
    tol = json.loads(recorded["admission_tolerances"].dropna().iloc[0]) if recorded["admission_tolerances"].notna().any() else {}
    text = ("Admission: before any of its runs, each architecture was checked at the study's shape "
            "(harness/admission.py): causal (the logits at positions <= t unchanged when the tokens after t change) "
            f"and batch-independent, both to a max |Δ| of a logit <= {tol.get('causality', float('nan')):g} compared in "
            f"float64 ({tol.get('causality_float32', float('nan')):g} for a model that runs only in float32); logits "
            f"[B, T, V], finite at initialisation; a loss at initialisation within ±{tol.get('init_loss_warning', float('nan')):g} "
            f"nats of ln V (an error above {tol.get('init_loss_error_factor', float('nan')):g} ln V); builds and "
            "evaluation bitwise reproducible under the seed; parameters counted by unique storage equal to the "
            "shape solver's count and to model.safetensors.")
    unchecked = sorted(set(runs["arch"]) - set(recorded["arch"]))
    if unchecked:
        text += f" Not checked: {', '.join(unchecked)}."
    warned = recorded.dropna(subset=["admission_warnings"]).drop_duplicates("arch")
    for r in warned.to_dict("records"):
        text += f" Warning for {r['arch']}: {r['admission_warnings']}"
    return text


def recipe_section(agg: Aggregate) -> str:
    study = agg.study

    def show(v) -> str:
        return json.dumps(v, sort_keys=True) if isinstance(v, (list, dict)) else str(v)

    rows = [[f"recipe.{k}", show(v)] for k, v in sorted(study.get("recipe", {}).items())]
    rows += [[f"model.{k}", show(v)] for k, v in sorted(study.get("model", {}).items())]
    rows += [["data", show(study.get("data", {}))], ["seeds", show(study.get("seeds", []))],
             ["shape", show(study.get("shape", {}))],
             ["detect", show(study.get("detect") or "documented defaults (harness.collapse)")],
             ["target_ppl", show(study.get("target_ppl"))]]
    rows += [[f"archs.{name}", show(spec)] for name, spec in sorted(study.get("archs", {}).items())]
    presets = {name: spec["recipe"] for name, spec in sorted(study.get("archs", {}).items()) if spec.get("recipe")}
    said = ("Every architecture of the study follows this one recipe." if not presets else
            "Every architecture follows this common recipe except " + "; ".join(
                f"{arch}, which follows the preset {name} of harness/recipes.yaml merged over it (its run.json "
                f"holds the values)" for arch, name in presets.items()) + ".")
    return section("recipe", "Recipe", [p(said),
                                         html_table(["setting", "value"], rows)])


def provenance_section(agg: Aggregate) -> str:
    by_variant = _variant_shown(agg, agg.runs)
    runs = agg.runs.sort_values(["arch", "variant", "seed"] if by_variant else ["arch", "seed"])
    versions = sorted(c for c in runs.columns if c.startswith("version_"))
    fields = ["status", "steps_done", "wall_time_s", "device", "dtype", "threads", "config_hash", "data_sha256"]
    fields = [f for f in fields if f in runs.columns]
    shown = {"steps_done": step, "wall_time_s": lambda v: f"{float(v):,.1f}", "threads": step,
             "data_sha256": lambda v: str(v)[:12]}
    rows = [[r["arch"], int(r["seed"])] + ["" if missing(r[f]) else shown.get(f, str)(r[f]) for f in fields + versions]
            for r in runs.to_dict("records")]
    header = ["arch", "seed"] + [f.replace("_", " ") for f in fields] + [v.removeprefix("version_") for v in versions]
    if by_variant:
        header, rows, _ = _insert_variant(header, rows, list(runs["variant"]))
    return section("provenance", "Provenance", [
        html_table(header, rows, row_classes=list(runs["status"])),
        p("Wall time in seconds. data sha256 is shortened to 12 hex digits; config hash is shared by the "
           "seeds of one architecture.", "note")])


def pairs_table(agg: Aggregate) -> str:
    """One row per pair. A pair the seed counts cannot decide says so in a word, and the reason is said
    once above the table, not in every row; a pair with an architecture outside the budget is flagged."""
    if agg.pairs.empty:
        return p("One architecture: no pairs to compare.")
    by_variant = _variant_shown(agg, agg.pairs)
    pairs = _focus(agg, agg.pairs)
    pairs = pairs.sort_values(["variant", "arch_a", "arch_b"] if by_variant else ["arch_a", "arch_b"])
    undecidable = ~pairs["decidable"].astype(bool)
    rows = [[r.arch_a, r.arch_b, f"{r.n_a} vs {r.n_b}", num(r.prob_improvement),
             f"[{num(r.pi_lo)}, {num(r.pi_hi)}]" + ("" if missing(r.pi_interval) else f" {r.pi_interval}"),
             num(r.mannwhitney_p, 3), num(r.holm_p, 3), num(r.fisher_holm_p, 3), num(r.min_possible_p, 4),
             "cannot be decided with these seeds" if not r.decidable else r.verdict,
             "" if missing(r.unmatched) else f"not parameter-matched: {r.unmatched}"]
            for r in pairs.itertuples(index=False)]
    parts = []
    if undecidable.any():  # Holm corrects over the pairs of one variant
        corrected = int(pairs.groupby("variant").size().max()) if by_variant else len(pairs)
        parts.append(p(f"{int(undecidable.sum())} of {len(pairs)} pairs cannot reach significance with these seed "
                       "counts, whatever the data: the smallest p-value an exact rank test can give, times the "
                       f"{corrected} comparisons{' of its variant' if by_variant else ''}, exceeds {ALPHA}. Their cells in the matrix are greyed and "
                       "hatched; see the note under the summary for the seeds a decision needs.", "warn"))
    if not pairs["unmatched"].map(missing).all():
        parts.append(p("Pairs marked 'not parameter-matched' compare architectures of different sizes: a difference "
                       "there is partly a difference of budget.", "warn"))
    header = ["A", "B", "seeds", "P(A better)", "interval", "Mann-Whitney p", "Holm p",
              "Fisher p (collapse rates, Holm)", "smallest possible p", "verdict", "shape"]
    numeric = {3, 5, 6, 7, 8}
    if by_variant:
        header, rows, numeric = _insert_variant(header, rows, list(pairs["variant"]), numeric, at=0)
    parts.append(html_table(header, rows, numeric=numeric))
    return "".join(parts)




def pairs_note(agg: Aggregate) -> str:
    """Above the pairs of a study with many variants: the recipe variant's are shown, the others are in
    pairs.csv, with how many of them are decidable and significant (a filter of its columns, nothing
    computed here); empty when every pair is shown."""
    if agg.pairs.empty:
        return ""
    others = agg.pairs.drop(_focus(agg, agg.pairs).index)
    if others.empty:
        return ""
    significant = int((others["holm_p"].astype(float) <= ALPHA).sum())
    return _shown(agg, f"the other {len(agg.variants) - 1} variants' {len(others)} pairs are in pairs.csv "
                       f"({int(others['decidable'].astype(bool).sum())} of them decidable with their seeds, "
                       f"{significant} significant at Holm p ≤ {ALPHA}).")


def _focus(agg: Aggregate, table):
    """``table`` as the page shows it: every variant's rows with up to MAX_SIDE_BY_SIDE variants, else the
    recipe variant's alone (the rest stay in the csv)."""
    if not _variant_shown(agg, table) or agg.side_by_side:
        return table
    return table[table["variant"].astype(str) == agg.recipe_variant]


def _shown(agg: Aggregate, rest: str) -> str:
    """One line: the variant a reduced figure or table shows, why that one, and where the rest are."""
    variant = agg.recipe_variant
    why = ("the study's own recipe" if agg.notes.get("recipe_variant") == variant
           else "the first in table order (no variant of the sweep is at the study's own recipe)")
    return p(f"Shown: variant {variant}, {why}; {rest}", "note")


def variant_note(agg: Aggregate, side_by_side: bool = False) -> str:
    """The line above a per-run figure of a study with a sweep, which draws the recipe variant alone (a
    figure that can put the variants ``side_by_side`` does so with a few); empty without a sweep."""
    if not agg.multi_variant or (side_by_side and agg.side_by_side):
        return ""
    rest = ("the other variants appear in the learning-rate sensitivity and stability map."
            if not _empty(agg.lr_curves) else "the other variants' numbers are in summary.csv and pairs.csv.")
    return _shown(agg, rest)


def _variant_shown(agg: Aggregate, table) -> bool:
    """A table's variant column is shown only when the study has more than one variant."""
    return agg.multi_variant and "variant" in table.columns


def _insert_variant(header: list[str], rows: list[list], variants: list, numeric: set[int] = frozenset(),
                    at: int = 1) -> tuple[list[str], list[list], set[int]]:
    """The table with a variant column inserted at ``at`` (numeric column indices shifted)."""
    header = header[:at] + ["variant"] + header[at:]
    rows = [row[:at] + [v] + row[at:] for row, v in zip(rows, variants)]
    return header, rows, {c + 1 if c >= at else c for c in numeric}


def _setting(value) -> str:
    return "learning rate only" if str(value) == BASE_VARIANT else str(value)


def _k_n(k, n) -> str:
    return "" if missing(k) or missing(n) else f"{int(k)}/{int(n)}"


def _lr(value) -> str:
    return "" if missing(value) else f"{float(value):g}"


def _empty(table) -> bool:
    return table is None or table.empty


SENSITIVITY_METHOD = (
    "How it was decided: sensitivity after Wortsman et al. 2023, per seed the mean over the learning-rate grid of "
    "min(final loss, initial loss) minus the loss at the grid's optimum, in nats (a diverged run counts as its "
    "initial loss); each seed's optimum is the learning rate where the median loss of the seeds BEFORE it is lowest "
    "(the first seed only chooses), so a quiet seed is not rewarded for its quietness and no two seeds choose for "
    "each other; the mean over seeds with its interval ("
    + stability.INTERVAL_LABEL + "); stable lr: the largest grid learning rate up to which no learning rate is "
    "unstable (a majority of runs unstable, beyond the detector's false alarms) or unmeasured, itself stable in a "
    "majority of runs (k/n stable at it); pairs: on the learning rates both have trained runs at, the difference "
    "of mean sensitivities, each seed's optimum now the learning rate best for BOTH architectures' earlier seeds "
    "(an optimum chosen on one architecture's own seeds lands off more often the noisier they are), and its "
    "two-sided " + stability.SENSITIVITY_TEST + " p (Welch's t against Student's t with the smaller side's "
    "values less one degrees of freedom, which holds its size whatever the ratio of the two architectures' seed "
    "noise), Holm-corrected over the study's pairs.")
STABILITY_METHOD = (
    "How it was decided: a run is unstable when it diverged (ended non-finite) or the detector found a collapse "
    "or a divergence event in it; k of n runs per architecture and learning rate, no test.")
ATTRIBUTION_METHOD = (
    "How it was decided: each collapse, spike or divergence (and each diverged run's end) is compared with the "
    "stable runs of the same architecture and schedule: the runs of the same setting at the same or the next "
    "lower learning rate of the grid that had no event up to the onset (the table gives how many). Each run's "
    "diagnostics (and gradient norm) are measured as their change from the run's own level just before the "
    f"window, so what the schedule does to every run (the warmup) cancels; a diagnostic departed when, from "
    f"some point within the {LOOKBACK_LOGS} log intervals before the onset, three points in a row of the "
    f"collapsing run changed more (or less) than the stable runs' median change by over {Z_THRESHOLD:g} times "
    f"the spread the stable runs show among themselves, and by over {MIN_CHANGE:.0%}; a diagnostic already apart "
    "from the stable runs before that window is not listed. lead = onset − that step; the earliest "
    f"diagnostic(s) of an event are 'first'. An event with fewer than {MIN_CONTROLS} stable runs to compare with "
    "is not attributable. A diagnostic that leads is a precursor, not shown to be the cause.")
ABLATION_METHOD = (
    "How it was decided: unstable runs (diverged, or a collapse or divergence event) k of n with the stabiliser off "
    "and on, at the same architecture and the rest of the sweep's values (one run per seed); two-sided Fisher exact "
    "test per row, Holm-corrected over the table's rows; a row without a difference gives the smallest difference "
    "its runs could have detected.")


def sensitivity_section(agg: Aggregate, figure: str) -> str:
    """Learning-rate sensitivity per (arch, setting) and its pairs, from sensitivity(.csv, _pairs.csv)."""
    if _empty(agg.sensitivity) and _empty(agg.lr_curves):
        return ""
    parts = [figure] if figure else []
    if not _empty(agg.sensitivity):
        sens = agg.sensitivity.sort_values(["setting", "arch"], key=lambda c: c.astype(str))
        rows = [[r["arch"], _setting(r["setting"]), step(r["n_seeds"]), step(r["n_lrs"]),
                 f"{num(r['sensitivity'], 3)} [{num(r['lo'], 3)}, {num(r['hi'], 3)}]", num(r["best_final_loss"], 3),
                 "none" if missing(r["stable_lr"]) else f"{_lr(r['stable_lr'])} ({_k_n(r['stable_k'], r['stable_n'])})",
                 "" if missing(r["sentence"]) else r["sentence"]]
                for r in sens.to_dict("records")]
        parts.append(html_table(["arch", "setting", "seeds", "learning rates", "sensitivity [95% interval] (nats)",
                             "best final loss (nats)", "largest stable lr (k/n stable)", "in words"], rows,
                            numeric={2, 3, 4, 5}))
    if not _empty(agg.sensitivity_pairs):
        pairs = agg.sensitivity_pairs.sort_values(["setting", "arch_a", "arch_b"], key=lambda c: c.astype(str))
        rows = [[_setting(r["setting"]), r["arch_a"], r["arch_b"], f"{step(r['n_a'])} vs {step(r['n_b'])}",
                 num(r["difference"], 3), num(r["p"], 3), num(r["p_holm"], 3),
                 "" if missing(r["sentence"]) else r["sentence"]] for r in pairs.to_dict("records")]
        parts.append('<h3 id="lr-sensitivity-pairs">Sensitivity, pair by pair</h3>')
        parts.append(html_table(["setting", "A", "B", "seeds", "difference A − B (nats)", "Welch-Hsu p", "Holm p",
                             "in words"], rows, numeric={4, 5, 6}))
    parts.append(p(SENSITIVITY_METHOD, "note"))
    return section("lr-sensitivity", "Learning-rate sensitivity", parts)


def stability_map_section(agg: Aggregate, figure: str) -> str:
    """Unstable runs k/n per (arch, lr), one grid per setting, from lr_curves.csv."""
    if _empty(agg.lr_curves):
        return ""
    curves = agg.lr_curves
    lrs = sorted(curves["lr"].unique())
    rows = []
    for (setting, arch), g in curves.groupby([curves["setting"].astype(str), "arch"], sort=True):
        cells = {r.lr: _k_n(r.n_unstable, r.n) for r in g.itertuples(index=False)}
        rows.append([_setting(setting), arch] + [cells.get(lr, "") for lr in lrs])
    table = html_table(["setting", "arch"] + [f"lr {_lr(lr)}" for lr in lrs], rows, numeric=set(range(2, 2 + len(lrs))))
    parts = ([figure] if figure else []) + [p("Unstable runs of the seeds, k/n, per learning rate:"), table,
                                            p(STABILITY_METHOD, "note")]
    return section("stability-map", "Stability map", parts)


def attribution_section(agg: Aggregate, figure: str) -> str:
    """The diagnostics that departed from stable runs before each event, from attribution(.csv, _summary.csv)."""
    if _empty(agg.attribution) and _empty(agg.attribution_summary):
        return ""
    parts = [figure] if figure else []
    if not _empty(agg.attribution_summary):
        summary = agg.attribution_summary.sort_values(["arch", "variant"], key=lambda c: c.astype(str))
        parts.append("<ul>" + "".join(f"<li>{html.escape(str(r['sentence']))}</li>"
                                      for r in summary.to_dict("records") if not missing(r["sentence"])) + "</ul>")
    if not _empty(agg.attribution):
        att = agg.attribution.sort_values(["arch", "variant", "seed", "onset_step", "left_step", "diagnostic"],
                                          key=lambda c: c.astype(str) if c.dtype == object else c)
        records = att.to_dict("records")
        alone = (f"not attributable: fewer than {MIN_CONTROLS} stable runs of the same architecture and schedule "
                 "to compare with")
        rows = [[r["arch"], step(r["seed"]), r["event_type"], step(r["onset_step"]),
                 alone if missing(r["diagnostic"]) else r["diagnostic"], step(r["left_step"]), step(r["lead_steps"]),
                 num(r["z"], 1), "yes" if str(r["first"]).lower() == "true" else "", step(r["n_controls"])]
                for r in records]
        header = ["arch", "seed", "event", "onset step", "diagnostic", "departed at step", "lead (steps)",
                  "z against the stable runs", "first", "stable runs compared"]
        numeric = {1, 3, 5, 6, 7, 9}
        if _variant_shown(agg, att):
            header, rows, numeric = _insert_variant(header, rows, [r["variant"] for r in records], numeric)
        parts.append(html_table(header, rows, numeric=numeric))
    parts.append(p(ATTRIBUTION_METHOD, "note"))
    return section("attribution", "What preceded each collapse", parts)


def ablations_section(agg: Aggregate) -> str:
    """Unstable runs with a stabiliser off and on, from ablations.csv."""
    if _empty(agg.ablations):
        return ""
    abl = agg.ablations.sort_values(["arch", "switch", "setting"], key=lambda c: c.astype(str))
    rows = [[r["arch"], r["switch"], _setting(r["setting"]), _k_n(r["off_k"], r["off_n"]), _k_n(r["on_k"], r["on_n"]),
             num(r["p"], 3), num(r["p_holm"], 3), "" if missing(r["sentence"]) else r["sentence"]]
            for r in abl.to_dict("records")]
    return section("ablations", "Stabiliser ablations", [
        html_table(["arch", "stabiliser", "setting", "unstable, off (k/n)", "unstable, on (k/n)", "Fisher p", "Holm p",
                "in words"], rows, numeric={5, 6}),
        p(ABLATION_METHOD, "note")])


CONTROLS_METHOD = (
    "How it was decided: the positive control passes when its claim gets the expected verdict (its own declared "
    "test, at 0.05). The negative control passes when no measure the report prints tells the two copies apart: "
    "every claim about the original gets the same verdict with the copy in its place; learning-rate sensitivity "
    "by its p at 0.05 (one declared comparison, the claims' rule; the pairs table's Holm p is shown "
    "beside it); unstable runs per learning rate by Fisher's exact test, Holm over the learning rates (the "
    "stability map prints the counts without a test); final perplexity and collapse rate by the pairs table's "
    "Holm-corrected p. With this many comparisons a copy is sometimes separated by chance alone: that is what "
    "the control measures, and a failure says that a difference of that size elsewhere may be noise.")


def controls_lines(agg: Aggregate) -> str:
    """The report's opening lines about the study's controls (notes.json's controls.lines); empty without."""
    found = agg.notes.get("controls") or {}
    passed = found.get("passed") or {}
    kinds = [k for k in ("positive", "negative") if k in passed] or [None] * len(found.get("lines", []))
    lines = [p(line, "warn" if passed.get(kind) is False else "") for line, kind in zip(found.get("lines", []), kinds)]
    return f'<div id="controls-lines">{"".join(lines)}</div>' if lines else ""


def controls_section(agg: Aggregate) -> str:
    """Every comparison of each control's pair of architectures (controls.csv); empty without controls."""
    if not agg.notes.get("controls"):
        return ""
    parts, table = [], agg.controls
    if table is not None and not table.empty:
        rows = [[r["control"], f"{r['arch_a']} vs {r['arch_b']}", r["measure"], r["where"],
                 "" if missing(r["lr"]) else f"{float(r['lr']):g}",
                 "" if missing(r["p"]) else num(r["p"], 3), "" if missing(r["p_adjusted"]) else num(r["p_adjusted"], 3),
                 "yes" if str(r["separates"]).lower() == "true" else "no", r["sentence"]]
                for r in table.astype(object).to_dict("records")]
        parts.append(html_table(["control", "pair", "measure", "where", "lr", "p", "corrected p", "separates them",
                                 "in words"], rows, numeric={4, 5, 6}))
    parts.append(p(CONTROLS_METHOD, "note"))
    return section("controls", "Controls: a known effect, and two copies of one architecture", parts)
