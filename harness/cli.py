"""Command line: ``python -m harness train|detect|quantize|aggregate|report ...``.

Each subcommand is a thin wrapper over one module; imports happen inside the subcommand so that
``detect`` starts without loading torch.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _cmd_train(args: argparse.Namespace) -> int:
    from harness.run import execute

    spec = json.loads(Path(args.spec).read_text() if args.spec.endswith(".json") else args.spec)
    execute(spec, Path(args.out), state_dir=Path(args.state) if args.state else None, threads=args.threads)
    return 0


def _cmd_detect(args: argparse.Namespace) -> int:
    import pandas as pd

    from harness import collapse
    from harness.files import write_atomic

    config = collapse.DetectConfig.from_dict(json.loads(args.config)) if args.config else None
    path = Path(args.log)
    if path.is_dir():  # a run folder: identity and vocabulary from its run.json
        manifest = json.loads((path / "run.json").read_text())
        metrics = pd.read_csv(path / "metrics.csv")
        vocab = manifest.get("data", {}).get("vocab_size")
        events = collapse.detect(metrics, config, vocab_size=vocab)
        for i, key in enumerate(("study", "arch", "seed")):
            events.insert(i, key, manifest.get(key))
    else:
        events = collapse.detect_file(path, config)
    if args.out:
        write_atomic(Path(args.out), events.to_csv(index=False))
    else:
        print(events.to_string(index=False) if len(events) else "no events")
    return 0


def _cmd_quantize(args: argparse.Namespace) -> int:
    import torch

    from harness import quantize

    torch.set_num_threads(args.threads)
    run_dir = Path(args.run)
    rows = quantize.quantize_run(run_dir, args.bits, args.keep,
                                 snapshot_dir=Path(args.snapshots) if args.snapshots else None)
    quantize.write_table(Path(args.out) if args.out else run_dir / "quantization.csv", rows)
    return 0


def _cmd_aggregate(args: argparse.Namespace) -> int:
    from harness.aggregate import aggregate

    study = json.loads(args.study)
    aggregate([Path(p) for p in args.runs], Path(args.out), study)
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from harness.report.page import render

    render(Path(args.aggregate), Path(args.out), figures_dir=Path(args.figures) if args.figures else None,
           published_curves=Path(args.published_curves) if args.published_curves else None)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train one (arch, seed) run from a run spec")
    p.add_argument("--spec", required=True, help="run spec as JSON text or a .json file")
    p.add_argument("--out", required=True, help="run folder for metrics.csv, run.json, model.safetensors")
    p.add_argument("--state", help="folder for the resume checkpoint (default: OUT/../.state)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (pinned for determinism)")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("detect", help="print the collapse events of a training log")
    p.add_argument("log", help="a run folder, or a CSV: long (step,split,metric,value,...) or wide (step + loss columns)")
    p.add_argument("--config", help="detector thresholds as JSON (harness.collapse.DetectConfig fields)")
    p.add_argument("--out", help="write the events as CSV here instead of printing them")
    p.set_defaults(func=_cmd_detect)

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

    p = sub.add_parser("report", help="aggregate tables -> one self-contained HTML page")
    p.add_argument("--aggregate", required=True, help="folder written by `aggregate`")
    p.add_argument("--out", required=True)
    p.add_argument("--figures", help="also write each figure as PNG here")
    p.add_argument("--published-curves", help="a long CSV (arch,step,split,metric,value) of published curves to overlay")
    p.set_defaults(func=_cmd_report)

    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
