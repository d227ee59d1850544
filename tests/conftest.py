"""Shared test fixtures: paths to the shared reference files, seeded tiny models, GPU marker."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CAVSYNC_SHARED", REPO.parent / "shared"))
REFERENCE = SHARED / "reference"
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def require_file(path: Path) -> Path:
    """The shared reference files are part of CI's checkout: missing there is a failure, not a skip."""
    if not path.exists():
        if IN_CI:
            pytest.fail(f"required reference file missing in CI: {path}")
        pytest.skip(f"reference file not available: {path}")
    return path


@pytest.fixture(scope="session")
def golden_tiny() -> dict:
    return torch.load(require_file(REFERENCE / "golden_model_tiny.pt"), weights_only=True)


@pytest.fixture(scope="session")
def official_base_names() -> dict[str, tuple[int, ...]]:
    text = require_file(REFERENCE / "official_state_dict_base.txt").read_text()
    names = {}
    for line in text.splitlines():
        name, shape = line.split(" ", 1)
        names[name] = tuple(int(x) for x in shape.strip("()").split(",") if x.strip())
    return names


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
