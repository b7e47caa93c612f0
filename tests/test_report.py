"""report: every section and figure present, PNG data URIs valid, byte-identical reruns, the smoke
banner, failed runs listed, claims tested with known Wilson intervals, and a 6 x 10 x 100 study."""

from __future__ import annotations

import base64
import io
import math
import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from harness import stats, text
from harness.report import figures, page as report, tables
from harness.aggregate import aggregate
from tests.test_aggregate import make_runs, make_study, realistic_special

QUIET = ["claims", "error-rates", "summary", "not-completed", "trajectories", "distributions", "collapse-rate", "pairs",
         "grad-norm", "events", "params", "recipe", "provenance"]
"""The sections of a study without events; with events the attribution of their precursors joins them."""
SECTIONS = QUIET[:9] + ["attribution"] + QUIET[9:]
FIGURES = ["trajectories", "distributions", "collapse_rate", "pairs", "grad_norm"]
PNG_URI = re.compile(r'<img alt="([^"]+)" src="data:image/png;base64,([^"]+)">')


def sections(page: str) -> dict[str, str]:
    return dict(re.findall(r'<section id="([^"]+)">(.*?)</section>', page, flags=re.S))


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """2 archs x 3 seeds (one collapse, one divergence, one crash) of a smoke study, rendered once."""
    root = tmp_path_factory.mktemp("small")
    study = make_study(published="seed-enwik8-70m")
    aggregate(make_runs(root / "results", study, realistic_special(study)), root / "agg", study)
    render_to = root / "report.html"
    report.render(root / "agg", render_to, figures_dir=root / "figures")
    return root, render_to.read_text()


def rerender(root: Path, tmp_path: Path, **study_changes) -> str:
    """Render a copy of the aggregate whose study.json has some keys changed."""
    agg = tmp_path / "agg"
    shutil.copytree(root / "agg", agg)
    study = json.loads((agg / "study.json").read_text())
    (agg / "study.json").write_text(json.dumps({**study, **study_changes}))
    report.render(agg, tmp_path / "report.html")
    return (tmp_path / "report.html").read_text()


def test_every_section_and_every_figure_is_there_as_a_valid_png(small):
    root, page = small
    found = sections(page)
    assert list(found) == SECTIONS  # in page order, claims first
    images = PNG_URI.findall(page)
    assert [name for name, _ in images] == FIGURES
    for name, data in images:
        png = base64.b64decode(data, validate=True)
        assert png.startswith(b"\x89PNG\r\n\x1a\n")
        with Image.open(io.BytesIO(png)) as im:
            im.verify()
        assert b"Software" not in png and b"matplotlib" not in png  # no version stamp to break reruns
        assert (root / "figures" / f"{name}.png").read_bytes() == png  # the PNGs for snakemake --report
    assert "http://" not in page and "https://" not in page and "<script" not in page


def test_rerender_is_byte_identical(small, tmp_path):
    root, page = small
    report.render(root / "agg", tmp_path / "again.html", figures_dir=tmp_path / "figures")
    assert (tmp_path / "again.html").read_text() == page
    for name in FIGURES:
        assert (tmp_path / "figures" / f"{name}.png").read_bytes() == (root / "figures" / f"{name}.png").read_bytes()


def test_smoke_banner_units_and_failed_runs(small, tmp_path):
    root, page = small
    assert 'id="smoke-banner"' in page and page.index("smoke-banner") < page.index('id="claims"')
    assert "Perplexity is per byte" in sections(page)["summary"]
    not_completed = sections(page)["not-completed"]
    assert "RuntimeError: synthetic crash while building the model" in not_completed
    assert re.search(r"<td>memnls</td><td>1</td><td>failed</td>", not_completed)
    assert re.search(r"<td>transformer</td><td>2</td><td>diverged</td>.*non-finite training loss", not_completed)

    other = rerender(root, tmp_path, smoke=False, data={"name": "tinyshakespeare", "tokens": "chars"})
    assert "smoke-banner" not in other and "Smoke study" not in other
    assert "Perplexity is per character" in other and "final bits/character" in other


