"""The eam pipeline: a trained teacher run -> an Elastic Associative Memory LM, in one run folder.

eam is not one network trained by the common loop but four stages over the same-seed run of a
transformer of the grid (the teacher, whose folder results/{study}/{teacher}/{variant}/seed{seed} the workflow
passes as ``spec["inputs"]["teacher"]``, from the PIPELINE declaration in harness/archs/eam.py):
  (a) write: the teacher reads the first ``write_tokens`` tokens of the training split in consecutive
      seq_len crops; each final hidden state h (the output of its module ``norm_f``) is written into
      the memory as value h under key normalize(Q^T h), ``write_batch`` keys per write;
  (b) encoder: ``encoder_steps`` steps on 1 - cos(encoder key, teacher key) over random crops;
  (c) decoder: ``decoder_steps`` steps on the cross-entropy of decoder(read(encoder(x))), the memory
      and the encoder frozen;
  (d) evaluation: the EAM and the teacher on the study's fixed validation batches (and test batches
      when the dataset has a test split), each as a proper distribution (softmax of its logits).
Budgets left out of the spec's hparams scale with the study's recipe (see ``Stages``); stages (b)
and (c) use the recipe's AdamW settings, grad clip and precision, its warmup + cosine schedule
stretched over the stage, through the same training step as the common loop (harness.recipe).
harness.run writes the run's files. There is no resume: a killed eam run starts over (its stages are
short next to the teacher's), and a SIGTERM or SIGINT stops it after its current step as interrupted.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file

from harness import archs, data, shape
from harness.archs import eam as eam_arch
from harness.contracts import BASE_VARIANT
from harness.progress import Progress
from harness.recipe import Recipe, autocast, evaluate, lr_at, make_optimizer, resolve_device, train_step, training_loss
from harness.run import RunRecord
from harness.study import init_seed

SET_BY_RUN = {"vocab_size": "the data", "teacher_d_model": "the teacher", "seed": "the study's seeds"}


@dataclass(frozen=True)
class Stages:
    """Budgets of the stages; None means scaled to the study's recipe (the teacher's budget)."""

    teacher: str = "transformer"  # the grid architecture whose same-seed run is the teacher
    write_tokens: int | None = None  # None -> steps * batch_size * seq_len / 4, at most the train split
    write_batch: int = 256  # keys per memory write; regulation sees the write that crosses each mark
    encoder_steps: int | None = None  # None -> recipe steps / 2
    decoder_steps: int | None = None  # None -> recipe steps / 2
    batch_size: int | None = None  # crops per teacher forward and per encoder/decoder step; None -> recipe's

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name != "teacher" and value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"eam: hparam {f.name}={value!r} must be a positive integer (or left out)")

    def scaled(self, recipe: Recipe, train_tokens: int) -> "Stages":
        teacher_tokens = recipe.steps * recipe.batch_size * recipe.seq_len
        return dataclasses.replace(
            self,
            write_tokens=min(self.write_tokens or max(1, teacher_tokens // 4), train_tokens),
            encoder_steps=self.encoder_steps or max(1, recipe.steps // 2),
            decoder_steps=self.decoder_steps or max(1, recipe.steps // 2),
            batch_size=self.batch_size or recipe.batch_size,
        )


def split_hparams(hparams: dict[str, Any]) -> tuple[dict[str, Any], Stages]:
    """A spec's eam hparams -> (model hyperparameters of harness.archs.eam.Config, stage budgets)."""
    stage_keys = {f.name for f in dataclasses.fields(Stages)}
    model_keys = {f.name for f in dataclasses.fields(eam_arch.Config)} - set(SET_BY_RUN)
    if fixed := sorted(set(hparams) & set(SET_BY_RUN)):
        raise ValueError(f"eam: hparam(s) {fixed} cannot be set: they come from "
                         + ", ".join(f"{k} <- {SET_BY_RUN[k]}" for k in fixed))
    if unknown := sorted(set(hparams) - stage_keys - model_keys):
        raise ValueError(f"eam: unknown hparam(s) {unknown}; stage budgets: {sorted(stage_keys)}; "
                         f"model: {sorted(model_keys)}")
    return ({k: v for k, v in hparams.items() if k in model_keys},
            Stages(**{k: v for k, v in hparams.items() if k in stage_keys}))


