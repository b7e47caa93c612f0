"""Studies: the validated workflow config -> resolved studies -> one run spec per (arch, seed).

The config is validated (and its defaults filled) against workflow/schemas/config.schema.yaml
before it gets here; this module only applies the command-line overrides and normalises the
architecture entries, so that the workflow itself holds no logic. No torch here.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
from importlib import resources
from pathlib import Path
from typing import Any

from harness import archs as registry

OVERRIDES = ("archs", "seeds", "steps")


def _arch_entry(entry: str | dict, defined: dict[str, dict]) -> dict:
    """Normalise an arch entry to {name, build, hparams}; a bare name may refer to a study's definition."""
    if isinstance(entry, str):
        if entry in defined:
            return copy.deepcopy(defined[entry])
        # a dotted path 'pkg.module:function' is named after its module in file paths
        name = entry.partition(":")[0].rsplit(".", 1)[-1] if ":" in entry else entry
        return {"name": name, "build": entry, "hparams": {}}
    base = defined.get(entry["name"], {"hparams": {}})
    return {
        "name": entry["name"],
        "build": entry.get("build", base.get("build", entry["name"])),
        "hparams": {**base["hparams"], **entry.get("hparams", {})},
    }


def _check_build(build: str, study: str) -> None:
    """Unknown architectures fail here, before any job runs (without importing torch)."""
    if ":" in build:
        module = build.partition(":")[0]
        try:
            found = importlib.util.find_spec(module) is not None
        except ImportError:
            found = False
        if not found:
            raise ValueError(f"study {study!r}: architecture {build!r}: module {module!r} is not importable")
    elif build not in registry.available():
        raise ValueError(
            f"study {study!r}: unknown architecture {build!r}; choose one of {registry.available()} "
            "or name a builder by dotted path 'package.module:function'"
        )


def resolve(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """All studies of a validated config, with the top-level overrides applied to each."""
    studies = {}
    for name, raw in config["studies"].items():
        study = copy.deepcopy(raw)
        defined = {}
        for entry in study["archs"]:
            arch = _arch_entry(entry, defined)
            defined[arch["name"]] = arch
        chosen = config.get("archs") or list(defined)
        archs = [_arch_entry(entry, defined) for entry in chosen]
        names = [a["name"] for a in archs]
        if len(set(names)) != len(names):
            raise ValueError(f"study {name!r}: architecture names repeat: {names}")
        for a in archs:
            _check_build(a["build"], name)
        study["archs"] = {a["name"]: {"build": a["build"], "hparams": a["hparams"]} for a in archs}
        study["name"] = name
        for arch in study["archs"]:
            pipeline_inputs(study, arch)  # a pipeline without its inputs fails here, before any job
        if config.get("seeds"):
            study["seeds"] = list(config["seeds"])
        if config.get("steps"):
            study["recipe"]["steps"] = config["steps"]
        recipe = study["recipe"]
        if recipe["checkpoint_every"] % recipe["log_every"]:
            raise ValueError(
                f"study {name!r}: recipe.checkpoint_every ({recipe['checkpoint_every']}) must be a "
                f"multiple of recipe.log_every ({recipe['log_every']}) so a resumed run logs the same windows"
            )
        # the parameter budget's architecture, even when an override left it out of the runs
        study["reference_arch"] = _arch_entry(study["shape"]["reference"], defined)
        published_curves_file(study)  # a missing curves file fails here, before any job
        studies[name] = study
    if config["study"] not in studies:
        raise ValueError(f"config 'study': {config['study']!r} is not one of the studies {sorted(studies)}")
    return studies


def published_curves_file(study: dict) -> str | None:
    """The published curves a study overlays: a path (absolute, or relative to the working directory)
    or the name of a file the package ships in harness/published/; None when the study names none."""
    given = study.get("published_curves")
    if not given:
        return None
    shipped = resources.files("harness") / "published" / given
    for candidate in (Path(given), Path(str(shipped))):
        if candidate.is_file():
            return str(candidate.resolve())
    raise ValueError(f"study {study['name']!r}: published_curves {given!r} is neither a file nor one of the "
                     f"shipped curves {sorted(p.name for p in (resources.files('harness') / 'published').iterdir())}")


def run_dir(study: str, arch: str, seed: int) -> str:
    """Where one run's files live, relative to the workflow's working directory."""
    return f"results/{study}/{arch}/seed{seed}"


def pipeline_inputs(study: dict, arch: str) -> dict[str, str]:
    """The architectures whose same-seed runs a pipeline architecture consumes, by input name
    (its module's ``PIPELINE.inputs``, each named by one of its hparams); {} for the common loop."""
    entry = study["archs"][arch]
    pipeline = registry.info(entry["build"]).pipeline
    inputs = {}
    for key in pipeline.inputs if pipeline else ():
        named = entry["hparams"].get(key)
        if named not in study["archs"] or named == arch:
            raise ValueError(
                f"study {study['name']!r}: {arch!r} needs hparams.{key} naming another architecture of the "
                f"study whose same-seed run it consumes (one of {sorted(set(study['archs']) - {arch})}), "
                f"got {named!r}")
        inputs[key] = named
    return inputs


def run_spec(study: dict, arch: str, seed: int) -> dict[str, Any]:
    """Everything one training run needs, as plain JSON-able data."""
    if arch not in study["archs"]:
        raise ValueError(f"study {study['name']!r} has no architecture {arch!r}: {sorted(study['archs'])}")
    spec = {
        "study": study["name"],
        "arch": arch,
        "build": study["archs"][arch]["build"],
        "seed": int(seed),
        "data": study["data"],
        "model": study["model"],
        "hparams": study["archs"][arch]["hparams"],
        "shape": study["shape"],
        "reference": study["reference_arch"],
        "recipe": study["recipe"],
    }
    if inputs := pipeline_inputs(study, arch):
        spec["inputs"] = {key: run_dir(study["name"], upstream, seed) for key, upstream in inputs.items()}
    if (study.get("quantize") or {}).get("every_checkpoint"):  # not tied to bits: another width retrains nothing
        spec["snapshots"] = snapshot_dir(study["name"], arch, seed)
    return spec


def snapshot_dir(study: str, arch: str, seed: int) -> str:
    """Where the trainer keeps a run's weight snapshots for the quantization stage (quantize.every_checkpoint)."""
    return f"{run_dir(study, arch, seed)}/snapshots"


def config_hash(spec: dict[str, Any]) -> str:
    """Hash of a run spec without its seed (nor its input runs' folders, nor where it keeps weight
    snapshots, which change nothing it computes): the seeds of one architecture in one study share it."""
    identity = {k: v for k, v in spec.items() if k not in ("seed", "inputs", "snapshots")}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
