"""`harness detect` on the logs people have: TensorBoard event files and folders, W&B run histories
exported as CSV or JSON, JSON lines; the same curves in every format give the same events."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness.cli import main
from harness.logs import LossKeys, format_of, read
from harness.synthetic import make_run
from tests.conftest import REPO

pytest.importorskip("tensorboard", reason="the TensorBoard reader is the optional group logs: pip install -e '.[logs]'")


@pytest.fixture(scope="module")
def curves() -> pd.DataFrame:
    """A train and validation curve pair with a known collapse (3x, after evaluation 20 of 40), its
    values float32 (what TensorBoard stores) so that every format holds exactly the same numbers."""
    run, truth = make_run("collapse", 2, n_evals=40, logs_per_eval=2, magnitude=3.0, onset=20)
    assert truth.type == "collapse" and truth.onset_step == 10_500
    return run.assign(value=run["value"].astype(np.float32).astype(float))[["step", "split", "metric", "value"]]


def wandb_rows(curves: pd.DataFrame) -> list[dict]:
    """What `list(run.scan_history())` returns: one row per logged step, W&B's own keys first, only the
    keys logged at that step (validation every other row)."""
    rows = []
    for i, (step, group) in enumerate(curves.groupby("step", sort=True)):
        row = {"_step": int(step), "_runtime": 0.5 * i, "_timestamp": 1.7e9 + 0.5 * i, "_wandb": {"runtime": i}}
        row.update({f"{split}/loss": float(v) for split, v in zip(group["split"], group["value"])})
        rows.append(row)
    return rows


def write_all(curves: pd.DataFrame, root: Path) -> dict[str, Path]:
    from torch.utils.tensorboard import SummaryWriter

    paths = {"csv": root / "long.csv", "tensorboard": root / "tb", "wandb_csv": root / "wandb_history.csv",
             "wandb_json": root / "wandb_history.json", "jsonl": root / "log.jsonl"}
    curves.to_csv(paths["csv"], index=False)
    writer = SummaryWriter(str(paths["tensorboard"]))
    for row in curves.itertuples():
        writer.add_scalar(f"{row.split}/loss", row.value, int(row.step))
    writer.close()
    rows = wandb_rows(curves)
    pd.DataFrame(rows).to_csv(paths["wandb_csv"])  # as exported, pandas' index column included
    paths["wandb_json"].write_text(json.dumps(rows))
    with open(paths["jsonl"], "w") as f:  # the names a hand-written logger uses
        for step, group in curves.groupby("step", sort=True):
            names = {"train": "loss", "val": "val_loss"}
            f.write(json.dumps({"step": int(step), **{names[s]: v for s, v in zip(group["split"], group["value"])},
                                "lr": 3e-4}) + "\n")
    return paths


def detect_csv(path: Path, capsys, *options: str) -> pd.DataFrame:
    assert main(["detect", str(path), "--format", "csv", *options]) == 0
    return pd.read_csv(io.StringIO(capsys.readouterr().out))


def test_every_format_gives_the_events_of_the_equivalent_csv(curves, tmp_path, capsys):
    paths = write_all(curves, tmp_path)
    expected = detect_csv(paths["csv"], capsys)
    assert expected.loc[expected.type == "collapse", "onset_step"].tolist() == [10_500]  # the known collapse
    for kind in ("tensorboard", "wandb_csv", "wandb_json", "jsonl"):
        pd.testing.assert_frame_equal(detect_csv(paths[kind], capsys), expected, obj=kind)
    # a TensorBoard event file itself, not its folder
    event_file = next(paths["tensorboard"].glob("events.out.tfevents.*"))
    pd.testing.assert_frame_equal(detect_csv(event_file, capsys), expected)


def test_the_console_command_reads_a_tensorboard_folder(curves, tmp_path):
    paths = write_all(curves, tmp_path)
    done = subprocess.run([str(Path(sys.executable).parent / "harness"), "detect", str(paths["tensorboard"])],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert "collapse" in done.stdout and "val" in done.stdout


def test_formats_are_told_apart_by_name_then_content(curves, tmp_path):
    paths = write_all(curves, tmp_path)
    assert [format_of(paths[k]) for k in ("csv", "wandb_json", "jsonl")] == ["csv", "json", "jsonl"]
    event_file = next(paths["tensorboard"].glob("events.out.tfevents.*"))
    for source, name, kind in ((paths["jsonl"], "log.txt", "json"), (paths["csv"], "log", "csv"),
                               (event_file, "renamed", "tensorboard")):
        copy = tmp_path / name
        copy.write_bytes(source.read_bytes())
        assert format_of(copy) == kind
        long, _ = read(copy)
        assert set(long["split"]) == {"train", "val"}


def test_keys_choose_the_loss_columns_and_tags(curves, tmp_path, capsys):
    paths = write_all(curves, tmp_path)
    expected = detect_csv(paths["csv"], capsys)
    # other names: found through the options, or not at all
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tmp_path / "tb_named"))
    for row in curves.itertuples():
        writer.add_scalar({"train": "Loss/train_nll", "val": "Loss/valid_nll"}[row.split], row.value, int(row.step))
    writer.add_scalar("lr", 3e-4, 0)
    writer.close()
    options = ("--train-key", "Loss/train_nll", "--val-key", "Loss/valid_nll")
    pd.testing.assert_frame_equal(detect_csv(tmp_path / "tb_named", capsys, *options), expected)
    pairs = ("--key", "Loss/train_nll=train", "--key", "Loss/valid_nll=val")
    pd.testing.assert_frame_equal(detect_csv(tmp_path / "tb_named", capsys, *pairs), expected)
    # a given key wins over the defaults: the validation curve read as the only curve
    long, _ = read(paths["wandb_json"], LossKeys.from_options(val="train/loss"))
    assert set(long["split"]) == {"val"}  # train/loss was taken for val: no default train name is left
    assert long[long.split == "val"]["value"].tolist() == curves[curves.split == "train"]["value"].tolist()


def test_unreadable_logs_list_what_they_hold(curves, tmp_path, capsys):
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tmp_path / "tb"))
    writer.add_scalar("Loss/train_nll", 2.0, 1)
    writer.add_scalar("accuracy", 0.5, 1)
    writer.close()
    with pytest.raises(ValueError, match=r"no loss tag.*--train-key.*found tags: 'Loss/train_nll', 'accuracy'"):
        read(tmp_path / "tb")
    with pytest.raises(ValueError, match=r"no tag 'train/nll'; found tags: 'Loss/train_nll', 'accuracy'"):
        read(tmp_path / "tb", LossKeys.from_options(train="train/nll"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("hi")
    with pytest.raises(ValueError, match=r"without run.json nor TensorBoard event files.*found files: 'notes.txt'"):
        read(tmp_path / "empty")
    jsonl = tmp_path / "log.jsonl"
    jsonl.write_text('{"step": 1, "nll": 2.0, "acc": 0.5}\n{"step": 2, "nll": 1.9, "acc": 0.6}\n')
    with pytest.raises(ValueError, match=r"no loss column.*found columns: 'nll', 'acc'"):
        read(jsonl)
    wandb = tmp_path / "wandb.csv"
    wandb.write_text("_runtime,train/loss\n1.0,2.0\n")
    with pytest.raises(ValueError, match=r"no 'step' column.*'_step'.*found columns: '_runtime', 'train/loss'"):
        read(wandb)
    bad = tmp_path / "bad.json"
    bad.write_text('{"a": 1')
    with pytest.raises(ValueError, match="neither JSON nor JSON lines"):
        read(bad)
    with pytest.raises(ValueError, match=r"--key 'loss': expected TAG=split"):
        LossKeys.from_options(pairs=["loss"])
    # through the command line: one line on stderr, exit 2
    assert main(["detect", str(jsonl)]) == 2
    assert "found columns: 'nll', 'acc'" in capsys.readouterr().err
    assert main(["detect", str(jsonl), "--train-key", "nll"]) == 0


def test_a_folder_of_runs_gives_one_heading_per_run(curves, tmp_path, capsys):
    from torch.utils.tensorboard import SummaryWriter

    healthy, _ = make_run("healthy", 1, n_evals=40, logs_per_eval=2)
    for name, run in (("lightning_logs/version_0", healthy), ("lightning_logs/version_1", curves)):
        writer = SummaryWriter(str(tmp_path / name))
        for row in run.itertuples():
            writer.add_scalar(f"{row.split}_loss", row.value, int(row.step))
        writer.close()
    long, identity = read(tmp_path / "lightning_logs")
    assert identity == ["run"] and sorted(set(long["run"])) == ["version_0", "version_1"]
    assert main(["detect", str(tmp_path / "lightning_logs")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "run=version_0: no events" and out[1].startswith("run=version_1: ")


def test_json_columns_and_a_trainer_state_are_read(curves, tmp_path):
    wide = curves.pivot(index="step", columns="split", values="value").reset_index()
    wide = wide.rename(columns={"train": "loss", "val": "eval_loss"})
    columns = tmp_path / "columns.json"
    wide.to_json(columns)  # pandas' default orient: {column: {row: value}}, NaN as null
    state = tmp_path / "trainer_state.json"
    records = [{k: v for k, v in r.items() if pd.notna(v)} for r in wide.to_dict("records")]
    state.write_text(json.dumps({"best_metric": None, "global_step": 20000, "log_history": records}))
    for path in (columns, state):
        long, _ = read(path)
        assert len(long) == len(curves)
        for split in ("train", "val"):
            got = long[long.split == split].sort_values("step")
            want = curves[curves.split == split]
            assert got["step"].tolist() == want["step"].tolist()
            np.testing.assert_allclose(got["value"], want["value"])


def test_a_logged_nan_stays_a_nan_in_json(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text("".join(json.dumps({"step": s, "loss": v}) + "\n" for s, v in [(1, 3.0), (2, float("nan")),
                                                                                  (3, float("inf")), (4, 2.5)]))
    long, _ = read(path)
    assert long["value"].tolist()[0] == 3.0 and np.isnan(long["value"].tolist()[1])
    assert long["value"].tolist()[2:] == [float("inf"), 2.5]


def test_rows_of_a_wandb_history_without_the_loss_are_not_nans(tmp_path):
    """W&B rows that logged other keys only (an lr, a sample) leave the loss cell empty: not a NaN."""
    rows = [{"_step": s, "train/loss": 3.0 - 0.01 * s} if s % 2 else {"_step": s, "lr": 1e-3} for s in range(1, 60)]
    pd.DataFrame(rows).to_csv(tmp_path / "history.csv", index=False)
    (tmp_path / "history.json").write_text(json.dumps(rows))
    for name in ("history.csv", "history.json"):
        long, _ = read(tmp_path / name)
        assert len(long) == 30 and np.isfinite(long["value"]).all()
    # a CSV of one loss column that pandas wrote: its empty cell is the NaN it logged
    (tmp_path / "plain.csv").write_text("step,loss\n1,3.0\n2,\n3,2.9\n")
    assert np.isnan(read(tmp_path / "plain.csv")[0]["value"].tolist()[1])
