"""Decode + preprocess time of one 10-s clip: `load_clips` (probe, ffmpeg decode, fbank, frames).

    python bench/bench_media.py [PATH ...] [--preset base] [--repeats 7]

Defaults to the 1280x720 29.97-fps VGGSound clip in ../shared/media. Reports the median and the
spread, and the time of the parts (probe, one ffmpeg run for audio + frames, fbank + normalisation).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from model import load_clips, preset
from model.features import PreprocessConfig, clip_segments, normalize_frames
from model.media import FrameRequest, decode_window
from model.probe import probe

DEFAULT = Path(__file__).resolve().parents[1].parent / "shared" / "media" / "KlsG1EnBEjc_000361.mp4"


def _median(fn, repeats: int) -> tuple[float, float, float]:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times), max(times)


def bench(path: Path, preset_name: str, repeats: int) -> dict:
    config, prep = preset(preset_name), PreprocessConfig()
    info = probe(path)
    request = FrameRequest(config.frames_per_clip, prep.frame_span_s, config.image_size, prep.fast_video_decode)
    window = decode_window(info, 0.0, prep.clip_s, request)
    total = _median(lambda: load_clips(path, config, prep), repeats)
    return {
        "file": path.name,
        "video": f"{info.width}x{info.height} {info.video_codec} {info.frame_rate:.2f} fps, {info.audio_codec}",
        "preset": preset_name,
        "load_clips_median_s": round(total[0], 3),
        "load_clips_min_s": round(total[1], 3),
        "load_clips_max_s": round(total[2], 3),
        "probe_s": round(_median(lambda: probe(path), repeats)[0], 3),
        "ffmpeg_decode_s": round(_median(lambda: decode_window(info, 0.0, prep.clip_s, request), repeats)[0], 3),
        "fbank_and_normalise_s": round(
            _median(
                lambda: (clip_segments(window.audio, config, prep), normalize_frames(window.frames, prep)), repeats
            )[0],
            3,
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="*", type=Path, default=[DEFAULT])
    parser.add_argument("--preset", default="base")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    print(json.dumps([bench(p, args.preset, args.repeats) for p in args.paths], indent=2))


if __name__ == "__main__":
    main()
