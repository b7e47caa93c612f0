"""Studies: the validated workflow config -> resolved studies -> one run spec per (arch, variant, seed).

Before Snakemake validates the config (and fills its defaults) against
workflow/schemas/config.schema.yaml, coerce_overrides types the command-line values and
check_config says the first mistake in one line. resolve then applies the overrides, names the
study folder after them (study_folder) and normalises the architecture entries, so that the
workflow itself holds no logic. A study's ``sweep`` maps recipe keys and stabiliser switches to lists
of values; every combination is a variant of every architecture (``variants``), a level of the run
folders: results/{study}/{arch}/{variant}/seed{seed}, ``base`` without a sweep. No torch here (a builder named by dotted path is imported, though,
to check that it exists).
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import importlib
import importlib.util
import json
import re
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from harness import archs as registry
from harness.contracts import BASE_VARIANT
from harness.variants import MODEL_SWITCHES, variants

OVERRIDES = ("archs", "seeds", "steps")  # top-level keys that change every study's results
LIST_OVERRIDES = ("archs", "seeds")
MAX_VALUE = 40  # an override value longer than this is named by a hash in the folder name


class ConfigError(ValueError):
    """A config mistake, said in one line."""


def coerce_overrides(config: dict[str, Any]) -> dict[str, Any]:
    """The typed values of the top-level overrides, in place (and returned).

    Snakemake reads `--config seeds=[0,1]` with YAML's BaseLoader, so list items and mapping values
    arrive as strings ('0', '1'); a scalar (`seeds=0`) arrives as an int. This is the one place
    that turns them into what the schema describes: integer seeds and steps, a list for a scalar
    archs/seeds, and YAML-typed hyperparameters of an architecture entry.
    """

    def integer(value):
        if isinstance(value, str) and re.fullmatch(r"[+-]?\d+", value.strip()):
            return int(value)
        return value

    def typed(value):  # hparams: '5' -> 5, '0.05' -> 0.05, 'true' -> True, 'standard' stays
        if isinstance(value, dict):
            return {k: typed(v) for k, v in value.items()}
        if isinstance(value, list):
            return [typed(v) for v in value]
        if isinstance(value, str):
            try:
                return yaml.safe_load(value)
            except yaml.YAMLError:
                return value
        return value

    for key in LIST_OVERRIDES:
        if config.get(key) is not None and not isinstance(config[key], (list, dict)):
            config[key] = [config[key]]
    if isinstance(config.get("seeds"), dict):  # a seed budget: seeds={start: 3, step: 2, max: 11}
        config["seeds"] = {k: integer(v) for k, v in config["seeds"].items()}
    if isinstance(config.get("seeds"), list):
        config["seeds"] = [integer(s) for s in config["seeds"]]
    if config.get("steps") is not None:
        config["steps"] = integer(config["steps"])
    if isinstance(config.get("archs"), list):
        config["archs"] = [
            {**entry, "hparams": typed(entry["hparams"])} if isinstance(entry, dict) and "hparams" in entry else entry
            for entry in config["archs"]
        ]
    if config.get("study") is not None and not isinstance(config["study"], str):
        config["study"] = str(config["study"])
    return config


def check_config(config: dict[str, Any], schema_path: str | Path) -> None:
    """Raise ConfigError with one readable line for the first config mistake, before Snakemake's
    validate (whose message repeats the whole schema). Call after coerce_overrides."""
    import jsonschema

    schema = yaml.safe_load(Path(schema_path).read_text())
    keys = list(schema["properties"])
    for key in config:
        if key not in schema["properties"]:
            close = difflib.get_close_matches(key, keys, n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise ConfigError(f"config: unknown key {key!r}; {hint}The keys are: {', '.join(keys)}")
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(config))
    if error is not None:
        where = "".join(f"[{p!r}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path).lstrip(".")
        raise ConfigError(f"config {where or '(top level)'}: {error.message}")
    recipe_keys = schema["$defs"]["study"]["properties"]["recipe"]["properties"]
    for name, study in config.get("studies", {}).items():
        _check_sweep(name, study.get("sweep") or {}, recipe_keys)


def _arch_entry(entry: str | dict, defined: dict[str, dict]) -> dict:
    """Normalise an arch entry to {name, build, hparams}; a bare name may refer to a study's definition."""
    if isinstance(entry, str):
        if entry in defined:
            return copy.deepcopy(defined[entry])
        # a dotted path 'pkg.module:function' is named after its module in file paths
        name = entry.partition(":")[0].rsplit(".", 1)[-1] if ":" in entry else entry
        return {"name": name, "build": entry, "hparams": {}}
    base = defined.get(entry["name"], {"hparams": {}})
    arch = {
        "name": entry["name"],
        "build": entry.get("build", base.get("build", entry["name"])),
        "hparams": {**base["hparams"], **entry.get("hparams", {})},
    }
    if recipe := entry.get("recipe", base.get("recipe")):
        arch["recipe"] = recipe
    return arch


