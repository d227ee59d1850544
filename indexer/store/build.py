"""The FAISS side of a store version: index types for a size, reading indexes, and building them.

Building reads a version's clips a chunk at a time (`gather`), so rebuilding a large store holds one
chunk and one training sample in memory, never the whole corpus: index types that need training (IVF)
are trained on a sample of clips, then every clip is added.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import faiss
import numpy as np

log = logging.getLogger(__name__)

# Flat indexes compare a batch of query vectors with BLAS from this many queries on; below, faiss scans
# the whole index once per query vector. A query is many frames: one scan (one GEMM) is ~Q times faster.
faiss.cvar.distance_compute_blas_threshold = 1
FLAT_UP_TO = 32_000  # frame vectors: stores this small are searched exhaustively (indexer.search.ranking)
NPROBE = 8  # inverted lists visited per query vector in IVF indexes (BENCHMARKS.md, issue 30)
SAMPLE_CLIPS = 4096  # clips sampled to train indexes (more when IVF lists need more)
VECTORS_PER_LIST = 100  # training vectors per IVF list (faiss warns below 39 and uses at most 256)
CHUNK_CLIPS = 4096  # clips read and added at a time


def default_factory(num_vectors: int, dim: int) -> str:
    """Per-frame index: flat (exact) up to FLAT_UP_TO frame vectors, then IVF with ~sqrt(n) lists and 4-bit PQ
    codes of dim / 16 bytes scanned with SIMD lookups (fast-scan; candidates only: the re-rank is exact; the lists'
    centroids score hypotheses roughly, `CoarseTable`); HNSW-free to keep deletes. Fast-scan has no GPU
    implementation: an index to serve from GPUs is given its factory (`IVF...,PQ48`)."""
    if num_vectors <= FLAT_UP_TO:
        return "IDMap2,Flat"
    return f"IVF{int(np.sqrt(num_vectors))},PQ{max(2, dim // 8)}x4fs"


def gpu_count() -> int:
    """GPUs faiss can use (0 with faiss-cpu)."""
    return faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0


def read_index(path: Path, gpu: bool = False) -> faiss.Index:
    """A saved index, IVF probes set; on every GPU when `gpu` and faiss-gpu sees one (CPU if it cannot)."""
    index = faiss.read_index(str(path))
    if faiss.try_extract_index_ivf(index) is not None:
        faiss.ParameterSpace().set_index_parameter(index, "nprobe", NPROBE)
    if gpu and gpu_count() > 0:
        try:
            return faiss.index_cpu_to_all_gpus(index)
        except RuntimeError as exc:  # an index type without a GPU implementation stays on the CPU
            log.warning("%s stays on the CPU: %s", path.name, exc)
    return index


class CoarseTable(NamedTuple):
    """The coarse quantizer of an IVF per-frame index, by stored frame: centroid c of list l is the mean of the
    frames the list holds, so <q, c> is the mean of their inner products with q (what the window stage scores
    hypotheses roughly with, before reading any token)."""

    centroids: np.ndarray  # (C, D) float32
    lists: np.ndarray  # (rows * T,) the list (centroid) of each stored frame by FAISS id; 0 where none holds it


def coarse_table(index: faiss.Index, frames: int) -> CoarseTable | None:
    """The coarse table of an IVF `index` over `frames` frame ids (rows * T); None for an index without lists."""
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is None and gpu_count() > 0:  # on the GPU: its lists as a CPU copy holds them
        try:
            ivf = faiss.try_extract_index_ivf(faiss.index_gpu_to_cpu(index))
        except RuntimeError:  # not a GPU index either: a flat one
            ivf = None
    if ivf is None:
        return None
    lists = np.zeros(frames, dtype=np.uint16 if ivf.nlist <= 1 << 16 else np.int32)
    invlists = ivf.invlists
    assert invlists is not None  # an IVF index holds its lists
    for number in range(ivf.nlist):
        size = invlists.list_size(number)
        if size:
            lists[faiss.rev_swig_ptr(invlists.get_ids(number), size)] = number
    return CoarseTable(ivf.quantizer.reconstruct_n(0, ivf.nlist).astype(np.float32), lists)


def frame_ids(rows: np.ndarray, frames: int) -> np.ndarray:
    """FAISS ids of the rows' frame vectors: row * T + frame, (len(rows) * T,) int64."""
    return (rows[:, None] * frames + np.arange(frames)[None, :]).ravel().astype(np.int64)


def sample_size(clips: int, frames: int, factory: str) -> int:
    """Clips to train on: SAMPLE_CLIPS, or enough for VECTORS_PER_LIST per IVF list of the index."""
    lists = [int(n) for n in re.findall(r"IVF(\d+)", factory)]
    return min(clips, max([SAMPLE_CLIPS] + [-(-VECTORS_PER_LIST * n // frames) for n in lists]))


def build(
    gather: Callable[[np.ndarray], np.ndarray], rows: np.ndarray, frames: int, dim: int, factory: str
) -> faiss.Index:
    """One modality's per-frame index over `rows` (id = row * T + frame), whose tokens `gather(rows)`
    returns as (n, T, D) float32."""
    if len(rows) == 0:  # no clip has this modality: an empty exact index (nothing to train on)
        factory = "IDMap2,Flat"
    index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    if not index.is_trained:
        count = sample_size(len(rows), frames, factory)
        picked = np.sort(np.random.default_rng(0).choice(len(rows), count, replace=False))
        index.train(np.ascontiguousarray(gather(rows[picked]).reshape(-1, dim)))  # (s * T, D)
    for start in range(0, len(rows), CHUNK_CLIPS):
        chunk = rows[start : start + CHUNK_CLIPS]
        tokens = gather(chunk)  # (c, T, D)
        index.add_with_ids(np.ascontiguousarray(tokens.reshape(-1, dim)), frame_ids(chunk, frames))
    return index
