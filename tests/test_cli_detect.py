"""`python -m harness detect FILE`: a readable table by default, the events CSV or JSON records for machines."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pandas as pd
import pytest

from tests.conftest import PUBLISHED, REPO


def detect(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "harness", "detect", str(PUBLISHED), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_table_fits_100_columns_with_each_note_on_its_own_line():
    out = detect()
    assert out == detect("--format", "table")
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 100
    assert lines[0] == "arch=memnls: no events"  # runs without events are said too, in the file's order
    assert lines[1] == "arch=transformer: 4 events"
    assert lines[2].split() == ["type", "split", "onset", "train", "peak", "loss", "end", "rec", "mag", "score", "thr"]
    collapse = next(i for i, line in enumerate(lines) if line.split()[:1] == ["collapse"])
    assert lines[collapse].split() == ["collapse", "val", "27,500", "27,100", "33,500", "27.17", "-", "no", "8.75x",
                                       "38.4", "5.5"]  # held-median z and its threshold
    assert lines[collapse + 1].startswith("      partial recovery to 6.74 at 41,500; second rise from 42,000")
    assert sum(line.split()[:1] == ["spike"] for line in lines) == 3
    assert lines[3].split()[:3] == ["spike", "train", "18,000"]
    assert lines[4] == "      back within 10% of 2.57 at 18,300 after 2 logs"


def test_csv_is_the_events_csv():
    out = detect("--format", "csv")
    events = pd.read_csv(io.StringIO(out))
    assert list(events.columns)[:3] == ["arch", "type", "split"]
    collapse = events[events.type == "collapse"].iloc[0]
    assert (collapse.arch, collapse.onset_step, collapse.peak_step) == ("transformer", 27_500, 33_500)
    assert collapse.peak_value == pytest.approx(27.17, abs=0.01)
    assert len(events) == 4 and set(events.arch) == {"transformer"}


def test_json_is_a_list_of_records(tmp_path):
    records = json.loads(detect("--format", "json"))
    assert isinstance(records, list) and len(records) == 4
    collapse = next(r for r in records if r["type"] == "collapse")
    assert collapse["arch"] == "transformer" and collapse["split"] == "val"
    assert collapse["onset_step"] == 27_500 and collapse["peak_step"] == 33_500 and collapse["end_step"] is None
    assert collapse["peak_value"] == pytest.approx(27.17, abs=0.01) and collapse["recovered"] is False
    # --out still writes the CSV the workflow reads, whatever --format says
    out = tmp_path / "events.csv"
    assert detect("--format", "json", "--out", str(out)) == ""
    assert out.read_text() == detect("--format", "csv")


def test_a_log_without_events_says_so(tmp_path):
    from harness.cli import events_table
    from harness.contracts import EVENT_COLUMNS

    empty = pd.DataFrame(columns=["arch", *EVENT_COLUMNS])
    assert events_table(empty, ["arch"], [("gru",)]) == "arch=gru: no events"
    assert events_table(pd.DataFrame(columns=EVENT_COLUMNS), []) == "no events"


def test_a_run_folder_that_crashed_or_starts_high_still_gets_its_events_file(tmp_path):
    """The detect rule runs on every run of a study: a crash before the first evaluation (no rows), and a
    badly initialised model whose loss starts far above ln(vocab) (the trainer logs nats, so it is no
    perplexity), both give an events table instead of failing the job."""
    from harness.cli import main

    run = {"study": "s", "arch": "a", "seed": 0, "status": "failed", "data": {"vocab_size": 256}}
    (tmp_path / "run.json").write_text(json.dumps(run))
    (tmp_path / "metrics.csv").write_text("step,split,metric,value,wall_time\n")
    assert main(["detect", str(tmp_path), "--out", str(tmp_path / "events.csv")]) == 0
    assert pd.read_csv(tmp_path / "events.csv").empty
    rows = [f"{s},val,loss,{15.9 - 0.01 * s},0" for s in range(0, 200, 10)]
    (tmp_path / "metrics.csv").write_text("step,split,metric,value,wall_time\n" + "\n".join(rows) + "\n")
    assert main(["detect", str(tmp_path), "--out", str(tmp_path / "events.csv")]) == 0
