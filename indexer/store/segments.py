"""The files of a token store's shards: arrays saved atomically, mapped without holding a file descriptor
(`map_array`), per-row track parts (shards from before tracks read as one track per clip), and FAISS index writes
whose failure (a full disk) is the OSError it is, and the writers' lock of a store folder."""

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

import faiss
import numpy as np


def concat(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def track_part(root: Path, shard: str, kind: str, clip_ids: np.ndarray) -> np.ndarray:
    """A shard's per-row track ids or valid frames; a shard from before tracks: one track per row (its
    clip id, marked negative so no catalog video id can equal it) and 0 valid (read: all T)."""
    path = root / "shards" / f"{shard}.{kind}.npy"
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
    Python's mmap dups it: a store of many shards would run out of descriptors). Unmapped when the array and
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
