"""Masking, patch targets and the two pretraining losses (masked MSE and InfoNCE)."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F


class MaskedTokens(NamedTuple):
    kept: torch.Tensor  # (B, K, D) the visible tokens, in shuffled order
    mask: torch.Tensor  # (B, P) 1.0 where the token was removed, in the original order
    ids_restore: torch.Tensor  # (B, P) position of each original token in [kept, removed]


def num_kept(num_tokens: int, mask_ratio: float) -> int:
    """How many of `num_tokens` survive masking (the official rounding: int(P * (1 - ratio)))."""
    return int(num_tokens * (1.0 - mask_ratio))


def random_masking(
    tokens: torch.Tensor,
    mask_ratio: float,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
) -> MaskedTokens:
    """Unstructured per-sample random masking. tokens: (B, P, D).

    The tokens with the smallest `noise` (B, P) are kept; by default the noise is uniform random
    (from `generator`). Passing it in makes masks independent of how a batch is split across ranks.
    """
    batch, length, dim = tokens.shape
    keep = num_kept(length, mask_ratio)
    if noise is None:
        noise = torch.rand(batch, length, device=tokens.device, generator=generator)
    ids_shuffle = noise.argsort(dim=1)  # ascending: the first `keep` are visible
    ids_restore = ids_shuffle.argsort(dim=1)
    ids_keep = ids_shuffle[:, :keep]
    kept = tokens.gather(1, ids_keep.unsqueeze(-1).expand(-1, -1, dim))  # (B, K, D)
    mask = torch.ones(batch, length, device=tokens.device, dtype=tokens.dtype)
    mask[:, :keep] = 0
    mask = mask.gather(1, ids_restore)
    return MaskedTokens(kept, mask, ids_restore)


def restore_order(kept: torch.Tensor, ids_restore: torch.Tensor, mask_token: torch.Tensor) -> torch.Tensor:
    """Append mask tokens to the visible tokens and undo the shuffle.

    kept: (B, K, D), ids_restore: (B, P), mask_token: (1, 1, D) -> (B, P, D) in the original order.
    """
    batch, keep, dim = kept.shape
    length = ids_restore.shape[1]
    filler = mask_token.to(kept.dtype).expand(batch, length - keep, dim)
    shuffled = torch.cat([kept, filler], dim=1)  # (B, P, D)
    return shuffled.gather(1, ids_restore.unsqueeze(-1).expand(-1, -1, dim))


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, (H/p) * (W/p), p * p * C), row-major patches, pixels ordered (p, q, c)."""
    batch, chans, height, width = images.shape
    rows, cols = height // patch_size, width // patch_size
    x = images.reshape(batch, chans, rows, patch_size, cols, patch_size)
    x = torch.einsum("bchpwq->bhwpqc", x)
    return x.reshape(batch, rows * cols, patch_size * patch_size * chans)


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, norm_pix: bool) -> torch.Tensor:
    """Mean squared error over removed patches only. pred/target: (B, P, K), mask: (B, P)."""
    if norm_pix:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1.0e-6).sqrt()
    per_patch = (pred - target).pow(2).mean(dim=-1)  # (B, P)
    return (per_patch * mask).sum() / mask.sum().clamp_min(1.0)


class ContrastiveResult(NamedTuple):
    loss: torch.Tensor
    accuracy: torch.Tensor


def info_nce(
    audio: torch.Tensor,
    visual: torch.Tensor,
    temperature: float,
    symmetric: bool = False,
    all_audio: torch.Tensor | None = None,
    all_visual: torch.Tensor | None = None,
    offset: int = 0,
) -> ContrastiveResult:
    """InfoNCE between global tokens; pair i of the batch is the positive.

    audio, visual: (B, D), not necessarily normalised. The official loss is one-directional: for
    each visual token, a softmax over the audio tokens (the official log_softmax over the audio axis).
    With `symmetric`, the audio->visual direction is averaged in. `all_audio` / `all_visual` (N, D),
    when given, are the tokens of every rank (negatives gathered across processes) and `offset` is
    where this batch's rows start in them; by default the batch is its own set of negatives.
    """
    audio, visual = F.normalize(audio, dim=-1), F.normalize(visual, dim=-1)
    all_audio = audio if all_audio is None else F.normalize(all_audio, dim=-1)
    all_visual = visual if all_visual is None else F.normalize(all_visual, dim=-1)
    targets = torch.arange(audio.shape[0], device=audio.device) + offset
    logits_v2a = visual @ all_audio.t() / temperature  # (B, N): each visual row scored against audio
    loss = F.cross_entropy(logits_v2a, targets)
    accuracy = (logits_v2a.argmax(dim=1) == targets).float().mean()
    if symmetric:
        logits_a2v = audio @ all_visual.t() / temperature  # (B, N)
        loss = (loss + F.cross_entropy(logits_a2v, targets)) / 2
        accuracy = (accuracy + (logits_a2v.argmax(dim=1) == targets).float().mean()) / 2
    return ContrastiveResult(loss, accuracy)
