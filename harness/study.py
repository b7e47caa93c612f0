"""Studies: the validated workflow config -> resolved studies -> one run spec per (arch, variant, seed).

Before Snakemake validates the config (and fills its defaults) against
workflow/schemas/config.schema.yaml, coerce_overrides types the command-line values and
check_config says the first mistake in one line. resolve then applies the overrides, names the
study folder after them (study_folder) and normalises the architecture entries, so that the
workflow itself holds no logic. A study's ``sweep`` maps recipe keys and stabiliser switches to lists
of values; every combination is a variant (``variants``), a level of the run folders:
results/{study}/{arch}/{variant}/seed{seed}, ``base`` without a sweep. Every architecture trains every
variant, except that a model switch (qk_norm) is scoped to the architectures that declare it: the others
train only its off value (``arch_variants``, harness.variants.arch_values), with no duplicated runs. An
architecture entry may carry ``init_seed_offset``: its models start from the initialisation of seed +
offset while its data order stays that of the seed (``init_seed``), the copy a negative control compares
with the original. A study's ``controls`` name a positive control (a claim the harness must find) and a
negative one (two copies of one architecture it must not separate); ``_check_controls`` validates them.
No torch here (a builder named by dotted path is imported, though, to check that it exists).
"""

from __future__ import annotations

import copy
import difflib
import functools
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
from harness.variants import MODEL_SWITCHES, SWITCH_OFF, arch_values, value_text, variant_name, variants

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
    archs/seeds, YAML-typed hyperparameters of an architecture entry and its integer init_seed_offset.
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
        config["archs"] = [
            {**entry, "init_seed_offset": integer(entry["init_seed_offset"])}
            if isinstance(entry, dict) and "init_seed_offset" in entry else entry
            for entry in config["archs"]
        ]
    if isinstance(config.get("worker"), str):  # worker=false
        config["worker"] = typed(config["worker"])
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
    """Normalise an arch entry to {name, build, hparams} (plus recipe and a nonzero init_seed_offset when
    given); a bare name may refer to a study's definition."""
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
    if offset := entry.get("init_seed_offset", base.get("init_seed_offset", 0)):
        arch["init_seed_offset"] = int(offset)
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
    """An architecture asked for a stabiliser switch by its hparams must honour it. A switch swept on is
    scoped to the architectures that declare it: the others train only its off value, which the sweep
    must then list, and at least one architecture of the study must declare it (unless an ``archs``
    override left them all out)."""
    sweep = study.get("sweep") or {}
    declared = {arch: registry.info(entry["build"]).switches for arch, entry in study["archs"].items()}
    for switch in MODEL_SWITCHES:
        able = sorted(a for a, honoured in declared.items() if switch in honoured)

        def cannot(archs: list[str]) -> str:
            modules = "; ".join(f"{a}'s module declares SWITCHES = {tuple(declared[a])}" for a in archs)
            return (f"study {study['base']!r}: architecture {', '.join(repr(a) for a in archs)} does not implement "
                    f"the stabiliser switch {switch!r} ({modules}); of this study's architectures these do: "
                    f"{', '.join(able) or 'none'}")

        for arch, entry in study["archs"].items():
            if entry["hparams"].get(switch) and switch not in declared[arch]:
                raise ConfigError(cannot([arch]))
        values = sweep.get(switch) or []
        if not any(values):
            continue
        unable = [a for a in declared if a not in able]
        if not able and "archs" not in study.get("overrides", {}):  # an override may leave them out: off alone
            raise ConfigError(cannot(unable) + f": sweep.{switch} would change no run")
        off = value_text(SWITCH_OFF[switch])
        if unable and off not in {value_text(v) for v in values}:
            raise ConfigError(cannot(unable) + f"; a sweep trains them only at {switch}={off}, which sweep.{switch} "
                              f"{values} does not list: add {str(SWITCH_OFF[switch]).lower()} to it")


