"""The design's rules, checked on the source: import directions, no cycles, no architecture named
outside harness/archs/, and a non-editable install that carries everything the package reads."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

from harness import archs
from tests.conftest import REPO

PACKAGE = REPO / "harness"
NO_TORCH = ["harness.contracts", "harness.text", "harness.files", "harness.logs", "harness.progress", "harness.status",
            "harness.worker", "harness.timing", "harness.runlock", "harness.collapse", "harness.stats",
            "harness.claims", "harness.controls", "harness.stability", "harness.attribution", "harness.variants", "harness.aggregate", "harness.report.page", "harness.report.captions"]


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """The harness modules a file imports, anywhere in it (function-level imports too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    modules = {module_name(p) for p in PACKAGE.rglob("*.py")}
    return {m for m in found if m in modules}


GRAPH = {module_name(p): imports_of(p) - {module_name(p)} for p in PACKAGE.rglob("*.py")}


def test_no_import_cycle_in_the_package():
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for dep in sorted(GRAPH[module]):
            if dep.startswith(module + "."):  # a package importing its own submodule
                continue
            assert state.get(dep) != "open", f"import cycle: {' -> '.join(path + [dep])}"
            if dep not in state:
                visit(dep, path + [dep])
        state[module] = "done"

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [module])


def test_architectures_import_nothing_of_training_data_or_statistics():
    for module, deps in GRAPH.items():
        if module.startswith("harness.archs"):
            outside = {d for d in deps if not d.startswith("harness.archs") and d != "harness.contracts"}
            assert not outside, f"{module} imports {outside}"


def test_statistics_and_report_modules_load_without_torch():
    blocked = ("import sys\n"
               "class NoTorch:\n"
               "    def find_spec(self, name, path=None, target=None):\n"
               "        if name.partition('.')[0] == 'torch':\n"
               "            raise ImportError('torch is blocked in this test')\n"
               "sys.meta_path.insert(0, NoTorch())\n"
               f"import {', '.join(NO_TORCH)}\n"
               "assert 'torch' not in sys.modules\n")
    done = subprocess.run([sys.executable, "-c", blocked], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]


def test_no_module_outside_archs_tests_an_architectures_name():
    """Pipelines and every other special case come from declarations, never from `if arch == "eam"`.
    The published claims (harness/claims.py) are data about named architectures and may name them."""
    names = set(archs.available())
    for path in PACKAGE.rglob("*.py"):
        if "archs" in path.relative_to(PACKAGE).parts or path.name == "claims.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                constants = [c for c in ast.walk(node) if isinstance(c, ast.Constant) and c.value in names]
                assert not constants, f"{path.relative_to(REPO)}:{node.lineno} compares with {constants[0].value!r}"


@pytest.mark.slow
def test_a_non_editable_install_detects_on_its_packaged_published_curves(tmp_path):
    """Built as a wheel and installed into a fresh venv (dependencies borrowed from this one through a
    .pth file, so no download), run from a folder outside the repository."""
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "borrowed_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    wheel = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                            "-w", str(tmp_path / "dist"), str(REPO)], capture_output=True, text=True)
    assert wheel.returncode == 0, wheel.stderr[-2000:]
    install = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                              *map(str, (tmp_path / "dist").glob("harness-*.whl"))], capture_output=True, text=True)
    assert install.returncode == 0, install.stderr[-2000:]
    code = ("import importlib.resources as r, harness; print(harness.__file__); "
            "print(r.files('harness') / 'published' / 'mnsm-enwik8-70m.csv')")
    where = subprocess.run([str(python), "-c", code], capture_output=True, text=True, cwd=tmp_path,
                           env={**os.environ, "PYTHONPATH": ""}).stdout.split()
    assert where and where[0].startswith(site), where  # the installed copy, not the repository
    done = subprocess.run([str(python), "-m", "harness", "detect", where[1]], capture_output=True, text=True,
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": ""})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "collapse" in done.stdout and "27,500" in done.stdout.replace("27500", "27,500")
    # the console command the wheel declares
    version = subprocess.run([str(env_dir / "bin" / "harness"), "--version"], capture_output=True, text=True, cwd=tmp_path)
    assert version.returncode == 0 and version.stdout.startswith("harness "), version.stderr[-2000:]
