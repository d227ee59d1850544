"""Start from an ImageNet MAE ViT-B checkpoint, as CAV-MAE adapts it.

Blocks 0..depth-1 go into both modality encoders; the next block into the joint block, with its
norms copied into the audio and visual pairs too; the final norm into norm_a, norm_v and norm; the
audio patch kernel is the RGB kernel summed over channels; the decoder comes from MAE's decoder
(its pixel head feeds the visual head). Position tables stay sin-cos (CAV-MAE's grids differ).
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import torch

from model import CAVMAESync
from model.checkpoint import CheckpointError, read_torch_file, strip_prefix, unwrap_state_dict

log = logging.getLogger(__name__)


def mae_to_cavmae(mae: dict[str, torch.Tensor], model: CAVMAESync) -> dict[str, torch.Tensor]:
    """Map MAE names onto ours; returns only tensors whose shapes fit the model."""
    depth = model.config.modality_depth
    ours: dict[str, torch.Tensor] = {}
    for name, tensor in mae.items():
        block = re.match(r"blocks\.(\d+)\.(.+)", name)
        if block:
            index, rest = int(block[1]), block[2]
            if index < depth:
                ours[f"blocks_a.{index}.{rest}"] = tensor
                ours[f"blocks_v.{index}.{rest}"] = tensor
            elif index - depth < model.config.joint_depth:
                for joint_name in _joint_names(index - depth, rest):
                    ours[joint_name] = tensor
        elif name.startswith("norm."):
            for target in ("norm_a.", "norm_v.", "norm."):
                ours[name.replace("norm.", target, 1)] = tensor
        elif name.startswith("patch_embed.proj."):
            ours[name.replace("patch_embed", "patch_embed_v")] = tensor
            ours[name.replace("patch_embed", "patch_embed_a")] = (
                tensor.sum(dim=1, keepdim=True) if tensor.ndim == 4 else tensor
            )
        elif name == "cls_token":
            ours["cls_token_a"] = ours["cls_token_v"] = tensor
        elif name.startswith(("decoder_embed.", "decoder_blocks.", "decoder_norm.")) or name == "mask_token":
            ours[name] = tensor
        elif name.startswith("decoder_pred."):
            ours[name.replace("decoder_pred", "decoder_pred_v")] = tensor
    expected = model.state_dict()
    return {k: v for k, v in ours.items() if k in expected and expected[k].shape == v.shape}


def _joint_names(index: int, rest: str) -> list[str]:
    """A MAE block tensor's names in joint block `index`: norms go to all three pairs."""
    norm = re.match(r"(norm[12])\.(.+)", rest)
    if norm is None:
        return [f"blocks_u.{index}.{rest}"]
    return [f"blocks_u.{index}.{norm[1]}{suffix}.{norm[2]}" for suffix in ("", "_a", "_v")]


def init_from_mae(model: CAVMAESync, path: str | os.PathLike[str]) -> int:
    """Copy the MAE weights that fit into `model`; returns how many tensors were copied."""
    mae = strip_prefix(unwrap_state_dict(read_torch_file(Path(path))))
    mapped = mae_to_cavmae(dict(mae), model)
    if not any(k.startswith("blocks_a.") for k in mapped):
        raise CheckpointError(f"{path}: no MAE encoder block fits this model (is it a ViT of the same width?)")
    with torch.no_grad():
        for name, value in mapped.items():
            model.state_dict()[name].copy_(value)
    log.info("initialised %d tensors from MAE checkpoint %s", len(mapped), path)
    return len(mapped)
