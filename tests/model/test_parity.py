"""Parity with the official implementation: golden outputs and the released checkpoint's layout."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from cavsync.cli import app
from model import CAVMAESync, load_model, load_official_state_dict, preset
from model.checkpoint import CheckpointError, infer_config, strip_prefix

OUTPUTS = ("audio_global", "visual_global", "audio_patch_tokens", "visual_patch_tokens")


def _outputs(model: CAVMAESync, inputs: dict) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        audio = model.encode_audio(inputs["audio_fbank"])
        visual = model.encode_visual(inputs["frames"])
    return {
        "audio_global": audio.global_tokens,
        "visual_global": visual.global_tokens,
        "audio_patch_tokens": audio.patch_tokens,
        "visual_patch_tokens": visual.patch_tokens,
    }


def _assert_golden(model: CAVMAESync, golden: dict) -> None:
    ours = _outputs(model, golden["inputs"])
    for name in OUTPUTS:
        expected = golden["outputs"][name]
        assert ours[name].shape == expected.shape, name
        error = (ours[name] - expected).abs().max().item()
        assert error <= 1e-5, f"{name}: max abs error {error:.2e}"


def test_golden_outputs_from_official_state_dict(golden_tiny: dict) -> None:
    model = load_official_state_dict(golden_tiny["state_dict"], **golden_tiny["reference_kwargs"])
    assert not model.training
    _assert_golden(model, golden_tiny)


def test_golden_outputs_with_only_heads_given(golden_tiny: dict) -> None:
    """Everything but the head counts is read off the tensor shapes."""
    kwargs = golden_tiny["reference_kwargs"]
    model = load_official_state_dict(
        golden_tiny["state_dict"],
        num_heads=kwargs["num_heads"],
        decoder_num_heads=kwargs["decoder_num_heads"],
    )
    assert model.config.modality_depth == kwargs["modality_specific_depth"]
    assert model.config.num_registers == kwargs["num_register_tokens"]
    assert model.config.audio_frames == kwargs["audio_length"]
    _assert_golden(model, golden_tiny)


def test_golden_outputs_without_module_prefix(golden_tiny: dict) -> None:
    bare = strip_prefix(golden_tiny["state_dict"])
    assert not any(k.startswith("module.") for k in bare)
    _assert_golden(load_official_state_dict(bare, num_heads=4, decoder_num_heads=4), golden_tiny)


def test_official_pth_file_and_convert_cli_reproduce_golden(golden_tiny: dict, tmp_path: Path) -> None:
    official = tmp_path / "official.pth"
    torch.save(golden_tiny["state_dict"], official)
    _assert_golden(load_model(official, num_heads=4, decoder_num_heads=4), golden_tiny)

    out = tmp_path / "converted.safetensors"
    result = CliRunner().invoke(
        app, ["convert-checkpoint", str(official), str(out), "--num-heads", "4", "--decoder-num-heads", "4"]
    )
    assert result.exit_code == 0, result.output
    converted = load_model(out)  # the config travels with the weights: no sizes needed
    assert converted.config.num_heads == 4
    _assert_golden(converted, golden_tiny)


def test_convert_cli_reports_bad_checkpoint(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint at all")
    result = CliRunner().invoke(app, ["convert-checkpoint", str(bad), str(tmp_path / "out.safetensors")])
    assert result.exit_code == 2
    assert "not a checkpoint" in result.output
    assert not (tmp_path / "out.safetensors").exists()


def test_wrong_head_count_changes_outputs(golden_tiny: dict) -> None:
    """Heads are not visible in the weights: the default (dim / 64 = 1 head) must not match."""
    model = load_official_state_dict(golden_tiny["state_dict"])
    assert model.config.num_heads == 1
    ours = _outputs(model, golden_tiny["inputs"])["audio_global"]
    assert (ours - golden_tiny["outputs"]["audio_global"]).abs().max() > 1e-3


def test_base_preset_maps_one_to_one_onto_released_checkpoint(official_base_names: dict) -> None:
    assert len(official_base_names) == 650
    with torch.device("meta"):
        model = CAVMAESync(preset("base"))
    ours = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    assert set(ours) == set(official_base_names)
    mismatched = {k: (ours[k], official_base_names[k]) for k in ours if ours[k] != official_base_names[k]}
    assert not mismatched
    total = sum(torch.Size(s).numel() for s in official_base_names.values())
    assert round(total / 1e6, 1) == 190.7


def test_base_sizes_inferred_from_released_shapes(official_base_names: dict) -> None:
    fake = {name: torch.empty(shape, device="meta") for name, shape in official_base_names.items()}
    assert infer_config(fake) == preset("base")


def test_unknown_or_unsupported_sizes_are_refused(golden_tiny: dict) -> None:
    with pytest.raises(CheckpointError, match="unknown model size 'depth'"):
        load_official_state_dict(golden_tiny["state_dict"], depth=3)
    with pytest.raises(CheckpointError, match="contrastive_heads"):
        load_official_state_dict(golden_tiny["state_dict"], contrastive_heads=True)
