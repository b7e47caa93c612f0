"""report, stability part: the learning-rate sensitivity, stability map, attribution and ablation sections
and their figures, from hand-made aggregate tables in the contracts' columns (harness.contracts); a study
without a sweep shows none of it, and the variant column appears only with more than one variant.

The aggregate folder is written here by hand (not by `aggregate`), so these tests read only the tables'
contracts: 3 architectures x 4 learning rates x 3 seeds, one setting, two collapses with attribution."""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from harness import stats
from harness.claims import HEADLINE_COLUMNS
from harness.contracts import (ABLATION_COLUMNS, ATTRIBUTION_COLUMNS, ATTRIBUTION_SUMMARY_COLUMNS, BASE_VARIANT,
                               CLAIM_COLUMNS, EVENT_COLUMNS, ID_COLUMNS, LR_CURVE_COLUMNS, METRIC_COLUMNS,
                               QUANTIZATION_COLUMNS, QUANTIZATION_SUMMARY_COLUMNS, SENSITIVITY_COLUMNS,
                               SENSITIVITY_PAIR_COLUMNS)
from harness.report import figures, page as report, sections as report_sections, tables

ARCHS = ["mamba", "memnls", "transformer"]
LRS = [1e-3, 3e-3, 1e-2, 3e-2]
SEEDS = [0, 1, 2]
STEPS, EVAL_EVERY, LOG_EVERY = 400, 20, 10
INITIAL = math.log(256)
# (arch, lr) -> seeds that diverged at it
DIVERGED = {("transformer", 3e-2): {0, 1}, ("memnls", 3e-2): {2}}
# the two collapses with an attribution: (arch, lr, seed) -> onset step
EVENTS = {("transformer", 1e-2, 1): 300, ("memnls", 3e-2, 0): 240}
NEW_SECTIONS = ["lr-sensitivity", "stability-map", "attribution", "ablations"]
NEW_FIGURES = ["lr_curves", "stability_map", "diagnostic_traces"]
PNG_URI = re.compile(r'<img alt="([^"]+)" src="data:image/png;base64,([^"]+)">')


def sections(page: str) -> dict[str, str]:
    return dict(re.findall(r'<section id="([^"]+)">(.*?)</section>', page, flags=re.S))


def variant_of(lr: float, sweep: bool) -> str:
    return f"lr={lr:g}" if sweep else BASE_VARIANT


def _unstable(arch: str, lr: float) -> set[int]:
    return DIVERGED.get((arch, lr), set()) | {s for (a, l, s) in EVENTS if (a, l) == (arch, lr)}


def _final(arch: str, lr: float, seed: int) -> float:
    """A final loss that dips at a middle lr and differs per architecture and seed."""
    return 1.4 + 0.1 * ARCHS.index(arch) + 0.15 * abs(math.log10(lr) + 2.25) + 0.01 * seed


