"""Decompression bombs whose headers do not tell (issue 19), and the peak memory of the ffmpeg / ffprobe
processes that meet them, measured for real.

- `lying_h264_mp4`: a real 16000x16000 H.264 frame (libx264, ultrafast) in an mp4 whose `tkhd` and `avc1` boxes
  are patched to say 64x64: the header read in Python passes it, the stream's own SPS says 16000x16000.
- `png_bomb`: a valid black PNG of any size (20001x13000: hachoir drops a dimension over 20,000).
- `measured_tools`: ffmpeg and ffprobe replaced (`model.media.use_ffmpeg`) by wrappers that run the real binary
  as their child and log its peak RSS (`wait4`'s ru_maxrss). A parent's own RUSAGE_CHILDREN would not do: a
  child forked from this process counts the test process's pages until it execs (hundreds of MB with torch).
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from model.media import configured_ffmpeg, ffmpeg_binary, ffprobe_binary, use_ffmpeg

MAX_PIXELS = 36_000_000  # PreprocessConfig's and ServiceConfig's default
_BOXES = {b"moov", b"trak", b"mdia", b"minf", b"stbl"}  # mp4 boxes that hold boxes


def png_bomb(path: Path, width: int, height: int, level: int = 1) -> Path:
    """A valid black RGB PNG of width x height (a few MB at most: deflate of zeros at `level`)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    packer = zlib.compressobj(level)
    row = b"\0" * (1 + width * 3)
    pixels = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b""))
    return path


def _boxes(data: bytes | bytearray, start: int, end: int) -> Iterator[tuple[int, int, bytes]]:
    """(offset, size, type) of every box in data[start:end], descending into the containers and stsd."""
    pos = start
    while pos + 8 <= end:
        size, kind = struct.unpack(">I4s", data[pos : pos + 8])
        if size < 8:
            raise ValueError(f"unsupported mp4 box size {size} at {pos}")
        yield pos, size, kind
        if kind in _BOXES:
            yield from _boxes(data, pos + 8, pos + size)
        elif kind == b"stsd":  # full box header (4) + entry count (4), then the sample entries
            yield from _boxes(data, pos + 16, pos + size)
        pos += size


def lying_h264_mp4(path: Path, side: int = 16000, claimed: int = 64) -> Path:
    """One black side x side H.264 frame (at 16000: ~1 s and ~2 GB of RAM to encode, ultrafast and zerolatency;
    a file of 750 KB), its mp4 header patched to say claimed x claimed (tkhd's 16.16 width/height, avc1's)."""
    real = path.with_suffix(".real.mp4")
    source = f"color=black:s={side}x{side}:r=1:d=1"
    args = [ffmpeg_binary(), "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i", source, "-frames:v", "1"]
    args += ["-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-pix_fmt", "yuv420p", str(real)]
    subprocess.run(args, check=True, timeout=300)
    data = bytearray(real.read_bytes())
    real.unlink()
    patched = set()
    for pos, size, kind in _boxes(data, 0, len(data)):
        if kind == b"tkhd":  # ... width and height, 16.16 fixed point, are its last 8 bytes
            struct.pack_into(">II", data, pos + size - 8, claimed << 16, claimed << 16)
            patched.add(kind)
        elif kind == b"avc1":  # header 8, reserved 6, data reference 2, pre-defined/reserved 16, then w, h
            struct.pack_into(">HH", data, pos + 32, claimed, claimed)
            patched.add(kind)
    assert patched == {b"tkhd", b"avc1"}, patched
    path.write_bytes(bytes(data))
    return path


_WRAPPER = """#!{python} -IS
import ctypes, json, os, signal, sys, time
started = time.monotonic()
pid = os.fork()
if pid == 0:
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: killed with its wrapper (a timeout's kill)
    os.execv({real!r}, [{real!r}, *sys.argv[1:]])
_, status, usage = os.wait4(pid, 0)
row = {{"tool": {name!r}, "peak_rss_mb": usage.ru_maxrss / 1024, "seconds": time.monotonic() - started,
       "exit": os.waitstatus_to_exitcode(status), "args": sys.argv[1:]}}
with open({log!r}, "a") as log:
    log.write(json.dumps(row) + "\\n")
sys.exit(max(0, row["exit"]))
"""


@dataclass(frozen=True)
class ToolRuns:
    """The ffmpeg / ffprobe runs logged by `measured_tools`."""

    log: Path

    def rows(self) -> list[dict]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]

    def clear(self) -> None:
        self.log.unlink(missing_ok=True)

    def peak_mb(self) -> float:
        """The largest peak RSS of any run logged (0 without any)."""
        return max((row["peak_rss_mb"] for row in self.rows()), default=0.0)


@contextmanager
def measured_tools(folder: Path) -> Iterator[ToolRuns]:
    """Every ffmpeg / ffprobe this process (and the decoders it configures) starts meanwhile is logged with its
    peak RSS; the ffmpeg configured before is restored after."""
    before = configured_ffmpeg()
    real = {"ffmpeg": ffmpeg_binary(), "ffprobe": ffprobe_binary()}
    folder.mkdir(parents=True, exist_ok=True)
    runs = ToolRuns(folder / "runs.jsonl")
    for name, binary in real.items():
        assert binary is not None, f"no {name}"
        script = folder / name
        script.write_text(_WRAPPER.format(python=sys.executable, real=binary, name=name, log=str(runs.log)))
        script.chmod(0o755)
    use_ffmpeg(str(folder / "ffmpeg"))
    assert ffprobe_binary() == str(folder / "ffprobe")
    try:
        yield runs
    finally:
        use_ffmpeg(before)


def without_run_args(rows: list[dict]) -> list[dict]:
    """Rows for a report: the tool, its peak and its time (the arguments hold temporary paths)."""
    return [{k: row[k] for k in ("tool", "peak_rss_mb", "seconds", "exit")} for row in rows]
