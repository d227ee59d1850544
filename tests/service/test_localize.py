"""POST /localize: the patch-grid map is the cosine of the audio global token with each visual patch token
(checked against the model directly), its upsampled map and peak, the PNG heat map, every input form."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fastapi.testclient import TestClient
from PIL import Image

from .conftest import DEMO_CHECKPOINT, Corpus, upload

pytestmark = pytest.mark.slow  # every test here reads the demo corpus, indexed once per session (about a minute)


def _localize(client: TestClient, files: dict | None = None, params: dict | None = None, **fields: object):  # noqa: ANN202
    return client.post("/localize", files=files, data={k: str(v) for k, v in fields.items()}, params=params)


def _check_map(body: dict) -> None:
    grid, upsampled, peak = np.array(body["grid"]), np.array(body["map"]), body["peak"]
    assert grid.shape == (7, 7) and upsampled.shape == (112, 112)
    assert (body["grid_size"], body["image_size"]) == (7, 7 * 16)
    assert np.all(np.abs(grid) <= 1.0 + 1e-4)
    assert peak["value"] == pytest.approx(upsampled.max(), abs=1e-4)
    assert upsampled[peak["y"], peak["x"]] == pytest.approx(upsampled.max(), abs=1e-4)
    assert (peak["row"], peak["col"]) == (peak["y"] // 16, peak["x"] // 16)
    assert np.unravel_index(grid.argmax(), grid.shape) == (peak["row"], peak["col"])  # the peak patch is the best one


def test_indexed_video_and_its_stored_audio(client: TestClient, corpus: Corpus) -> None:
    from model import PreprocessConfig, load_image, load_model
    from model.similarity import normalize

    response = _localize(client, video_id=4, time=3.0, audio_video_id=4, audio_time=3.0)
    assert response.status_code == 200, response.text
    body = response.json()
    _check_map(body)
    assert body["frame_time"] == 3.0 and body["audio_time"] == pytest.approx(5 * 0.64)  # nearest segment centre
    model = load_model(DEMO_CHECKPOINT)
    audio = torch.tensor(client.get("/videos/4/embeddings").json()["clips"][0]["audio"][5])
    with torch.no_grad():
        frame = load_image(corpus.clips[3], model.config, PreprocessConfig(), at=3.0)
        patches = normalize(model.encode_visual(frame[None]).patch_tokens)[0]
    expected = (patches @ audio).view(7, 7)
    assert np.allclose(body["grid"], expected.numpy(), atol=2e-3)  # fp16 storage of the audio token
    upsampled = F.interpolate(expected[None, None], size=(112, 112), mode="bilinear", align_corners=False)[0, 0]
    assert np.allclose(body["map"], upsampled.numpy(), atol=2e-3)


def test_uploads_image_video_and_audio(client: TestClient, corpus: Corpus, tmp_path: Path) -> None:
    still = tmp_path / "frame.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (90, 160, 3), dtype=np.uint8)).save(still)
    for image, fields in ((still, {}), (corpus.clips[1], {"time": 6.5})):
        response = _localize(
            client, upload(image, "image") | upload(corpus.clips[1], "audio"), audio_time=2.0, **fields
        )
        assert response.status_code == 200, response.text
        body = response.json()
        _check_map(body)
        assert body["frame_time"] == fields.get("time", 0.0)  # an image has no time
        assert body["audio_time"] == pytest.approx(3 * 0.64)
        assert body["timings"]["decode_ms"] > 0 and body["timings"]["encode_ms"] > 0


def test_png_heat_map(client: TestClient, corpus: Corpus) -> None:
    response = _localize(client, upload(corpus.clips[2], "audio"), params={"format": "png"}, video_id=3, time=1)
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(response.content))
    assert image.format == "PNG" and image.size == (112, 112) and image.mode == "RGB"


@pytest.mark.parametrize(
    "fields,status,message",
    [
        ({"video_id": 2, "time": 12.0, "audio_video_id": 2}, 422, "past the end"),
        ({"video_id": 2, "audio_video_id": 2, "audio_time": 30.0}, 422, "past the end"),
        ({"audio_video_id": 2}, 422, "exactly one of `image`"),
        ({"video_id": 2}, 422, "exactly one of `audio`"),
        ({"video_id": 2, "audio_video_id": 2, "time": -1}, 422, "time"),
        ({"video_id": 2, "audio_video_id": 2, "time": "nan"}, 422, "time"),
    ],
)
def test_bad_requests(client: TestClient, fields: dict, status: int, message: str) -> None:
    response = _localize(client, **fields)
    assert response.status_code == status, response.text
    assert message in response.text
    bad_format = _localize(client, params={"format": "gif"}, video_id=2, audio_video_id=2)
    assert bad_format.status_code == 422


def test_an_image_and_a_video_id_together(client: TestClient, corpus: Corpus) -> None:
    response = _localize(client, upload(corpus.clips[0], "image"), video_id=1, audio_video_id=1)
    assert response.status_code == 422 and "exactly one of `image`" in response.text


def test_an_uploaded_audio_past_its_end(client: TestClient, corpus: Corpus) -> None:
    response = _localize(client, upload(corpus.clips[0], "audio"), video_id=1, audio_time=50)
    assert response.status_code == 422 and "past the end of the audio" in response.text
