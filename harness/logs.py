"""Any supported training log -> the long format step,split,metric,value (plus the run's identity columns).

Formats, told apart by name and then by content:
- CSV, long (step,split,metric,value,...: what the harness writes) or wide (a step column, one column
  per curve), which is also what a W&B run history exported from ``run.scan_history()`` looks like
  (its step column is ``_step``);
- JSON: a list of records (``json.dump(list(run.scan_history()), f)``, or a trainer's ``log_history``
  inside a larger object), or columns (pandas' ``to_json``);
- JSON lines: one record per line, wide (``{"step": 10, "loss": 2.3}``) or long;
- TensorBoard: an event file (``events.out.tfevents.*``) or a folder of them; each folder holding
  event files is one run, named in a ``run`` column when there are several. Read by tensorboard's own
  event accumulator (the optional dependency group ``logs``: ``pip install -e ".[logs]"``), which
  needs no torch.

Which column or tag holds which loss is chosen by ``LossKeys``: given names, else the first of the
default names present for each split. A log whose format or keys cannot be read is an error that
lists what was found in it (its columns or tags). No torch here.
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

LONG_COLUMNS = ("step", "split", "metric", "value", "wall_time")
SPLIT_NAMES = ("train", "val", "test")
# default loss names per split, in the order they are preferred when a log holds several
DEFAULT_KEYS = {
    "train": ("train/loss", "train_loss", "loss", "training_loss", "train/loss_step", "train_loss_step",
              "train/loss_epoch", "train_loss_epoch"),
    "val": ("val/loss", "val_loss", "validation/loss", "validation_loss", "valid/loss", "valid_loss",
            "eval/loss", "eval_loss", "val/loss_epoch", "val_loss_epoch"),
    "test": ("test/loss", "test_loss"),
}
WIDE_LOSS_COLUMNS = {name: split for split, names in DEFAULT_KEYS.items() for name in names}
"""Every default loss name -> its split."""
# the step column of a wide log, first present (and filled wherever a loss is) wins; W&B's own is _step
STEP_KEYS = ("step", "global_step", "trainer/global_step", "_step", "Step")
TENSORBOARD = "tfevents"


def is_loss(metric: pd.Series) -> pd.Series:
    """Which rows of a long table's ``metric`` column are losses ("loss" or "SPLIT/loss")."""
    metric = metric.astype(str)
    return (metric == "loss") | metric.str.endswith("/loss")


@dataclass(frozen=True)
class LossKeys:
    """Which column (or tag) holds each split's loss: ``given`` maps a name to its split; a split
    given no name takes the first of ``DEFAULT_KEYS`` the log has."""

    given: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_options(cls, train: str | None = None, val: str | None = None,
                     pairs: list[str] | None = None) -> LossKeys:
        """--train-key, --val-key and any number of --key TAG=split."""
        given = {}
        for pair in pairs or ():
            name, sep, split = pair.rpartition("=")
            if not sep or not name or split not in SPLIT_NAMES:
                raise ValueError(f"--key {pair!r}: expected TAG=split with split one of {list(SPLIT_NAMES)}")
            given[name] = split
        given.update({name: split for name, split in ((train, "train"), (val, "val")) if name})
        return cls(given)

    def choose(self, names: list[str], where: str, what: str = "column") -> dict[str, str]:
        """name -> split for the loss curves among ``names``; an error listing ``names`` when a given
        one is missing or no default one is there."""
        missing = [n for n in self.given if n not in names]
        if missing:
            raise ValueError(f"{where}: no {what} {missing[0]!r}; found {what}s: {_listing(names)}")
        chosen = dict(self.given)
        for split, defaults in DEFAULT_KEYS.items():
            if split not in chosen.values():
                first = next((n for n in defaults if n in names and n not in chosen), None)
                if first:
                    chosen[first] = split
        if not any(s in ("train", "val") for s in chosen.values()):
            raise ValueError(f"{where}: no loss {what}; expected one of {sorted(WIDE_LOSS_COLUMNS)}, or name it "
                             f"with --train-key/--val-key/--key TAG=split; found {what}s: {_listing(names)}")
        return chosen


