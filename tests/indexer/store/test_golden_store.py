"""The store and catalog written by the code of 2026-12-07 (`golden_store.py`, `tests/data/store-2026-12-07/`)
open with today's code and answer as they did then: the same videos, version, hits, scores (to 1e-5) and
moments, for every scheme, one store and three shards alike (a copy is opened: opening may migrate the catalog)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from ..golden_store import LAYOUTS, answers

GOLDEN = Path(__file__).resolve().parents[2] / "data" / "store-2026-12-07"


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_a_store_and_catalog_written_before_open_and_answer_identically(layout: str, tmp_path: Path) -> None:
    expected = json.loads((GOLDEN / "answers.json").read_text())[layout]
    data = Path(shutil.copytree(GOLDEN / layout, tmp_path / layout))
    got = answers(data, LAYOUTS[layout])
    assert (got["videos_total"], got["videos"], got["version"]) == (
        expected["videos_total"],
        expected["videos"],
        expected["version"],
    )
    assert got["hits"].keys() == expected["hits"].keys()
    for query, hits in expected["hits"].items():
        mine = got["hits"][query]
        assert [h[:2] for h in mine] == [h[:2] for h in hits], query
        assert [[m[0] for m in h[3]] for h in mine] == [[m[0] for m in h[3]] for h in hits], query
        np.testing.assert_allclose([h[2] for h in mine], [h[2] for h in hits], atol=1e-5, err_msg=query)
    assert sum(len(h) for h in expected["hits"].values()) >= 40  # the queries found something to compare