FIXED_KEYS = ("steps", "batch_size", "seq_len", "log_every", "eval_every", "eval_batches", "eval_sampling",
              "eval_seed", "checkpoint_every")
"""Recipe keys a sweep may not vary: the variants of a study are compared on the same data, steps and evaluation."""


def _check_sweep(name: str, sweep: dict[str, list], recipe_schema: dict[str, dict]) -> None:
    """Each sweep key is a recipe training key or a stabiliser switch, each value valid for it."""
    import jsonschema

    known = [k for k in recipe_schema if k not in FIXED_KEYS] + list(MODEL_SWITCHES)
    for key, values in sweep.items():
        where = f"study {name!r}: sweep.{key}"
        if key in FIXED_KEYS:
            raise ConfigError(f"{where}: the variants of a study are compared on the same {', '.join(FIXED_KEYS)}; "
                              f"sweep a training hyperparameter ({', '.join(known)})")
        if key not in known:
            close = difflib.get_close_matches(key, known, 1)
            raise ConfigError(f"{where}: not a recipe key nor a stabiliser switch"
                              f"{f' (did you mean {close[0]}?)' if close else ''}; the keys are: {', '.join(known)}")
        if len({json.dumps(v) for v in values}) != len(values):
            raise ConfigError(f"{where}: values repeat: {values}")
        validator = jsonschema.Draft202012Validator(recipe_schema.get(key, {"type": "boolean"}))
        for value in values:
            if (error := jsonschema.exceptions.best_match(validator.iter_errors(value))) is not None:
                raise ConfigError(f"{where}: value {value!r}: {error.message}")


def _check_switches(study: dict) -> None:
    """An architecture asked for a stabiliser switch (by its hparams or the sweep) must honour it."""
    sweep = study.get("sweep") or {}
    for arch, entry in study["archs"].items():
        honoured = registry.info(entry["build"]).switches
        asked = {k for k in MODEL_SWITCHES if entry["hparams"].get(k) or any(sweep.get(k, []))}
        for switch in sorted(asked - set(honoured)):
            able = sorted(a for a, e in study["archs"].items() if switch in registry.info(e["build"]).switches)
            raise ConfigError(f"study {study['base']!r}: architecture {arch!r} does not implement the stabiliser "
                              f"switch {switch!r} (its module declares SWITCHES = {tuple(honoured)}); of this "
                              f"study's architectures these do: {', '.join(able) or 'none'}")


def recipe_presets() -> dict[str, dict[str, Any]]:
    """The named recipes of harness/recipes.yaml (each entry's published optimizer, schedule, clip)."""
    return yaml.safe_load(resources.files("harness").joinpath("recipes.yaml").read_text())


def arch_recipe(study: dict, arch: str) -> tuple[str, dict[str, Any]]:
    """(recipe name, recipe) of one architecture: its preset (its entry's ``recipe``, else under
    ``published_recipe`` the preset named after its build) merged over the study's recipe, or
    ('common', the study's recipe) when it has none."""
    presets = recipe_presets()
    name = study["archs"][arch].get("recipe")
    if not name and study.get("published_recipe"):
        build = study["archs"][arch]["build"]
        name = next((n for n in sorted(presets) if n.rpartition("-pr")[0] == build), None)
    if not name:
        return "common", study["recipe"]
    if name not in presets:
        close = difflib.get_close_matches(name, presets, 1)
        raise ConfigError(f"study {study['name']!r}: {arch!r} asks for recipe {name!r}, not a preset of "
                          f"harness/recipes.yaml{f' (did you mean {close[0]!r}?)' if close else ''}; "
                          f"the presets are: {', '.join(sorted(presets))}")
    return name, {**study["recipe"], **presets[name]}


