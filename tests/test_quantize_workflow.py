"""The quantize stage through Snakemake: one micro study end to end, with snapshots, a crash and a key change."""

from __future__ import annotations

import pandas as pd
import pytest

from harness.contracts import QUANTIZATION_COLUMNS
from tests.conftest import MICRO_STUDY, workflow_copy, write_config
from tests.test_workflow import job_counts, snakemake


@pytest.mark.slow
def test_micro_study_quantizes_each_run_and_its_snapshots(tmp_path, shared_data):
    tmp_path = workflow_copy(tmp_path / "workflow")
    study = {**MICRO_STUDY,
             "archs": ["transformer",
                       {"name": "crashing", "build": "tests.faulty_archs:build",
                        "hparams": {"fail_at": 15, "failure": "raise"}}],
             "shape": {"mode": "matched", "reference": "transformer"},
             "quantize": {"bits": [8, 4], "keep": ["pos_emb.*"], "every_checkpoint": True}}
    write_config(tmp_path, {"study": "micro", "studies": {"micro": study}})
    done = snakemake(tmp_path, "--cores", "2", "reports/collapse.html")
    assert done.returncode == 0, done.stderr[-3000:]
    assert job_counts(done.stdout + done.stderr).get("quantize") == 2

    run = tmp_path / "results" / "micro" / "transformer" / "base" / "seed0"
    assert sorted(p.name for p in (run / "snapshots").iterdir()) == [f"step{s}.safetensors" for s in (10, 20, 30)]
    table = pd.read_csv(run / "quantization.csv")
    assert list(table.columns) == QUANTIZATION_COLUMNS
    assert list(zip(table.step, table.bits)) == [(s, b) for s in (10, 20, 30, 40) for b in (32, 8, 4)]
    assert (table.note == "kept pos_emb.weight at full precision").all()
    crashed = pd.read_csv(tmp_path / "results" / "micro" / "crashing" / "base" / "seed0" / "quantization.csv")
    assert len(crashed) == 1 and crashed.bits.isna().all() and crashed.note.item().startswith("not quantized: run failed")

    summary = pd.read_csv(tmp_path / "results" / "micro" / "quantization_summary.csv")
    assert set(summary.arch) == {"transformer"} and set(summary.step) == {10, 20, 30, 40}
    page = (tmp_path / "reports" / "collapse.html").read_text()
    assert '<section id="quantization">' in page and "crashing seed 0: run failed" in page
    assert (tmp_path / "reports" / "micro" / "figures" / "quantization.png").is_file()

    # another width reruns the quantize stage only; bits: [] plans no quantize job at all
    write_config(tmp_path, {"study": "micro", "studies": {"micro": {**study, "quantize": {
        **study["quantize"], "bits": [8, 5]}}}})
    again = snakemake(tmp_path, "-n", "--cores", "1", "reports/collapse.html")
    counts = job_counts(again.stdout)
    assert counts.get("quantize") == 2 and "train" not in counts, again.stdout
    write_config(tmp_path, {"study": "micro", "studies": {"micro": {**study, "quantize": {
        "bits": [], "keep": [], "every_checkpoint": True}}}})
    off = snakemake(tmp_path, "-n", "--cores", "1", "reports/collapse.html")
    counts = job_counts(off.stdout)
    assert "quantize" not in counts and "train" not in counts, off.stdout
