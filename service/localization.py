"""Blocking work behind the localization route (run in a worker thread): the frame (an uploaded image or
video, or an indexed video's), the audio token (an upload's segment, or an indexed video's stored one), the
map over the whole frame, and the answer.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from starlette.datastructures import UploadFile

from indexer.cluster.corpus import CorpusVersion
from model.features import Picture, checked_duration, load_picture
from model.localization import VALUE_RANGE, LocalizationHead
from model.probe import probe
from service import inference
from service.engine import Engine
from service.errors import InvalidInput
from service.inference import ms
from service.media import TIME_SLACK_S, check_catalog_file, named_errors, open_catalog_file, video_time
from service.schemas import Crop, LocalizeMethod, LocalizeResponse, LocalizeTimings, Peak, ValueRange
from service.stored import indexed_clips, stored_tokens
from service.uploads import saved_upload


def frame_of(engine: Engine, path: Path, at: float, uploaded: bool = False) -> tuple[Picture, float]:
    """The whole picture of an image (time ignored) or of a video at `at` s, and the time it was read at
    (`video_time`: the last frame's for a time past its start). An `uploaded` video longer than the duration
    limit is refused, as for every other upload."""
    info = probe(path, engine.prep.timeout_s, engine.prep.limits)
    if uploaded:
        checked_duration(info, engine.prep)
    at = video_time(at, info)
    return load_picture(path, engine.model.config, engine.prep, at=at), at


def indexed_frame(engine: Engine, video_id: int, at: float) -> tuple[Picture, float]:
    """An indexed video's picture at `at` s, read from its file opened as the indexed one (404 gone, 409
    replaced; see `service.media`)."""
    entry, opened = open_catalog_file(engine.sessions, video_id, indexed=True)
    try:
        with named_errors(opened.fd, entry.name) as path:
            return frame_of(engine, Path(path), at)
    finally:
        os.close(opened.fd)


def uploaded_audio_token(engine: Engine, upload: UploadFile, at: float) -> tuple[np.ndarray, float, float]:
    """(D,) normalised audio token of the uploaded audio's segment at `at` s, its centre, the encode ms."""
    with saved_upload(upload) as path:
        try:
            segment, centre = inference.audio_segment(engine.model, path, at, engine.prep)
        except ValueError as exc:
            raise InvalidInput(str(exc)) from exc
    encoding = time.perf_counter()
    token = inference.global_tokens(engine.model, "audio", segment)[0]
    return token, centre, ms(time.perf_counter() - encoding)


def stored_audio_token(
    engine: Engine, version: CorpusVersion | None, video_id: int, at: float
) -> tuple[np.ndarray, float]:
    """(D,) stored audio token of an indexed video at `at` s (its clip's segment nearest `at`), its centre."""
    clips = indexed_clips(engine.sessions, video_id)
    check_catalog_file(engine.sessions, video_id)
    end = max(start + length for _, start, length in clips)
    if at > end + TIME_SLACK_S:
        raise InvalidInput(f"audio_time {at:.2f} s is past the end of video {video_id} ({end:.2f} s)")
    clip_id, start, _ = [c for c in clips if c[1] <= at][-1]
    frames = engine.model.config.frames_per_clip
    step = engine.prep.clip_s / frames
    index = min(frames - 1, round((at - start) / step))
    return stored_tokens(version, clip_id, "audio", video_id)[index], start + index * step


@dataclass(frozen=True)
class LocalizeInputs:
    image: UploadFile | None
    video_id: int | None
    time: float
    audio: UploadFile | None
    audio_video_id: int | None
    audio_time: float
    method: LocalizeMethod | None = None  # None: the head when the checkpoint has one, else the paper's


def _rounded(values: torch.Tensor) -> list[list[float]]:
    return torch.round(values, decimals=5).tolist()


def localization_head(engine: Engine, method: LocalizeMethod | None) -> LocalizationHead | None:
    """The head a request asks for (the checkpoint's by default), or None for the paper's map."""
    if method == "head" and engine.head is None:
        raise InvalidInput(
            "this checkpoint has no localization head: ask for method=paper, or give it one with "
            "`cavsync train-localizer --into`"
        )
    return None if method == "paper" else engine.head


def localize(
    engine: Engine, version: CorpusVersion | None, inputs: LocalizeInputs, png: bool
) -> LocalizeResponse | bytes:
    """The localization map over a whole frame: JSON (map, crops with their grids, peak) or a PNG heat map."""
    started = time.perf_counter()
    head = localization_head(engine, inputs.method)
    if inputs.image is not None:
        with saved_upload(inputs.image) as path:
            picture, frame_time = frame_of(engine, path, inputs.time, uploaded=True)
    else:
        picture, frame_time = indexed_frame(engine, inputs.video_id, inputs.time)  # type: ignore[arg-type]  # no image: LocalizeInputs required video_id
    encode_ms = 0.0
    if inputs.audio is not None:
        token, audio_time, encode_ms = uploaded_audio_token(engine, inputs.audio, inputs.audio_time)
    else:
        token, audio_time = stored_audio_token(engine, version, inputs.audio_video_id, inputs.audio_time)  # type: ignore[arg-type]  # no audio: audio_video_id required
    mapping = time.perf_counter()
    found = inference.localize(engine.model, picture.frame, token, head)
    if png:
        return inference.heatmap_png(picture.display, found.found.values)
    done = time.perf_counter()
    timings = LocalizeTimings(
        decode_ms=ms(mapping - started) - encode_ms,
        encode_ms=encode_ms + ms(done - mapping),
        total_ms=ms(done - started),
    )
    return _localize_response(found, picture, frame_time, audio_time, timings)


def _localize_response(
    found: inference.Localization, picture: Picture, frame_time: float, audio_time: float, timings: LocalizeTimings
) -> LocalizeResponse:
    values, (x, y) = found.found.values, found.peak_xy
    map_h, map_w = values.shape
    width, height = picture.source_size
    crops = [
        Crop(x=c.x, y=c.y, size=c.size, grid=_rounded(g))
        for c, g in zip(found.found.crops, found.found.grids, strict=True)
    ]
    return LocalizeResponse(
        method=found.found.method,
        map=_rounded(values),
        map_width=map_w,
        map_height=map_h,
        frame_width=width,
        frame_height=height,
        value_range=ValueRange(min=float(values.min()), max=float(values.max()), scale=VALUE_RANGE),
        crops=crops,
        grid_size=found.found.grids.shape[-1],
        image_size=found.found.crops[0].size,
        peak=Peak(
            x=x,
            y=y,
            source_x=min(width - 1, int((x + 0.5) * width / map_w)),
            source_y=min(height - 1, int((y + 0.5) * height / map_h)),
            value=float(values[y, x]),
        ),
        frame_time=frame_time,
        audio_time=audio_time,
        timings=timings,
    )