def load_teacher(teacher_dir: str | Path | None, spec: dict, corpus: data.Corpus,
                 arch: str) -> torch.nn.Module:
    """The teacher run's final weights in its own architecture, checked against this run; eval mode, frozen."""
    if teacher_dir is None:
        raise ValueError("eam: the spec has no inputs.teacher (the teacher run's folder, "
                         f"results/{{study}}/{arch}/{{variant}}/seed{{seed}}); the workflow puts it there")
    teacher_dir = Path(teacher_dir)
    for name in ("run.json", "model.safetensors"):
        if not (teacher_dir / name).is_file():
            raise FileNotFoundError(f"eam: teacher file {teacher_dir / name} is missing: train the teacher "
                                    f"({arch}, seed {spec['seed']}) first")
    run = json.loads((teacher_dir / "run.json").read_text())
    if run.get("status") != "completed":
        raise ValueError(f"eam: teacher run {teacher_dir} has status {run.get('status')!r} "
                         f"({run.get('reason')}); an EAM needs a completed teacher")
    variant = spec.get("variant", BASE_VARIANT)
    if teacher_dir.name == f"seed{spec['seed']}" and teacher_dir.parent.parent.name == arch:
        # the workflow's folder results/{study}/{arch}/{variant}/seed{seed} names the teacher's variant: this
        # run's, or, for a teacher without a model switch this run sweeps on, the same with it off
        variant = teacher_dir.parent.name
    if (run.get("arch"), run.get("variant", BASE_VARIANT), run.get("seed")) != (arch, variant, spec["seed"]):
        raise ValueError(f"eam: {teacher_dir} holds arch {run.get('arch')!r} variant {run.get('variant')!r} seed "
                         f"{run.get('seed')!r}, but this run's teacher is {arch!r} variant {variant!r} seed {spec['seed']}")
    if run.get("data") != corpus.info():
        raise ValueError(f"eam: teacher {teacher_dir} was trained on {run.get('data')}, not on this "
                         f"study's data {corpus.info()}")
    teacher = archs.build(run["build"], **run["hparams"])
    # strict load_state_dict: the grid's tied models fill in the tied name a saved file leaves out
    teacher.load_state_dict(load_file(str(teacher_dir / "model.safetensors")), strict=True)
    try:
        teacher.get_submodule("norm_f")
    except AttributeError as e:
        raise ValueError(f"eam: teacher {run['build']!r} has no module 'norm_f' (its final norm), "
                         "where the hidden states are read") from e
    return teacher.eval().requires_grad_(False)


ADMISSION_WRITES = 256  # random keys the admission model's memory holds (below regulate_every: no regulation)


def evaluation_model(spec: dict[str, Any], vocab_size: int) -> eam_arch.Model:
    """The evaluation path (tokens -> Encoder -> memory read -> Decoder) at a run spec's shape, for the
    admission checks (harness.admission): the teacher's width is the study's d_model (the teacher is
    an architecture of the study), and the memory holds ADMISSION_WRITES random unit keys with random
    values drawn from the run's seed, so that a read depends on the Encoder's key (an unwritten memory
    reads zeros, and logits that ignore the tokens would pass any check). The Encoder and the Decoder
    are initialised from the global generator, as the runner does after torch.manual_seed(seed)."""
    model_hparams, _ = split_hparams(spec["hparams"])
    hparams = {**model_hparams, "vocab_size": vocab_size, "teacher_d_model": spec["model"]["d_model"],
               "seed": spec["seed"]}
    model = archs.build(spec["build"], **hparams)
    g = torch.Generator().manual_seed(spec["seed"])
    memory = model.memory
    keys = torch.nn.functional.normalize(torch.randn(ADMISSION_WRITES, memory.key_dim, generator=g), dim=-1)
    memory.write(keys, torch.randn(ADMISSION_WRITES, memory.value_dim, generator=g))
    return model