def test_claims_table_says_a_smoke_study_cannot_test_them(small):
    _, page = small
    claims_html = sections(page)["claims"]
    # 4 claims concern memnls or transformer: none has a verdict, at the published setting or at proxy scale
    verdict_table = claims_html[:claims_html.index("</table>")]
    assert verdict_table.count("<tr>") == 1 + 4 and verdict_table.count("<td>cannot test</td>") == 4 + 2
    assert "50,000 steps (this study: 300)" in claims_html and "a study that is not a smoke study" in claims_html
    assert "4.27" in claims_html and "27.17" in claims_html and "28,000–34,000" in claims_html  # published figures
    assert "Not like for like" in claims_html


def test_published_curves_are_overlaid(small, tmp_path):
    root, _ = small
    curves = tmp_path / "published.csv"
    pd.DataFrame({"arch": "transformer", "step": [50, 150, 250], "split": "val", "metric": "loss",
                  "value": [3.0, 2.5, 2.4]}).to_csv(curves, index=False)
    agg = tables.load(root / "agg", published_curves=curves)
    fig = figures.fig_trajectories(agg)
    dotted = [line for ax in fig.axes for line in ax.get_lines()
              if line.get_linestyle() == ":" and len(line.get_xdata()) == 3]
    assert len(dotted) == 1 and list(dotted[0].get_xdata()) == [50, 150, 250]


def test_missing_table_is_named(small, tmp_path):
    root, _ = small
    shutil.copytree(root / "agg", tmp_path / "agg")
    (tmp_path / "agg" / "summary.csv").unlink()
    with pytest.raises(FileNotFoundError, match="summary.csv"):
        report.render(tmp_path / "agg", tmp_path / "report.html")


def test_six_archs_ten_seeds_hundred_evals(tmp_path):
    archs = [f"arch{i}" for i in range(6)]
    study = make_study(archs=archs, seeds=range(10), n_evals=100)
    special = {("arch1", 3): {"kind": "collapse"}, ("arch2", 5): {"kind": "divergence", "status": "diverged"},
               ("arch4", 0): {"status": "failed"}, ("arch0", 2): {"kind": "spike"}}
    aggregate(make_runs(tmp_path / "results", study, special), tmp_path / "agg", study)
    report.render(tmp_path / "agg", tmp_path / "report.html")
    page = (tmp_path / "report.html").read_text()
    found = sections(page)
    assert list(found) == SECTIONS
    assert [name for name, _ in PNG_URI.findall(page)] == FIGURES
    assert all(f"<td>{a}</td>" in found["summary"] for a in archs)
    assert found["provenance"].count("<tr") == 1 + 60
    assert "<td>arch4</td><td>0</td><td>failed</td>" in found["not-completed"]
    assert found["events"].count("<tr") == 1 + 3  # collapse, divergence, spike
    assert found["pairs"].count("<tr") == 1 + 15  # 6 choose 2


