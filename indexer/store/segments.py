"""The files of a token store's segments (the immutable sets of rows a version lists, in row order): arrays saved
atomically, mapped without holding a file descriptor (`map_array`), per-row track parts (segments from before tracks
read as one track per clip), FAISS index writes whose failure (a full disk) is the OSError it is, and the writers'
lock of a store folder.

On disk a segment is spelled as it was when the format was fixed, and stores written before read as they are:
the folder of the segment files and the manifest's key listing the segments are both `ON_DISK` ("shards"), mapped
here and nowhere else (`segment_path`, `to_disk`, `from_disk`). Layout of the segment files under a store's root:

    shards/<name>.{audio,visual}.npy  (rows, T, D) tokens, L2-normalised, fp16 by default; immutable
    shards/<name>.ids.npy             (rows,) int64 clip ids (the catalog's)
    shards/<name>.tracks.npy          (rows,) int64 track of each row (the catalog's video id); consecutive
                                      rows of one track are its clips in time order
    shards/<name>.valid.npy           (rows,) int16 frames of the row inside the media (T but in a last clip)
    shards/<name>.present.npy         (rows, 2) bool: which of (audio, visual) each row has
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import mmap
import os
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import faiss
import numpy as np

ON_DISK = "shards"  # the on-disk spelling of "segments": the segment files' folder and the manifest's key
SEGMENTS_KEY = "segments"  # the manifest's field in memory (`indexer.store.version.Manifest.segments`)


def segment_folder(root: Path) -> Path:
    """The folder of a store's segment files."""
    return root / ON_DISK


def segment_path(root: Path, segment: str, kind: str) -> Path:
    """The file of one segment's `kind` (a modality, ids, tracks, valid, present)."""
    return segment_folder(root) / f"{segment}.{kind}.npy"


def to_disk(fields: dict[str, Any]) -> dict[str, Any]:
    """A manifest's fields as its JSON spells them (key order kept)."""
    return {ON_DISK if key == SEGMENTS_KEY else key: value for key, value in fields.items()}


def from_disk(fields: dict[str, Any]) -> dict[str, Any]:
    """A manifest's JSON fields as the in-memory manifest names them (key order kept)."""
    return {SEGMENTS_KEY if key == ON_DISK else key: value for key, value in fields.items()}


def concat(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def track_part(root: Path, segment: str, kind: str, clip_ids: np.ndarray) -> np.ndarray:
    """A segment's per-row track ids or valid frames; a segment from before tracks: one track per row (its
    clip id, marked negative so no catalog video id can equal it) and 0 valid (read: all T)."""
    path = segment_path(root, segment, kind)
    if path.exists():
        part: np.ndarray = np.load(path).astype(np.int64)
        return part
    return -1 - clip_ids if kind == "tracks" else np.zeros(len(clip_ids), dtype=np.int64)


def write_index(index: faiss.Index, path: Path) -> None:
    """faiss.write_index, with a failed write (a full disk) raised as the OSError it is, not faiss' RuntimeError."""
    try:
        faiss.write_index(index, str(path))
    except RuntimeError as exc:
        code = errno.ENOSPC if "No space left" in str(exc) else errno.EIO
        raise OSError(code, f"{path.name}: {os.strerror(code)} (faiss: {exc})") from exc


def without_ids(index: faiss.Index, ids: np.ndarray) -> faiss.Index:
    smaller = faiss.clone_index(index)
    smaller.remove_ids(ids)  # type: ignore[arg-type]  # faiss' SWIG wrapper takes an int64 array too
    return smaller


def atomic_save(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as handle:
        np.save(handle, array)
    os.replace(tmp, path)


_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
MAP_FAILED = ctypes.c_void_p(-1).value


def map_array(path: Path) -> np.ndarray:
    """A .npy file memory-mapped read-only, holding no file descriptor (numpy's memmap keeps one per file, as
    Python's mmap dups it: a store of many segments would run out of descriptors). Unmapped when the array and
    every view of it are gone."""
    with open(path, "rb") as handle:
        version = np.lib.format.read_magic(handle)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(handle)
        offset, size = handle.tell(), os.fstat(handle.fileno()).st_size
        count = int(np.prod(shape, dtype=np.int64))
        if count == 0:
            return np.empty(shape, dtype=dtype)
        address = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, handle.fileno(), 0)
        if address in (None, MAP_FAILED):
            code = ctypes.get_errno()
            raise OSError(code, f"mmap of {path.name} failed: {os.strerror(code)}")
    buffer = (ctypes.c_char * size).from_address(address)
    weakref.finalize(buffer, _libc.munmap, address, size)  # the arrays below keep `buffer` alive
    flat: np.ndarray = np.frombuffer(memoryview(buffer).cast("B"), dtype=dtype, count=count, offset=offset)
    array: np.ndarray = flat.reshape(shape[::-1]).T if fortran else flat.reshape(shape)
    array.flags.writeable = False
    return array


@contextmanager
def writer_lock(root: Path) -> Iterator[None]:
    """The exclusive lock of a store's writers (`root/.lock`, flock), held for the `with` block."""
    with open(root / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