def _check_build(build: str, study: str) -> None:
    """Unknown architectures fail here, before any job runs. A dotted path 'pkg.module:function' is
    imported (the user's module, from the working directory or PYTHONPATH) and its function must exist
    and be callable; registry names are checked without importing torch."""
    if ":" in build:
        module, _, function = build.partition(":")
        try:
            found = importlib.util.find_spec(module) is not None
        except ImportError:
            found = False
        if not found:
            raise ConfigError(f"study {study!r}: architecture {build!r}: module {module!r} is not importable")
        try:
            imported = importlib.import_module(module)
        except Exception as e:  # the user's module raised while importing
            raise ConfigError(f"study {study!r}: architecture {build!r}: importing {module!r} failed: "
                              f"{type(e).__name__}: {e}") from e
        if not callable(getattr(imported, function, None)):
            defined = sorted(n for n, v in vars(imported).items() if callable(v) and not n.startswith("_")
                             and getattr(v, "__module__", None) == imported.__name__)
            close = difflib.get_close_matches(function, defined, n=1)
            hint = f" (did you mean {module}:{close[0]}?)" if close else ""
            raise ConfigError(f"study {study!r}: architecture {build!r}: module {module!r} has no callable "
                              f"{function!r}{hint}; it defines {defined}")
    elif build not in registry.available():
        raise ConfigError(
            f"study {study!r}: unknown architecture {build!r}; choose one of {registry.available()} "
            "or name a builder by dotted path 'package.module:function'"
        )


def _seeds_text(seeds: list[int]) -> str:
    """0,1,2,3,5 -> '0-3,5': runs of three or more consecutive seeds as a range."""
    parts, i = [], 0
    while i < len(seeds):
        j = i
        while j + 1 < len(seeds) and seeds[j + 1] == seeds[j] + 1:
            j += 1
        parts += [f"{seeds[i]}-{seeds[j]}"] if j - i >= 2 else [str(s) for s in seeds[i:j + 1]]
        i = j + 1
    return ",".join(parts)


def _short_hash(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:8]


def study_folder(base: str, overrides: dict[str, Any]) -> str:
    """The folder name of a study under overrides: readable, filesystem-safe, the same for the same
    overrides, e.g. 'tiny+seeds=0-4+steps=2000'; no overrides = the study's own name."""
    parts = [base]
    for key in OVERRIDES:
        if key not in overrides:
            continue
        value = overrides[key]
        if key == "archs":
            text = ",".join(e.replace(":", ".") if isinstance(e, str) else f"{e['name']}@{_short_hash(e)}"
                            for e in value)
        elif key == "seeds" and isinstance(value, dict):  # not max: a larger max continues the same runs
            text = f"{value['start']}by{value.get('step', 1)}"
        elif key == "seeds":
            text = _seeds_text(value)
        else:
            text = str(value)
        if len(text) > MAX_VALUE:
            text = f"{len(value) if isinstance(value, list) else ''}@{_short_hash(value)}"
        parts.append(f"{key}={text}")
    return "+".join(parts)


def _override_text(overrides: dict[str, Any]) -> str:
    """The overrides as they are typed on the command line: seeds=[0,1] steps=50."""

    def fmt(v: Any) -> str:
        if isinstance(v, list):
            return "[" + ",".join(fmt(x) for x in v) + "]"
        if isinstance(v, dict):
            return yaml.safe_dump(v, default_flow_style=True, width=10_000).strip()
        return str(v)

    return " ".join(f"{k}={fmt(overrides[k])}" for k in OVERRIDES if k in overrides)