def _listing(names: list[str]) -> str:
    return ", ".join(map(repr, names)) if names else "none"


_NON_FINITE = {"": math.nan, "nan": math.nan, "+nan": math.nan, "-nan": math.nan, "na": math.nan,
               "n/a": math.nan, "null": math.nan, "none": math.nan,
               "inf": math.inf, "+inf": math.inf, "infinity": math.inf, "+infinity": math.inf,
               "-inf": -math.inf, "-infinity": -math.inf}


def to_number(values: pd.Series, what: str = "value") -> pd.Series:
    """Text cells -> floats, reading every spelling of a non-finite number that pandas, numpy and
    PyTorch write (nan, NaN, inf, -inf, Infinity, an empty cell, ...); anything else that is not a
    number is an error that names it."""
    text = values.astype(object).where(values.notna(), "").astype(str).str.strip()
    special = text.str.lower().map(_NON_FINITE)
    number = pd.to_numeric(text.where(special.isna() & (text != ""), "0"), errors="coerce")
    bad = number.isna() & special.isna() & ~text.str.lower().isin(_NON_FINITE)
    if bad.any():
        raise ValueError(f"non-numeric {what} {text[bad].iloc[0]!r}")
    return special.where(text.str.lower().isin(_NON_FINITE), number).astype(float)


def read_log(path: str | Path) -> tuple[pd.DataFrame, list[str]]:
    """A training log (long or wide CSV) -> long rows with numeric values, and its identity columns."""
    path = Path(path)
    return _long_from_file(_read_csv(path), path)


def read(path: str | Path, keys: LossKeys | None = None) -> tuple[pd.DataFrame, list[str]]:
    """Any supported log (a file, or a folder of TensorBoard event files) -> the loss curves in the
    long format (step, split, metric, value, and the identity columns first), and the identity columns."""
    path, keys = Path(path), keys or LossKeys()
    if path.is_dir():
        return _from_tensorboard(path, keys)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    kind = format_of(path)
    if kind == "tensorboard":
        return _from_tensorboard(path, keys)
    if kind == "csv":
        return _long_from_file(_read_csv(path), path, keys)
    return _long_from_file(_read_json(path, kind), path, keys, blank_is_nan=False)


def format_of(path: Path) -> str:
    """'tensorboard', 'csv', 'json' or 'jsonl', from the name, else from the first bytes."""
    suffix = path.suffix.lower()
    if TENSORBOARD in path.name:
        return "tensorboard"
    if suffix in (".csv", ".json", ".jsonl"):
        return suffix[1:]
    if suffix == ".ndjson":
        return "jsonl"
    head = path.read_bytes()[:4096]
    try:
        text = head.decode().lstrip()
    except UnicodeDecodeError:  # binary: TensorBoard records are the only binary log read here
        return "tensorboard"
    return "json" if text.startswith(("[", "{")) else "csv"


