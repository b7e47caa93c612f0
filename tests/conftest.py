"""Shared test helpers: a micro study validated against the real schema, the test data, and
temporary copies of the workflow (tests never read or write the working tree's results/)."""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from snakemake.utils import validate

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
# The published 70M curves ship with the package; ../shared/reference holds the same file in CI.
PUBLISHED = REPO / "harness" / "published" / "mnsm-enwik8-70m.csv"

# HARNESS_TEST_NO_SHARED=1 simulates a user's clone, which has no ../shared beside it.
SHARED = None if os.environ.get("HARNESS_TEST_NO_SHARED") else REPO.parent / "shared"
SHARED_DATA = SHARED / "data" if SHARED else None
SHARED_REFERENCE = SHARED / "reference" / "mnsm-enwik8-70m.csv" if SHARED else None

# Tests read TinyShakespeare from HARNESS_DATA_DIR, else from ../shared/data (no network).
if SHARED_DATA is not None and SHARED_DATA.is_dir():
    os.environ.setdefault("HARNESS_DATA_DIR", str(SHARED_DATA))
DATA_DIR = Path(os.environ["HARNESS_DATA_DIR"]) if os.environ.get("HARNESS_DATA_DIR") else None
TINYSHAKESPEARE = next((DATA_DIR / n for n in ("tinyshakespeare.txt", "input.txt")
                        if DATA_DIR and (DATA_DIR / n).is_file()), None)
NEEDS_DATA = ("needs TinyShakespeare: set HARNESS_DATA_DIR to a folder holding tinyshakespeare.txt "
              "(README, Tests)")

# What a user's checkout holds of the workflow: a temporary copy of these is a fresh working tree.
WORKFLOW_FILES = ("Snakefile", "workflow", "config", "profiles", "examples")


def workflow_copy(dest: Path) -> Path:
    """Copy the workflow (never results/, logs/, reports/ or .snakemake/) into dest; return dest."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in WORKFLOW_FILES:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, dest / name)
    return dest


MICRO_STUDY = {
    "description": "micro study for tests",
    "smoke": True,
    "data": {"name": "tinyshakespeare", "tokens": "bytes"},
    "archs": ["transformer", {"name": "memnls", "hparams": {"ffn_mult": 5}}],
    "seeds": [0],
    "model": {"d_model": 16, "n_layers": 1, "n_heads": 2},
    "recipe": {"steps": 40, "batch_size": 4, "seq_len": 32, "lr": 3e-3, "min_lr": 3e-4,
               "warmup_steps": 5, "log_every": 5, "eval_every": 10, "eval_batches": 2,
               "checkpoint_every": 10},
}


def micro_config(study: dict | None = None, **top) -> dict:
    """A whole workflow config holding one study 'micro', validated (defaults filled) by the schema."""
    config = {"study": "micro", "studies": {"micro": copy.deepcopy(study or MICRO_STUDY)}, **top}
    validate(config, str(SCHEMA))
    return config


def write_config(workdir: Path, config: dict) -> Path:
    """Write config/config.yaml into a workflow working directory (unvalidated keys stay out)."""
    path = workdir / "config" / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def assert_causal(model, vocab_size: int, length: int, t: int, atol: float = 1e-5) -> None:
    """Logits at positions <= t ignore the tokens after t, and do change where the tokens changed."""
    torch.manual_seed(0)
    ids = torch.randint(0, vocab_size, (2, length))
    changed = ids.clone()
    changed[:, t + 1 :] = (ids[:, t + 1 :] + 1) % vocab_size
    with torch.no_grad():
        a, b = model.eval()(ids), model(changed)
    torch.testing.assert_close(a[:, : t + 1], b[:, : t + 1], rtol=0, atol=atol)  # FFT round-off at most
    assert not torch.allclose(a[:, t + 1 :], b[:, t + 1 :])


def dropout_calls(model, vocab_size: int) -> list[str]:
    """Names of the dropout modules one training forward passes through, in call order."""
    called = []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Dropout):
            module.register_forward_hook(lambda m, i, o, name=name: called.append(name))
    model.train()(torch.randint(0, vocab_size, (2, 8)))
    return called


@pytest.fixture
def small_fs(tmp_path) -> Path:
    """A 1 MiB tmpfs of the test's own, for a full disk (tests run as root in CI); skipped where it
    cannot be mounted."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs for a full disk: {done.stderr.strip() or done.returncode}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(mount: Path, leave: int) -> Path:
    """Fill ``mount`` up to ``leave`` bytes free."""
    filler = mount / "filler"
    filler.write_bytes(b"\0" * (shutil.disk_usage(mount).free - leave))
    return filler


@pytest.fixture
def shared_data() -> Path:
    """The folder holding TinyShakespeare (HARNESS_DATA_DIR); skips, saying so, where there is none."""
    if TINYSHAKESPEARE is None:
        pytest.skip(NEEDS_DATA)
    return TINYSHAKESPEARE.parent


def hand_built_memory(memory_class, *addresses, weights=None, counters=None, max_locations=8, **kw):
    """An eam memory of ``memory_class`` whose live rows are the given addresses (and W, C), value width 2."""
    m = memory_class(key_dim=len(addresses[0]), value_dim=2, max_locations=max_locations,
                     initial_locations=len(addresses), **kw)
    m.addresses[: len(addresses)] = torch.stack(addresses)
    if weights is not None:
        m.write_weights[: len(weights)] = torch.tensor(weights)
    if counters is not None:
        m.counters[: len(counters)] = torch.tensor(counters)
    return m
