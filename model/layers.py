"""Building blocks: the transformer block with per-modality LayerNorm pairs, and token tables."""

from __future__ import annotations

from typing import Literal

import torch
from timm.layers import Attention, Mlp, build_sincos2d_pos_embed
from torch import nn

NormPair = Literal["joint", "audio", "visual"]


class Block(nn.Module):
    """Pre-norm transformer block with one attention and one MLP but three LayerNorm pairs.

    `norms="joint"` uses `norm1/norm2` (modality-specific encoders, the joint audio+visual pass and the
    decoder); `"audio"` / `"visual"` use `norm1_a/norm2_a` / `norm1_v/norm2_v` (the joint block applied to
    one modality alone). Attention is timm's (fused scaled-dot-product attention).
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool, norm_eps: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.norm1_a = nn.LayerNorm(dim, eps=norm_eps)
        self.norm1_v = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads=num_heads, qkv_bias=qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.norm2_a = nn.LayerNorm(dim, eps=norm_eps)
        self.norm2_v = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=nn.GELU)

    def _norms(self, norms: NormPair) -> tuple[nn.LayerNorm, nn.LayerNorm]:
        if norms == "joint":
            return self.norm1, self.norm2
        if norms == "audio":
            return self.norm1_a, self.norm2_a
        if norms == "visual":
            return self.norm1_v, self.norm2_v
        raise ValueError(f"unknown norm pair {norms!r}")

    def forward(self, x: torch.Tensor, norms: NormPair = "joint") -> torch.Tensor:
        """x: (B, N, D) -> (B, N, D)."""
        pre_attn, pre_mlp = self._norms(norms)
        x = x + self.attn(pre_attn(x))
        out: torch.Tensor = x + self.mlp(pre_mlp(x))
        return out


def make_blocks(
    depth: int, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool, norm_eps: float
) -> nn.ModuleList:
    return nn.ModuleList(Block(dim, num_heads, mlp_ratio, qkv_bias, norm_eps) for _ in range(depth))


def run_blocks(blocks: nn.ModuleList, x: torch.Tensor, norms: NormPair = "joint") -> torch.Tensor:
    """Chain the blocks: each one consumes the previous one's output."""
    for block in blocks:
        x = block(x, norms)
    return x


def sincos_table(grid: tuple[int, int], dim: int) -> torch.Tensor:
    """Fixed 2-D sin-cos position table, (1, rows * cols, dim), row-major like the patch tokens.

    Used only to initialise a fresh model; checkpoints carry their own tables (the official ones are
    laid out differently for non-square grids and must be loaded, not regenerated).
    """
    if dim % 4:
        raise ValueError(f"sin-cos position tables need a dim divisible by 4, got {dim}")
    table = build_sincos2d_pos_embed(list(grid), dim=dim)  # (rows * cols, dim)
    return table.unsqueeze(0)