def _read_csv(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        # empty cells stay distinguishable from a logged "nan": keep_default_na=False
        return pd.read_csv(path, keep_default_na=False, na_values=[""], dtype=str)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a readable CSV ({e})") from e


def _read_json(path: Path, kind: str) -> pd.DataFrame:
    """JSON records or columns, or JSON lines -> a frame of text cells (an absent key: an empty cell)."""
    text = path.read_text()
    try:
        data = json.loads(text)  # Python's json reads NaN and Infinity, as W&B and json.dump write them
    except json.JSONDecodeError as e:
        try:  # one record per line, whatever the file is called
            data = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError:
            raise ValueError(f"{path}: neither JSON nor JSON lines ({e})") from None
    if isinstance(data, dict):
        lists = {k: v for k, v in data.items() if isinstance(v, list) and v and all(isinstance(r, dict) for r in v)}
        if len(lists) == 1:  # the records inside a larger object (a trainer state's log_history)
            data = next(iter(lists.values()))
        elif data and all(isinstance(v, (dict, list)) for v in data.values()):  # columns: null is "not logged"
            data = [{k: v for k, v in r.items() if not _missing(v)} for r in pd.DataFrame(data).to_dict("records")]
        else:
            raise ValueError(f"{path}: a JSON object that holds no list of records nor columns; found keys: "
                             f"{_listing(list(data))}")
    if not isinstance(data, list) or not data or not all(isinstance(r, dict) for r in data):
        raise ValueError(f"{path}: expected a list of records (JSON objects), one per logged step")

    def cell(v):  # text that reads back exactly; null and an absent key are empty cells, a logged NaN is "nan"
        if v is None:
            return None
        if isinstance(v, float):
            return repr(v)
        return json.dumps(v) if isinstance(v, (dict, list)) else str(v)

    columns = list(dict.fromkeys(k for r in data for k in r))
    return pd.DataFrame({c: [cell(r[c]) if c in r else None for r in data] for c in columns}, dtype=object)


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _step_column(raw: pd.DataFrame, chosen: list[str], path: Path) -> str:
    for name in STEP_KEYS:
        if name in raw.columns:
            filled = raw[chosen].notna().any(axis=1) if chosen else pd.Series(True, index=raw.index)
            if raw.loc[filled, name].notna().all():
                return name
    raise ValueError(f"{path}: no 'step' column (one of {list(STEP_KEYS)}, filled wherever a loss is); "
                     f"found columns: {_listing(list(raw.columns))}")


def _long_from_file(raw: pd.DataFrame, path: Path, keys: LossKeys | None = None,
                    blank_is_nan: bool | None = None) -> tuple[pd.DataFrame, list[str]]:
    """A long or wide table (all cells as text) -> long rows with numeric values, and the identity columns.

    ``blank_is_nan``: whether an empty cell of a wide table's only loss column is a logged NaN (a CSV
    pandas wrote) rather than a step that logged other things (JSON, where a NaN is spelled out, and a
    W&B history, whose rows often hold other keys only); default: True unless the table has W&B's _step.
    """
    keys = keys or LossKeys()
    blank_is_nan = "_step" not in raw.columns if blank_is_nan is None else blank_is_nan
    if "step" in raw.columns and {"split", "value"} <= set(raw.columns):  # long: an empty value is NaN
        if keys.given:
            raise ValueError(f"{path}: --train-key/--val-key/--key name a column of a wide log; this log is in "
                             f"the long format step,split,metric,value, whose split column names each curve")
        identity = [c for c in raw.columns if c not in LONG_COLUMNS]
        long = raw[is_loss(raw["metric"].fillna(""))] if "metric" in raw.columns else raw
        if long.empty:
            metrics = sorted(raw["metric"].dropna().unique()) if "metric" in raw.columns else []
            raise ValueError(f"{path}: no loss rows (metric 'loss' or 'SPLIT/loss'); found metrics: {_listing(metrics)}")
        long = long.assign(value=_numbers(long["value"], path))
        step = "step"
    else:  # wide: an empty cell means "not logged at this step"
        if not any(name in raw.columns for name in STEP_KEYS):
            _step_column(raw, [], path)  # the error naming what was found
        chosen = keys.choose([str(c) for c in raw.columns if c not in STEP_KEYS], str(path))
        losses = list(chosen)
        step = _step_column(raw, losses, path)
        # identity: text columns (arch, run name) and a seed; other numbers (lr, grad_norm) are metrics,
        # and W&B's own columns (_runtime, _wandb, ...) and logged objects are neither
        identity = [c for c in raw.columns if c not in losses and c not in STEP_KEYS and not str(c).startswith("_")
                    and (c == "seed" or (raw[c].notna().all() and pd.to_numeric(raw[c], errors="coerce").isna().all()
                                         and not raw[c].astype(str).str.startswith(("{", "[")).any()))]
        long = raw.melt(id_vars=[step] + identity, value_vars=losses, var_name="column", value_name="value")
        if len(losses) > 1 or not blank_is_nan:  # interleaved curves: an empty cell is a curve not logged then
            long = long[long["value"].notna()]
        # else (one loss column of a CSV) an empty cell is a logged NaN (pandas writes NaN as an empty cell)
        long = long.assign(split=long["column"].map(chosen), metric="loss",
                           value=_numbers(long["value"], path)).drop(columns="column")
        long = long.rename(columns={step: "step"})
    bad = pd.to_numeric(long["step"], errors="coerce").isna()
    if bad.any():
        raise ValueError(f"{path}: non-numeric {step} {long.loc[bad, 'step'].iloc[0]!r}")
    long = long.assign(step=pd.to_numeric(long["step"]).astype(np.int64))
    for c in identity:  # a seed read as text groups and prints as a number
        number = pd.to_numeric(long[c], errors="coerce")
        if number.notna().all():
            long = long.assign(**{c: number})
    return long, identity


def _numbers(values: pd.Series, path: Path) -> pd.Series:
    try:
        return to_number(values, "loss value")
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def _event_dirs(path: Path) -> dict[str, Path]:
    """run name -> the folder (or the one file) whose event files make that run."""
    if path.is_file():
        return {".": path}
    folders = sorted({f.parent for f in path.rglob(f"*{TENSORBOARD}*") if f.is_file()})
    if not folders:
        found = sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())
        raise ValueError(f"{path}: a folder without run.json nor TensorBoard event files (events.out.tfevents.*); "
                         f"found files: {_listing(found[:20])}{' ...' if len(found) > 20 else ''}")
    return {str(f.relative_to(path)): f for f in folders}


