"""The CAV-MAE Sync network: audio and visual encoders, a joint block, global/register tokens, decoder.

Parameter and buffer names follow the official implementation, so the released state dict loads
one-to-one. Shapes: audio segments (N, L, mel), frames (N, 3, H, W); D = embed_dim.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import torch
from timm.layers import Attention, PatchEmbed
from torch import nn

from model.config import ModelConfig, ObjectiveConfig
from model.layers import make_blocks, run_blocks, sincos_table
from model.objectives import info_nce, masked_mse, patchify, random_masking, restore_order

Modality = Literal["audio", "visual"]


class Encoded(NamedTuple):
    """Per-item output of one modality's inference path (not L2-normalised)."""

    global_tokens: torch.Tensor  # (N, D)
    patch_tokens: torch.Tensor  # (N, P, D)


@dataclass
class PretrainOutput:
    """Everything one pretraining step produces. Losses are scalars; masks are 1 where removed."""

    loss: torch.Tensor
    loss_mae_audio: torch.Tensor
    loss_mae_visual: torch.Tensor
    loss_contrastive: torch.Tensor  # unweighted InfoNCE
    contrastive_accuracy: torch.Tensor
    mask_audio: torch.Tensor  # (B, P_a)
    mask_visual: torch.Tensor  # (B, P_v)
    pred_audio: torch.Tensor  # (B, P_a, p*p)
    pred_visual: torch.Tensor  # (B, P_v, p*p*3)
    global_audio: torch.Tensor  # (B, D)
    global_visual: torch.Tensor  # (B, D)