def arch_variant(study: dict, arch: str, variant: str) -> str:
    """The variant ``arch`` trains for the sweep combination named ``variant``: the same, but with the model
    switches its module does not declare at their off value (harness.variants.arch_values)."""
    values = study["variants"][variant]
    return variant_name(arch_values(values, registry.info(study["archs"][arch]["build"]).switches))


def arch_variants(study: dict) -> dict[str, list[str]]:
    """The variants each architecture trains, in the sweep's order: every variant, except that an architecture
    that does not declare a swept model switch trains only the variants with it off (no run twice)."""
    return {arch: list(dict.fromkeys(arch_variant(study, arch, v) for v in study["variants"]))
            for arch in study["archs"]}


def init_seed(spec: dict[str, Any]) -> int:
    """The seed of a run's model initialisation (and dropout): its seed plus its architecture entry's
    ``init_seed_offset`` (0 unless given). Its data order stays seeded by the seed alone."""
    return int(spec["seed"]) + int(spec.get("init_seed_offset", 0))


def _check_init_seeds(study: dict) -> None:
    """An architecture entry with an init_seed_offset must not start from the initialisation of another
    entry of the same build at another seed: the two would share draws and not be independent."""
    seeds = study["seeds"]
    for arch, entry in study["archs"].items():
        offset = entry.get("init_seed_offset", 0)
        if not offset:
            continue
        mine = {s + offset for s in seeds}
        for other, e in study["archs"].items():
            if other == arch or e["build"] != entry["build"]:
                continue
            if shared := sorted(mine & {s + e.get("init_seed_offset", 0) for s in seeds}):
                raise ConfigError(
                    f"study {study['base']!r}: {arch!r} with init_seed_offset {offset} would start from the same "
                    f"initialisations as {other!r} at other seeds (init seeds {shared}); give it an offset larger "
                    f"than the seeds' span ({max(seeds) - min(seeds)}), e.g. 1000")


def recipe_presets() -> dict[str, dict[str, Any]]:
    """The named recipes of harness/recipes.yaml (each entry's published optimizer, schedule, clip): a
    copy the caller may change; the file is read once (the workflow asks for a run's spec per job)."""
    return copy.deepcopy(_recipe_presets())


@functools.cache
def _recipe_presets() -> dict[str, dict[str, Any]]:
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
        study["archs"] = {a["name"]: {k: a[k] for k in ("build", "hparams", "recipe", "init_seed_offset") if k in a}
                          for a in archs}
        study["name"], study["base"], study["overrides"] = name, base, overrides
        if overrides:
            study["description"] = (f"{study.get('description') or base} "
                                    f"(study {base} with overrides {_override_text(overrides)})")
        study["variants"] = variants(study.get("sweep"))
        _check_switches(study)
        study["arch_variants"] = arch_variants(study)
        _check_init_seeds(study)
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
        _check_controls(study)
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