def _runs_and_curves(study: str, sweep: bool):
    runs, traj, events = [], [], []
    for arch in ARCHS:
        for lr in (LRS if sweep else [3e-3]):
            variant = variant_of(lr, sweep)
            for seed in SEEDS:
                diverged = sweep and seed in DIVERGED.get((arch, lr), set())
                onset = EVENTS.get((arch, lr, seed)) if sweep else None
                final = _final(arch, lr, seed)
                end = STEPS // 2 if diverged else STEPS
                runs.append({"study": study, "arch": arch, "variant": variant, "seed": seed,
                             "status": "diverged" if diverged else "completed",
                             "reason": "non-finite training loss" if diverged else "", "build": arch,
                             "recipe_name": "common", "n_params": 120000, "reference": "transformer",
                             "reference_params": 120000, "deviation": 0.0, "shape_mode": "matched",
                             "knob": "d_model", "knob_value": 64, "reconstruction": True,
                             "config_hash": "0000beefcafe0000", "device": "cpu", "dtype": "float32", "threads": 1,
                             "wall_time_s": 10.0, "steps_done": end, "sweep_lr": lr,
                             "final_smoothed_loss": math.inf if diverged else final, "best_loss": final,
                             "n_evals": end // EVAL_EVERY, "testable": True})
                for s in range(0, end + 1, EVAL_EVERY):
                    loss = final + (INITIAL - final) * math.exp(-s / 60)
                    if onset is not None and s >= onset:
                        loss += 1.5 * math.exp(-(s - onset) / 80)
                    if diverged and s == end:
                        loss = math.nan
                    traj.append((study, arch, variant, seed, s, "val", "loss", loss))
                for s in range(LOG_EVERY, end + 1, LOG_EVERY):
                    traj.append((study, arch, variant, seed, s, "train", "loss",
                                 final + (INITIAL - final) * math.exp(-s / 60) - 0.02))
                    traj.append((study, arch, variant, seed, s, "train", "grad_norm", 1.0 + 0.1 * math.sin(s)))
                    rise = 0.0 if onset is None else 30.0 / (1 + math.exp(-(s - (onset - 50)) / 8))
                    traj.append((study, arch, variant, seed, s, "train", "attn_logit_max/blocks.0.attn", 8.0 + rise))
                    traj.append((study, arch, variant, seed, s, "train", "grad_rms/embed",
                                 1e-3 * (1 + (0 if onset is None else 20.0 / (1 + math.exp(-(s - (onset - 20)) / 5))))))
                if onset is not None:
                    events.append({"study": study, "arch": arch, "variant": variant, "seed": seed, "type": "collapse",
                                   "split": "val", "onset_step": onset, "train_onset_step": onset,
                                   "peak_step": onset + EVAL_EVERY, "end_step": math.nan, "recovered": False,
                                   "peak_value": math.exp(final + 1.5), "magnitude": 4.5, "score": 9.0,
                                   "threshold": 6.0, "note": ""})
    traj = pd.DataFrame(traj, columns=ID_COLUMNS + METRIC_COLUMNS[:4]).assign(wall_time=0.0)
    return pd.DataFrame(runs), traj, pd.DataFrame(events, columns=ID_COLUMNS + EVENT_COLUMNS)


def _summary_and_pairs(runs: pd.DataFrame):
    """Per (arch, variant) summary rows and per-variant pairs, in stats' columns (values made up, not computed)."""
    summary, pairs = [], []
    for (arch, variant), g in runs.groupby(["arch", "variant"]):
        n_div = int((g["status"] == "diverged").sum())
        ppl = float(np.exp(g["best_loss"].median()))
        summary.append({"arch": arch, "variant": variant, "n_seeds": len(g), "n_completed": len(g) - n_div,
                        "n_diverged": n_div, "n_failed": 0, "final_ppl_median": ppl, "final_ppl_iqm": ppl,
                        "final_ppl_lo": ppl * 0.98, "final_ppl_hi": ppl * 1.02, "best_ppl_median": ppl,
                        "best_ppl_iqm": ppl, "best_ppl_lo": ppl * 0.98, "best_ppl_hi": ppl * 1.02,
                        "final_bpb_median": math.log2(ppl), "time_to_target_median": math.nan,
                        "collapse_count": n_div, "collapse_n": len(g), "collapse_rate": n_div / len(g),
                        "collapse_rate_lo": 0.0, "collapse_rate_hi": 0.7, "interval": "range", "n_dropped": 0,
                        "dropped": ""})
    for variant in sorted(set(runs["variant"])):
        for i, a in enumerate(ARCHS):
            for b in ARCHS[i + 1:]:
                pairs.append({"variant": variant, "arch_a": a, "arch_b": b, "n_a": 3, "n_b": 3,
                              "prob_improvement": 1.0, "pi_lo": 0.4, "pi_hi": 1.0,
                              "pi_interval": stats.PI_INTERVAL_LABEL, "mannwhitney_p": 0.1, "holm_p": 0.3,
                              "fisher_p": 1.0, "min_possible_p": 0.1, "verdict": "no difference detectable",
                              "fisher_holm_p": 1.0, "n_dropped_a": 0, "n_dropped_b": 0,
                              "mannwhitney_method": "exact", "decidable": False, "unmatched": ""})
    return pd.DataFrame(summary), pd.DataFrame(pairs)


def _stability_tables(runs: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The six stability tables, numbers written by hand from the fixture's design (not computed)."""
    curves = []
    for arch in ARCHS:
        for lr in LRS:
            k, n_div = len(_unstable(arch, lr)), len(DIVERGED.get((arch, lr), set()))
            finals = [INITIAL if s in DIVERGED.get((arch, lr), set()) else _final(arch, lr, s) for s in SEEDS]
            curves.append({"arch": arch, "setting": BASE_VARIANT, "lr": lr, "n": 3, "n_unstable": k,
                           "unstable_rate": k / 3, "initial_loss": INITIAL, "final_loss_median": float(np.median(finals)),
                           "final_loss_min": min(finals), "final_loss_max": max(finals), "n_diverged": n_div})
    sensitivity = [{"arch": arch, "setting": BASE_VARIANT, "n_seeds": 3, "n_lrs": 4, "sensitivity": 0.2 + 0.3 * i,
                    "lo": 0.1 + 0.3 * i, "hi": 0.3 + 0.3 * i, "best_final_loss": 1.4 + 0.1 * i,
                    "stable_lr": 1e-2 if arch != "mamba" else 3e-2, "stable_k": 3 if arch == "mamba" else 2,
                    "stable_n": 3, "sentence": f"{arch}: sensitivity {0.2 + 0.3 * i:.2f} nats."}
                   for i, arch in enumerate(ARCHS)]
    sens_pairs = [{"setting": BASE_VARIANT, "arch_a": a, "arch_b": b, "n_a": 3, "n_b": 3, "difference": -0.3,
                   "p": 0.1, "p_holm": 0.3, "sentence": f"{a} vs {b}: no difference detectable."}
                  for i, a in enumerate(ARCHS) for b in ARCHS[i + 1:]]
    attribution = []
    for (arch, lr, seed), onset in EVENTS.items():
        for diagnostic, lead, first in (("attn_logit_max/blocks.0.attn", 70, True), ("grad_rms/embed", 30, False)):
            attribution.append({"arch": arch, "variant": variant_of(lr, True), "seed": seed, "event_type": "collapse",
                                "onset_step": onset, "diagnostic": diagnostic, "left_step": onset - lead,
                                "lead_steps": lead, "z": 8.5, "first": first, "n_controls": 4})
    # memnls' diverged run at lr 0.03 ends at STEPS // 2 with one stable run to compare with: not attributable
    attribution.append({"arch": "memnls", "variant": variant_of(3e-2, True), "seed": 2, "event_type": "divergence",
                        "onset_step": STEPS // 2, "diagnostic": "", "left_step": math.nan, "lead_steps": math.nan,
                        "z": math.nan, "first": False, "n_controls": 1})
    attribution_summary = [{"arch": arch, "variant": variant_of(lr, True), "n_events": 1 + (arch == "memnls"),
                            "n_attributed": 1, "n_no_control": int(arch == "memnls"),
                            "leading": "attn_logit_max", "k": 1, "median_lead": 70,
                            "sentence": f"{arch} at {variant_of(lr, True)}: attn_logit_max departed first from 4 "
                                        f"stable runs in 1 of 1 compared events, a median 70 steps before the onset."}
                           for (arch, lr, seed) in EVENTS]
    ablations = [{"arch": "transformer", "switch": "qk_norm", "setting": "lr=0.03", "off_k": 2, "off_n": 3,
                  "on_k": 0, "on_n": 3, "p": 0.4, "p_holm": 1.0, "sentence": "transformer: qk_norm 2/3 vs 0/3 unstable, p = 0.4."}]
    return {"lr_curves": pd.DataFrame(curves, columns=LR_CURVE_COLUMNS),
            "sensitivity": pd.DataFrame(sensitivity, columns=SENSITIVITY_COLUMNS),
            "sensitivity_pairs": pd.DataFrame(sens_pairs, columns=SENSITIVITY_PAIR_COLUMNS),
            "attribution": pd.DataFrame(attribution, columns=ATTRIBUTION_COLUMNS),
            "attribution_summary": pd.DataFrame(attribution_summary, columns=ATTRIBUTION_SUMMARY_COLUMNS),
            "ablations": pd.DataFrame(ablations, columns=ABLATION_COLUMNS)}


EMPTY_STABILITY = {"lr_curves": LR_CURVE_COLUMNS, "sensitivity": SENSITIVITY_COLUMNS,
                   "sensitivity_pairs": SENSITIVITY_PAIR_COLUMNS, "attribution": ATTRIBUTION_COLUMNS,
                   "attribution_summary": ATTRIBUTION_SUMMARY_COLUMNS, "ablations": ABLATION_COLUMNS}


def write_aggregate(out: Path, sweep: bool) -> Path:
    """An aggregate folder in the contracts' columns: with an lr sweep (4 variants) or without (one)."""
    out.mkdir(parents=True, exist_ok=True)
    name = "sweep" if sweep else "plain"
    study = {"name": name, "description": "hand-made tables for the report's stability sections", "smoke": False,
             "data": {"name": "tinyshakespeare", "tokens": "bytes"}, "archs": {a: {"build": a} for a in ARCHS},
             "seeds": SEEDS, "model": {"d_model": 64}, "shape": {"mode": "matched", "reference": "transformer",
                                                                  "tolerance": 0.01},
             "recipe": {"steps": STEPS, "lr": 3e-3, "eval_every": EVAL_EVERY, "grad_clip": 1.0},
             "sweep": {"lr": LRS} if sweep else {}, "detect": {}, "target_ppl": None}
    runs, traj, events = _runs_and_curves(name, sweep)
    summary, pairs = _summary_and_pairs(runs)
    written = {"runs": runs, "trajectories": traj, "events": events, "summary": summary, "pairs": pairs,
               "claims": pd.DataFrame(columns=CLAIM_COLUMNS), "headlines": pd.DataFrame(columns=HEADLINE_COLUMNS),
               "quantization": pd.DataFrame(columns=QUANTIZATION_COLUMNS),
               "quantization_summary": pd.DataFrame(columns=QUANTIZATION_SUMMARY_COLUMNS)}
    if sweep:
        written.update(_stability_tables(runs))
    else:
        written.update({k: pd.DataFrame(columns=c) for k, c in EMPTY_STABILITY.items()})
    for table, df in written.items():
        df.to_csv(out / f"{table}.csv", index=False)
    (out / "study.json").write_text(json.dumps(study))
    (out / "notes.json").write_text(json.dumps({"seed_caveat": "", "final_window": "", "publication": None,
                                                "quantization": "", "recipe_variant": variant_of(3e-3, sweep)}))
    return out


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    root = tmp_path_factory.mktemp("swept")
    agg = write_aggregate(root / "agg", sweep=True)
    report.render(agg, root / "report.html", figures_dir=root / "figures")
    return root, (root / "report.html").read_text()


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    root = tmp_path_factory.mktemp("plain")
    agg = write_aggregate(root / "agg", sweep=False)
    report.render(agg, root / "report.html", figures_dir=root / "figures")
    return root, (root / "report.html").read_text()


def test_each_new_section_and_figure_is_there_as_a_valid_png_and_written_to_the_figures_folder(swept):
    root, page = swept
    found = list(sections(page))
    assert [s for s in found if s in NEW_SECTIONS] == NEW_SECTIONS
    assert found.index("ablations") < found.index("events")
    assert all(f'href="#{anchor}"' in page for anchor in NEW_SECTIONS)  # in the navigation bar
    images = dict(PNG_URI.findall(page))
    for name in NEW_FIGURES:
        png = base64.b64decode(images[name], validate=True)
        assert png.startswith(b"\x89PNG\r\n\x1a\n")
        with Image.open(io.BytesIO(png)) as im:
            width, height = im.size
            im.verify()
        assert width >= 300 and height >= 200
        assert (root / "figures" / f"{name}.png").read_bytes() == png
    titles = dict(re.findall(r'<section id="([^"]+)"><h2>(.*?)</h2>', page))
    assert [titles[a] for a in NEW_SECTIONS] == ["Learning-rate sensitivity", "Stability map",
                                                 "What preceded each collapse", "Stabiliser ablations"]


def test_rerender_is_byte_identical(swept, tmp_path):
    root, page = swept
    report.render(root / "agg", tmp_path / "again.html")
    assert (tmp_path / "again.html").read_text() == page


def test_sensitivity_section_shows_the_tables_numbers_and_says_how_it_was_decided(swept):
    _, page = swept
    sens = sections(page)["lr-sensitivity"]
    assert "0.200 [0.100, 0.300]" in sens  # mamba's sensitivity with its interval
    assert "<td>0.03 (3/3)</td>" in sens and sens.count("<td>0.01 (2/3)</td>") == 2  # stable lr (k/n)
    assert "<td>learning rate only</td>" in sens
    assert sens.count("vs") >= 3 and '<td class="num">0.100</td><td class="num">0.300</td>' in sens  # p, Holm p
    assert "Wortsman et al. 2023" in sens and "Welch-Hsu t-test p" in sens and "seeds BEFORE it" in sens and "measured coverage" in sens and "Holm" in sens
    assert "mamba: sensitivity 0.20 nats." in sens


def test_stability_map_cells_say_the_k_of_n_from_the_table(swept):
    root, page = swept
    agg = tables.load(root / "agg")
    fig = figures.fig_stability_map(agg)
    ax = fig.axes[0]
    cells = {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in ax.texts}
    for r in agg.lr_curves.itertuples(index=False):
        assert cells[(ARCHS.index(r.arch), LRS.index(r.lr))] == f"{r.n_unstable}/{r.n}"
    assert cells[(ARCHS.index("transformer"), LRS.index(3e-2))] == "2/3"
    assert cells[(ARCHS.index("memnls"), LRS.index(3e-2))] == "2/3"  # one divergence, one collapse
    assert cells[(ARCHS.index("transformer"), LRS.index(1e-2))] == "1/3"
    grid = sections(page)["stability-map"]
    row = re.search(r"<td>transformer</td>(.*?)</tr>", grid).group(1)
    assert re.findall(r'<td class="num">(.*?)</td>', row) == ["0/3", "0/3", "1/3", "2/3"]
    assert "diverged" in grid  # how instability was decided


def test_lr_curves_mark_diverged_runs_and_draw_the_initial_loss(swept):
    root, _ = swept
    fig = figures.fig_lr_curves(tables.load(root / "agg"))
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    crosses = [line for line in ax.get_lines() if line.get_marker() == "x"]
    assert len(crosses) == 2  # transformer and memnls at lr 0.03
    assert sorted(t.get_text() for t in ax.texts) == ["1/3 div.", "2/3 div."]
    dashed = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
    assert len(dashed) == 1 and dashed[0].get_ydata()[0] == pytest.approx(INITIAL)


def test_attribution_section_has_the_sentences_a_compact_table_and_traces(swept):
    root, page = swept
    att = sections(page)["attribution"]
    assert "transformer at lr=0.01: attn_logit_max departed first from 4 stable runs" in att
    assert att.count("<li>") == 2
    assert att.count("<td>attn_logit_max/blocks.0.attn</td>") == 2 and att.count("<td>grad_rms/embed</td>") == 2
    assert "<th>variant</th>" in att and "<td>lr=0.01</td>" in att
    assert "<th>stable runs compared</th>" in att and att.count('<td class="num">4</td></tr>') == 4
    # the event with one stable run: listed as not attributable, with its count
    row = re.search(r"<tr><td>memnls</td><td>lr=0.03</td><td class=\"num\">2</td>.*?</tr>", att).group(0)
    assert "not attributable: fewer than 2 stable runs of the same architecture and schedule" in row
    assert row.endswith('<td class="num">1</td></tr>')
    # how a precursor was decided: against stable runs of the same architecture and schedule
    note = html.unescape(att[att.index("How it was decided"):])
    assert "compared with the stable runs of the same architecture and schedule" in note
    assert "4.5 times the spread the stable runs show among themselves" in note and "by over 10%" in note
    assert "precursor, not shown to be the cause" in att
    fig = figures.fig_diagnostic_traces(tables.load(root / "agg"))
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == ["memnls lr=0.03 s0: collapse at 240",
                                                 "transformer lr=0.01 s1: collapse at 300"]
    for ax in panels:
        xs = sorted(float(line.get_xdata()[0]) for line in ax.get_lines()
                    if len(line.get_xdata()) == 2 and line.get_xdata()[0] == line.get_xdata()[1])
        onset = 240.0 if ax.get_title().startswith("memnls") else 300.0
        assert xs == [onset - 70, onset - 30, onset] or xs == [onset - 70, onset]  # left step(s) and onset


def test_diagnostic_traces_are_bounded(swept, tmp_path):
    root, _ = swept
    agg = tables.load(root / "agg")
    many = pd.concat([agg.attribution.assign(seed=seed, onset_step=agg.attribution["onset_step"] + seed)
                      for seed in range(5)], ignore_index=True)
    agg.attribution = many
    fig = figures.fig_diagnostic_traces(agg)
    assert len([ax for ax in fig.axes if ax.get_title()]) == figures.MAX_TRACES
    assert "six" in figures.caption("diagnostic_traces") and figures.MAX_TRACES == 6


def test_ablations_section(swept):
    _, page = swept
    abl = sections(page)["ablations"]
    assert "<td>qk_norm</td><td>lr=0.03</td><td>2/3</td><td>0/3</td>" in abl
    assert "Fisher" in abl and 'Holm' in abl and '<td class="num">0.400</td><td class="num">1.000</td>' in abl


def test_a_study_without_a_sweep_has_none_of_it_and_no_variant_column(plain):
    root, page = plain
    found = sections(page)
    assert not set(NEW_SECTIONS) & set(found)
    assert not any(f'href="#{anchor}"' in page for anchor in NEW_SECTIONS)
    assert not set(NEW_FIGURES) & {name for name, _ in PNG_URI.findall(page)}
    assert sorted(p.stem for p in (root / "figures").glob("*.png")) == sorted(
        ["trajectories", "distributions", "collapse_rate", "pairs", "grad_norm"])
    assert "<th>variant</th>" not in page and ">base<" not in page


def test_the_variant_column_appears_only_with_more_than_one_variant(swept):
    _, page = swept
    found = sections(page)
    for anchor in ("summary", "pairs", "provenance", "events", "not-completed"):
        assert "<th>variant</th>" in found[anchor], anchor
    assert re.search(r"<td>transformer</td><td>lr=0.03</td><td>[01]</td><td>diverged</td>", found["not-completed"])
    # four variants, more than MAX_SIDE_BY_SIDE: the pairs and the summary show the study's own recipe (lr 3e-3)
    assert re.search(r"<tr><td>lr=0.003</td><td>mamba</td><td>memnls</td>", found["pairs"])
    assert "<td>lr=0.001</td>" not in found["pairs"]
    summary_rows = re.findall(r"<tr><td>transformer</td><td>(lr=[0-9.]+)</td>", found["summary"])
    assert summary_rows == ["lr=0.003"]
    assert "Shown: variant lr=0.003, the study's own recipe; the other 3 variants' rows are in summary.csv." \
        in html.unescape(found["summary"])


def test_the_loader_requires_every_stability_table(tmp_path):
    agg = write_aggregate(tmp_path / "agg", sweep=True)
    (agg / "attribution_summary.csv").unlink()
    with pytest.raises(FileNotFoundError, match="attribution_summary.csv"):
        tables.load(agg)
    agg = write_aggregate(tmp_path / "agg2", sweep=True)
    pd.read_csv(agg / "lr_curves.csv").drop(columns="n_diverged").to_csv(agg / "lr_curves.csv", index=False)
    with pytest.raises(ValueError, match="n_diverged"):
        tables.load(agg)


def test_one_panel_per_setting(swept):
    root, _ = swept
    agg = tables.load(root / "agg")
    agg.lr_curves = pd.concat([agg.lr_curves.assign(setting="qk_norm=0"),
                               agg.lr_curves.assign(setting="qk_norm=1", n_unstable=0, unstable_rate=0.0,
                                                    n_diverged=0)], ignore_index=True)
    curves = figures.fig_lr_curves(agg)
    assert [ax.get_title() for ax in curves.axes if ax.get_title()] == ["qk_norm=0", "qk_norm=1"]
    stability = figures.fig_stability_map(agg)
    panels = [ax for ax in stability.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == ["qk_norm=0", "qk_norm=1"]
    assert {t.get_text() for t in panels[1].texts} == {"0/3"}
    grid = report_sections.stability_map_section(agg, "")
    assert grid.count("<td>qk_norm=1</td>") == len(ARCHS)  # one grid row per architecture and setting


# --- many variants: the page does not grow with them ----------------------------------------------------------
Z_LOSSES = [0, 0.001, 0.01]  # x LRS: 12 variants; the study's own recipe is lr 3e-3, z_loss 0
RECIPE = "lr=0.003,z_loss=0"
OFF_SCALE = 30.0  # transformer's final loss at lr 0.03, z_loss 0.01: far above the initial loss (5.5)


def _rename(table: pd.DataFrame, z: float) -> pd.DataFrame:
    if "variant" in table.columns:
        table = table.assign(variant=table["variant"].astype(str) + f",z_loss={z:g}")
    if "setting" in table.columns:
        table = table.assign(setting=f"z_loss={z:g}")
    return table


def _quantization_summary(runs: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for i, (arch, variant) in enumerate(sorted(set(zip(runs["arch"], runs["variant"])))):
        for bits, bpt in ((32, 0.0), (8, 0.001 * (1 + i)), (4, 0.01 * (1 + i))):
            rows.append({"arch": arch, "variant": variant, "step": STEPS, "final": True, "bits": bits, "n": 3,
                         "loss_median": 1.5 + bpt, "loss_increase_median": bpt, "loss_increase_min": bpt,
                         "loss_increase_max": bpt, "bpt_increase_median": bpt / math.log(2),
                         "bpt_increase_min": 0.9 * bpt / math.log(2), "bpt_increase_max": 1.1 * bpt / math.log(2)})
    return pd.DataFrame(rows, columns=QUANTIZATION_SUMMARY_COLUMNS)


def write_many(out: Path, z_losses: list[float], lrs: list[float], recipe: str | None = RECIPE) -> Path:
    """The swept aggregate folder widened to lrs x z_losses variants (its tables copied per z-loss value), with
    a quantization summary per variant; one z-loss value makes an lr-only study of len(lrs) variants."""
    base = write_aggregate(out / "lr", sweep=True)
    out.mkdir(parents=True, exist_ok=True)
    keep = {variant_of(lr, True) for lr in lrs}
    for path in sorted(base.glob("*.csv")):
        table = pd.read_csv(path)
        if "variant" in table.columns:
            table = table[table["variant"].astype(str).isin(keep)]
        if "lr" in table.columns:
            table = table[table["lr"].isin(lrs)]
        if len(z_losses) > 1:
            table = pd.concat([_rename(table, z) for z in z_losses], ignore_index=True)
        if path.stem == "pairs" and len(z_losses) > 1:  # one variant's pairs decided, one of them significant
            decided = table["variant"] == "lr=0.01,z_loss=0.01"
            table.loc[decided, "decidable"] = True
            table.loc[decided & (table["arch_a"] == "mamba") & (table["arch_b"] == "memnls"), "holm_p"] = 0.01
        if path.stem == "lr_curves" and len(z_losses) > 1:
            off = (table["arch"] == "transformer") & (table["lr"] == 3e-2) & (table["setting"] == "z_loss=0.01")
            table.loc[off, ["final_loss_median", "final_loss_max"]] = OFF_SCALE
        table.to_csv(out / path.name, index=False)
    _quantization_summary(pd.read_csv(out / "runs.csv")).to_csv(out / "quantization_summary.csv", index=False)
    study = json.loads((base / "study.json").read_text())
    study["sweep"] = {"lr": lrs, **({"z_loss": z_losses} if len(z_losses) > 1 else {})}
    (out / "study.json").write_text(json.dumps(study))
    notes = json.loads((base / "notes.json").read_text())
    (out / "notes.json").write_text(json.dumps({**notes, "recipe_variant": recipe}))
    return out


@pytest.fixture(scope="module")
def many(tmp_path_factory):
    root = tmp_path_factory.mktemp("many")
    agg = write_many(root / "agg", Z_LOSSES, LRS)
    report.render(agg, root / "report.html")
    return root, html.unescape((root / "report.html").read_text()), _panels(tables.load(agg))


def _panels(agg: tables.Aggregate) -> dict[str, tuple[list[str], tuple[int, int]]]:
    """figure name -> (its panels' titles, pixel size)"""
    out = {}
    for name, (fig, _) in figures.figures(agg).items():
        with Image.open(io.BytesIO(figures.png(fig))) as im:
            out[name] = ([ax.get_title() for ax in fig.axes if ax.get_title()], im.size)
    return out


def test_the_figures_do_not_grow_with_the_variants_except_the_per_setting_panels(many, tmp_path):
    root, page, wide = many
    agg = tables.load(root / "agg")
    assert len(agg.variants) == 12 and agg.recipe_variant == RECIPE and not agg.side_by_side
    two = tables.load(write_many(tmp_path / "two", [0], [3e-3, 1e-2], recipe="lr=0.003"))
    assert len(two.variants) == 2 and two.side_by_side
    narrow = _panels(two)
    assert set(wide) == set(narrow)
    assert len(PNG_URI.findall(page)) == len(wide)
    per_setting = {"lr_curves", "stability_map"}
    for name in set(wide) - per_setting - {"diagnostic_traces"}:  # traces: up to six events, whatever the variants
        (t_wide, (w_wide, h_wide)), (t_narrow, (w_narrow, h_narrow)) = wide[name], narrow[name]
        assert len(t_wide) <= len(t_narrow) and w_wide <= w_narrow and h_wide <= h_narrow, name
    assert narrow["pairs"][0] == ["lr=0.003", "lr=0.01"]  # two variants: side by side
    for name in per_setting:
        assert len(wide[name][0]) == len(Z_LOSSES) and len(narrow[name][0]) == 1, name
    found = sections(page)
    line = f"Shown: variant {RECIPE}, the study's own recipe; the other variants appear in the learning-rate " \
           "sensitivity and stability map."
    for anchor in ("trajectories", "distributions", "collapse-rate", "grad-norm"):
        assert found[anchor].count(line) == 1, anchor
    # the recipe variant alone is drawn: its 3 seeds per architecture, one pairs matrix
    assert wide["trajectories"][0] == [f"{a} (3 seeds)" for a in ARCHS]
    assert wide["pairs"][0] == ["probability of improvement [interval]"]


def test_the_quantization_table_shows_the_recipe_variant_only_and_names_it(many):
    _, page, _ = many
    quant = sections(page)["quantization"]
    assert "<th>variant</th>" in quant
    assert set(re.findall(r"<td>(lr=[^<]+)</td>", quant)) == {RECIPE}
    assert quant.count(f"<td>{RECIPE}</td>") == len(ARCHS) * 3  # fp32, 8 and 4 bits per architecture
    assert f"Shown: variant {RECIPE}, the study's own recipe; the other 11 variants' rows are in " \
           "quantization_summary.csv." in quant
    assert "fig-quantization" in quant


def test_the_pairs_table_shows_the_recipe_variant_and_points_to_pairs_csv(many):
    _, page, _ = many
    pairs = sections(page)["pairs"]
    rows = re.findall(r"<tr><td>(lr=[^<]+)</td><td>(\w+)</td><td>(\w+)</td>", pairs)
    assert rows == [(RECIPE, "mamba", "memnls"), (RECIPE, "mamba", "transformer"), (RECIPE, "memnls", "transformer")]
    assert (f"Shown: variant {RECIPE}, the study's own recipe; the other 11 variants' 33 pairs are in pairs.csv "
            "(3 of them decidable with their seeds, 1 significant at Holm p ≤ 0.05).") in pairs
    assert pairs.index("Shown: variant") < pairs.index("fig-pairs")  # the line leads the figure
    assert "times the 3 comparisons of its variant" in pairs


def test_without_the_recipe_in_the_sweep_the_first_variant_is_shown_and_said_so(tmp_path):
    agg = tables.load(write_many(tmp_path / "agg", Z_LOSSES, LRS, recipe=None))
    assert agg.recipe_variant == "lr=0.001,z_loss=0"
    text = html.unescape(report_sections.summary_section(agg))
    assert "Shown: variant lr=0.001,z_loss=0, the first in table order" in text
    assert set(re.findall(r"<td>(lr=[^<]+)</td>", text)) == {"lr=0.001,z_loss=0"}


def test_off_scale_lr_curve_points_are_marked_at_the_top_edge(many):
    root, _, _ = many
    fig = figures.fig_lr_curves(tables.load(root / "agg"))
    axes = [ax for ax in fig.axes if ax.get_title()]
    top = figures.LR_CURVES_HEADROOM * INITIAL
    assert axes[0].get_ylim()[1] == pytest.approx(top)  # not 30: the curves near the optimum stay readable
    marked = {ax.get_title(): [(float(m.get_xdata()[0]), float(m.get_ydata()[0])) for m in ax.get_lines()
                               if m.get_marker() == "^"] for ax in axes}
    assert marked == {"z_loss=0": [], "z_loss=0.001": [], "z_loss=0.01": [(3e-2, pytest.approx(top))]}
    assert "30" in [t.get_text() for t in axes[2].texts]
    # nothing off the scale: the axis is left to matplotlib, as before
    assert figures._lr_curves_top(tables.load(root / "agg").lr_curves.query("final_loss_max < 10")) is None