class CAVMAESync(nn.Module):
    """CAV-MAE Sync. `encode_audio` / `encode_visual` are the retrieval path; `forward` pretrains."""

    # buffers (register_buffer): typed here, as nn.Module's attribute lookup does not say what they are
    pos_embed_a: torch.Tensor  # (1, P_a, D)
    pos_embed_v: torch.Tensor  # (1, P_v, D)
    decoder_pos_embed_a: torch.Tensor  # (1, P_a, D_dec)
    decoder_pos_embed_v: torch.Tensor  # (1, P_v, D_dec)

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = c = config
        dim, dec = c.embed_dim, c.decoder_embed_dim
        audio_image = (c.mel_bins, c.audio_frames)  # the fbank is fed as a (mel, time) 1-channel image
        self.patch_embed_a = PatchEmbed(audio_image, c.patch_size, in_chans=1, embed_dim=dim)
        self.patch_embed_v = PatchEmbed(c.image_size, c.patch_size, in_chans=c.in_chans, embed_dim=dim)
        self.modality_a = nn.Parameter(torch.zeros(1, 1, dim))
        self.modality_v = nn.Parameter(torch.zeros(1, 1, dim))
        self.register_buffer("pos_embed_a", torch.zeros(1, c.num_audio_patches, dim))
        self.register_buffer("pos_embed_v", torch.zeros(1, c.num_visual_patches, dim))
        self.register_tokens = nn.Parameter(torch.zeros(2 * c.num_registers, dim))  # rows: audio, then visual
        if c.global_token:
            self.cls_token_a = nn.Parameter(torch.zeros(1, 1, dim))
            self.cls_token_v = nn.Parameter(torch.zeros(1, 1, dim))
        block_args = (c.mlp_ratio, c.qkv_bias, c.norm_eps)
        self.blocks_a = make_blocks(c.modality_depth, dim, c.num_heads, *block_args)
        self.blocks_v = make_blocks(c.modality_depth, dim, c.num_heads, *block_args)
        self.blocks_u = make_blocks(c.joint_depth, dim, c.num_heads, *block_args)
        self.norm_a = nn.LayerNorm(dim, eps=c.norm_eps)
        self.norm_v = nn.LayerNorm(dim, eps=c.norm_eps)
        self.norm = nn.LayerNorm(dim, eps=c.norm_eps)

        self.decoder_embed = nn.Linear(dim, dec)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dec))
        self.decoder_modality_a = nn.Parameter(torch.zeros(1, 1, dec))
        self.decoder_modality_v = nn.Parameter(torch.zeros(1, 1, dec))
        self.register_buffer("decoder_pos_embed_a", torch.zeros(1, c.num_audio_patches, dec))
        self.register_buffer("decoder_pos_embed_v", torch.zeros(1, c.num_visual_patches, dec))
        self.decoder_blocks = make_blocks(c.decoder_depth, dec, c.decoder_num_heads, *block_args)
        self.decoder_norm = nn.LayerNorm(dec, eps=c.norm_eps)
        self.decoder_pred_a = nn.Linear(dec, c.patch_size**2)
        self.decoder_pred_v = nn.Linear(dec, c.patch_size**2 * c.in_chans)
        self._freeze_unused_norms()
        if not self.pos_embed_a.is_meta:
            self.reset_parameters()

    def _freeze_unused_norms(self) -> None:
        """Only the joint blocks use their per-modality LayerNorm pairs. The others carry them (the
        official layout has them) but never run them, so they get no gradient: freeze them."""
        for blocks in (self.blocks_a, self.blocks_v, self.decoder_blocks):
            for block in blocks:
                for norm in (block.norm1_a, block.norm1_v, block.norm2_a, block.norm2_v):
                    norm.requires_grad_(False)

    # ----------------------------------------------------------------------------- initialisation
    def reset_parameters(self) -> None:
        """Fresh weights: sin-cos position tables, xavier linears, small-normal learned tokens."""
        c = self.config
        self.pos_embed_a.copy_(sincos_table(c.audio_grid, c.embed_dim))
        self.pos_embed_v.copy_(sincos_table(c.visual_grid, c.embed_dim))
        self.decoder_pos_embed_a.copy_(sincos_table(c.audio_grid, c.decoder_embed_dim))
        self.decoder_pos_embed_v.copy_(sincos_table(c.visual_grid, c.decoder_embed_dim))
        for embed in (self.patch_embed_a, self.patch_embed_v):  # like nn.Linear, as MAE does
            nn.init.xavier_uniform_(embed.proj.weight.view(embed.proj.weight.shape[0], -1))
        for name, param in self.named_parameters():
            if "." not in name:  # the learned tokens and modality vectors
                nn.init.normal_(param, std=0.02)
        self.apply(_init_module)

    def set_fused_attention(self, enabled: bool) -> None:
        """Switch timm's attention between fused SDPA and the plain matmul-softmax path (same math)."""
        for module in self.modules():
            if isinstance(module, Attention):
                module.fused_attn = enabled  # type: ignore[misc]  # timm marks it Final; it is a plain switch

    # ----------------------------------------------------------------------------- shared pieces
    @property
    def num_global(self) -> int:
        return 1 if self.config.global_token else 0

    def _embed(self, inputs: torch.Tensor, modality: Modality) -> torch.Tensor:
        """audio (B, L, mel) or frames (B, C, H, W) -> patch tokens + position + modality, (B, P, D)."""
        if modality == "audio":
            image = inputs.unsqueeze(1).transpose(2, 3)  # (B, 1, mel, L)
            patches: torch.Tensor = self.patch_embed_a(image)  # (B, P_a, D)
            return patches + self.pos_embed_a + self.modality_a
        patches = self.patch_embed_v(inputs)  # (B, P_v, D)
        return patches + self.pos_embed_v + self.modality_v

    def _with_extra_tokens(self, tokens: torch.Tensor, modality: Modality) -> torch.Tensor:
        """(B, P, D) patch tokens -> [global, patches, registers], (B, G + P + R, D)."""
        batch = tokens.shape[0]
        audio = modality == "audio"
        parts = [tokens]
        if self.config.global_token:
            parts.insert(0, (self.cls_token_a if audio else self.cls_token_v).expand(batch, -1, -1))
        r = self.config.num_registers
        registers = self.register_tokens[:r] if audio else self.register_tokens[r:]
        parts.append(registers.unsqueeze(0).expand(batch, -1, -1))
        return torch.cat(parts, dim=1)  # (B, G + P + R, D)

    def _encode_unimodal(self, tokens: torch.Tensor, modality: Modality) -> torch.Tensor:
        """Modality blocks over [global, patches, registers]; returns [global, patches], (B, G + P, D)."""
        num_patches = tokens.shape[1]
        x = self._with_extra_tokens(tokens, modality)  # (B, G + P + R, D)
        x = run_blocks(self.blocks_a if modality == "audio" else self.blocks_v, x)
        return x[:, : self.num_global + num_patches]  # registers are dropped before the joint block

    def _joint_unimodal(self, x: torch.Tensor, modality: Modality) -> torch.Tensor:
        """The joint blocks on one modality with its own LayerNorm pairs, then norm_a / norm_v."""
        x = run_blocks(self.blocks_u, x, modality)
        normed: torch.Tensor = self.norm_a(x) if modality == "audio" else self.norm_v(x)
        return normed

    def _split(self, x: torch.Tensor) -> Encoded:
        if self.config.global_token:
            return Encoded(x[:, 0], x[:, 1:])
        return Encoded(x.mean(dim=1), x)  # no learned global token: mean-pooled, as CAV-MAE

    # ----------------------------------------------------------------------------- inference
    def encode_audio(self, segments: torch.Tensor) -> Encoded:
        """segments: (N, L, mel) normalised fbank -> global (N, D), patch tokens (N, P_a, D)."""
        self._check_audio(segments)
        x = self._encode_unimodal(self._embed(segments, "audio"), "audio")
        return self._split(self._joint_unimodal(x, "audio"))

    def encode_visual(self, frames: torch.Tensor) -> Encoded:
        """frames: (N, C, H, W) normalised -> global (N, D), patch tokens (N, P_v, D)."""
        self._check_visual(frames)
        x = self._encode_unimodal(self._embed(frames, "visual"), "visual")
        return self._split(self._joint_unimodal(x, "visual"))

    def visual_layer_tokens(self, frames: torch.Tensor, layer: int) -> torch.Tensor:
        """frames: (N, C, H, W) normalised -> the patch tokens after the first `layer` visual blocks,
        (N, P_v, D) (layer 0: the patch embedding with position and modality; the localization head's input)."""
        self._check_visual(frames)
        if not 0 <= layer <= self.config.modality_depth:
            raise ValueError(f"layer must be in [0, {self.config.modality_depth}], got {layer}")
        tokens = self._embed(frames, "visual")  # (N, P, D)
        x = run_blocks(self.blocks_v[:layer], self._with_extra_tokens(tokens, "visual"))
        return x[:, self.num_global : self.num_global + tokens.shape[1]]  # (N, P, D)

    def encode_clip_tokens(self, inputs: torch.Tensor, modality: Modality) -> torch.Tensor:
        """Clips -> their per-frame global tokens, L2-normalised: what retrieval compares (`model.inference`
        adds the device and the autocast).

        inputs: (B, T, L, mel) audio segments or (B, T, C, H, W) frames -> (B, T, D) float32.
        """
        encode = self.encode_audio if modality == "audio" else self.encode_visual
        tokens = encode(inputs.flatten(0, 1)).global_tokens.float()  # (B*T, D)
        return nn.functional.normalize(tokens, dim=-1).view(*inputs.shape[:2], -1)  # (B, T, D)

    def _check_audio(self, segments: torch.Tensor) -> None:
        expected = (self.config.audio_frames, self.config.mel_bins)
        if segments.ndim != 3 or tuple(segments.shape[1:]) != expected:
            raise ValueError(f"audio segments must be (N, {expected[0]}, {expected[1]}), got {tuple(segments.shape)}")

    def _check_visual(self, frames: torch.Tensor) -> None:
        size = self.config.image_size
        expected = (self.config.in_chans, size, size)
        if frames.ndim != 4 or tuple(frames.shape[1:]) != expected:
            raise ValueError(f"frames must be (N, {', '.join(map(str, expected))}), got {tuple(frames.shape)}")

    # ----------------------------------------------------------------------------- pretraining
    def forward(
        self,
        audio: torch.Tensor,
        frames: torch.Tensor,
        objective: ObjectiveConfig | None = None,
        generator: torch.Generator | None = None,
        mask_noise: tuple[torch.Tensor, torch.Tensor] | None = None,
        gather: Callable[[torch.Tensor], tuple[torch.Tensor, int]] | None = None,
    ) -> PretrainOutput:
        """Masked pretraining step. audio: (B, L, mel), frames: (B, C, H, W), pair i matches.

        `mask_noise` ((B, P_a), (B, P_v)) fixes the masks (default: random from `generator`).
        `gather(tokens)` returns the tokens of every rank (with gradient) and this rank's offset in
        them, so that InfoNCE sees every rank's negatives (default: this batch only).
        """
        objective = objective or ObjectiveConfig()
        self._check_audio(audio)
        self._check_visual(frames)
        noise_a, noise_v = mask_noise if mask_noise is not None else (None, None)
        masked_a = random_masking(self._embed(audio, "audio"), objective.mask_ratio_audio, generator, noise_a)
        masked_v = random_masking(self._embed(frames, "visual"), objective.mask_ratio_visual, generator, noise_v)
        enc_a = self._encode_unimodal(masked_a.kept, "audio")  # (B, G + K_a, D)
        enc_v = self._encode_unimodal(masked_v.kept, "visual")  # (B, G + K_v, D)

        g = self.num_global
        joint = self.norm(run_blocks(self.blocks_u, torch.cat([enc_a[:, g:], enc_v[:, g:]], dim=1)))
        pred_a, pred_v = self._decode(joint, masked_a.kept.shape[1], masked_a.ids_restore, masked_v.ids_restore)
        target_a = patchify(audio.unsqueeze(1).transpose(2, 3), self.config.patch_size)
        target_v = patchify(frames, self.config.patch_size)
        mse_a = masked_mse(pred_a, target_a, masked_a.mask, objective.norm_pix_loss)
        mse_v = masked_mse(pred_v, target_v, masked_v.mask, objective.norm_pix_loss)

        global_a = self._split(self._joint_unimodal(enc_a, "audio")).global_tokens
        global_v = self._split(self._joint_unimodal(enc_v, "visual")).global_tokens
        banks: dict[str, Any] = {}
        if gather is not None:
            (banks["all_audio"], banks["offset"]), (banks["all_visual"], _) = gather(global_a), gather(global_v)
        nce = info_nce(global_a, global_v, objective.temperature, objective.symmetric_contrastive, **banks)
        total = objective.lambda_r * (mse_a + mse_v) + objective.lambda_c * nce.loss
        return PretrainOutput(
            total,
            mse_a,
            mse_v,
            nce.loss,
            nce.accuracy,
            masked_a.mask,
            masked_v.mask,
            pred_a,
            pred_v,
            global_a,
            global_v,
        )

    def _decode(
        self, joint: torch.Tensor, kept_audio: int, restore_a: torch.Tensor, restore_v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """joint: (B, K_a + K_v, D), audio first -> predictions (B, P_a, p*p) and (B, P_v, p*p*C)."""
        x = self.decoder_embed(joint)  # (B, K_a + K_v, D_dec)
        a = restore_order(x[:, :kept_audio], restore_a, self.mask_token)  # (B, P_a, D_dec)
        v = restore_order(x[:, kept_audio:], restore_v, self.mask_token)  # (B, P_v, D_dec)
        a = a + self.decoder_pos_embed_a + self.decoder_modality_a
        v = v + self.decoder_pos_embed_v + self.decoder_modality_v
        x = self.decoder_norm(run_blocks(self.decoder_blocks, torch.cat([a, v], dim=1)))
        num_audio = a.shape[1]
        return self.decoder_pred_a(x[:, :num_audio]), self.decoder_pred_v(x[:, num_audio:])


def _init_module(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
