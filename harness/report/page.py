"""The page: one self-contained HTML report of a study: figures as base64 PNG, no script, no network.

It reads only what `aggregate` wrote (and the published curves the report rule declares), so a report
can be rebuilt or restyled without the runs. The page is byte-for-byte deterministic (sorted inputs,
PNGs saved without a Software stamp, no time stamps). No torch here.
"""

from __future__ import annotations

import html
from importlib import resources
from pathlib import Path
from string import Template

import matplotlib

from harness.files import write_atomic
from harness.report import sections as s
from harness.report.error_rates import error_rates_section
from harness.report.looks import looks_section
from harness.report.figures import STYLE, figures, png
from harness.report.tables import load


def render(aggregate_dir: Path, out_html: Path, figures_dir: Path | None = None,
           published_curves: Path | None = None) -> None:
    """Write the study's report from the tables in ``aggregate_dir`` (and each figure to ``figures_dir``),
    overlaying ``published_curves`` (a long CSV) on the trajectories when given."""
    agg = load(aggregate_dir, published_curves)
    study = agg.study
    with matplotlib.rc_context(STYLE):
        pngs = {}
        for name, (fig, caption) in figures(agg).items():
            pngs[name] = (png(fig), caption)
    if figures_dir is not None:
        for name, (image, _) in pngs.items():
            write_atomic(Path(figures_dir) / f"{name}.png", image)

    def figure(name: str) -> str:
        return s.img(name, *pngs[name]) if name in pngs else ""

    data = study.get("data", {})
    recipe = study.get("recipe", {})
    title = f"{study.get('name', 'study')}: multi-seed comparison and collapse report"
    head = [f"<h1>{html.escape(title)}</h1>"]
    if study.get("smoke"):
        head.append(f'<div class="banner" id="smoke-banner">Smoke study: each run trains only '
                    f"{recipe.get('steps', 0):,} steps. It exercises every stage of the harness but is far too "
                    "short and small to support or refute any claim below.</div>")
    if study.get("description"):
        head.append(s.p(study["description"]))
    head.append(s.p(f"{len(agg.archs)} architectures ({', '.join(agg.archs)}) × {len(study.get('seeds', []))} seeds "
                   f"on {data.get('name', '?')} ({data.get('tokens', '?')}), {recipe.get('steps', 0):,} steps per run; "
                   f"{len(agg.runs)} runs aggregated."))
    looks = looks_section(agg)
    sections = [
        ("claims", "claims"), *([("looks", "looks")] if looks else []), ("error-rates", "error rates"), ("summary", "summary"), ("not-completed", "runs not completed"),
        ("trajectories", "trajectories"), ("distributions", "final and best"), ("collapse-rate", "collapse rate"),
        ("pairs", "pairs"), ("grad-norm", "gradient norm")]
    quantization = s.quantization_section(agg, figure("quantization"))
    sections += [("quantization", "quantization")] if quantization else []
    stability = [  # the learning-rate sweep and the diagnostics: each only when its tables hold rows
        ("lr-sensitivity", "lr sensitivity", s.sensitivity_section(agg, figure("lr_curves"))),
        ("stability-map", "stability map", s.stability_map_section(agg, figure("stability_map"))),
        ("attribution", "collapse precursors", s.attribution_section(agg, figure("diagnostic_traces"))),
        ("ablations", "ablations", s.ablations_section(agg))]
    sections += [(anchor, name) for anchor, name, html_ in stability if html_]
    sections += [("events", "events")]
    sections += [("pipelines", "pipelines")] if any(c.startswith(s.PREFIX) for c in agg.runs.columns) else []
    sections += [("params", "parameters"), ("recipe", "recipe"), ("provenance", "provenance")]
    head.append("<nav>" + "".join(f'<a href="#{a}">{html.escape(t)}</a>' for a, t in sections) + "</nav>")
    body = head + [
        s.claims_section(agg),
        looks,
        error_rates_section(),
        s.summary_section(agg),
        s.not_completed_section(agg),
        s.section("trajectories", "Validation perplexity over training", [s.variant_note(agg), figure("trajectories")]),
        s.section("distributions", "Final and best perplexity per seed",
                  [s.variant_note(agg, side_by_side=True), figure("distributions")]),
        s.section("collapse-rate", "Collapse rate", [s.variant_note(agg, side_by_side=True), figure("collapse_rate")]),
        s.section("pairs", "Pairwise comparison", [s.pairs_note(agg), figure("pairs"), s.pairs_table(agg)]),
        s.section("grad-norm", "Gradient norm",
                  [s.variant_note(agg), figure("grad_norm") or s.p("No gradient norm was logged.")]),
        quantization,
        *(html_ for _, _, html_ in stability if html_),
        s.events_section(agg),
        s.pipeline_section(agg),
        s.params_section(agg),
        s.recipe_section(agg),
        s.provenance_section(agg),
    ]
    template = Template(resources.files("harness").joinpath("templates/report.html").read_text())
    page = template.substitute(title=html.escape(title), body="\n".join(body))
    write_atomic(Path(out_html), page)
