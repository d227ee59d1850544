"""Each import-linter contract of pyproject.toml breaks when a probe import crosses it; no package imports in a circle.

`make test` runs `lint-imports` on the code as it is (every contract kept); this checks that each contract can
fail: a copy of the packages gets one forbidden import at a time, and `lint-imports --contract ID` must report
that contract BROKEN. A contract added without a probe here fails `test_every_contract_has_a_probe`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import NamedTuple

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ["model", "training", "indexer", "service", "cavsync"]


class Probe(NamedTuple):
    """An import line appended to a module of the copy (`module`, a path under the repo)."""

    contract: str
    module: str
    line: str


PROBES = [
    Probe("packages", "model/__init__.py", "import service"),
    Probe("packages", "indexer/__init__.py", "import cavsync"),
    Probe("service-no-broker", "service/__init__.py", "import redis"),
    Probe("indexer-broker", "indexer/ingest/__init__.py", "import celery"),
    Probe("ray", "indexer/search/__init__.py", "import ray"),
    Probe("ray", "service/__init__.py", "import ray"),
    Probe("training", "training/__init__.py", "import indexer"),
    Probe("training-users", "service/__init__.py", "import training"),
    Probe("service-no-sql", "service/__init__.py", "import sqlalchemy"),
    Probe("indexer-rooms", "indexer/store/__init__.py", "import indexer.search"),  # the store under the search
    Probe("indexer-rooms", "indexer/search/__init__.py", "import indexer.cluster"),  # the core under the corpus
    Probe("indexer-rooms", "indexer/cluster/__init__.py", "import indexer.ingest"),
    Probe("indexer-rooms", "indexer/ingest/__init__.py", "import indexer.jobs"),  # jobs on top
    Probe("indexer-rooms", "indexer/catalog/__init__.py", "import indexer.store"),  # store and catalog apart
    Probe("indexer-rooms", "indexer/store/__init__.py", "import indexer.catalog"),
    Probe("indexer-no-sql", "indexer/search/__init__.py", "import indexer.catalog"),
    Probe("indexer-no-sql", "indexer/cluster/__init__.py", "import sqlalchemy"),
]


def _contract_ids() -> list[str]:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    return [c["id"] for c in config["tool"]["importlinter"]["contracts"]]


def _lint(copy: Path, contract: str) -> subprocess.CompletedProcess[str]:
    lint = Path(sys.executable).with_name("lint-imports")
    env = {**os.environ, "PYTHONPATH": str(copy)}  # the copy's packages before the installed ones
    command = [str(lint), "--no-cache", "--config", str(copy / "pyproject.toml"), "--contract", contract]
    return subprocess.run(command, cwd=copy, env=env, capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the packages' Python files and pyproject.toml."""
    root = tmp_path_factory.mktemp("layers")
    for package in PACKAGES:
        shutil.copytree(REPO / package, root / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy(REPO / "pyproject.toml", root / "pyproject.toml")
    return root


def test_every_contract_has_a_probe() -> None:
    assert sorted(set(_contract_ids())) == sorted({p.contract for p in PROBES})


@pytest.mark.parametrize("probe", PROBES, ids=lambda p: f"{p.contract}:{p.module}:{p.line}")
def test_the_contract_breaks_on_its_probe(probe: Probe, pristine: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(pristine, copy)
    assert _lint(copy, probe.contract).returncode == 0  # kept before the probe: the probe is what breaks it
    target = copy / probe.module
    target.write_text(target.read_text() + f"\n{probe.line}  # probe\n")
    broken = _lint(copy, probe.contract)
    assert broken.returncode == 1 and "BROKEN" in broken.stdout, broken.stdout + broken.stderr
    assert probe.line.split()[-1] in broken.stdout  # the report names the probed import


@pytest.mark.parametrize("package", PACKAGES)
def test_no_module_imports_itself_back(package: str) -> None:
    """No import circle inside a package: no module reaches back, through any chain, a module that imports it."""
    import grimp

    graph = grimp.build_graph(package)
    circles = [
        (importer, imported)
        for importer in sorted(graph.modules)
        for imported in graph.find_modules_directly_imported_by(importer)
        if imported.startswith(package) and graph.find_shortest_chain(importer=imported, imported=importer)
    ]
    assert circles == []