def _check_controls(study: dict) -> None:
    """A study's ``controls`` (harness.controls judges them): the positive control names a claim of the
    study's claims (packaged, or its own file) whose architectures the study trains; the negative one two
    architectures that are copies of one another (same build, hyperparameters and recipe) with different
    initialisations (an init_seed_offset), so that nothing but the initialisation seed tells them apart.
    Under an ``archs`` override that leaves a control's architectures out, the control is reported as not
    run instead of stopping every study's resolution."""
    from harness import claims  # statistics and YAML schemas: only when a study is resolved

    controls = study.get("controls") or {}
    where = f"study {study['name']!r}: controls"
    overridden = "archs" in study.get("overrides", {})
    if positive := controls.get("positive"):
        _, known = claims.load(study.get("claims"))
        claim = next((c for c in known if c.id == positive["claim"]), None)
        if claim is None:
            close = difflib.get_close_matches(positive["claim"], [c.id for c in known], 1)
            raise ConfigError(f"{where}.positive.claim: {positive['claim']!r} is not a claim of the packaged claims "
                              f"nor of the study's claims file{f' (did you mean {close[0]!r}?)' if close else ''}")
        if (absent := [a for a in claim.archs if a not in study["archs"]]) and not overridden:
            raise ConfigError(f"{where}.positive: claim {claim.id!r} is about {', '.join(claim.archs)}; the study has "
                              f"no architecture {', '.join(repr(a) for a in absent)}")
    if negative := controls.get("negative"):
        a, b = negative["archs"]
        if a == b:
            raise ConfigError(f"{where}.negative.archs: two different architecture names, got {a!r} twice")
        if (absent := [x for x in (a, b) if x not in study["archs"]]) and not overridden:
            raise ConfigError(f"{where}.negative: the study has no architecture {', '.join(repr(x) for x in absent)}")
        if not absent:
            ea, eb = study["archs"][a], study["archs"][b]
            differ = [k for k in ("build", "hparams", "recipe") if ea.get(k) != eb.get(k)]
            if differ:
                raise ConfigError(f"{where}.negative: {a!r} and {b!r} must be copies of one architecture, but their "
                                  f"{', '.join(differ)} differ ({', '.join(f'{ea.get(k)!r} vs {eb.get(k)!r}' for k in differ)})")
            if ea.get("init_seed_offset", 0) == eb.get("init_seed_offset", 0):
                raise ConfigError(f"{where}.negative: {a!r} and {b!r} would train identical runs; give one of them an "
                                  "init_seed_offset (e.g. 1000), so that only the initialisation seed differs")


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
    """Every (arch, variant, seed) of a study, in a stable order: each architecture's own variants
    (``arch_variants``; every variant in a study.json written before them)."""
    planned = study.get("arch_variants") or {}
    return [(arch, variant, seed) for arch in study["archs"] for variant in planned.get(arch, study["variants"])
            for seed in study["seeds"]]


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


def pipeline_runs(study: dict, arch: str, variant: str, seed: int) -> dict[str, str]:
    """The run folders a pipeline architecture's run consumes, by input name: each input architecture's run
    of the same seed, at the variant it trains for the same sweep combination ({} for the common loop)."""
    return {key: run_dir(study["name"], upstream, arch_variant(study, upstream, variant), seed)
            for key, upstream in pipeline_inputs(study, arch).items()}


def run_spec(study: dict, arch: str, variant: str, seed: int) -> dict[str, Any]:
    """Everything one training run needs, as plain JSON-able data. The variant's sweep values override
    the architecture's recipe (recipe keys) or join its hyperparameters (stabiliser switches, under
    ``switches``: the shape is matched without them, so a switch adds only its own parameters). A nonzero
    ``init_seed_offset`` of the architecture's entry joins the spec (``init_seed``)."""
    if arch not in study["archs"]:
        raise ConfigError(f"study {study['name']!r} has no architecture {arch!r}: {sorted(study['archs'])}")
    if variant not in study["variants"]:
        raise ConfigError(f"study {study['name']!r} has no variant {variant!r}: {sorted(study['variants'])}")
    if variant not in (planned := (study.get("arch_variants") or {}).get(arch, study["variants"])):
        raise ConfigError(f"study {study['name']!r}: {arch!r} does not train variant {variant!r} (it does not "
                          f"implement the switch it turns on); its variants: {', '.join(planned)}")
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
        # the switches its module declares; one it does not is off by construction (arch_variant), not a hyperparameter
        declared = registry.info(spec["build"]).switches
        if switches := {k: v for k, v in values.items() if k in MODEL_SWITCHES and k in declared}:
            spec["switches"] = switches
    if offset := study["archs"][arch].get("init_seed_offset"):
        spec["init_seed_offset"] = offset
    if inputs := pipeline_runs(study, arch, variant, seed):
        spec["inputs"] = inputs
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
    for variant in arch_variants(study)[arch]:  # its own: a scoped switch it does not declare stays off
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
