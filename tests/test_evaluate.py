"""`python -m harness evaluate`: a model folder (config.json + model.safetensors, as the published cards
ship them) loads strictly and scores the same loss as a direct computation on the same batches."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_model

from harness import data
from harness.archs import build
from tests.conftest import REPO

CONFIG = {"vocab_size": 256, "d_model": 32, "n_layers": 2, "n_heads": 4, "max_seq_len": 64}


@pytest.fixture
def model_dir(tmp_path):
    torch.manual_seed(0)
    model = build("transformer", **CONFIG)
    (tmp_path / "config.json").write_text(json.dumps({"arch": "transformer", **CONFIG}))
    save_model(model, str(tmp_path / "model.safetensors"))  # the tied head saved once, as published
    return tmp_path, model


def evaluate_cli(folder, *extra):
    return subprocess.run([sys.executable, "-m", "harness", "evaluate", "--model-dir", str(folder),
                           "--data", "tinyshakespeare", "--batches", "2", "--batch-size", "4", "--seq-len", "64",
                           *extra], capture_output=True, text=True, cwd=REPO)


def test_a_model_folder_scores_the_direct_loss(model_dir, shared_data):
    folder, model = model_dir
    done = evaluate_cli(folder, "--split", "val")  # TinyShakespeare has train and val only
    assert done.returncode == 0, done.stderr[-2000:]
    val = data.load_corpus("tinyshakespeare", tokens="bytes").splits["val"]
    batches = data.fixed_batches(val, 2, 4, 64, 1)
    with torch.no_grad():
        loss = sum(F.cross_entropy(model.eval()(x).flatten(0, 1), y.flatten()).item() for x, y in batches) / 2
    assert f"transformer on the val split (512 bytes): loss {loss:.4f} nats per byte, " in done.stdout
    assert f"perplexity {math.exp(loss):.3f}, {loss / math.log(2):.4f} bits per byte" in done.stdout
    missing = evaluate_cli(folder)
    assert missing.returncode == 2 and "dataset 'tinyshakespeare' has no 'test' split" in missing.stderr


def test_weights_that_do_not_fit_are_named(model_dir, tmp_path):
    from harness.evaluate import load_weights

    folder, _ = model_dir
    (folder / "config.json").write_text(json.dumps({"arch": "transformer", **CONFIG, "n_layers": 3}))
    with pytest.raises(ValueError, match=r"does not fit transformer(.|\n)*Missing key\(s\)(.|\n)*blocks\.2\."):
        load_weights(None, folder / "config.json", folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps(CONFIG))
    with pytest.raises(ValueError, match="no 'arch' key; name the architecture with --arch"):
        load_weights(None, folder / "config.json", folder / "model.safetensors")
