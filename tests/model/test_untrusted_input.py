"""Issue 28: every ffmpeg / ffprobe run over a file decodes that file only. A playlist (hls), a concat list, an
image-sequence pattern name (image2) or a protocol name that point at another media file are refused by every
reader with a typed error naming what to send; every format the product accepts still decodes; a frame asked
for past the start of a video's last frame is that last frame."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from model import UnsupportedMediaError, load_image, preset
from model.features import load_picture
from model.media import (
    FrameRequest,
    MediaInfo,
    decode_audio,
    decode_picture,
    decode_still,
    decode_window,
)
from model.probe import _probe_with_ffmpeg, probe

from . import media_files as mf

TINY = preset("tiny")
H264 = ["-c:v", "libx264", "-pix_fmt", "yuv420p"]
FASTSTART_AAC = ["-c:a", "aac", "-movflags", "+faststart"]  # the hls demuxer reads a segment without seeking


def _outside(folder: Path) -> Path:
    """The real media file the hostile inputs point at (never given to a reader)."""
    folder.mkdir(parents=True, exist_ok=True)
    return mf.av_file(folder / "clip.mp4", H264, FASTSTART_AAC, d=2.0)


def _hls(tmp: Path) -> tuple[Path, str]:
    target = _outside(tmp / "outside")
    playlist = tmp / "inside" / "playlist"
    playlist.parent.mkdir()
    playlist.write_text(f"#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2.0,\n{target}\n#EXT-X-ENDLIST\n")
    return playlist, "format hls is not accepted"


def _concat(tmp: Path) -> tuple[Path, str]:
    _outside(tmp / "outside")
    listing = tmp / "listing"  # a relative name: the demuxer's `safe` mode lets it through
    listing.write_text("ffconcat version 1.0\nfile 'outside/clip.mp4'\n")
    return listing, "format concat is not accepted"


def _pattern(tmp: Path) -> tuple[Path, str]:
    target = _outside(tmp / "outside")
    mf.ffmpeg("-i", str(target), "-frames:v", "1", str(tmp / "a000.png"))  # what the pattern names
    given = tmp / "a%03d.png"
    given.write_text("a name that is an image-sequence pattern\n")
    return given, "format image2 is not accepted"


def _protocol(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, str]:
    mf.av_file(tmp / "clip.mp4", H264, FASTSTART_AAC, d=2.0)
    monkeypatch.chdir(tmp)  # a relative name starting `concat:` is read by ffmpeg's concat protocol
    given = Path("concat:clip.mp4|clip.mp4")
    given.write_text("a name that is a protocol\n")
    return given, "protocol concat is not accepted"


HOSTILE = ("hls", "concat", "pattern", "protocol")


@pytest.fixture(params=HOSTILE)
def hostile(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, str]:
    """(a file that names another media file, the refusal expected)."""
    if request.param == "protocol":
        return _protocol(tmp_path, monkeypatch)
    make = {"hls": _hls, "concat": _concat, "pattern": _pattern}[request.param]
    return make(tmp_path)


def _told(path: Path) -> MediaInfo:
    """What a probe of a 2-s clip would have said (the decoders are guarded whatever the probe found)."""
    return MediaInfo(
        path, "mov,mp4,m4a,3gp,3g2,mj2", 2.0, "aac", 44100, 1, "h264", 160, 120, frame_rate=12.5, frames=25
    )


READERS: dict[str, Callable[[Path], object]] = {
    "ffprobe": lambda path: probe(path),
    "ffmpeg banner": lambda path: _probe_with_ffmpeg(path, 30.0, None),
    "decode_window": lambda path: decode_window(_told(path), 0.0, 2.0, FrameRequest(4, 2.0, 32)),
    "decode_audio": lambda path: decode_audio(_told(path)),
    "decode_still": lambda path: decode_still(_told(path), 32, at=0.5),
    "decode_picture": lambda path: decode_picture(_told(path), 32, 24, at=0.5),
}


@pytest.mark.parametrize("reader", sorted(READERS))
def test_every_reader_refuses_what_names_another_file(hostile: tuple[Path, str], reader: str) -> None:
    path, refusal = hostile
    with pytest.raises(UnsupportedMediaError, match=refusal) as info:
        READERS[reader](path)
    assert "send a media file (mp4" in str(info.value)


def _video(path: Path, vcodec: list[str], acodec: list[str]) -> Path:
    return mf.av_file(path, vcodec, acodec, d=1.0, w=64, h=48, fps=10)


def _picture(path: Path) -> Path:
    mf.ffmpeg("-f", "lavfi", "-i", "testsrc2=size=64x48", "-frames:v", "1", str(path))
    return path


ACCEPTED_VIDEO = {
    "clip.mp4": (H264, ["-c:a", "aac"]),
    "clip.m4v": (H264, ["-c:a", "aac", "-f", "mp4"]),
    "clip.mov": (H264, ["-c:a", "aac"]),
    "clip.mkv": (H264, ["-c:a", "flac"]),
    "clip.webm": (["-c:v", "libvpx", "-deadline", "realtime"], ["-c:a", "libopus"]),
    "clip.avi": (["-c:v", "mjpeg", "-pix_fmt", "yuvj420p"], ["-c:a", "pcm_s16le"]),
    "clip.mpg": (["-c:v", "mpeg2video", "-r", "25"], ["-c:a", "mp2"]),
    "clip.ts": (H264, ["-c:a", "aac"]),
}
ACCEPTED_AUDIO = {
    "tone.wav": ["-c:a", "pcm_s16le"],
    "tone.flac": ["-c:a", "flac"],
    "tone.mp3": ["-c:a", "libmp3lame"],
    "tone.ogg": ["-c:a", "libvorbis"],
    "tone.opus": ["-c:a", "libopus"],
    "tone.m4a": ["-c:a", "aac"],
    "tone.aac": ["-c:a", "aac", "-f", "adts"],
    "tone.webm": ["-c:a", "libopus"],  # what a browser's recorder sends
}
PICTURES = ("frame.png", "frame.jpg", "frame.webp", "frame.bmp", "frame.gif")


@pytest.mark.parametrize("name", sorted(ACCEPTED_VIDEO))
def test_accepted_video_formats_still_decode(tmp_path: Path, name: str) -> None:
    info = probe(_video(tmp_path / name, *ACCEPTED_VIDEO[name]))
    window = decode_window(info, 0.0, 1.0, FrameRequest(4, 1.0, 32))
    assert window.frames is not None and len(window.frames) == 4
    assert window.audio is not None and len(window.audio) > 8000


@pytest.mark.parametrize("name", sorted(ACCEPTED_AUDIO))
def test_accepted_audio_formats_still_decode(tmp_path: Path, name: str) -> None:
    info = probe(mf.audio_only(tmp_path / name, ACCEPTED_AUDIO[name], d=1.0))
    assert len(decode_audio(info)) > 8000


@pytest.mark.parametrize("name", PICTURES)
def test_accepted_pictures_still_decode(tmp_path: Path, name: str) -> None:
    path = _picture(tmp_path / name)
    info = probe(path)
    assert info.still_image == (name != "frame.gif")  # a GIF is a (one-frame) video to the probe
    assert decode_still(info, 32).shape == (32, 32, 3)
    assert load_picture(path, TINY).source_size == (64, 48)


# ------------------------------------------------------------------------------------ the end of a video
@pytest.mark.parametrize(("name", "fps"), [("counting.mkv", 8.0), ("counting.mp4", 8.0), ("counting.mp4", 29.97)])
def test_a_time_past_the_last_frame_start_gives_the_last_frame(tmp_path: Path, name: str, fps: float) -> None:
    """A 10-s video's last frame starts at 10 - 1/fps s: any later time (to the end) decodes that frame."""
    path = tmp_path / name
    if name.endswith(".mkv"):
        mf.counting_video(path, fps)
    else:  # h264 with a longer aac track, as the demo's clips: the container outlasts the video
        source = f"color=c=black:size=64x48:rate={fps}:duration=10,format=rgb24,geq=r='N':g='N':b='N'"
        mf.ffmpeg(
            "-f", "lavfi", "-i", source, "-f", "lavfi", "-i", "sine=duration=10.05", *H264, "-c:a", "aac", str(path)
        )
    info = probe(path)
    last_start = 10.0 - 1.0 / fps
    last = decode_picture(info, 64, 48, at=last_start - 0.002)
    for at in (last_start + 0.01, 10.0 - 0.011, 10.0):
        assert np.array_equal(decode_picture(info, 64, 48, at=at), last), at
        assert np.array_equal(decode_still(info, 32, at=at), decode_still(info, 32, at=last_start - 0.002)), at
    assert load_image(path, TINY, at=10.0).shape == (3, 112, 112)
