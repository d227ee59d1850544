"""The network: block math against a naive reference, joint-block chaining, variants, training."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from model import CAVMAESync, ModelConfig, ObjectiveConfig, preset
from model.layers import Block


def _naive_layer_norm(x, norm):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias


def _naive_block(block: Block, x: torch.Tensor, suffix: str) -> torch.Tensor:
    """The official block written out with explicit loops over heads: softmax(q k^T / sqrt(d)) v."""
    norm1, norm2 = getattr(block, "norm1" + suffix), getattr(block, "norm2" + suffix)
    heads = block.attn.num_heads
    h = _naive_layer_norm(x, norm1)
    q, k, v = (h @ block.attn.qkv.weight.t() + block.attn.qkv.bias).chunk(3, dim=-1)
    dim = q.shape[-1] // heads
    outs = []
    for i in range(heads):
        sl = slice(i * dim, (i + 1) * dim)
        scores = q[..., sl] @ k[..., sl].transpose(-1, -2) / math.sqrt(dim)
        outs.append(torch.softmax(scores, dim=-1) @ v[..., sl])
    x = x + torch.cat(outs, dim=-1) @ block.attn.proj.weight.t() + block.attn.proj.bias
    h = _naive_layer_norm(x, norm2)
    hidden = F.gelu(h @ block.mlp.fc1.weight.t() + block.mlp.fc1.bias)  # exact (erf) GELU
    return x + hidden @ block.mlp.fc2.weight.t() + block.mlp.fc2.bias


@pytest.mark.parametrize(("norms", "suffix"), [("joint", ""), ("audio", "_a"), ("visual", "_v")])
def test_block_matches_naive_reference(norms: str, suffix: str) -> None:
    torch.manual_seed(0)
    block = Block(dim=48, num_heads=3, mlp_ratio=4.0, qkv_bias=True, norm_eps=1e-5).double().eval()
    for module in block.modules():  # non-trivial norms so that the three pairs differ
        if isinstance(module, torch.nn.LayerNorm):
            torch.nn.init.normal_(module.weight, 1.0, 0.3)
            torch.nn.init.normal_(module.bias, 0.0, 0.3)
    x = torch.randn(2, 11, 48, dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(block(x, norms), _naive_block(block, x, suffix), atol=1e-10)


def test_fused_and_plain_attention_agree() -> None:
    torch.manual_seed(1)
    model = CAVMAESync(preset("tiny")).eval()
    cfg = model.config
    audio = torch.randn(3, cfg.audio_frames, cfg.mel_bins)
    with torch.no_grad():
        fused = model.encode_audio(audio)
        model.set_fused_attention(False)
        plain = model.encode_audio(audio)
    assert torch.allclose(fused.global_tokens, plain.global_tokens, atol=1e-5)
    assert torch.allclose(fused.patch_tokens, plain.patch_tokens, atol=1e-5)


def test_joint_blocks_are_chained() -> None:
    torch.manual_seed(2)
    model = CAVMAESync(preset("tiny", joint_depth=2)).eval()
    frames = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        encoded = model.encode_visual(frames)
        x = model._encode_unimodal(model._embed(frames, "visual"), "visual")
        chained = model.norm_v(model.blocks_u[1](model.blocks_u[0](x, "visual"), "visual"))
        defect = model.norm_v(model.blocks_u[1](x, "visual"))  # the official loop's re-application
    assert torch.allclose(encoded.global_tokens, chained[:, 0], atol=1e-6)
    assert not torch.allclose(encoded.global_tokens, defect[:, 0], atol=1e-3)


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"num_registers": 0},
        {"global_token": False},
        {"joint_depth": 3, "decoder_depth": 0},
        {"patch_size": 8, "image_size": 64, "mel_bins": 32, "audio_frames": 96, "in_chans": 1},
    ],
)
def test_variants_encode_and_train(changes: dict) -> None:
    torch.manual_seed(3)
    cfg = preset("tiny", **changes)
    model = CAVMAESync(cfg)
    audio = torch.randn(4, cfg.audio_frames, cfg.mel_bins)
    frames = torch.randn(4, cfg.in_chans, cfg.image_size, cfg.image_size)
    out = model(audio, frames)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert out.pred_audio.shape == (4, cfg.num_audio_patches, cfg.patch_size**2)
    assert out.pred_visual.shape == (4, cfg.num_visual_patches, cfg.patch_size**2 * cfg.in_chans)
    assert out.mask_audio.shape == (4, cfg.num_audio_patches)
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.numel() and p.grad is None]
    assert not no_grad, f"parameters without gradient: {no_grad}"
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert all(not n.startswith("blocks_u.") and ("norm1_" in n or "norm2_" in n) for n in frozen)
    with torch.no_grad():
        enc_a, enc_v = model.encode_audio(audio), model.encode_visual(frames)
    assert enc_a.global_tokens.shape == (4, cfg.embed_dim)
    assert enc_a.patch_tokens.shape == (4, cfg.num_audio_patches, cfg.embed_dim)
    assert enc_v.patch_tokens.shape == (4, cfg.num_visual_patches, cfg.embed_dim)


def test_loss_is_the_configured_weighted_sum() -> None:
    torch.manual_seed(4)
    cfg = preset("tiny")
    model = CAVMAESync(cfg)
    audio, frames = torch.randn(4, cfg.audio_frames, cfg.mel_bins), torch.randn(4, 3, 112, 112)
    objective = ObjectiveConfig(lambda_c=0.3, lambda_r=2.0, mask_ratio_audio=0.5, norm_pix_loss=True)
    out = model(audio, frames, objective, generator=torch.Generator().manual_seed(0))
    expected = 2.0 * (out.loss_mae_audio + out.loss_mae_visual) + 0.3 * out.loss_contrastive
    assert torch.allclose(out.loss, expected)
    assert out.mask_audio.sum(1).eq(cfg.num_audio_patches - int(cfg.num_audio_patches * 0.5)).all()


def test_bad_input_shapes_are_reported() -> None:
    model = CAVMAESync(preset("tiny"))
    with pytest.raises(ValueError, match=r"audio segments must be \(N, 416, 64\)"):
        model.encode_audio(torch.zeros(2, 416, 128))
    with pytest.raises(ValueError, match=r"frames must be \(N, 3, 112, 112\)"):
        model.encode_visual(torch.zeros(2, 3, 224, 224))


def test_invalid_configs_are_refused() -> None:
    with pytest.raises(ValueError, match="not divisible by num_heads"):
        ModelConfig(embed_dim=100, num_heads=12)
    with pytest.raises(ValueError, match="not a multiple of patch_size"):
        ModelConfig(image_size=200)
    with pytest.raises(ValueError, match="mask_ratio_audio"):
        ObjectiveConfig(mask_ratio_audio=1.0)


def test_bf16_autocast_inference_is_close_to_fp32() -> None:
    torch.manual_seed(5)
    model = CAVMAESync(preset("tiny")).eval()
    frames = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        reference = F.normalize(model.encode_visual(frames).global_tokens, dim=-1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model.encode_visual(frames).global_tokens.float()
    assert F.cosine_similarity(reference, low, dim=-1).min() > 0.99


def _smooth_batch(cfg: ModelConfig, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Low-frequency inputs (what real spectrograms and frames look like), so reconstruction is learnable."""
    coarse_a = torch.randn(n, 1, 4, 2, generator=gen)
    audio = F.interpolate(coarse_a, size=(cfg.audio_frames, cfg.mel_bins), mode="bilinear")[:, 0]
    coarse_v = torch.randn(n, 3, 2, 2, generator=gen)
    frames = F.interpolate(coarse_v, size=(cfg.image_size, cfg.image_size), mode="bilinear")
    return audio, frames


