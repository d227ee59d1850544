"""model.localization: the maps against naive loops, crops that cover a picture, the head in checkpoints
(saved with them, refused for another backbone), official .pth files localizing with the paper's map."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from model import CAVMAESync, CheckpointError, load_localization_head, load_model, preset, save_checkpoint
from model.checkpoint import HEAD_PREFIX, save_head
from model.localization import (
    LocalizationHead,
    LocalizationHeadConfig,
    backbone_fingerprint,
    covering_crops,
    dense_scores,
    localization_grid,
    picture_map,
    upsample,
)


@pytest.fixture()
def tiny_model() -> CAVMAESync:
    torch.manual_seed(0)
    return CAVMAESync(preset("tiny", modality_depth=2)).eval()


def _head(model: CAVMAESync, seed: int = 1) -> LocalizationHead:
    torch.manual_seed(seed)
    return LocalizationHead(LocalizationHeadConfig(model.config.embed_dim, layer=1, hidden_dim=32)).eval()


def _inputs(model: CAVMAESync, n: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    size = model.config.image_size
    return torch.randn(n, 3, size, size, generator=generator), torch.randn(
        n, model.config.embed_dim, generator=generator
    )


def test_paper_and_head_maps_match_naive_loops(tiny_model: CAVMAESync) -> None:
    frames, audio = _inputs(tiny_model)
    head, side = _head(tiny_model), tiny_model.config.visual_grid[0]
    with torch.no_grad():
        final = tiny_model.encode_visual(frames).patch_tokens
        early = tiny_model.visual_layer_tokens(frames, 1)
        embedded = head.fc2(F.gelu(head.fc1(head.norm(early))))
    for method_head, patches in ((None, final), (head, embedded)):
        grid = localization_grid(tiny_model, frames, audio, method_head)
        for n in range(len(frames)):
            for p in range(side * side):
                expected = F.cosine_similarity(audio[n], patches[n, p], dim=0)
                assert grid[n, p // side, p % side] == pytest.approx(float(expected), abs=1e-5)
    assert grid.abs().max() <= 1.0 + 1e-6


def test_layer_tokens_at_full_depth_are_the_encoders_before_the_joint_block(tiny_model: CAVMAESync) -> None:
    frames, _ = _inputs(tiny_model)
    with torch.no_grad():
        embedded = tiny_model._embed(frames, "visual")
        full = tiny_model._encode_unimodal(embedded, "visual")[:, 1:]
        assert torch.allclose(tiny_model.visual_layer_tokens(frames, tiny_model.config.modality_depth), full)
        assert torch.allclose(tiny_model.visual_layer_tokens(frames, 0), embedded)
    with pytest.raises(ValueError, match="layer must be"):
        tiny_model.visual_layer_tokens(frames, 3)


def test_dense_scores_max_and_softmax() -> None:
    generator = torch.Generator().manual_seed(0)
    audio, patches = torch.randn(3, 8, generator=generator), torch.randn(4, 5, 8, generator=generator)
    cos = F.normalize(audio, dim=-1) @ F.normalize(patches, dim=-1).transpose(1, 2)  # (B, A, P)
    assert torch.allclose(dense_scores(audio, patches, "max"), cos.max(-1).values.T, atol=1e-6)
    soft = dense_scores(audio, patches, "softmax", pool_temperature=1e-4)
    assert torch.allclose(soft, cos.max(-1).values.T, atol=1e-4)  # a cold soft max is the max
    assert (dense_scores(audio, patches, "softmax", 10.0) <= dense_scores(audio, patches, "max") + 1e-6).all()


@pytest.mark.parametrize("height,width", [(112, 112), (112, 199), (300, 112), (112, 113)])
def test_covering_crops_cover_the_picture(height: int, width: int) -> None:
    crops = covering_crops(height, width, 112)
    covered = torch.zeros(height, width)
    for crop in crops:
        assert crop.x + crop.size <= width and crop.y + crop.size <= height
        covered[crop.y : crop.y + crop.size, crop.x : crop.x + crop.size] += 1
    assert covered.min() >= 1
    starts = [max(c.x, c.y) for c in crops]
    assert all(b - a <= 56 for a, b in zip(starts, starts[1:], strict=False))  # at least half a crop overlaps
    with pytest.raises(ValueError, match="short side"):
        covering_crops(100, 200, 112)


def test_picture_map_of_a_square_picture_is_the_upsampled_grid(tiny_model: CAVMAESync) -> None:
    frames, audio = _inputs(tiny_model, 1)
    found = picture_map(tiny_model, frames[0], audio[0])
    size = tiny_model.config.image_size
    expected = upsample(localization_grid(tiny_model, frames, audio), size, size)[0]
    assert found.method == "paper" and len(found.crops) == 1
    assert torch.allclose(found.values, expected, atol=1e-6)


def test_picture_map_of_a_wide_picture_averages_its_crops(tiny_model: CAVMAESync) -> None:
    size = tiny_model.config.image_size
    picture = torch.randn(3, size, 2 * size, generator=torch.Generator().manual_seed(5))
    audio = torch.randn(tiny_model.config.embed_dim)
    head = _head(tiny_model)
    found = picture_map(tiny_model, picture, audio, head)
    assert found.method == "head" and found.values.shape == (size, 2 * size) and len(found.crops) == 3
    first = upsample(localization_grid(tiny_model, picture[None, :, :, :size], audio[None], head), size, size)[0]
    middle = upsample(localization_grid(tiny_model, picture[None, :, :, 56 : 56 + size], audio[None], head), size, size)
    assert torch.allclose(found.values[:, :56], first[:, :56], atol=1e-5)  # only the first crop covers it
    assert torch.allclose(found.values[:, 56:112], (first[:, 56:] + middle[0, :, :56]) / 2, atol=1e-5)


def test_the_head_builds_for_the_base_preset() -> None:
    base = preset("base")
    config = LocalizationHeadConfig(base.embed_dim, layer=1, hidden_dim=256)
    config.check_backbone(base)
    head = LocalizationHead(config)
    assert head(torch.randn(2, base.num_visual_patches, base.embed_dim)).shape == (2, 196, 768)
    with pytest.raises(ValueError, match="does not fit"):
        LocalizationHeadConfig(128, layer=1).check_backbone(base)


# --------------------------------------------------------------------------------------------- checkpoints
def test_head_saved_with_the_checkpoint_keeps_the_backbone_exact(tiny_model: CAVMAESync, tmp_path: Path) -> None:
    head = _head(tiny_model)
    plain = save_checkpoint(tiny_model, tmp_path / "plain.safetensors", {"note": "x"})
    with_head = save_checkpoint(tiny_model, tmp_path / "head.safetensors", {"note": "x"}, head=head)
    assert load_localization_head(plain, load_model(plain)) is None
    model = load_model(with_head)
    for name, tensor in load_model(plain).state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name
    loaded = load_localization_head(with_head, model)
    assert loaded is not None and loaded.config == head.config and not loaded.training
    for name, tensor in head.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    from safetensors import safe_open

    with safe_open(str(with_head), framework="pt") as handle:
        assert any(k.startswith(HEAD_PREFIX) for k in handle.keys())  # noqa: SIM118


def test_a_head_is_refused_for_another_backbone(tiny_model: CAVMAESync, tmp_path: Path) -> None:
    head = _head(tiny_model)
    adapter = save_head(head, tiny_model, tmp_path / "head.safetensors")
    assert load_localization_head(adapter, tiny_model) is not None
    torch.manual_seed(99)
    other = CAVMAESync(tiny_model.config).eval()
    assert backbone_fingerprint(other) != backbone_fingerprint(tiny_model)
    with pytest.raises(CheckpointError, match="trained on another backbone") as error:
        load_localization_head(adapter, other)
    assert "cavsync train-localizer" in str(error.value)
    # a checkpoint file whose backbone was changed after the head was added is refused too
    with_head = save_checkpoint(tiny_model, tmp_path / "ckpt.safetensors", head=head)
    with pytest.raises(CheckpointError, match="another backbone"):
        load_localization_head(with_head, other)
    with pytest.raises(CheckpointError, match="adapter, not a model checkpoint"):
        load_model(adapter)


def test_official_pth_loads_and_localizes_with_the_paper_map(tiny_model: CAVMAESync, tmp_path: Path) -> None:
    path = tmp_path / "official.pth"
    torch.save({f"module.{k}": v for k, v in tiny_model.state_dict().items()}, path)
    model = load_model(path, num_heads=tiny_model.config.num_heads, decoder_num_heads=4)
    assert load_localization_head(path, model) is None
    frames, audio = _inputs(model, 1)
    found = picture_map(model, frames[0], audio[0], load_localization_head(path, model))
    assert found.method == "paper"
    assert torch.allclose(found.grids, localization_grid(tiny_model, frames, audio), atol=1e-5)