def _from_tensorboard(path: Path, keys: LossKeys) -> tuple[pd.DataFrame, list[str]]:
    """TensorBoard event files -> long rows; scalars logged as scalars (torch, TF1) or as scalar
    tensors (TF2's tf.summary) alike. Every run (folder of event files) must hold the chosen tags."""
    try:
        from tensorboard.backend.event_processing import event_accumulator as ea
        from tensorboard.util import tensor_util
    except ImportError:
        raise ValueError(f"{path}: reading TensorBoard logs needs the package tensorboard: "
                         f"pip install -e \".[logs]\" (or pip install tensorboard)") from None
    frames = []
    runs = _event_dirs(path)
    for run, where in runs.items():
        with tempfile.TemporaryDirectory() as named:
            if where.is_file() and TENSORBOARD not in where.name:  # the reader knows event files by their name
                (Path(named) / f"events.out.{TENSORBOARD}.0").symlink_to(where.resolve())
                where_read = Path(named)
            else:
                where_read = where
            acc = ea.EventAccumulator(str(where_read), size_guidance={ea.SCALARS: 0, ea.TENSORS: 0})
            try:
                acc.Reload()
            except Exception as e:  # a corrupt or foreign file: say what it is
                raise ValueError(f"{where}: not a readable TensorBoard event file ({type(e).__name__}: {e})") from None
        tags = acc.Tags()
        curves: dict[str, list[tuple[int, float]]] = {t: [(e.step, e.value) for e in acc.Scalars(t)]
                                                      for t in tags.get("scalars", [])}
        for t in tags.get("tensors", []):
            points = [(e.step, tensor_util.make_ndarray(e.tensor_proto)) for e in acc.Tensors(t)]
            if t not in curves and points and all(np.size(v) == 1 for _, v in points):
                curves[t] = [(s, float(np.asarray(v).reshape(()))) for s, v in points]
        where_text = f"{where} (TensorBoard)"
        if not curves:
            other = sorted(f"{kind}: {t}" for kind, ts in tags.items() if isinstance(ts, list) for t in ts)
            raise ValueError(f"{where_text}: no scalar tags; found: {_listing(other)}")
        chosen = keys.choose(sorted(curves), where_text, "tag")
        for tag, split in chosen.items():
            steps, values = zip(*curves[tag]) if curves[tag] else ((), ())
            frame = pd.DataFrame({"step": np.asarray(steps, dtype=np.int64), "split": split, "metric": "loss",
                                  "value": np.asarray(values, dtype=float)})
            frames.append(frame.assign(run=run) if len(runs) > 1 else frame)
    long = pd.concat(frames, ignore_index=True)
    identity = ["run"] if len(runs) > 1 else []
    return long[identity + ["step", "split", "metric", "value"]], identity