def test_tiny_model_overfits_a_fixed_batch() -> None:
    torch.manual_seed(6)
    cfg = preset("tiny")
    model = CAVMAESync(cfg)
    audio, frames = _smooth_batch(cfg, 4, torch.Generator().manual_seed(7))
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    objective = ObjectiveConfig()
    losses = []
    for _ in range(50):
        out = model(audio, frames, objective, generator=torch.Generator().manual_seed(0))  # same masks
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        losses.append(out.loss.item())
    assert losses[-1] < 0.5 * losses[0], f"loss {losses[0]:.3f} -> {losses[-1]:.3f}"
    # below what predicting each input's mean would cost: the masked patches are really reconstructed
    assert out.loss_mae_audio < 0.6 * audio.var() and out.loss_mae_visual < 0.6 * frames.var()


def test_clip_tokens_are_each_frames_normalised_global_token() -> None:
    torch.manual_seed(0)
    model = CAVMAESync(preset("tiny", modality_depth=1)).eval()
    cfg = model.config
    segments = torch.randn(2, cfg.frames_per_clip, cfg.audio_frames, cfg.mel_bins)
    with torch.no_grad():
        tokens = model.encode_clip_tokens(segments, "audio")
        one = model.encode_audio(segments[1, 3:4]).global_tokens[0]
    assert tokens.shape == (2, cfg.frames_per_clip, cfg.embed_dim)
    assert torch.allclose(tokens.norm(dim=-1), torch.ones(2, cfg.frames_per_clip), atol=1e-5)
    assert torch.allclose(tokens[1, 3], one / one.norm(), atol=1e-5)
