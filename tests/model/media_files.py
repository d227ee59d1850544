"""Small media files made with the ffmpeg binary, for decoding tests (lavfi sources, no downloads)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from model.media import ffmpeg_binary

VIDEO = "testsrc2=size={w}x{h}:rate={fps}:duration={d}"
TONE = "sine=frequency=440:sample_rate={sr}:duration={d}"


def ffmpeg(*args: str) -> None:
    subprocess.run([ffmpeg_binary(), "-nostdin", "-v", "error", "-y", *args], check=True, timeout=120)


def av_file(
    path: Path,
    vcodec: list[str],
    acodec: list[str],
    d: float = 3.0,
    w: int = 160,
    h: int = 120,
    fps: float = 12.5,
    sr: int = 44100,
    channels: int = 2,
) -> Path:
    """A video with a test pattern and a tone (the tone's channels each at a different pitch)."""
    inputs = ["-f", "lavfi", "-i", VIDEO.format(w=w, h=h, fps=fps, d=d)]
    for c in range(channels):
        inputs += ["-f", "lavfi", "-i", f"sine=frequency={300 + 100 * c}:sample_rate={sr}:duration={d}"]
    merge = (
        [
            "-filter_complex",
            "".join(f"[{i + 1}:a]" for i in range(channels)) + f"amerge=inputs={channels}[a]",
            "-map",
            "0:v",
            "-map",
            "[a]",
        ]
        if channels > 1
        else ["-map", "0:v", "-map", "1:a"]
    )
    ffmpeg(*inputs, *merge, *vcodec, *acodec, str(path))
    return path


def video_only(path: Path, d: float = 3.0, w: int = 160, h: int = 120, fps: float = 12.5) -> Path:
    ffmpeg(
        "-f", "lavfi", "-i", VIDEO.format(w=w, h=h, fps=fps, d=d), "-c:v", "libx264", "-pix_fmt", "yuv420p", str(path)
    )
    return path


def audio_only(path: Path, codec: list[str], d: float = 3.0, sr: int = 44100, channels: int = 1) -> Path:
    ffmpeg("-f", "lavfi", "-i", TONE.format(sr=sr, d=d), "-ac", str(channels), *codec, str(path))
    return path


def counting_video(path: Path, fps: float, d: float = 10.0) -> Path:
    """Lossless video whose frame n is uniformly grey at level n (so a decoded frame names its source)."""
    source = f"color=c=black:size=64x48:rate={fps}:duration={d},format=rgb24,geq=r='N':g='N':b='N'"
    ffmpeg("-f", "lavfi", "-i", source, "-c:v", "ffv1", "-pix_fmt", "bgr0", str(path))
    return path