def resolve(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """All studies of a validated config, with the top-level overrides applied to each.

    Keyed by study folder name: a study whose results an override changes is named after the
    overrides (study_folder), so results made under one configuration never overwrite another's.
    Each resolved study keeps its `base` study name and the `overrides` that changed it.
    """
    studies = {}
    for base, raw in config["studies"].items():
        study = copy.deepcopy(raw)
        defined = {}
        for entry in study["archs"]:
            arch = _arch_entry(entry, defined)
            defined[arch["name"]] = arch
        chosen = config.get("archs") or list(defined)
        archs = [_arch_entry(entry, defined) for entry in chosen]
        names = [a["name"] for a in archs]
        if len(set(names)) != len(names):
            raise ConfigError(f"study {base!r}: architecture names repeat: {names}")
        for a in archs:
            _check_build(a["build"], base)
        overrides = {}
        if config.get("archs") and archs != list(defined.values()):
            overrides["archs"] = list(config["archs"])
        if config.get("seeds") and config["seeds"] != study["seeds"]:
            overrides["seeds"] = study["seeds"] = copy.deepcopy(config["seeds"])
        _seed_budget(study, base)
        if config.get("steps") and config["steps"] != study["recipe"]["steps"]:
            overrides["steps"] = study["recipe"]["steps"] = config["steps"]
        name = study_folder(base, overrides)
        study["archs"] = {a["name"]: {k: a[k] for k in ("build", "hparams", "recipe") if k in a} for a in archs}
        study["name"], study["base"], study["overrides"] = name, base, overrides
        if overrides:
            study["description"] = (f"{study.get('description') or base} "
                                    f"(study {base} with overrides {_override_text(overrides)})")
        study["variants"] = variants(study.get("sweep"))
        _check_switches(study)
        for arch in study["archs"]:
            arch_recipe(study, arch)  # an unknown preset fails here, before any job
            pipeline_inputs(study, arch)  # a pipeline without its inputs fails here, before any job
        recipe = study["recipe"]
        if recipe["checkpoint_every"] % recipe["log_every"]:
            raise ConfigError(
                f"study {base!r}: recipe.checkpoint_every ({recipe['checkpoint_every']}) must be a "
                f"multiple of recipe.log_every ({recipe['log_every']}) so a resumed run logs the same windows"
            )
        # the parameter budget's architecture, even when an override left it out of the runs
        study["reference_arch"] = _arch_entry(study["shape"]["reference"], defined)
        published_curves_file(study)  # a missing curves file fails here, before any job
        _check_claims(study)
        studies[name] = study
    if config["study"] not in config["studies"]:
        raise ConfigError(f"config 'study': {config['study']!r} is not one of the studies {sorted(config['studies'])}")
    return studies


def _seed_budget(study: dict, base: str) -> None:
    """A study's ``seeds: {start, step, max}`` -> its seed_budget (start, step, max and the looks' seed
    counts) and the seeds it may train, 0..max-1 (harness.sequential); a plain list stays as it is."""
    from harness.sequential import SeedBudget  # statistics: only when a study is resolved

    if not isinstance(study["seeds"], dict):
        return
    try:
        budget = SeedBudget.of(study["seeds"])
    except ValueError as e:
        raise ConfigError(f"study {base!r}: {e}") from None
    study["seed_budget"] = {"start": budget.start, "step": budget.step, "max": budget.max, "looks": budget.looks()}
    study["seeds"] = list(range(budget.max))


def _check_claims(study: dict) -> None:
    """A study's claims file and its published reference must load before any job runs."""
    from harness import claims  # statistics and YAML schemas: only when a study is resolved

    if study.get("claims") and not Path(study["claims"]).is_file():
        raise ConfigError(f"study {study['name']!r}: claims file {study['claims']!r} does not exist")
    publications, _ = claims.load(study.get("claims"))
    if study.get("published") and study["published"] not in publications:
        raise ConfigError(f"study {study['name']!r}: published {study['published']!r} is not one of the "
                         f"publications {sorted(publications)}")


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
    raise ConfigError(f"study {study['name']!r}: published_curves {given!r} is neither a file nor one of the "
                     f"shipped curves {sorted(p.name for p in (resources.files('harness') / 'published').iterdir())}")


def default_study(studies: dict[str, dict[str, Any]], config: dict[str, Any]) -> str:
    """The folder name of the study config['study'] names, under the config's overrides: the study
    whose report is reports/collapse.html."""
    return next(name for name, s in studies.items() if s["base"] == config["study"])


def run_dir(study: str, arch: str, variant: str, seed: int) -> str:
    """Where one run's files live, relative to the workflow's working directory."""
    return f"results/{study}/{arch}/{variant}/seed{seed}"


def runs(study: dict) -> list[tuple[str, str, int]]:
    """Every (arch, variant, seed) of a study, in a stable order."""
    return [(arch, variant, seed) for arch in study["archs"] for variant in study["variants"] for seed in study["seeds"]]


def pipeline_inputs(study: dict, arch: str) -> dict[str, str]:
    """The architectures whose same-seed runs a pipeline architecture consumes, by input name
    (its module's ``PIPELINE.inputs``, each named by one of its hparams); {} for the common loop."""
    entry = study["archs"][arch]
    pipeline = registry.info(entry["build"]).pipeline
    inputs = {}
    for key in pipeline.inputs if pipeline else ():
        named = entry["hparams"].get(key)
        if named not in study["archs"] or named == arch:
            raise ConfigError(
                f"study {study['name']!r}: {arch!r} needs hparams.{key} naming another architecture of the "
                f"study whose same-seed run it consumes (one of {sorted(set(study['archs']) - {arch})}), "
                f"got {named!r}")
        inputs[key] = named
    return inputs


def run_spec(study: dict, arch: str, variant: str, seed: int) -> dict[str, Any]:
    """Everything one training run needs, as plain JSON-able data. The variant's sweep values override
    the architecture's recipe (recipe keys) or join its hyperparameters (stabiliser switches, under
    ``switches``: the shape is matched without them, so a switch adds only its own parameters)."""
    if arch not in study["archs"]:
        raise ConfigError(f"study {study['name']!r} has no architecture {arch!r}: {sorted(study['archs'])}")
    if variant not in study["variants"]:
        raise ConfigError(f"study {study['name']!r} has no variant {variant!r}: {sorted(study['variants'])}")
    values = study["variants"][variant]
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
    name, recipe = arch_recipe(study, arch)
    if name != "common":  # a run of the common recipe keeps the spec (and config hash) it had
        spec["recipe"], spec["recipe_name"] = recipe, name
    if variant != BASE_VARIANT:
        spec["variant"] = variant
        spec["recipe"] = {**spec["recipe"], **{k: v for k, v in values.items() if k not in MODEL_SWITCHES}}
        if switches := {k: v for k, v in values.items() if k in MODEL_SWITCHES}:
            spec["switches"] = switches
    if inputs := pipeline_inputs(study, arch):
        spec["inputs"] = {key: run_dir(study["name"], upstream, variant, seed) for key, upstream in inputs.items()}
    if (study.get("quantize") or {}).get("every_checkpoint"):  # not tied to bits: another width retrains nothing
        spec["snapshots"] = snapshot_dir(study["name"], arch, variant, seed)
    return spec


def snapshot_dir(study: str, arch: str, variant: str, seed: int) -> str:
    """Where the trainer keeps a run's weight snapshots for the quantization stage (quantize.every_checkpoint)."""
    return f"{run_dir(study, arch, variant, seed)}/snapshots"


def config_hash(spec: dict[str, Any]) -> str:
    """Hash of a run spec without its seed (nor its variant's name, whose values are in its recipe and
    switches, nor its input runs' folders, nor where it keeps weight snapshots, which change nothing it
    computes): the seeds of one architecture and variant in one study share it."""
    identity = {k: v for k, v in spec.items() if k not in ("seed", "variant", "inputs", "snapshots")}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def admission_dir(study: str) -> str:
    """Where the admission records of a study's architectures live: results/{study}/.admission/{arch}.json,
    the verdicts by key in cache/{checked}.json, and the study-wide check's .study-{checked}.json (a name
    no architecture has: the arch wildcard starts with no dot)."""
    return f"results/{study}/.admission"


def admission_specs(study: dict) -> dict[str, Any]:
    """The admission checks of every architecture of a study, to run in one process (its imports once),
    and ``checked``, a key of their keys: the study-wide job's output is named after it."""
    specs = {arch: admission_spec(study, arch) for arch in study["archs"]}
    checked = hashlib.sha256(json.dumps(sorted(s["checked"] for s in specs.values())).encode()).hexdigest()[:16]
    return {"study": study["name"], "checked": checked, "archs": specs}


def admission_spec(study: dict, arch: str) -> dict[str, Any]:
    """What the admission check of one architecture of a study needs (harness.admission.admit): one run
    spec per distinct model among its variants (variants that differ only in recipe keys share a model;
    a stabiliser switch makes another), each at the study's first seed, and ``checked``, the cache key:
    a hash of those specs' model-defining fields (build, hyperparameters, the study's model and shape,
    data, seed, sequence length) and of the source file of the builder (and of a pipeline's evaluation
    builder). The same key means the same model, so the workflow reruns the check only when one of them
    changes; a change of the checks themselves (harness/admission.py) re-checks nothing already admitted."""
    runs: dict[str, dict[str, Any]] = {}
    for variant in study["variants"]:
        spec = run_spec(study, arch, variant, study["seeds"][0])
        runs.setdefault(json.dumps(spec.get("switches") or {}, sort_keys=True), spec)
    specs = list(runs.values())
    build = study["archs"][arch]["build"]
    pipeline = registry.info(build).pipeline
    sources = {"build": registry.source_hash(build)}
    if pipeline and pipeline.evaluation:
        sources["evaluation"] = registry.source_hash(pipeline.evaluation)
    model_keys = ("build", "seed", "data", "model", "hparams", "shape", "reference", "switches")
    identity = {"models": [{k: s.get(k) for k in model_keys} | {"seq_len": s["recipe"]["seq_len"]} for s in specs],
                "sources": sources}
    checked = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    return {"study": study["name"], "arch": arch, "build": build, "checked": checked, "sources": sources,
            "runs": specs}


# The shape `harness check ARCH` runs at without a config: the tiny study's (d64, 2 layers, 4 heads,
# 128 bytes, matched to the transformer).
BARE_STUDY: dict[str, Any] = {
    "name": "check", "base": "check", "overrides": {}, "seeds": [0], "variants": {BASE_VARIANT: {}},
    "data": {"name": "tinyshakespeare", "tokens": "bytes"},
    "model": {"d_model": 64, "n_layers": 2, "n_heads": 4, "dropout": 0.0},
    "shape": {"mode": "matched", "reference": "transformer", "tolerance": 0.01},
    "archs": {"transformer": {"build": "transformer", "hparams": {}}},
    "reference_arch": {"name": "transformer", "build": "transformer", "hparams": {}},
    "recipe": {"seq_len": 128},
}
CHECK_KEYS = {"d_model": "model", "n_layers": "model", "n_heads": "model", "dropout": "model",
              "seq_len": "recipe", "mode": "shape", "reference": "shape", "tolerance": "shape"}
"""`harness check --shape KEY=VALUE` keys that set the study's shape; any other key is an architecture hyperparameter."""


def study_for_check(study: dict | None, arch: str, settings: dict[str, Any]) -> tuple[dict, str]:
    """The study an on-demand admission check (`harness check ARCH`) runs at, and ARCH's name in it.

    ``study`` is a resolved study of the config (None: BARE_STUDY). ARCH is its entry when the study
    has it (by name or by build), else added with no hyperparameters (a dotted path is named after its
    module). ``settings`` then apply: CHECK_KEYS set the shape, any other key is a hyperparameter of
    ARCH. Only the study's first seed and its variants' distinct models are checked."""
    study = copy.deepcopy(study or BARE_STUDY)
    name = next((n for n, e in study["archs"].items() if arch in (n, e["build"])), None)
    if name is None:
        entry = _arch_entry(arch, {})
        _check_build(entry["build"], study["base"])
        name = entry["name"]
        study["archs"][name] = {"build": entry["build"], "hparams": {}}
    for key, value in settings.items():
        if key in CHECK_KEYS:
            study[CHECK_KEYS[key]][key] = value
        else:
            study["archs"][name]["hparams"][key] = value
    reference = study["shape"]["reference"]
    if reference != study["reference_arch"]["name"]:
        entry = study["archs"].get(reference, {"build": reference, "hparams": {}})
        study["reference_arch"] = {"name": reference, **entry}
    pipeline_inputs(study, name)  # a pipeline without its inputs is named here
    return study, name
