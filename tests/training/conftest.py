from __future__ import annotations

from pathlib import Path

import pytest

from training.synth import generate


@pytest.fixture(scope="session")
def synth_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 synthetic clips, made once per test session."""
    return generate(tmp_path_factory.mktemp("synth"), 24, seed=11)
