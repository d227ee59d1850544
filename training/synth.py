"""A synthetic audio-visual corpus: real mp4 files (h264 + aac, 10 s) of audio-visual events.

Each of >= 12 objects has a look (shape, colour, optional stripes) and a signature sound (waveform,
pitch, pulse rhythm). A clip is a sequence of events; during an event the sounding object is on
screen (random position and size, random background) and its sound plays (random loudness, noise).
Some clips replay another clip's events in a different order (hard negatives that only temporal
alignment separates); some frames show a silent distractor object. For every clip the masks of the
sounding object (and of the distractor) at the T frame times are saved for localization. Everything
is determined by the seed.

    cavsync synth --out DIR --n 200 --seed 1
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import tempfile
import wave
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from itertools import repeat
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
FPS = 8
SIZE = 128
SECONDS = 10.0
MASK_TIMES = tuple(i * 10.0 / 16 for i in range(16))  # the official frame times of a clip


@dataclass(frozen=True)
class SynthObject:
    name: str
    shape: str
    colour: tuple[int, int, int]
    striped: bool
    waveform: str  # sine | square | saw | triangle | noise
    pitch_hz: float
    pulse_hz: float  # 0 = continuous


VOCABULARY: tuple[SynthObject, ...] = (
    SynthObject("red_circle", "circle", (220, 40, 40), False, "sine", 330.0, 0.0),
    SynthObject("green_square", "square", (40, 200, 60), False, "square", 220.0, 4.0),
    SynthObject("blue_triangle", "triangle", (50, 80, 230), False, "saw", 440.0, 0.0),
    SynthObject("yellow_diamond", "diamond", (235, 220, 40), False, "triangle", 660.0, 6.0),
    SynthObject("magenta_cross", "cross", (220, 50, 210), False, "square", 150.0, 0.0),
    SynthObject("cyan_ring", "ring", (40, 220, 220), False, "sine", 880.0, 3.0),
    SynthObject("orange_circle_striped", "circle", (245, 140, 30), True, "noise", 1200.0, 0.0),
    SynthObject("white_square_striped", "square", (235, 235, 235), True, "saw", 110.0, 2.0),
    SynthObject("purple_triangle", "triangle", (130, 50, 190), False, "triangle", 520.0, 0.0),
    SynthObject("lime_diamond_striped", "diamond", (160, 230, 40), True, "noise", 3000.0, 5.0),
    SynthObject("brown_cross", "cross", (140, 90, 40), False, "sine", 200.0, 8.0),
    SynthObject("pink_ring_striped", "ring", (245, 150, 190), True, "square", 990.0, 0.0),
    SynthObject("navy_bar", "bar", (30, 40, 120), False, "saw", 280.0, 1.5),
    SynthObject("teal_bar_striped", "bar", (20, 140, 130), True, "noise", 500.0, 0.0),
)


@dataclass
class Event:
    object: int  # index into VOCABULARY
    start: float
    end: float
    x: float  # centre, fraction of the frame
    y: float
    radius: float  # fraction of the frame
    loudness: float


@dataclass
class ClipSpec:
    clip_id: str
    events: list[Event]
    background: tuple[int, int, int]
    noise_level: float
    distractor: int | None  # object index, silent
    distractor_box: tuple[float, float, float] | None  # x, y, radius
    distractor_from: float  # seconds; the distractor is on screen after this time
    group: str  # clips sharing events (in another order) share a group


# ------------------------------------------------------------------------------------ drawing
def shape_mask(shape: str, x: float, y: float, radius: float, size: int = SIZE) -> np.ndarray:
    """Boolean (size, size) mask of a shape centred at (x, y) (fractions), `radius` a fraction of size."""
    grid = (np.arange(size) + 0.5) / size
    dx, dy = grid[None, :] - x, grid[:, None] - y
    r = radius
    if shape == "circle":
        return dx**2 + dy**2 <= r**2
    if shape == "ring":
        d2 = dx**2 + dy**2
        return (d2 <= r**2) & (d2 >= (0.55 * r) ** 2)
    if shape == "square":
        return (np.abs(dx) <= 0.85 * r) & (np.abs(dy) <= 0.85 * r)
    if shape == "diamond":
        return np.abs(dx) + np.abs(dy) <= r
    if shape == "cross":
        return ((np.abs(dx) <= r) & (np.abs(dy) <= 0.3 * r)) | ((np.abs(dy) <= r) & (np.abs(dx) <= 0.3 * r))
    if shape == "triangle":
        return (dy <= 0.8 * r) & (dy >= -r + 2 * np.abs(dx) * 1.1)
    if shape == "bar":
        return (np.abs(dx) <= r) & (np.abs(dy) <= 0.35 * r)
    raise ValueError(f"unknown shape {shape!r}")


def paint(frame: np.ndarray, obj: SynthObject, mask: np.ndarray) -> None:
    colour = np.array(obj.colour, dtype=np.uint8)
    if obj.striped:
        stripes = ((np.arange(frame.shape[0])[:, None] + np.arange(frame.shape[1])[None, :]) // 4) % 2 == 0
        frame[mask & stripes] = colour
        frame[mask & ~stripes] = colour // 3
    else:
        frame[mask] = colour


# ------------------------------------------------------------------------------------ sound
def object_sound(obj: SynthObject, samples: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(samples) / SAMPLE_RATE
    phase = 2 * np.pi * obj.pitch_hz * t
    if obj.waveform == "sine":
        tone = np.sin(phase)
    elif obj.waveform == "square":
        tone = np.sign(np.sin(phase)) * 0.6
    elif obj.waveform == "saw":
        tone = 2 * ((obj.pitch_hz * t) % 1.0) - 1
        tone *= 0.6
    elif obj.waveform == "triangle":
        tone = 2 * np.abs(2 * ((obj.pitch_hz * t) % 1.0) - 1) - 1
    else:  # band noise around pitch_hz: white noise through a crude resonator (two-pole filter in numpy)
        tone = _band_noise(len(t), obj.pitch_hz, rng)
    if obj.pulse_hz > 0:
        tone = tone * (((obj.pulse_hz * t) % 1.0) < 0.5)
    return tone.astype(np.float32)


def _band_noise(n: int, centre_hz: float, rng: np.random.Generator) -> np.ndarray:
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
    spectrum *= np.exp(-(((freqs - centre_hz) / (0.25 * centre_hz)) ** 2))
    noise = np.fft.irfft(spectrum, n)
    return noise / (np.abs(noise).max() + 1e-9)


# ------------------------------------------------------------------------------------ specs
def _random_events(objects: list[int], rng: np.random.Generator) -> list[Event]:
    """Consecutive events filling 10 s, one per object, with random boundaries."""
    cuts = np.sort(rng.uniform(1.5, SECONDS - 1.5, size=len(objects) - 1))
    bounds = [0.0, *cuts.tolist(), SECONDS]
    events = []
    for i, obj in enumerate(objects):
        x, y = rng.uniform(0.25, 0.75, size=2).tolist()
        radius, loudness = float(rng.uniform(0.12, 0.22)), float(rng.uniform(0.4, 1.0))
        events.append(Event(obj, bounds[i], bounds[i + 1], x=x, y=y, radius=radius, loudness=loudness))
    return events


def _rgb(values: np.ndarray) -> tuple[int, int, int]:
    red, green, blue = (int(v) for v in values)
    return red, green, blue


def make_specs(n: int, seed: int, hard_negative_rate: float = 0.25, distractor_rate: float = 0.5) -> list[ClipSpec]:
    """The description of every clip of a corpus; depends on (n, seed) only."""
    rng = np.random.default_rng(seed)
    specs: list[ClipSpec] = []
    while len(specs) < n:
        index = len(specs)
        previous_is_original = bool(specs) and specs[-1].group == f"g{seed}_{index - 1:06d}"
        reuse = previous_is_original and rng.random() < hard_negative_rate
        if reuse:  # same events as the previous clip, another order
            previous = specs[-1]
            order = [e.object for e in previous.events]
            while order == [e.object for e in previous.events]:
                order = rng.permutation(order).tolist()
            objects, group = order, previous.group
        else:
            objects = rng.choice(len(VOCABULARY), size=int(rng.integers(2, 4)), replace=False).tolist()
            group = f"g{seed}_{index:06d}"
        events = _random_events(objects, rng)
        distractor = box = None
        if rng.random() < distractor_rate:
            distractor = int(rng.choice([i for i in range(len(VOCABULARY)) if i not in objects]))
            box = (float(rng.uniform(0.2, 0.8)), float(rng.uniform(0.2, 0.8)), float(rng.uniform(0.1, 0.18)))
        specs.append(
            ClipSpec(
                clip_id=f"synth_{seed}_{index:06d}",
                events=events,
                background=_rgb(rng.integers(0, 90, size=3)),
                noise_level=float(rng.uniform(0.01, 0.08)),
                distractor=distractor,
                distractor_box=box,
                distractor_from=float(rng.uniform(0.0, 5.0)),
                group=group,
            )
        )
    return specs


# ------------------------------------------------------------------------------------ rendering
def _event_at(spec: ClipSpec, t: float) -> Event:
    return next((e for e in spec.events if e.start <= t < e.end), spec.events[-1])


def render_frame(spec: ClipSpec, t: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """RGB uint8 (SIZE, SIZE, 3) at time t, the sounding object's mask and the distractor's mask."""
    frame = np.empty((SIZE, SIZE, 3), dtype=np.uint8)
    frame[:] = np.array(spec.background, dtype=np.uint8)
    distractor_mask = np.zeros((SIZE, SIZE), dtype=bool)
    box = spec.distractor_box  # set exactly when there is a distractor
    if spec.distractor is not None and box is not None and t >= spec.distractor_from:
        obj = VOCABULARY[spec.distractor]
        distractor_mask = shape_mask(obj.shape, *box)
        paint(frame, obj, distractor_mask)
    event = _event_at(spec, t)
    obj = VOCABULARY[event.object]
    sounding = shape_mask(obj.shape, event.x, event.y, event.radius)
    paint(frame, obj, sounding)
    return frame, sounding, distractor_mask & ~sounding


def render_audio(spec: ClipSpec, seed: int) -> np.ndarray:
    rng = np.random.default_rng([seed, int(spec.clip_id.rsplit("_", 1)[1])])
    audio = rng.standard_normal(int(SECONDS * SAMPLE_RATE)).astype(np.float32) * spec.noise_level
    for event in spec.events:
        first, last = int(event.start * SAMPLE_RATE), int(event.end * SAMPLE_RATE)
        audio[first:last] += 0.5 * event.loudness * object_sound(VOCABULARY[event.object], last - first, rng)
    return np.clip(audio, -1.0, 1.0)


def write_clip(spec: ClipSpec, out_dir: Path, seed: int, ffmpeg: str, timeout: float = 120.0) -> dict:
    """Encode one clip to `<clip_id>.mp4` (h264 + aac) and its masks to `<clip_id>.masks.npz`.

    A clip whose files are already there is kept (a corpus grows or resumes without re-rendering).
    """
    target = out_dir / f"{spec.clip_id}.mp4"
    if target.exists() and (out_dir / f"{spec.clip_id}.masks.npz").exists():
        return _metadata(spec, target)
    frames = [render_frame(spec, k / FPS)[0] for k in range(int(SECONDS * FPS))]
    masks = [render_frame(spec, t)[1:] for t in MASK_TIMES]
    audio = (render_audio(spec, seed) * 32767).astype("<i2")
    with tempfile.TemporaryDirectory(prefix="cavsync-synth-") as tmp:
        wav_path = Path(tmp) / "audio.wav"
        with wave.open(str(wav_path), "wb") as handle:
            handle.setnchannels(1)
            handle.setsampwidth(2)
            handle.setframerate(SAMPLE_RATE)
            handle.writeframes(audio.tobytes())
        partial = Path(tmp) / target.name
        args = [
            ffmpeg,
            "-nostdin",
            "-v",
            "error",
            "-y",
            "-f",
            "rawvideo",
            "-pix_fmt",
            "rgb24",
            "-s",
            f"{SIZE}x{SIZE}",
            "-r",
            str(FPS),
            "-i",
            "pipe:",
            "-i",
            str(wav_path),
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
            "-crf",
            "20",
            "-pix_fmt",
            "yuv420p",
            "-g",
            str(FPS),
            "-c:a",
            "aac",
            "-b:a",
            "96k",
            "-shortest",
            str(partial),
        ]
        subprocess.run(args, input=np.stack(frames).tobytes(), check=True, timeout=timeout, capture_output=True)
        os.replace(partial, target)
    _save_masks(
        out_dir / f"{spec.clip_id}.masks.npz",
        sounding=np.stack([m[0] for m in masks]),
        distractor=np.stack([m[1] for m in masks]),
        times=np.array(MASK_TIMES),
    )
    return _metadata(spec, target)


def _save_masks(path: Path, **arrays: np.ndarray) -> None:
    tmp = path.with_name(f".{path.stem}.tmp.npz")
    np.savez_compressed(tmp, allow_pickle=False, **arrays)
    os.replace(tmp, path)


def _metadata(spec: ClipSpec, path: Path) -> dict:
    return {
        "clip_id": spec.clip_id,
        "path": path.name,
        "masks": f"{spec.clip_id}.masks.npz",
        "group": spec.group,
        "labels": sorted({VOCABULARY[e.object].name for e in spec.events}),
        "events": [asdict(e) | {"name": VOCABULARY[e.object].name} for e in spec.events],
        "distractor": VOCABULARY[spec.distractor].name if spec.distractor is not None else None,
        "distractor_from": spec.distractor_from if spec.distractor is not None else None,
    }


def generate(out: str | os.PathLike[str], n: int, seed: int, workers: int = 1, ffmpeg: str | None = None) -> Path:
    """Write n clips, their masks, `metadata.jsonl` and `vocabulary.json` into `out`; returns it.

    `workers` > 1 renders and encodes clips in that many processes (the output is the same).
    """
    from model.media import ffmpeg_binary  # the same binary the decoder uses

    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    binary = ffmpeg or ffmpeg_binary()
    specs = make_specs(n, seed)
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            rows = list(pool.map(write_clip, specs, repeat(out_dir), repeat(seed), repeat(binary), chunksize=8))
    else:
        rows = [write_clip(spec, out_dir, seed, binary) for spec in specs]
    with open(out_dir / "metadata.jsonl", "w") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    (out_dir / "vocabulary.json").write_text(json.dumps([asdict(o) for o in VOCABULARY], indent=1))
    log.info("wrote %d synthetic clips to %s", n, out_dir)
    return out_dir