def test_a_pipelines_own_numbers_get_their_own_section_and_an_unmatched_shape_row(tmp_path):
    """A pipeline's run.json block (here eam's: teacher and EAM loss, transfer, memory) reaches the report
    through the generic pipeline table, losses shown as perplexities."""
    study = make_study(archs=("eam", "transformer"), seeds=(0, 1))
    run_dirs = make_runs(tmp_path / "results", study)
    for seed, run_dir in enumerate(d for d in run_dirs if d.parent.parent.name == "eam"):
        run = json.loads((run_dir / "run.json").read_text())
        run["pipeline"] = {"teacher": "transformer", "teacher_loss": 2.0, "eam_loss": 2.5 + seed, "transfer": 2.0 / (2.5 + seed),
                      "live_locations": 1900 + seed, "max_L": 4096, "keys_written": 102400, "write_keys_per_s": 5e4,
                      "stages": {"encoder_steps": 100}}
        run["shape"].update(knob=None, knob_value=None, deviation=-0.46)
        (run_dir / "run.json").write_text(json.dumps(run))
    aggregate(run_dirs, tmp_path / "agg", study)
    report.render(tmp_path / "agg", tmp_path / "report.html")
    found = sections((tmp_path / "report.html").read_text())
    assert list(found) == QUIET[:10] + ["pipelines"] + QUIET[10:]
    rows = re.findall(r"<tr>(.*?)</tr>", found["pipelines"], flags=re.S)[1:]
    cells = [re.findall(r"<td[^>]*>(.*?)</td>", row) for row in rows]
    header = re.findall(r"<th>(.*?)</th>", found["pipelines"])
    assert header == ["arch", "seed", "eam ppl", "keys written", "live locations", "max L", "teacher",
                      "teacher ppl", "transfer", "write keys per s"]  # the nested stages block is left out
    # teacher ppl exp(2) = 7.39, EAM ppl exp(2.5) = 12.18 and exp(3.5) = 33.12
    assert cells == [["eam", "0", "12.18", "102,400", "1,900", "4,096", "transformer", "7.39", "0.800", "50,000"],
                     ["eam", "1", "33.12", "102,400", "1,901", "4,096", "transformer", "7.39", "0.571", "50,000"]]
    assert "not matched: no width knob" in found["params"] and "nan" not in found["params"]


def test_perplexity_of_a_huge_finite_loss_is_infinite_not_an_overflow():
    """A run just before its NaN can log a finite loss far beyond exp's range (e^800)."""
    assert text.perplexity(2.0) == pytest.approx(7.389, abs=1e-3)
    assert text.perplexity(800.0) == text.perplexity(float("inf")) == float("inf")
    assert math.isnan(text.perplexity(None)) and math.isnan(text.perplexity(float("nan")))


def test_pairs_the_seeds_cannot_decide_are_marked_once_and_an_unmatched_pair_is_flagged(tmp_path):
    study = make_study(archs=("eam", "memnls", "transformer"), seeds=(0, 1, 2))
    run_dirs = make_runs(tmp_path / "results", study)
    for run_dir in (d for d in run_dirs if d.parent.parent.name == "eam"):
        run = json.loads((run_dir / "run.json").read_text())
        run["shape"].update(knob=None, knob_value=None, deviation=-0.46)
        (run_dir / "run.json").write_text(json.dumps(run))
    aggregate(run_dirs, tmp_path / "agg", study)
    pairs = pd.read_csv(tmp_path / "agg" / "pairs.csv").set_index(["arch_a", "arch_b"])
    # 3 vs 3 seeds: the smallest exact p is 0.1, times 3 pairs > 0.05, so no pair is decidable
    assert not pairs["decidable"].any()
    assert pairs.loc[("eam", "memnls"), "unmatched"] == "eam -46.0% of the budget"
    assert pd.isna(pairs.loc[("memnls", "transformer"), "unmatched"])
    report.render(tmp_path / "agg", tmp_path / "report.html")
    found = sections((tmp_path / "report.html").read_text())["pairs"]
    assert found.count("cannot be decided with these seeds") == 3
    assert found.count("no difference detectable") == 0  # the long sentence is not repeated per row
    assert "3 of 3 pairs cannot reach significance" in found
    assert found.count("not parameter-matched: eam -46.0% of the budget") == 2


def test_a_final_value_over_much_of_training_is_warned_about():
    assert stats.final_window_caveat(200, 20) == ""  # the last 3 evaluations span 40 of 200 steps
    sentence = stats.final_window_caveat(50, 10)
    assert "span steps 30-50: 40% of this 50-step training" in sentence


def test_the_events_section_says_the_detector_reads_only_the_losses(small):
    _, page = small
    assert "The detector reads only the loss curves" in sections(page)["events"]
