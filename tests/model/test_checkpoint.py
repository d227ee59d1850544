"""Our safetensors format and the errors every kind of bad checkpoint must give."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from model import CAVMAESync, CheckpointError, load_model, preset, save_checkpoint
from model.checkpoint import load_official_state_dict


@pytest.fixture()
def tiny_model() -> CAVMAESync:
    torch.manual_seed(0)
    return CAVMAESync(preset("tiny")).eval()


@pytest.fixture()
def saved(tiny_model: CAVMAESync, tmp_path: Path) -> Path:
    return save_checkpoint(tiny_model, tmp_path / "tiny.safetensors", {"note": "test"})


def test_safetensors_round_trip_is_bit_exact(tiny_model: CAVMAESync, saved: Path) -> None:
    loaded = load_model(saved)
    assert loaded.config == tiny_model.config
    assert not loaded.training
    original = tiny_model.state_dict()
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, original[name]), name
    cfg = tiny_model.config
    audio = torch.randn(2, cfg.audio_frames, cfg.mel_bins)
    with torch.no_grad():
        assert torch.equal(loaded.encode_audio(audio).global_tokens, tiny_model.encode_audio(audio).global_tokens)
    assert not list(saved.parent.glob("*.tmp")), "the temp file was left behind"


def test_overrides_replace_config_fields(saved: Path) -> None:
    assert load_model(saved, frames_per_clip=8).config.frames_per_clip == 8


def test_overrides_that_change_shapes_are_reported(saved: Path) -> None:
    with pytest.raises(CheckpointError, match="mis-shaped"):
        load_model(saved, embed_dim=64, num_heads=4)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty file"),
        (b"hello, this is text\n", "not a checkpoint"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, "not a checkpoint"),
    ],
)
def test_files_that_are_not_checkpoints(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        load_model(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        load_model(tmp_path / "absent.safetensors")


def test_truncated_safetensors(saved: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(saved.read_bytes()[: saved.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated safetensors"):
        load_model(cut)


def test_corrupt_safetensors_header(saved: Path, tmp_path: Path) -> None:
    data = bytearray(saved.read_bytes())
    data[20:40] = b"#" * 20  # breaks the JSON header
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt or truncated safetensors"):
        load_model(bad)


def test_truncated_pth(golden_tiny: dict, tmp_path: Path) -> None:
    full = tmp_path / "full.pth"
    torch.save(golden_tiny["state_dict"], full)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 3])
    with pytest.raises(CheckpointError, match="corrupt or truncated PyTorch checkpoint"):
        load_model(cut, num_heads=4)


class _Exploit:
    def __reduce__(self):  # would run code under a plain torch.load
        return (print, ("arbitrary code ran",))


@pytest.mark.parametrize("payload", [argparse.Namespace(lr=0.1), _Exploit()])
def test_pickled_objects_are_refused(golden_tiny: dict, tmp_path: Path, payload: object, capsys) -> None:
    path = tmp_path / "pickled.pth"
    torch.save({"state_dict": golden_tiny["state_dict"], "args": payload}, path)
    with pytest.raises(CheckpointError, match="pickled Python objects"):
        load_model(path)
    assert "arbitrary code ran" not in capsys.readouterr().out


@pytest.mark.parametrize("key", ["state_dict", "model"])
def test_nested_state_dict_is_accepted(golden_tiny: dict, tmp_path: Path, key: str) -> None:
    path = tmp_path / "nested.pth"
    torch.save({key: golden_tiny["state_dict"], "epoch": 3}, path)
    assert load_model(path, num_heads=4).config.embed_dim == 64


def test_dict_without_tensors_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "numbers.pth"
    torch.save({"epoch": 3, "lr": 0.1}, path)
    with pytest.raises(CheckpointError, match="state dict of tensors"):
        load_model(path)


def test_wrong_shapes_missing_and_unexpected_are_listed(golden_tiny: dict) -> None:
    state = dict(golden_tiny["state_dict"])
    state["module.norm_a.weight"] = torch.zeros(65)
    del state["module.decoder_pred_v.bias"]
    state["module.extra_head.weight"] = torch.zeros(3)
    with pytest.raises(CheckpointError) as info:
        load_official_state_dict(state, num_heads=4, decoder_num_heads=4)
    message = str(info.value)
    assert "missing (1): decoder_pred_v.bias" in message
    assert "unexpected (1): extra_head.weight" in message
    assert "mis-shaped (1): norm_a.weight: checkpoint (65,) vs model (64,)" in message


def test_not_a_cavmae_state_dict() -> None:
    with pytest.raises(CheckpointError, match="required tensor 'patch_embed_v.proj.weight' is missing"):
        load_official_state_dict({"fc.weight": torch.zeros(2, 2)})


def test_safetensors_without_our_metadata_is_read_as_official(golden_tiny: dict, tmp_path: Path) -> None:
    path = tmp_path / "official.safetensors"
    save_file({k: v.contiguous() for k, v in golden_tiny["state_dict"].items()}, str(path))
    assert load_model(path, num_heads=4).config.num_registers == 8


def test_bad_config_metadata(tiny_model: CAVMAESync, tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    tensors = {k: v.contiguous() for k, v in tiny_model.state_dict().items()}
    config = json.loads(tiny_model.config.to_json()) | {"unknown_field": 1}
    save_file(
        tensors,
        str(path),
        metadata={"format": "cavsync", "format_version": "1", "config": json.dumps(config)},
    )
    with pytest.raises(CheckpointError, match="unknown_field"):
        load_model(path)
    save_file(tensors, str(path), metadata={"format": "cavsync", "format_version": "99", "config": "{}"})
    with pytest.raises(CheckpointError, match="format version"):
        load_model(path)
