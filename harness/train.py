"""The common training loop: one (study, arch, seed) run of a network at the study's shape.

Every architecture that declares no pipeline trains under this one loop (the recipe of
harness.recipe: AdamW, warmup + cosine, gradient clipping, bf16 autocast on CUDA / fp32 on CPU,
evaluation on validation batches shared by every run), so a difference between architectures is
the architecture's. A resume checkpoint (harness.checkpoint) is written every ``checkpoint_every``
steps to a state folder OUTSIDE the run folder, because Snakemake deletes a job's declared outputs
before running it, and after the step during which a SIGTERM or SIGINT arrived, before the run stops
as interrupted. The run's files are written by harness.run, whatever happens here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from pathlib import Path
from typing import Any

import torch

from harness import archs, checkpoint, data, quantize, shape
from harness.diagnostics import Probe
from harness.progress import Progress
from harness.recipe import Recipe, autocast, evaluate, lr_at, make_optimizer, resolve_device, train_step, training_loss
from harness.run import RunRecord
from harness.study import init_seed


def train(spec: dict[str, Any], record: RunRecord, state_dir: Path) -> None:
    """Train ``spec``'s network into ``record``; resumes from the newest checkpoint in ``state_dir`` of
    the same config and seed that loads. A non-finite loss ends the run as diverged."""
    manifest, clock = record.manifest, record.stages
    recipe = Recipe.from_dict(spec["recipe"])
    device, dtype = resolve_device(recipe)
    with clock("data"):
        corpus = data.load_corpus(spec["data"]["name"], tokens=spec["data"]["tokens"])
    manifest.update(data=corpus.info(), recipe=dataclasses.asdict(recipe))
    record.set_device(device, dtype)

    torch.manual_seed(init_seed(spec))  # model init and dropout: the seed, plus the entry's init_seed_offset
    with clock("build"):
        run_shape = shape.for_spec(spec, corpus.vocab_size)
        model = archs.build(spec["build"], **run_shape.hparams).to(device)
    record.model = model
    manifest.update(hparams=run_shape.hparams, n_params=shape.count_params(model), shape=run_shape.record(),
                    reconstruction=archs.info(spec["build"]).reconstruction)
    params = list(model.parameters())
    optimizer = make_optimizer(params, recipe, device, model)
    forward = torch.compile(model) if recipe.compile else model
    gens = {"train": torch.Generator().manual_seed(spec["seed"]),
            "eval": torch.Generator().manual_seed(recipe.eval_seed + spec["seed"])}
    val = corpus.splits["val"]
    with clock("data"):
        fixed_val = data.fixed_batches(val, recipe.eval_batches, recipe.batch_size, recipe.seq_len, recipe.eval_seed)

    def val_batches():
        if recipe.eval_sampling == "fixed":
            return fixed_val
        return [data.get_batch(val, recipe.batch_size, recipe.seq_len, gens["eval"]) for _ in range(recipe.eval_batches)]

    def loss_of(batch):
        x, y = batch
        with autocast(device, dtype):
            logits = forward(x)
        return training_loss(logits, y, recipe.z_loss)

    identity = {"config_hash": manifest["config_hash"], "seed": spec["seed"]}
    with clock("checkpoints"):
        meta = checkpoint.resume(state_dir, model, optimizer, gens, identity, record.warn)
    if meta:
        record.step, record.rows, record.elapsed_before = meta["step"], meta["rows"], meta["elapsed"]
        manifest["resumed_from_step"] = meta["step"]  # the last resume's step (a SLURM requeue, a retry)
        record.warnings[:0] = meta.get("warnings", [])  # those of the processes before, first
        window_loss, window_gn = meta.get("window", ([], []))  # a stop between two log steps: a partial window
    else:
        with clock("evaluation"):
            record.log(0, "val", "loss", evaluate(forward, val_batches(), device, dtype))
        window_loss, window_gn = [], []

    model.train()
    probe = Probe(model, corpus.vocab_size)
    progress = Progress(recipe.steps, recipe.batch_size * recipe.seq_len, start_step=record.step)  # stderr: the log
    while record.step < recipe.steps:
        step = record.step
        lr = lr_at(step, recipe)
        log_step = (step + 1) % recipe.log_every == 0 or step + 1 == recipe.steps
        # the batch, the step, and at log steps the probe's hooks and weight copies (diagnostics)
        with clock("steps"), probe.step() if log_step else contextlib.nullcontext():
            x, y = data.get_batch(corpus.splits["train"], recipe.batch_size, recipe.seq_len, gens["train"])
            result = train_step(loss_of, params, optimizer, (x.to(device), y.to(device)), lr, recipe.grad_clip)
        record.step = step = step + 1
        if not math.isfinite(result.loss):  # no update was made
            record.log(step, "train", "loss", result.loss)
            record.diverge(f"non-finite training loss at step {step}")
            return
        window_loss.append(result.loss)
        window_gn.append(result.grad_norm)
        progress.update(step, result.loss)
        if log_step:
            record.log(step, "train", "loss", sum(window_loss) / len(window_loss))
            record.log(step, "train", "lr", lr)
            record.log(step, "train", "grad_norm", sum(window_gn) / len(window_gn))
            record.log(step, "train", "grad_norm_max", max(window_gn))
            with clock("probes"):
                for name, value in probe.metrics(result.grad_norm, recipe.grad_clip).items():
                    record.log(step, "train", name, value)
            window_loss, window_gn = [], []
        if step % recipe.eval_every == 0 or step == recipe.steps:
            with clock("evaluation"):
                val_loss = evaluate(forward, val_batches(), device, dtype)
            record.log(step, "val", "loss", val_loss)
            if not math.isfinite(val_loss):
                record.diverge(f"non-finite validation loss at step {step}")
                return
        if spec.get("snapshots") and step % recipe.checkpoint_every == 0 and step < recipe.steps:
            # weights for the quantization stage, kept after the run (before the checkpoint: a resume has them)
            with clock("checkpoints"):
                quantize.save_snapshot(Path(spec["snapshots"]), model, step, {
                    "config_hash": manifest["config_hash"], "seed": spec["seed"]})
        if record.stop_signal is not None or (step % recipe.checkpoint_every == 0 and step < recipe.steps):
            with clock("checkpoints"):
                checkpoint.save_checkpoint(state_dir, model, optimizer, gens, {
                    **identity, "step": step, "rows": record.rows, "window": [window_loss, window_gn],
                    "warnings": record.warnings, "elapsed": record.elapsed()})
        record.stop_if_requested()
    if "test" in corpus.splits:
        test = data.fixed_batches(corpus.splits["test"], recipe.eval_batches, recipe.batch_size, recipe.seq_len,
                                  recipe.eval_seed + 1)
        with clock("evaluation"):
            record.log(record.step, "test", "loss", evaluate(forward, test, device, dtype))
