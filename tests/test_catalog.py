"""Snakemake workflow-catalog conventions: config/README.md describes every config key,
.snakemake-workflow-catalog.yml holds the usage section, and the workflow is snakefmt-clean."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, SCHEMA


# config/README.md's headings of the schema's sections
HEADINGS = {"Top level": "top", "A study": "study", "An architecture entry": "arch_entry",
            "Seeds until decided": "seed_budget"}


def schema_keys(schema: dict) -> dict[str, set[str]]:
    """Every key the schema defines, as the dotted path config/README.md names it, per section:
    'top' (the file), 'study' (a study, `studies.<name>`), 'arch_entry' (an entry of `archs`)."""
    keys: dict[str, set[str]] = {}

    def walk(node: dict, prefix: str, section: str) -> None:
        if "$ref" in node:
            name = node["$ref"].rsplit("/", 1)[1]
            if name not in keys:  # each definition once, as its own section
                keys[name] = set()
                walk(schema["$defs"][name], "", name)
            return
        for branch in node.get("oneOf", []) + node.get("anyOf", []):
            walk(branch, prefix, section)
        if isinstance(node.get("items"), dict):
            walk(node["items"], prefix, section)
        if isinstance(node.get("additionalProperties"), dict):
            walk(node["additionalProperties"], prefix, section)
        for key, sub in node.get("properties", {}).items():
            keys.setdefault(section, set()).add(prefix + key)
            walk(sub, f"{prefix}{key}.", section)

    walk(schema, "", "top")
    return keys


def test_config_readme_describes_every_schema_key():
    schema = yaml.safe_load(SCHEMA.read_text())
    readme = (REPO / "config" / "README.md").read_text()
    keys = schema_keys(schema)
    assert set(keys) == {"top", "study", "arch_entry", "seed_budget"}, set(keys)  # a new section needs its heading
    rows: dict[str, set[str]] = {}  # section -> the keys its table describes
    section = None
    for line in readme.splitlines():
        if line.startswith("## "):
            section = next((s for heading, s in HEADINGS.items() if line[3:].startswith(heading)), None)
        elif line.startswith("| `") and section:
            rows.setdefault(section, set()).add(line.split("|")[1].strip().strip("`"))
    missing = {section: sorted(names - rows.get(section, set())) for section, names in keys.items()}
    assert not any(missing.values()), f"keys without a row in config/README.md: {missing}"
    # and every row describes something (no empty description column)
    for line in readme.splitlines():
        if line.startswith("| `"):
            assert line.rstrip(" |").rsplit("|", 1)[1].strip(), line


def test_workflow_catalog_file_has_the_usage_section():
    settings = yaml.safe_load((REPO / ".snakemake-workflow-catalog.yml").read_text())
    usage = settings["usage"]
    assert set(usage) >= {"mandatory-flags", "software-stack-deployment", "report"}
    assert usage["mandatory-flags"]["desc"] and "flags" in usage["mandatory-flags"]
    assert all(isinstance(v, bool) for v in usage["software-stack-deployment"].values())
    assert (REPO / "config" / "README.md").is_file()  # the catalog shows it as the configuration guide


def test_workflow_is_snakefmt_clean():
    snakefmt = shutil.which("snakefmt", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    if snakefmt is None:
        pytest.skip("snakefmt not installed (pip install snakefmt)")
    done = subprocess.run([snakefmt, "--check", "Snakefile", "workflow/"], cwd=REPO, capture_output=True,
                          text=True)
    assert done.returncode == 0, f"run `snakefmt Snakefile workflow/`:\n{done.stdout}{done.stderr}"
