"""Clip sketches: candidate generation on the diagonal-mean metric itself.

With L2-normalised tokens, diagonal_mean(q, c) = <flat(q), flat(c)> / T over the (T * D)
concatenations. A sketch projects every frame token onto the top `d` principal directions of the
corpus's frame tokens (uncentred, i.e. the best rank-d approximation of their inner products) and
concatenates the T projections: a (T * d) vector per clip whose inner product with another clip's
approximates T * diagonal_mean. One FAISS index per modality over these clip vectors (id = the
clip's row) gives candidates that the exact re-rank on the stored tokens then orders. Per-frame
candidates (each query frame's nearest frames) find clips that match one frame well; sketches find
clips that match every frame well, which is what diagonal_mean ranks (see BENCHMARKS.md).
"""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np

FIT_SAMPLE = 65_536  # frame vectors used to fit a projection
CHUNK = 8192  # clips projected at a time


class Projection:
    """A (D, d) matrix with orthonormal columns; `apply` maps (n, T, D) tokens to (n, T * d) sketches."""

    def __init__(self, matrix: np.ndarray) -> None:
        self.matrix = np.ascontiguousarray(matrix, dtype=np.float32)

    @property
    def dim(self) -> int:
        return int(self.matrix.shape[1])

    @classmethod
    def fit(cls, tokens: np.ndarray, dim: int, seed: int = 0) -> Projection:
        """Top-`dim` eigenvectors of the frame tokens' second-moment matrix; tokens: (n, T, D)."""
        width = tokens.shape[-1]
        if dim >= width:
            return cls(np.eye(width, dtype=np.float32))
        frames = tokens.reshape(-1, width)
        if len(frames) == 0:
            return cls(np.eye(width, dim, dtype=np.float32))
        picked = np.random.default_rng(seed).choice(len(frames), min(len(frames), FIT_SAMPLE), replace=False)
        sample = np.asarray(frames[np.sort(picked)], dtype=np.float64)
        _, vectors = np.linalg.eigh(sample.T @ sample)  # ascending eigenvalues
        return cls(vectors[:, ::-1][:, :dim])

    def apply(self, tokens: np.ndarray) -> np.ndarray:
        """tokens (n, T, D) -> sketches (n, T * d) float32."""
        n, frames, _ = tokens.shape
        out = np.empty((n, frames * self.dim), dtype=np.float32)
        for start in range(0, n, CHUNK):
            block = np.asarray(tokens[start : start + CHUNK], dtype=np.float32)
            out[start : start + CHUNK] = (block @ self.matrix).reshape(len(block), -1)  # (n, T, d) -> (n, T*d)
        return out

    def save(self, path: Path) -> None:
        np.save(path, self.matrix)

    @classmethod
    def load(cls, path: Path) -> Projection:
        return cls(np.load(path))


def new_index(projection: Projection, frames: int, factory: str, sample: np.ndarray) -> faiss.Index:
    """An empty sketch index of the `factory` type, trained on the `sample` clips' tokens (n, T, D) when the
    type needs training."""
    index = faiss.index_factory(frames * projection.dim, factory, faiss.METRIC_INNER_PRODUCT)
    if not index.is_trained:
        index.train(projection.apply(sample))
    return index


def grow(index: faiss.Index, projection: Projection, tokens: np.ndarray, rows: np.ndarray) -> faiss.Index:
    """A copy of `index` with more clips (no retraining)."""
    grown = faiss.clone_index(index)
    grown.add_with_ids(projection.apply(tokens), rows.astype(np.int64))
    return grown