def final_hidden(teacher: torch.nn.Module, x: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """The teacher's final hidden states [B, T, d] (the output of its norm_f), float32."""
    captured = []
    hook = teacher.get_submodule("norm_f").register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        with torch.no_grad(), autocast(x.device, dtype):
            teacher(x)
    finally:
        hook.remove()
    return captured[0].float()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def write_memory(model: eam_arch.Model, teacher, train: torch.Tensor, stages: Stages, seq_len: int,
                 device: torch.device, dtype: torch.dtype | None) -> tuple[int, float]:
    """Stage (a); returns (keys written, keys per second of memory writing alone, teacher excluded)."""
    n_crops = stages.write_tokens // seq_len
    if n_crops == 0:
        raise ValueError(f"eam: write_tokens={stages.write_tokens} is less than one crop of seq_len={seq_len}")
    crops = train[: n_crops * seq_len].view(n_crops, seq_len)
    seconds = 0.0
    for x in crops.split(stages.batch_size):
        h = final_hidden(teacher, x.long().to(device), dtype)
        keys, values = model.teacher_keys(h).flatten(0, 1), h.flatten(0, 1)
        for k, v in zip(keys.split(stages.write_batch), values.split(stages.write_batch)):
            _sync(device)
            start = time.perf_counter()
            model.memory.write(k, v)
            _sync(device)
            seconds += time.perf_counter() - start
    return n_crops * seq_len, n_crops * seq_len / max(seconds, 1e-9)


def fit(module: torch.nn.Module, loss_of: Callable, steps: int, first_step: int, recipe: Recipe,
        next_batch: Callable, record: RunRecord, metric: str, device: torch.device,
        total: int | None = None) -> str | None:
    """The recipe's training step on ``module``, its schedule stretched over ``steps``.

    Logs the window mean of the loss as train/``metric`` at global steps first_step + 1 ...; returns
    the reason of a divergence (a non-finite loss) or None.
    """
    schedule = dataclasses.replace(recipe, steps=steps, warmup_steps=min(recipe.warmup_steps, steps // 10))
    params = list(module.parameters())
    optimizer = make_optimizer(params, recipe, device)
    module.train()
    window = []
    progress = Progress(total or first_step + steps, start_step=first_step)  # the pipeline's steps, on stderr
    for i in range(steps):
        result = train_step(lambda batch: loss_of(*batch), params, optimizer, next_batch(), lr_at(i, schedule),
                            recipe.grad_clip)
        record.step = first_step + i + 1
        if not math.isfinite(result.loss):
            record.log(record.step, "train", metric, result.loss)
            return f"non-finite {metric} at step {record.step}"
        window.append(result.loss)
        progress.update(record.step, result.loss)
        if (i + 1) % recipe.log_every == 0 or i + 1 == steps:
            record.log(record.step, "train", metric, sum(window) / len(window))
            window = []
        record.stop_if_requested()
    return None


def run(spec: dict[str, Any], record: RunRecord, state_dir: Path) -> None:
    """Run the pipeline for one (study, eam, seed) into ``record`` (harness.run's runner contract).

    ``state_dir`` is unused (no resume). Steps count the optimizer steps of the pipeline: the
    encoder's 1..E, the decoder's E+1..E+D; the write stage is step 0.
    """
    manifest, summary, clock = record.manifest, record.pipeline, record.stages
    recipe = Recipe.from_dict(spec["recipe"])
    model_hparams, stages = split_hparams(spec["hparams"])
    device, dtype = resolve_device(recipe)
    with clock("data"):
        corpus = data.load_corpus(spec["data"]["name"], tokens=spec["data"]["tokens"])
    train = corpus.splits["train"]
    stages = stages.scaled(recipe, len(train))
    manifest.update(data=corpus.info(), recipe=dataclasses.asdict(recipe))
    record.set_device(device, dtype)
    teacher_dir = (spec.get("inputs") or {}).get("teacher")
    summary.update(teacher=stages.teacher, teacher_dir=str(teacher_dir), stages=dataclasses.asdict(stages))

    with clock("build"):
        teacher = load_teacher(teacher_dir, spec, corpus, stages.teacher).to(device)
        d_teacher = final_hidden(teacher, train[:1].long()[None].to(device), dtype).shape[-1]
        hparams = {**model_hparams, "vocab_size": corpus.vocab_size, "teacher_d_model": d_teacher,
                   "seed": init_seed(spec)}
        torch.manual_seed(init_seed(spec))  # encoder, decoder and memory init (the seed plus any init_seed_offset)
        model = archs.build(spec["build"], **hparams).to(device)
    record.model = model
    run_shape = shape.as_built(model, spec, corpus.vocab_size, dataclasses.asdict(model.config))
    manifest.update(hparams=run_shape.hparams, n_params=run_shape.n_params, shape=run_shape.record(),
                    reconstruction=archs.info(spec["build"]).reconstruction)
    memory = model.memory
    summary.update(encoder_params=shape.count_params(model.encoder), decoder_params=shape.count_params(model.decoder),
                   max_L=memory.max_locations,
                   memory_floats=sum(b.numel() for b in (memory.addresses, memory.counters, memory.write_weights)))

    # (a) write the teacher's hidden states
    with clock("steps"):  # the pipeline's training: the write, then the encoder's and the decoder's steps
        keys, keys_per_s = write_memory(model, teacher, train, stages, recipe.seq_len, device, dtype)
    summary.update(keys_written=keys, write_keys_per_s=keys_per_s, live_locations=memory.live)
    record.log(0, "train", "live_locations", memory.live)  # the throughput is a timing: run.json only

    gen = torch.Generator().manual_seed(spec["seed"])

    def next_batch():
        x, y = data.get_batch(train, stages.batch_size, recipe.seq_len, gen)
        return x.to(device), y.to(device)

    # (b) the encoder learns the teacher's keys from tokens alone
    def encoder_loss(x, _y):
        target = model.teacher_keys(final_hidden(teacher, x, dtype))
        with autocast(device, dtype):
            key = model.encoder(x)
        return (1 - (key.float() * target).sum(-1)).mean()

    total = stages.encoder_steps + stages.decoder_steps
    with clock("steps"):
        diverged = fit(model.encoder, encoder_loss, stages.encoder_steps, 0, recipe, next_batch, record,
                       "encoder_loss", device, total)

    # (c) the decoder learns next tokens from what the memory returns for the encoder's keys
    def decoder_loss(x, y):
        with torch.no_grad(), autocast(device, dtype):  # the encoder and the memory stay as they are
            read = memory.read(model.encoder(x))
        with autocast(device, dtype):
            logits = model.decoder(read)
        return training_loss(logits, y, recipe.z_loss)

    if diverged is None:
        with clock("steps"):
            diverged = fit(model.decoder, decoder_loss, stages.decoder_steps, stages.encoder_steps, recipe,
                           next_batch, record, "decoder_loss", device, total)
    if diverged is not None:
        record.diverge(diverged)
        return

    # (d) both models as proper distributions on the same validation (and test) batches
    splits = [("val", recipe.eval_seed)] + ([("test", recipe.eval_seed + 1)] if "test" in corpus.splits else [])
    for split, seed in splits:
        batches = data.fixed_batches(corpus.splits[split], recipe.eval_batches, recipe.batch_size, recipe.seq_len, seed)
        with clock("evaluation"):
            eam_loss = evaluate(model, batches, device, dtype)
            teacher_loss = evaluate(teacher, batches, device, dtype)
        record.log(record.step, split, "loss", eam_loss)
        record.log(record.step, split, "teacher_loss", teacher_loss)
        if split == "val":
            summary.update(eam_loss=eam_loss, teacher_loss=teacher_loss, transfer=teacher_loss / eam_loss)
            if not math.isfinite(eam_loss):
                record.diverge(f"non-finite validation loss at step {record.step}")
                return
