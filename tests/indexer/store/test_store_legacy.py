"""Stores written before the clip sketches were removed (0.1.0 and earlier) open, search and take writes.

Every store 0.1.0 wrote has the manifest fields `sketch_dim` and `sketch_factory` (0 and "IDMap2,Flat"
unless it was built with sketches); one built with sketches (TokenStore(sketch_dim=d)) also has
`<modality>.sketch.faiss` (IDMap2,Flat inner-product index over (T * d,) clip vectors, id = row) and
`<modality>.projection.npy` ((D, d) float32) in every version folder. The fixture below writes those
into a store, in the format captured from 0.1.0's code (commit 07a95be) before the sketches went.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pytest

from indexer.search.ranking import search
from indexer.search.stage import FirstStage
from indexer.store.token_store import TokenStore
from indexer.store.version import MODALITIES

T, D = 4, 8
SCHEMES = ("exhaustive", "votes")

# versions/v000003/manifest.json as 0.1.0 wrote it for TokenStore(root, dtype="float32", sketch_dim=3)
# after add(arange(4)), add(arange(4, 6)) and delete([1]); only the shard names (random) are placeholders.
CAPTURED_0_1_0 = {
    "version": 3,
    "frames": 4,
    "dim": 8,
    "dtype": "float32",
    "model_id": "m",
    "factory": "IDMap2,Flat",
    "shards": [{"name": "<first>", "rows": 4}, {"name": "<second>", "rows": 2}],
    "deleted": [1],
    "sketch_dim": 3,
    "sketch_factory": "IDMap2,Flat",
    "built_rows": 4,
    "frame_s": 2.56,
}
SKETCH_FILES = ("audio.sketch.faiss", "audio.projection.npy", "visual.sketch.faiss", "visual.projection.npy")


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _as_written_by_0_1_0(folder: Path, tokens: dict[str, np.ndarray], sketch_dim: int) -> dict[str, Any]:
    """Give the version in `folder` what 0.1.0 wrote with TokenStore(sketch_dim=sketch_dim): the two
    sketch fields in the manifest, between `deleted` and `built_rows`, and (sketch_dim > 0) each
    modality's projection and sketch index over its live rows; `tokens`: every row's (rows, T, D).
    Returns the manifest written."""
    fields = json.loads((folder / "manifest.json").read_text())
    assert "sketch_dim" not in fields  # today's writer no longer writes them
    at = list(fields).index("built_rows")
    items = list(fields.items())
    items[at:at] = [("sketch_dim", sketch_dim), ("sketch_factory", "IDMap2,Flat")]
    manifest = dict(items)
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1))
    if sketch_dim:
        live = np.setdiff1d(np.arange(sum(s["rows"] for s in manifest["shards"])), manifest["deleted"])
        for k, modality in enumerate(MODALITIES):
            basis = np.linalg.qr(np.random.default_rng(k).standard_normal((D, sketch_dim)))[0].astype(np.float32)
            np.save(folder / f"{modality}.projection.npy", basis)  # (D, d)
            index = faiss.index_factory(T * sketch_dim, "IDMap2,Flat", faiss.METRIC_INNER_PRODUCT)
            sketches = (tokens[modality][live] @ basis).reshape(len(live), -1)  # (n, T * d)
            index.add_with_ids(np.ascontiguousarray(sketches), live.astype(np.int64))
            faiss.write_index(index, str(folder / f"{modality}.sketch.faiss"))
    return manifest


def _ranked(version: Any, query: np.ndarray, scheme: str) -> list[tuple[int, float]]:
    return [
        (h.clip_id, round(h.score, 5)) for h in search(version, query, target="audio", k=10, stage=FirstStage(scheme))
    ]


@pytest.mark.parametrize("sketch_dim", [3, 0])  # built with sketches; 0.1.0's default (fields only)
def test_a_store_written_with_clip_sketches_opens_searches_and_takes_writes(tmp_path: Path, sketch_dim: int) -> None:
    root = tmp_path / "index"
    rng = np.random.default_rng(0)
    audio, visual = _unit(rng.standard_normal((9, T, D))), _unit(rng.standard_normal((9, T, D)))
    store = TokenStore(root, dtype="float32")
    store.add(np.arange(4), audio[:4], visual[:4], "m")
    store.add(np.arange(4, 6), audio[4:6], visual[4:6], "m")
    store.delete([1])
    expected = {(q, s): _ranked(store.open(), audio[q], s) for q in range(6) for s in SCHEMES}
    for folder in sorted((root / "versions").glob("v*")):  # v000001 .. v000003, the live one last
        written = _as_written_by_0_1_0(folder, {"audio": audio, "visual": visual}, sketch_dim)
    names = [s["name"] for s in written["shards"]]
    captured = {**CAPTURED_0_1_0, "sketch_dim": sketch_dim}
    captured["shards"] = [{**s, "name": n} for s, n in zip(CAPTURED_0_1_0["shards"], names, strict=True)]
    assert list(written.items()) == list(captured.items())  # the live version: 0.1.0's manifest, key order too
    assert sorted(p.name for p in (root / "versions" / "v000003").iterdir() if p.name in SKETCH_FILES) == (
        sorted(SKETCH_FILES) if sketch_dim else []
    )

    legacy = TokenStore(root, dtype="float32")  # a process started after the upgrade
    version = legacy.open()
    assert version is not None and version.name == "v000003" and len(version) == 5
    assert version.manifest.built_rows == 4 and version.manifest.frame_s == 2.56
    for (q, scheme), ranked in expected.items():
        assert _ranked(version, audio[q], scheme) == ranked
        assert 1 not in [c for c, _ in ranked] and (q == 1 or ranked[0][0] == q)  # clip 1 was deleted
    tokens_only = legacy.open(indexes=False)
    assert tokens_only is not None and np.array_equal(
        tokens_only.gather("visual", tokens_only.rows_of([5])), visual[5:6]
    )

    assert legacy.add(np.arange(6, 9), audio[6:9], visual[6:9], "m") == "v000004"  # grown from the legacy version
    grown = json.loads((root / "versions" / "v000004" / "manifest.json").read_text())
    assert "sketch_dim" not in grown and "sketch_factory" not in grown
    assert not [p.name for p in (root / "versions" / "v000004").iterdir() if p.name in SKETCH_FILES]
    assert (root / "versions" / "v000003" / "manifest.json").read_text() == json.dumps(written, indent=1)  # untouched
    assert search(legacy.open(), audio[7], target="audio", k=1)[0].clip_id == 7
    assert search(version, audio[5], target="audio", k=1)[0].clip_id == 5  # a reader still on v000003

    legacy.delete([0])
    legacy.compact()  # v000006: v000003 and older pruned, with their sketch files
    assert sorted(p.name for p in (root / "versions").iterdir()) == ["v000004", "v000005", "v000006"]
    assert not [p for p in root.rglob("*") if p.name in SKETCH_FILES]
    final = legacy.open()
    assert final is not None and len(final) == 7 and final.manifest.built_rows == 7
    for clip in (2, 3, 4, 5, 6, 7, 8):
        for scheme in SCHEMES:
            assert search(final, audio[clip], target="audio", k=1, stage=FirstStage(scheme))[0].clip_id == clip
    assert {h.clip_id for h in search(final, audio[0], target="audio", k=10)}.isdisjoint({0, 1})
