"""A task's pending encoding, `pending/<sha256>.<model>.npz`: one per file, written whole by the task that encoded
it (`indexer.jobs.task`: a temp file renamed), then merged into the catalog and the token store by whichever task
merges next (`indexer.jobs.merge`). It holds where its file is indexed from (`files.Source`), the job file it
settles, and either its decoding's error or its clips and their tokens.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np

from indexer.ingest.files import Source
from indexer.ingest.pipeline import ClipTokens, Decoded


def write_encoding(
    target: Path, job_id: str | None, path: str, source: Source, item: Decoded, tokens: ClipTokens | None
) -> None:
    """Write `target` atomically (a temp file beside it, renamed): the file's source, its job and path, and
    `item`'s error, or its clips with their `tokens`. A failure (a full disk) leaves no temp file behind."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name.split('.', 1)[0]}.{uuid.uuid4().hex}.tmp.npz"
    try:
        _save(tmp, job_id, path, source, item, tokens)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, target)


def _save(tmp: Path, job_id: str | None, path: str, source: Source, item: Decoded, tokens: ClipTokens | None) -> None:
    arrays: dict[str, np.ndarray] = {
        "uri": np.array(source.uri),
        "name": np.array(source.name),
        "identity": np.array(source.identity, dtype=np.int64),  # (size, mtime_ns)
        "path": np.array(path),
        "job": np.array(job_id or ""),
    }
    if item.error is not None:
        arrays["error"] = np.array(item.error)
    else:
        assert tokens is not None, "a decoded file is written with its tokens"
        arrays |= {
            "audio": tokens.audio,  # (n, T, D)
            "visual": tokens.visual,
            "present": tokens.present,  # (n, 2)
            "starts": np.array([c.start for c in item.clips]),
            "durations": np.array([c.duration for c in item.clips]),
            "modalities": np.array([",".join(c.modalities) for c in item.clips]),
        }
    np.savez(tmp, allow_pickle=False, **arrays)
