"""Vectorised objectives against naive loops on seeded data."""

from __future__ import annotations

import math

import pytest
import torch

from model.objectives import info_nce, masked_mse, num_kept, patchify, random_masking, restore_order


def _naive_info_nce(audio, visual, temperature, symmetric):
    a = [x / x.norm() for x in audio]
    v = [x / x.norm() for x in visual]
    n = len(a)

    def direction(queries, keys):
        losses, hits = [], 0
        for j in range(n):
            scores = [float(queries[j] @ keys[i]) / temperature for i in range(n)]
            log_denominator = math.log(sum(math.exp(s) for s in scores))
            losses.append(log_denominator - scores[j])
            hits += int(max(range(n), key=lambda i: scores[i]) == j)
        return sum(losses) / n, hits / n

    loss, acc = direction(v, a)  # official: each visual token against all audio tokens
    if symmetric:
        loss2, acc2 = direction(a, v)
        loss, acc = (loss + loss2) / 2, (acc + acc2) / 2
    return loss, acc


@pytest.mark.parametrize("symmetric", [False, True])
def test_info_nce_matches_naive_loop(symmetric: bool) -> None:
    gen = torch.Generator().manual_seed(1)
    audio, visual = (
        torch.randn(6, 16, generator=gen, dtype=torch.float64),
        torch.randn(6, 16, generator=gen, dtype=torch.float64),
    )
    visual[2] = audio[2] * 3  # one confident pair
    result = info_nce(audio, visual, temperature=0.05, symmetric=symmetric)
    loss, acc = _naive_info_nce(audio, visual, 0.05, symmetric)
    assert result.loss.item() == pytest.approx(loss, rel=1e-9)
    assert result.accuracy.item() == pytest.approx(acc)


def test_info_nce_is_one_directional_by_default() -> None:
    gen = torch.Generator().manual_seed(2)
    audio, visual = torch.randn(5, 8, generator=gen), torch.randn(5, 8, generator=gen)
    one_way = info_nce(audio, visual, 0.1).loss
    swapped = info_nce(visual, audio, 0.1).loss
    assert not torch.allclose(one_way, swapped)


@pytest.mark.parametrize("symmetric", [False, True])
def test_info_nce_with_gathered_negatives_equals_full_batch(symmetric: bool) -> None:
    """Each rank's loss over the gathered bank, averaged over ranks, is the full-batch loss."""
    gen = torch.Generator().manual_seed(3)
    audio, visual = torch.randn(8, 12, generator=gen), torch.randn(8, 12, generator=gen)
    full = info_nce(audio, visual, 0.07, symmetric)
    parts = [
        info_nce(audio[i : i + 4], visual[i : i + 4], 0.07, symmetric, all_audio=audio, all_visual=visual, offset=i)
        for i in (0, 4)
    ]
    assert torch.allclose(sum(p.loss for p in parts) / 2, full.loss, atol=1e-6)
    assert torch.allclose(sum(p.accuracy for p in parts) / 2, full.accuracy)


def test_patchify_matches_naive_loop_and_audio_token_order() -> None:
    gen = torch.Generator().manual_seed(4)
    images = torch.randn(2, 3, 32, 48, generator=gen)
    patches = patchify(images, 16)
    assert patches.shape == (2, 2 * 3, 16 * 16 * 3)
    for b in range(2):
        for row in range(2):
            for col in range(3):
                block = images[b, :, row * 16 : (row + 1) * 16, col * 16 : (col + 1) * 16]  # (c, p, q)
                assert torch.equal(patches[b, row * 3 + col], block.permute(1, 2, 0).reshape(-1))
    # audio: (B, L=416, mel=128) becomes a (mel, time) image, so token = f * 26 + t
    audio = torch.randn(1, 416, 128, generator=gen)
    tokens = patchify(audio.unsqueeze(1).transpose(2, 3), 16)
    f, t = 5, 17
    assert torch.equal(tokens[0, f * 26 + t], audio[0, t * 16 : (t + 1) * 16, f * 16 : (f + 1) * 16].t().reshape(-1))


@pytest.mark.parametrize("norm_pix", [False, True])
def test_masked_mse_matches_naive_loop(norm_pix: bool) -> None:
    gen = torch.Generator().manual_seed(5)
    pred, target = (
        torch.randn(3, 7, 10, generator=gen, dtype=torch.float64),
        torch.randn(3, 7, 10, generator=gen, dtype=torch.float64),
    )
    mask = (torch.rand(3, 7, generator=gen) > 0.5).double()
    total, count = 0.0, 0
    for b in range(3):
        for p in range(7):
            if mask[b, p]:
                t = target[b, p]
                if norm_pix:
                    t = (t - t.mean()) / math.sqrt(float(t.var()) + 1e-6)
                total += float(((pred[b, p] - t) ** 2).mean())
                count += 1
    assert masked_mse(pred, target, mask, norm_pix).item() == pytest.approx(total / count, rel=1e-12)


@pytest.mark.parametrize(("length", "ratio"), [(208, 0.75), (196, 0.75), (104, 0.5), (49, 0.9), (10, 0.0)])
def test_masking_keeps_exactly_the_configured_count_and_restores_order(length: int, ratio: float) -> None:
    gen = torch.Generator().manual_seed(6)
    tokens = torch.randn(4, length, 8, generator=gen)
    masked = random_masking(tokens, ratio, gen)
    keep = num_kept(length, ratio)
    assert keep == int(length * (1 - ratio))
    assert masked.kept.shape == (4, keep, 8)
    assert torch.equal(masked.mask.sum(dim=1), torch.full((4,), float(length - keep)))
    mask_token = torch.full((1, 1, 8), 123.0)
    restored = restore_order(masked.kept, masked.ids_restore, mask_token)
    visible = masked.mask == 0
    assert torch.equal(restored[visible], tokens[visible])  # kept tokens return to their own places
    assert torch.all(restored[~visible] == 123.0)
    assert len({tuple(row.tolist()) for row in masked.mask}) > 1 or ratio == 0.0  # per-sample masks
