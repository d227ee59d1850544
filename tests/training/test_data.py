"""Data sources: the official manifest layout, raw media manifests, skipping unreadable items, seeding."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from model import CAVMAESync, preset
from model.media import ffmpeg_binary
from training.data import MediaManifest, OfficialManifest, PairDataset, collate_pairs, epoch_batches
from training.mae_init import init_from_mae

TINY = preset("tiny")


def _official_example(root: Path) -> Path:
    """Two items in the official layout: 16-kHz wavs and frame_{t}/{video_id}.jpg folders."""
    rows = []
    for k, vid in enumerate(("vidA", "vidB")):
        wav = root / "audio" / f"{vid}.wav"
        wav.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                ffmpeg_binary(),
                "-v",
                "error",
                "-y",
                "-f",
                "lavfi",
                "-i",
                f"sine=frequency={300 + 200 * k}:sample_rate=16000:duration=10",
                "-c:a",
                "pcm_s16le",
                str(wav),
            ],
            check=True,
        )
        for t in range(16):
            frame = root / "frames" / f"frame_{t}" / f"{vid}.jpg"
            frame.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run(
                [
                    ffmpeg_binary(),
                    "-v",
                    "error",
                    "-y",
                    "-f",
                    "lavfi",
                    "-i",
                    f"color=c={'red' if k else 'blue'}:size=160x120",
                    "-frames:v",
                    "1",
                    str(frame),
                ],
                check=True,
            )
        rows.append({"video_id": vid, "wav": f"audio/{vid}.wav", "video_path": "frames", "labels": "/m/01,/m/02"})
    (root / "data.json").write_text(json.dumps({"data": rows}))
    (root / "labels.csv").write_text("index,mid,display_name\n0,/m/01,Dog\n1,/m/02,Bark\n")
    return root / "data.json"


def test_official_manifest_reads_a_small_example(tmp_path: Path) -> None:
    manifest = OfficialManifest.open(_official_example(tmp_path), TINY, tmp_path / "labels.csv")
    frames, segments = manifest.load(1)
    assert frames.shape == (16, 3, 112, 112) and segments.shape == (16, 416, 64)
    red = frames[0].mean(dim=(1, 2)) * torch.tensor([0.229, 0.224, 0.225]) + torch.tensor([0.485, 0.456, 0.406])
    assert red[0] > 0.9 and red[2] < 0.1
    assert segments.std() > 0.1
    assert manifest.labels(0) == ["Dog", "Bark"]


def test_unreadable_items_are_counted_and_skipped(tmp_path: Path) -> None:
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    (tmp_path / "list.csv").write_text("path,labels\nbroken.mp4,x\n")
    dataset = PairDataset(MediaManifest.open(tmp_path / "list.csv", TINY), seed=0, config=TINY)
    assert dataset[0] is None
    batch = collate_pairs([dataset[0], None])
    assert batch["skipped"] == 2 and "audio" not in batch


@pytest.mark.slow  # builds the 24-clip synthetic corpus (about 15 s)
def test_pairs_are_seeded_by_epoch_and_item(synth_corpus: Path, tmp_path: Path) -> None:
    dataset = PairDataset(MediaManifest.open(synth_corpus, TINY), seed=3, config=TINY, cache_dir=tmp_path)
    first = dataset[2]
    again = dataset[2]  # now from the cache: identical values
    assert torch.equal(first["audio"], again["audio"]) and torch.equal(first["frame"], again["frame"])
    assert first["audio"].shape == (416, 64) and first["frame"].shape == (3, 112, 112)
    dataset.set_epoch(1)
    assert not torch.equal(first["mask_noise_audio"], dataset[2]["mask_noise_audio"])


def test_epoch_batches_split_global_batches_across_ranks() -> None:
    single = epoch_batches(20, 4, seed=1, epoch=0, rank=0, world=1)
    ranks = [epoch_batches(20, 2, seed=1, epoch=0, rank=r, world=2) for r in range(2)]
    for k, batch in enumerate(single):
        assert batch == ranks[0][k] + ranks[1][k]
    assert epoch_batches(20, 4, 1, 0) == single and epoch_batches(20, 4, 1, 1) != single


def _fake_mae(dim: int, depth: int, dec: int) -> dict[str, torch.Tensor]:
    """A state dict with MAE's names (what facebookresearch/mae saves under 'model')."""
    gen = torch.Generator().manual_seed(0)

    def r(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen)

    state = {
        "cls_token": r(1, 1, dim),
        "pos_embed": r(1, 197, dim),
        "patch_embed.proj.weight": r(dim, 3, 16, 16),
        "patch_embed.proj.bias": r(dim),
        "norm.weight": r(dim),
        "norm.bias": r(dim),
        "mask_token": r(1, 1, dec),
        "decoder_embed.weight": r(dec, dim),
        "decoder_embed.bias": r(dec),
        "decoder_norm.weight": r(dec),
        "decoder_norm.bias": r(dec),
        "decoder_pred.weight": r(768, dec),
        "decoder_pred.bias": r(768),
    }
    shapes = {
        "norm1.weight": (dim,),
        "norm1.bias": (dim,),
        "attn.qkv.weight": (3 * dim, dim),
        "attn.qkv.bias": (3 * dim,),
        "attn.proj.weight": (dim, dim),
        "attn.proj.bias": (dim,),
        "norm2.weight": (dim,),
        "norm2.bias": (dim,),
        "mlp.fc1.weight": (4 * dim, dim),
        "mlp.fc1.bias": (4 * dim,),
        "mlp.fc2.weight": (dim, 4 * dim),
        "mlp.fc2.bias": (dim,),
    }
    for i in range(depth):
        for name, shape in shapes.items():
            state[f"blocks.{i}.{name}"] = r(*shape)
    return state


def test_init_from_mae_follows_the_cav_mae_mapping(tmp_path: Path) -> None:
    cfg = preset("tiny", modality_depth=3, joint_depth=1, decoder_depth=0)
    mae = _fake_mae(cfg.embed_dim, 4, cfg.decoder_embed_dim)
    path = tmp_path / "mae.pth"
    torch.save({"model": mae}, path)
    model = CAVMAESync(cfg)
    assert init_from_mae(model, path) > 40
    sd = model.state_dict()
    assert torch.equal(sd["blocks_a.2.attn.qkv.weight"], mae["blocks.2.attn.qkv.weight"])
    assert torch.equal(sd["blocks_v.0.mlp.fc1.bias"], mae["blocks.0.mlp.fc1.bias"])
    for pair in ("norm1", "norm1_a", "norm1_v"):  # block 3 is the joint block, its norms in all pairs
        assert torch.equal(sd[f"blocks_u.0.{pair}.weight"], mae["blocks.3.norm1.weight"])
    assert torch.equal(sd["norm_a.weight"], mae["norm.weight"]) and torch.equal(sd["norm_v.bias"], mae["norm.bias"])
    assert torch.equal(sd["patch_embed_a.proj.weight"], mae["patch_embed.proj.weight"].sum(1, keepdim=True))
    assert torch.equal(sd["decoder_pred_v.weight"], mae["decoder_pred.weight"])
    assert not np.allclose(sd["pos_embed_a"].numpy(), 0)  # sin-cos kept, not MAE's 14x14 table
