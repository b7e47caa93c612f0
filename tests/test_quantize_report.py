"""Quantization tables through aggregate and the report, on synthetic run folders (no torch, no training)."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pandas as pd
import pytest

from harness.aggregate import aggregate
from harness.contracts import AGGREGATE_FILES, BASE_VARIANT, QUANTIZATION_COLUMNS, QUANTIZATION_SUMMARY_COLUMNS
from harness.report import page as report
from tests.test_aggregate import make_runs, make_study, realistic_special
from tests.test_report import PNG_URI, sections

# bits per token lost at each width, per architecture, before a per-seed factor
DAMAGE = {"memnls": {8: 0.004, 5: 0.05, 4: 0.2}, "transformer": {8: 0.002, 5: 0.02, 4: 0.08}}


def write_quantization(run_dir, study: dict, snapshots: bool = False) -> None:
    """quantization.csv as the quantize stage leaves it: numbers for a completed run, a note otherwise."""
    run = json.loads((run_dir / "run.json").read_text())
    identity = {"study": run["study"], "arch": run["arch"], "variant": BASE_VARIANT, "seed": run["seed"]}
    if run["status"] != "completed":
        rows = [{**identity, "note": f"not quantized: run {run['status']}"}]
    else:
        steps = study["recipe"]["steps"]
        rows = []
        for step in ([steps // 3, 2 * steps // 3] if snapshots else []) + [steps]:
            base = 1.5 + 1.0 / (1 + step)
            rows.append({**identity, "step": step, "bits": 32, "loss": base, "loss_increase": 0.0,
                         "bpt_increase": 0.0, "note": ""})
            for bits in (8, 5, 4):
                bpt = DAMAGE[run["arch"]][bits] * (1 + 0.5 * run["seed"]) * step / steps
                rows.append({**identity, "step": step, "bits": bits, "loss": base + bpt * math.log(2),
                             "loss_increase": bpt * math.log(2), "bpt_increase": bpt, "note": ""})
    pd.DataFrame(rows, columns=QUANTIZATION_COLUMNS).to_csv(run_dir / "quantization.csv", index=False)


@pytest.fixture(scope="module", params=[False, True], ids=["final", "snapshots"])
def quantized(request, tmp_path_factory):
    root = tmp_path_factory.mktemp("quantized")
    study = make_study(quantize={"bits": [8, 5, 4], "keep": ["tok_emb.*"], "every_checkpoint": request.param})
    run_dirs = make_runs(root / "results", study, realistic_special(study))
    for run_dir in run_dirs:
        write_quantization(run_dir, study, snapshots=request.param)
    aggregate(run_dirs, root / "agg", study)
    report.render(root / "agg", root / "report.html", figures_dir=root / "figures")
    return request.param, study, root


def test_aggregate_gathers_every_run_and_takes_medians_over_seeds(quantized):
    snapshots, study, root = quantized
    assert {"quantization.csv", "quantization_summary.csv"} <= set(AGGREGATE_FILES)
    rows = pd.read_csv(root / "agg" / "quantization.csv")
    # the completed runs (memnls seed 1 crashed, transformer seed 2 diverged)
    assert sorted(set(zip(rows.arch, rows.seed))) == [("memnls", 0), ("memnls", 2), ("transformer", 0),
                                                      ("transformer", 1)]
    assert len(rows) == 4 * 4 * (3 if snapshots else 1)
    assert rows.final.sum() == 4 * 4 and (rows[rows.final].step == study["recipe"]["steps"]).all()
    summary = pd.read_csv(root / "agg" / "quantization_summary.csv")
    assert list(summary.columns) == QUANTIZATION_SUMMARY_COLUMNS
    final = summary[summary.final].set_index(["arch", "bits"])
    memnls4 = final.loc[("memnls", 4)]
    assert memnls4.n == 2
    seeds = [0.2 * (1 + 0.5 * s) for s in (0, 2)]  # memnls seeds 0 and 2 at 4 bits
    assert memnls4.bpt_increase_median == pytest.approx(np.median(seeds))
    assert (memnls4.bpt_increase_min, memnls4.bpt_increase_max) == pytest.approx((min(seeds), max(seeds)))
    assert memnls4.loss_increase_median == pytest.approx(np.median(seeds) * math.log(2))
    assert final.loc[("transformer", 8)].bpt_increase_median == pytest.approx(0.002 * 1.25)
    assert final.loc[("transformer", 32)].bpt_increase_median == 0
    assert len(summary) == 2 * 4 * (3 if snapshots else 1)
    notes = json.loads((root / "agg" / "notes.json").read_text())
    assert notes["quantization"] == "Not quantized: memnls seed 1: run failed; transformer seed 2: run diverged."


def test_report_shows_the_figure_and_the_table_after_the_gradient_norm(quantized):
    snapshots, study, root = quantized
    page = (root / "report.html").read_text()
    order = list(sections(page))
    assert order.index("quantization") == order.index("grad-norm") + 1
    assert [name for name, _ in PNG_URI.findall(page)][-1] == "quantization"
    assert (root / "figures" / "quantization.png").is_file()
    body = sections(page)["quantization"]
    assert "Validation loss increase, in bits per byte" in body  # the caption, with the study's unit
    # the memnls 4-bit row: median and range over its two seeds, as the summary holds them
    assert re.search(r"<td>memnls</td><td class=\"num\">4</td>.*?0\.3000 \(0\.2000 to 0\.4000\)", body)
    assert "full precision (fp32)" in body and "Held back: tok_emb.*" in body
    assert "memnls seed 1: run failed" in body
    assert ("quantization_summary.csv" in body) == snapshots
    assert 'href="#quantization"' in page


def test_the_stage_turned_off_leaves_empty_tables_and_no_section(tmp_path):
    study = make_study(quantize={"bits": [], "keep": [], "every_checkpoint": False})
    run_dirs = make_runs(tmp_path / "results", study)  # no quantization.csv anywhere: none is read
    aggregate(run_dirs, tmp_path / "agg", study)
    assert list(pd.read_csv(tmp_path / "agg" / "quantization.csv").columns)[:4] == QUANTIZATION_COLUMNS[:4]
    assert pd.read_csv(tmp_path / "agg" / "quantization_summary.csv").empty
    report.render(tmp_path / "agg", tmp_path / "report.html")
    page = (tmp_path / "report.html").read_text()
    assert "quantization" not in sections(page) and "quantization" not in [n for n, _ in PNG_URI.findall(page)]


def test_a_missing_or_foreign_quantization_table_is_named(tmp_path):
    study = make_study(quantize={"bits": [8], "keep": [], "every_checkpoint": False})
    run_dirs = make_runs(tmp_path / "results", study)
    for run_dir in run_dirs:
        write_quantization(run_dir, study)
    (run_dirs[0] / "quantization.csv").unlink()
    with pytest.raises(FileNotFoundError, match="quantization.csv: missing .written by the quantize stage"):
        aggregate(run_dirs, tmp_path / "agg", study)
    write_quantization(run_dirs[0], study)
    other = pd.read_csv(run_dirs[1] / "quantization.csv").assign(seed=99)
    other.to_csv(run_dirs[1] / "quantization.csv", index=False)
    with pytest.raises(ValueError, match="column 'seed' does not match run.json"):
        aggregate(run_dirs, tmp_path / "agg", study)
