"""A toy pipeline architecture, declared like eam but unknown to the harness: one module, no registry
edit. It consumes the same-seed run of the architecture its hparam `source` names, fits a bigram table
with the recipe's training step, and records its own numbers in run.json's pipeline block."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from torch import nn

from harness import data, shape
from harness.archs import Pipeline, make_config
from harness.recipe import Recipe, evaluate, make_optimizer, next_token_loss, train_step

MATCH_KNOB = None
PIPELINE = Pipeline(runner="tests.toy_pipeline:run", inputs=("source",))


@dataclasses.dataclass
class Config:
    vocab_size: int = 256
    source: str = ""  # the architecture whose run it consumes (read by the runner, not the model)


class Bigram(nn.Module):
    def __init__(self, config: Config):
        super().__init__()
        self.config = config
        self.table = nn.Embedding(config.vocab_size, config.vocab_size)

    def forward(self, input_ids):
        return self.table(input_ids)


def build(**hparams) -> Bigram:
    return Bigram(make_config(Config, hparams, "toy_pipeline"))


def run(spec, record, state_dir) -> None:
    recipe = Recipe.from_dict(spec["recipe"])
    corpus = data.load_corpus(spec["data"]["name"], tokens=spec["data"]["tokens"])
    source = json.loads((Path(spec["inputs"]["source"]) / "run.json").read_text())
    device = torch.device("cpu")
    record.manifest.update(data=corpus.info(), recipe=dataclasses.asdict(recipe))
    record.set_device(device, None)
    torch.manual_seed(spec["seed"])
    model = record.model = build(vocab_size=corpus.vocab_size, **spec["hparams"])
    built = shape.as_built(model, spec, corpus.vocab_size, dataclasses.asdict(model.config))
    record.manifest.update(hparams=built.hparams, n_params=built.n_params, shape=built.record())
    params = list(model.parameters())
    optimizer = make_optimizer(params, recipe, device)
    gen = torch.Generator().manual_seed(spec["seed"])
    for i in range(10):
        batch = data.get_batch(corpus.splits["train"], recipe.batch_size, recipe.seq_len, gen)
        result = train_step(lambda b: next_token_loss(model(b[0]), b[1]), params, optimizer, batch, recipe.lr, 1.0)
        record.step = i + 1
        record.log(record.step, "train", "loss", result.loss)
    val = data.fixed_batches(corpus.splits["val"], recipe.eval_batches, recipe.batch_size, recipe.seq_len,
                             recipe.eval_seed)
    loss = evaluate(model, val, device, None)
    record.log(record.step, "val", "loss", loss)
    record.pipeline.update(source_arch=source["arch"], source_seed=source["seed"], bigram_loss=loss)
