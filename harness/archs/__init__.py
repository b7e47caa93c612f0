"""Registry of architectures: a name, or a dotted path ``pkg.module:build``, -> an nn.Module builder.

Every builder takes hyperparameters as keyword arguments (the published config.json field names)
and returns a module whose ``forward(input_ids[B, T]) -> logits[B, T, V]``. A module may declare
``MATCH_KNOB`` (the width the shape solver turns, default ``ffn_hidden``), ``RECONSTRUCTION``
(True when it is rebuilt from a description rather than published code) and ``PIPELINE`` (a
``Pipeline``: the module is not trained by the common loop but by its own runner, over the same-seed
runs of other architectures of the study). The workflow, the aggregation and the report learn about
a pipeline from that declaration and from its run files, never from its name. A pipeline may name the
function that builds its evaluation path for the admission checks (``Pipeline.evaluation``).

A module may also declare ``SWITCHES``, the names of the boolean stabiliser hyperparameters it
accepts (``("qk_norm",)`` for the attention models; default none), so that a study can be told it
asked for a switch an architecture does not have. Diagnostics a model reports (its modules'
``diagnostics()``) follow the protocol in harness/archs/layers.py.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable

from harness.contracts import from_dict

# name -> module; each module exposes build(**hparams). Imported lazily so that listing is cheap.
_BUILTIN: dict[str, str] = {
    "transformer": "harness.archs.transformer",
    "memnls": "harness.archs.memnls",
    "diag_ssm": "harness.archs.diag_ssm",
    "trn_hybrid": "harness.archs.trn_hybrid",
    "resonance": "harness.archs.resonance",
    "eam": "harness.archs.eam",
}


@dataclass(frozen=True)
class Pipeline:
    """How a pipeline architecture trains: ``runner`` ("module:function", called as
    ``runner(spec, record, state_dir)`` like harness.train.train) and ``inputs``, the hyperparameters
    that name other architectures of the study whose same-seed runs it consumes (their folders reach
    the runner as ``spec["inputs"][name]``) and ``evaluation``, the model the admission checks
    (harness.admission) hold to the language-model contract: "module:function" called as
    ``function(spec, vocab_size)`` under a seeded global generator, returning the evaluation path at the
    run spec's shape (None: ``build(vocab_size=V, **spec["hparams"])``)."""

    runner: str
    inputs: tuple[str, ...] = ()
    evaluation: str | None = None


@dataclass(frozen=True)
class ArchInfo:
    name: str
    build: Callable[..., Any]
    match_knob: str | None
    reconstruction: bool
    source: str  # "module:function" the builder came from
    pipeline: Pipeline | None = None
    switches: tuple[str, ...] = ()  # the module's SWITCHES: boolean stabilisers it accepts (qk_norm)


def available() -> list[str]:
    """Names of the built-in architectures."""
    return sorted(_BUILTIN)


def _import(module_name: str, what: str) -> ModuleType:
    try:
        return importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"architecture {what!r}: cannot import module {module_name!r}: {e}") from e


def info(name: str) -> ArchInfo:
    """Resolve a registry name or a dotted path ``pkg.module:function`` to its builder."""
    if ":" in name:
        module_name, _, func_name = name.partition(":")
        module = _import(module_name, name)
        build = getattr(module, func_name, None)
        if not callable(build):
            raise ValueError(f"architecture {name!r}: module {module_name!r} has no callable {func_name!r}")
        source = name
    elif name in _BUILTIN:
        module = _import(_BUILTIN[name], name)
        build = module.build
        source = f"{_BUILTIN[name]}:build"
    else:
        raise ValueError(
            f"unknown architecture {name!r}: choose one of {available()} "
            "or name a builder by dotted path 'package.module:function'"
        )
    return ArchInfo(
        name=name,
        build=build,
        match_knob=getattr(module, "MATCH_KNOB", "ffn_hidden"),
        reconstruction=bool(getattr(module, "RECONSTRUCTION", False)),
        source=source,
        pipeline=getattr(module, "PIPELINE", None),
        switches=tuple(getattr(module, "SWITCHES", ())),
    )


def source_hash(source: str) -> str:
    """sha256 (16 hex digits) of the file that defines ``source``: a registry name, a dotted path
    'pkg.module:function' or a module name. Found without importing the module."""
    module = _BUILTIN.get(source) or source.partition(":")[0]
    try:
        spec = importlib.util.find_spec(module)
    except ImportError:
        spec = None
    if spec is None or not spec.origin or not spec.has_location:
        raise ValueError(f"architecture {source!r}: cannot find the source file of module {module!r}")
    with open(spec.origin, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:16]


def build(name: str, **hparams: Any):
    """Build architecture ``name`` with the given hyperparameters."""
    return info(name).build(**hparams)


def make_config(config_cls: type, hparams: dict[str, Any], arch: str):
    """Instantiate a config dataclass, naming any unknown hyperparameter in the error."""
    return from_dict(config_cls, hparams, f"{arch} hyperparameters")
