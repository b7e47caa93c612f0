"""Command line: ``harness train|check|detect|status|quantize|aggregate|look|report|evaluate ...`` (or ``python -m harness ...``).

Each subcommand is a thin wrapper over one module; imports happen inside the subcommand so that
``detect`` starts without loading torch.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from harness.files import DiskFull
from harness.timing import StageClock

EXIT_INTERRUPTED = 75  # EX_TEMPFAIL: unfinished on request (SIGTERM, Ctrl-C); running it again continues it
EXIT_DISK_FULL = 74  # EX_IOERR
EXIT_BUSY = 73  # EX_CANTCREAT: another live process trains the run (harness.runlock); nothing was written
# the workflow's jobs that run once per study, by their stage in the job log's `stage seconds` line
ONCE_PER_STUDY = {"check": "admission", "aggregate": "aggregate", "look": "look", "report": "report"}


def _cmd_train(args: argparse.Namespace) -> int:
    from harness.run import Interrupted, execute
    from harness.runlock import RunBusy

    spec = json.loads(Path(args.spec).read_text() if args.spec.endswith(".json") else args.spec)
    admitted = None
    if args.admission:  # the workflow's admission record of this architecture (harness.admission)
        from harness.admission import summary

        record = json.loads(Path(args.admission).read_text())
        if not record.get("passed") or (record.get("arch"), record.get("build")) != (spec["arch"], spec["build"]):
            raise ValueError(f"train: {args.admission} does not admit {spec['arch']} ({spec['build']}): "
                             f"it records {record.get('arch')} ({record.get('build')}), passed {record.get('passed')}")
        admitted = summary(record)
    try:
        execute(spec, Path(args.out), state_dir=Path(args.state) if args.state else None, threads=args.threads,
                admission=admitted)
    except Interrupted as e:
        print(f"run {e} (not failed): it wrote no outputs; run the same command again (Snakemake: "
              "the same target) to continue it", file=sys.stderr)
        return EXIT_INTERRUPTED
    except RunBusy as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BUSY
    return 0


def _cmd_detect(args: argparse.Namespace) -> int:
    import pandas as pd

    from harness import collapse, logs
    from harness.contracts import BASE_VARIANT, EVENT_COLUMNS, ID_COLUMNS
    from harness.files import write_atomic

    clock = StageClock()
    config = collapse.DetectConfig.from_dict(json.loads(args.config)) if args.config else None
    keys = logs.LossKeys.from_options(args.train_key, args.val_key, args.key)
    path = Path(args.log)
    if path.is_dir() and (path / "run.json").is_file():  # a run folder: identity and vocabulary from its run.json
        manifest = json.loads((path / "run.json").read_text())
        vocab = manifest.get("data", {}).get("vocab_size")
        if pd.read_csv(path / "metrics.csv").empty:  # a run that crashed before its first evaluation
            events = pd.DataFrame(columns=EVENT_COLUMNS)
        else:
            metrics, _ = logs.read_log(path / "metrics.csv")  # every spelling of nan and inf
            # the trainer logs nats per token: a badly initialised model may start above ln(vocab)
            events = collapse.detect(metrics, config, vocab_size=vocab, nats=True)
        identity = {"variant": BASE_VARIANT, **manifest}  # a run.json written before variants has none
        for i, key in enumerate(ID_COLUMNS):
            events.insert(i, key, identity.get(key))
        runs = [tuple(identity.get(k) for k in ID_COLUMNS)]
    else:  # any log harness.logs reads: CSV, W&B history (CSV or JSON), JSON lines, TensorBoard
        long, identity = logs.read(path, keys)
        events = collapse.detect_runs(long, identity, config)
        runs = list(long[identity].drop_duplicates().itertuples(index=False, name=None)) if identity else None
    if args.out:
        write_atomic(Path(args.out), events.to_csv(index=False))
        clock.lap("detection")
        clock.print()
    elif args.format == "csv":
        sys.stdout.write(events.to_csv(index=False))
    elif args.format == "json":
        print(json.dumps(_event_records(events), indent=1))
    else:
        identity = [c for c in events.columns if c not in EVENT_COLUMNS]
        print(events_table(events, identity, runs))  # every run of the file, those without events too
    return 0


def _event_records(events) -> list[dict]:
    """Events as JSON-able records: missing values null, step columns integers."""
    import math

    records = []
    for row in events.to_dict("records"):
        record = {}
        for key, value in row.items():
            value = value.item() if hasattr(value, "item") else value
            if isinstance(value, float) and math.isnan(value):
                value = None
            elif isinstance(value, float) and key.endswith("step") and value.is_integer():
                value = int(value)
            record[key] = value
        records.append(record)
    return records


# (header, event column, format) of the table `detect` prints; a column is as wide as its widest cell
TABLE_COLUMNS = [
    ("type", "type", str),
    ("split", "split", str),
    ("onset", "onset_step", "{:,.0f}".format),
    ("train", "train_onset_step", "{:,.0f}".format),
    ("peak", "peak_step", "{:,.0f}".format),
    ("loss", "peak_value", "{:.2f}".format),
    ("end", "end_step", "{:,.0f}".format),
    ("rec", "recovered", lambda v: "yes" if v else "no"),
    ("mag", "magnitude", "{:.2f}x".format),
    ("score", "score", "{:.1f}".format),
    ("thr", "threshold", "{:.1f}".format),
]
TABLE_LEGEND = ("onset, train, peak, end: steps (train: where the train curve's rise began, for a validation "
                "event); loss: the loss at the peak; rec: recovered; mag: the peak over the level before it; "
                "score: robust z-score of log loss against a trailing window, an event above thr (its threshold)")


def events_table(events, identity: list[str], runs: list[tuple] | None = None) -> str:
    """The detected events as a table that fits 100 columns: one line per event, its note on an
    indented line below; with identity columns (arch, seed, ...) one heading per run."""
    import pandas as pd

    def cell(value, fmt) -> str:
        if value is None or (isinstance(value, float) and pd.isna(value)):
            return "-"
        return fmt(value)

    rows = [[cell(row[column], fmt) for _, column, fmt in TABLE_COLUMNS] for row in events.to_dict("records")]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, (h, _, _) in enumerate(TABLE_COLUMNS)]

    def line(cells: list[str]) -> str:
        return "  " + "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    header = line([h for h, _, _ in TABLE_COLUMNS])
    notes = events["note"].fillna("").tolist() if "note" in events else [""] * len(rows)
    keys = [tuple(row) for row in events[identity].itertuples(index=False, name=None)] if identity else [()] * len(rows)
    groups = list(dict.fromkeys([*(runs or []), *keys]))  # the file's order, runs without events too
    out = []
    for group in groups:
        members = [i for i, k in enumerate(keys) if k == group]
        if identity:
            name = " ".join(f"{k}={v}" for k, v in zip(identity, group))
            out.append(f"{name}: {len(members)} event{'s' if len(members) != 1 else ''}" if members else f"{name}: no events")
        if members:
            out.append(header)
        for i in members:
            out.append(line(rows[i]).rstrip())
            if notes[i]:
                out += _wrap(notes[i], indent=6, width=100)
    if not out:
        return "no events"
    return "\n".join(out + [""] + _wrap(TABLE_LEGEND, indent=0, width=100)) if rows else "\n".join(out)


def _wrap(text: str, indent: int, width: int) -> list[str]:
    import textwrap

    return textwrap.wrap(text, width=width, initial_indent=" " * indent, subsequent_indent=" " * (indent + 2),
                         break_on_hyphens=False)


def _cmd_quantize(args: argparse.Namespace) -> int:
    import torch

    from harness import quantize

    clock = StageClock()
    torch.set_num_threads(args.threads)
    run_dir = Path(args.run)
    with clock("quantization"):
        rows = quantize.quantize_run(run_dir, args.bits, args.keep,
                                     snapshot_dir=Path(args.snapshots) if args.snapshots else None)
        quantize.write_table(Path(args.out) if args.out else run_dir / "quantization.csv", rows)
    clock.print()
    return 0


def _cmd_aggregate(args: argparse.Namespace) -> int:
    from harness.aggregate import aggregate

    study = json.loads(args.study)
    aggregate([Path(p) for p in args.runs], Path(args.out), study)
    return 0


def _cmd_look(args: argparse.Namespace) -> int:
    from harness import sequential
    from harness.aggregate import quantization_tables, read_study
    from harness.files import write_atomic

    study = json.loads(args.study)
    runs, trajectories, events, _, quantization = read_study([Path(p) for p in args.runs], study)
    quantized = bool((study.get("quantize") or {}).get("bits"))
    plan = sequential.plan(study, runs, trajectories, events, quantization_tables(quantization)[0] if quantized
                           else None, args.look)
    write_atomic(Path(args.out), json.dumps(plan, indent=1) + "\n")
    print(f"look {plan['look']} ({plan['seeds']} seeds, level {plan['alpha']:.3g}): {len(plan['decided'])} "
          f"decided, {len(plan['open'])} open; " + ("done" if plan["done"] else
                                                   f"next look trains {', '.join(plan['need'])}"))
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from harness.report.page import render

    render(Path(args.aggregate), Path(args.out), figures_dir=Path(args.figures) if args.figures else None,
           published_curves=Path(args.published_curves) if args.published_curves else None)
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from harness.evaluate import describe, evaluate_weights, load_weights

    folder = Path(args.model_dir) if args.model_dir else None
    config = Path(args.config) if args.config else folder / "config.json" if folder else None
    weights = Path(args.weights) if args.weights else folder / "model.safetensors" if folder else None
    if config is None or weights is None:
        raise ValueError("evaluate: give a model folder (--model-dir) or both --config and --weights")
    arch, model = load_weights(args.arch, config, weights)
    result = evaluate_weights(model, arch, args.data, args.tokens, args.split, args.batches, args.batch_size,
                              args.seq_len)
    print(describe(result, args.tokens))
    return 0


def _check_spec(args: argparse.Namespace) -> dict:
    """The admission spec of `harness check ARCH --shape [STUDY] [KEY=VALUE ...]`."""
    import yaml

    from harness.status import CONFIG, load_studies
    from harness.study import admission_spec, default_study, study_for_check

    words = list(args.shape or [])
    name = words.pop(0) if words and "=" not in words[0] else None
    settings = {}
    for word in words:
        key, sep, value = word.partition("=")
        if not sep or not key:
            raise ValueError(f"check: --shape takes a study name, then KEY=VALUE pairs; got {word!r}")
        settings[key] = yaml.safe_load(value)
    root = Path.cwd()
    if str(root) not in sys.path:  # a dotted path is imported from the working directory, as the workflow does
        sys.path.insert(0, str(root))
    study = None
    if (root / CONFIG).is_file():
        studies, config = load_studies(root)
        name = name or default_study(studies, config)
        study = studies.get(name) or next((s for s in studies.values() if s["base"] == name), None)
        if study is None:
            raise ValueError(f"check: {name!r} is not a study of {CONFIG}: {sorted(studies)}")
    elif name is not None:
        raise ValueError(f"check: no {CONFIG} here to find study {name!r} in; run from the workflow's folder, "
                         "or give only KEY=VALUE pairs")
    study, arch = study_for_check(study, args.arch, settings)
    return admission_spec(study, arch)


def _cmd_check(args: argparse.Namespace) -> int:
    spec = None
    if args.spec:
        spec = json.loads(Path(args.spec).read_text() if args.spec.endswith(".json") else args.spec)
        hit = Path(args.cache) / f"{spec.get('checked')}.json" if args.cache and "runs" in spec else None
        if hit is not None and hit.is_file():  # checked already (the study-wide job): no torch to load
            record = json.loads(hit.read_text())
            print(f"{record['label']}: {'admitted' if record['passed'] else 'NOT admitted'} by the check of {hit}")
            return _verdict(record, args.out)
    import torch

    from harness import admission

    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    if spec is None and args.arch:
        spec = _check_spec(args)
    elif spec is None:
        raise ValueError("check: name an architecture (a registry name or 'package.module:function') or give --spec")
    if "archs" in spec:  # a study's architectures, into the cache (the workflow's study-wide job)
        if not args.cache:
            raise ValueError("check: --spec of a study needs --cache, the folder its verdicts go to")
        verdicts = admission.admit_study(spec, Path(args.cache), device)
        if args.out:
            admission.write_record(Path(args.out), verdicts)
        return 0
    record = admission.admit(spec, device)
    print(admission.report(record), flush=True)
    if args.cache and spec.get("checked"):
        admission.write_record(Path(args.cache) / f"{spec['checked']}.json", record)
    return _verdict(record, args.out)


def _verdict(record: dict, out: str | None) -> int:
    """Write an admitted record to ``out``; else one line per failed property, and exit status 1."""
    if not record["passed"]:
        for line in record["failures"]:
            print(f"error: {line}", file=sys.stderr)
        print(f"{record['label']} is not admitted: none of its runs starts (README: Adding an architecture)",
              file=sys.stderr)
        return 1
    if out:
        from harness.files import write_atomic

        write_atomic(Path(out), json.dumps(record, indent=2, sort_keys=True) + "\n")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from harness.status import status

    print(status(Path.cwd(), args.study))
    return 0


def _cmd_worker(args: argparse.Namespace) -> int:
    from harness.worker import serve

    serve(args.socket, args.parent, run)
    return 0


def main(argv: list[str] | None = None) -> int:
    """The command line; a per-run command goes to the workflow's worker when there is one (harness.worker)."""
    from harness.worker import run_or_delegate

    return run_or_delegate(list(sys.argv[1:] if argv is None else argv), run)


def run(argv: list[str]) -> int:
    """The command line, in this process."""
    from harness import __version__

    prog = "harness" if Path(sys.argv[0]).name == "harness" else "python -m harness"
    parser = argparse.ArgumentParser(prog=prog, description=__doc__, fromfile_prefix_chars="@")  # @FILE: an argument a line
    parser.add_argument("--version", action="version", version=f"harness {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train one (arch, seed) run from a run spec")
    p.add_argument("--spec", required=True, help="run spec as JSON text or a .json file")
    p.add_argument("--out", required=True, help="run folder for metrics.csv, run.json, model.safetensors")
    p.add_argument("--state", help="folder for the resume checkpoint (default: OUT/../.state)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (pinned for determinism)")
    p.add_argument("--admission", help="the architecture's admission record (written by `check --out`); "
                   "run.json keeps its verdict and tolerances")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("detect", help="print the collapse events of a training log")
    p.add_argument("log", help="a run folder; a CSV, long (step,split,metric,value,...) or wide (step + loss columns); "
                   "a W&B run history exported as CSV or JSON; JSON lines; a TensorBoard event file or folder")
    p.add_argument("--train-key", metavar="TAG", help="the column or tag of the training loss (default: the first of "
                   "train/loss, train_loss, loss, ... the log has)")
    p.add_argument("--val-key", metavar="TAG", help="the column or tag of the validation loss (default: the first of "
                   "val/loss, val_loss, validation/loss, eval/loss, ... the log has)")
    p.add_argument("--key", action="append", metavar="TAG=SPLIT",
                   help="read column or tag TAG as the loss of SPLIT (train, val or test); repeatable")
    p.add_argument("--config", help="detector thresholds as JSON (harness.collapse.DetectConfig fields)")
    p.add_argument("--out", help="write the events as CSV here instead of printing them")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table",
                   help="what to print: a readable table (default), the events CSV, or a JSON list of records")
    p.set_defaults(func=_cmd_detect)

    p = sub.add_parser("check", help="admission checks of an architecture at a study's shape: causality, batch "
                       "independence, output contract, loss at initialisation, determinism, parameter accounting")
    p.add_argument("arch", nargs="?", help="a registry name or a builder by dotted path 'package.module:function' "
                   "(imported from the working directory)")
    p.add_argument("--shape", nargs="+", metavar="STUDY|KEY=VALUE",
                   help="a study of config/config.yaml (default: the one it names; without a config, the tiny "
                   "study's shape), then KEY=VALUE: d_model, n_layers, n_heads, dropout, seq_len, mode, reference "
                   "set the shape, any other key is a hyperparameter of ARCH (e.g. --shape tiny seq_len=256 ffn_hidden=300)")
    p.add_argument("--spec", help="an admission spec as JSON text or a .json file: of one architecture "
                   "(harness.study.admission_spec; the workflow's per-architecture job) or of a study's "
                   "(admission_specs: every verdict into --cache)")
    p.add_argument("--cache", help="a folder of verdicts named by their key (the builder's source, hyperparameters "
                   "and shape): a verdict found there is not checked again")
    p.add_argument("--out", help="write the admission record (JSON) here when no check failed")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, or auto (cuda when present)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.set_defaults(func=_cmd_check)

    p = sub.add_parser("status", help="what is done, running, failed and left of a study, from its files")
    p.add_argument("study", nargs="?", help="a study folder of results/ (default: every one there, else the study "
                   "config/config.yaml names); run from the workflow's folder")
    p.set_defaults(func=_cmd_status)


    p = sub.add_parser("quantize", help="loss of a run's model with its weight matrices quantized per row")
    p.add_argument("run", help="a run folder (run.json, model.safetensors)")
    p.add_argument("--bits", type=int, nargs="+", required=True, help="weight widths, e.g. 8 5 4")
    p.add_argument("--keep", nargs="*", default=[], metavar="PATTERN",
                   help="parameter-name globs kept at full precision (PATTERN) or at BITS bits (PATTERN=BITS)")
    p.add_argument("--snapshots", help="also evaluate the weight snapshots (stepN.safetensors) in this folder")
    p.add_argument("--out", help="CSV to write (default RUN/quantization.csv)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.set_defaults(func=_cmd_quantize)

    p = sub.add_parser("aggregate", help="all runs of a study -> tidy tables")
    p.add_argument("--study", required=True, help="the resolved study as JSON")
    p.add_argument("--out", required=True)
    p.add_argument("runs", nargs="+", help="run folders")
    p.set_defaults(func=_cmd_aggregate)

    p = sub.add_parser("look", help="one look of a seed budget: what is decided, what needs more seeds")
    p.add_argument("--study", required=True, help="the resolved study as JSON")
    p.add_argument("--look", required=True, type=int, help="the look's number, from 1")
    p.add_argument("--out", required=True, help="the look's plan (JSON)")
    p.add_argument("runs", nargs="+", help="the run folders the study has by this look")
    p.set_defaults(func=_cmd_look)

    p = sub.add_parser("report", help="aggregate tables -> one self-contained HTML page")
    p.add_argument("--aggregate", required=True, help="folder written by `aggregate`")
    p.add_argument("--out", required=True)
    p.add_argument("--figures", help="also write each figure as PNG here")
    p.add_argument("--published-curves", help="a long CSV (arch,step,split,metric,value) of published curves to overlay")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("evaluate", help="a model folder's (or config + weights') loss on a dataset's test split")
    p.add_argument("--model-dir", help="folder with config.json and model.safetensors (a published model card)")
    p.add_argument("--config", help="config.json: the builder's hyperparameters (an 'arch' key may name the arch)")
    p.add_argument("--weights", help="model.safetensors with the published tensor names")
    p.add_argument("--arch", help="registry name or dotted path; default: config.json's 'arch'")
    p.add_argument("--data", required=True, help="enwik8, tinyshakespeare, or a path to a text file")
    p.add_argument("--tokens", default="bytes", choices=["bytes", "chars"])
    p.add_argument("--split", default="test")
    p.add_argument("--batches", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=256)
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("worker", help="serve the workflow's train, quantize and detect jobs from one process that "
                       "imported torch once (the Snakefile starts and stops it; harness.worker)")
    p.add_argument("--socket", required=True, help="the UNIX socket to serve on")
    p.add_argument("--parent", required=True, type=int, help="the process (Snakemake) whose end ends the worker")
    p.set_defaults(func=_cmd_worker)

    args = parser.parse_args(argv)
    stage = ONCE_PER_STUDY.get(args.command)
    clock = StageClock() if stage else None  # (train, quantize and detect time their own stages)
    try:
        code = args.func(args)
        if clock is not None:
            clock.lap(stage)
            clock.print()
        return code
    except DiskFull as e:  # any command's outputs: the message names the file and the space left
        print(f"error: {e.strerror}", file=sys.stderr)
        return EXIT_DISK_FULL
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
