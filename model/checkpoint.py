"""Checkpoints: our safetensors format (weights + config as JSON metadata) and the official `.pth`.

Loading never unpickles arbitrary objects (`torch.load(..., weights_only=True)` or safetensors), checks
every tensor name and shape against the model built from the config, and reports what does not fit.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import pickle
import re
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from model.config import ModelConfig
from model.localization import LocalizationHead, LocalizationHeadConfig, backbone_fingerprint
from model.network import CAVMAESync

log = logging.getLogger(__name__)

FORMAT_NAME = "cavsync"
FORMAT_VERSION = "1"
# A localization head travels inside a checkpoint (tensors under HEAD_PREFIX) or as an adapter file
# (format HEAD_FORMAT); either way its metadata names the backbone it was trained on.
HEAD_PREFIX = "localization_head."
HEAD_FORMAT = "cavsync-localization-head"
HEAD_CONFIG_KEY = "localization_head"
HEAD_BACKBONE_KEY = "localization_backbone"
# The official constructor's argument names, for callers that pass them as they are.
OFFICIAL_ALIASES = {
    "audio_length": "audio_frames",
    "modality_specific_depth": "modality_depth",
    "num_register_tokens": "num_registers",
    "cls_token": "global_token",
    "total_frame": "frames_per_clip",
    "img_size": "image_size",
}
# Official arguments that do not change the network's structure.
OFFICIAL_IGNORED = {"norm_pix_loss", "tr_pos", "norm_layer"}
# Heads cannot be read off tensor shapes. The released model uses 64-d encoder heads (768 / 12) and
# 32-d decoder heads (512 / 16): those are the defaults when no head count is given.
HEAD_DIM = 64
DECODER_HEAD_DIM = 32


class CheckpointError(ValueError):
    """A checkpoint file or state dict that cannot be loaded, with the reason."""


# --------------------------------------------------------------------------------------------- sizes
def normalize_sizes(sizes: Mapping[str, Any]) -> dict[str, Any]:
    """Map official argument names onto ModelConfig fields; reject names that mean nothing here."""
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    out: dict[str, Any] = {}
    for name, value in sizes.items():
        if name in OFFICIAL_IGNORED:
            continue
        if name == "contrastive_heads":
            if value:
                raise CheckpointError("contrastive_heads=True models are not supported (the released one has none)")
            continue
        target = OFFICIAL_ALIASES.get(name, name)
        if target not in fields:
            raise CheckpointError(f"unknown model size {name!r}; known: {sorted(fields | set(OFFICIAL_ALIASES))}")
        out[target] = value
    return out


def _count_blocks(state_dict: Mapping[str, torch.Tensor], prefix: str) -> int:
    pattern = re.compile(rf"^{re.escape(prefix)}\.(\d+)\.")
    indices = {int(m.group(1)) for key in state_dict if (m := pattern.match(key))}
    return max(indices) + 1 if indices else 0


def _shape(state_dict: Mapping[str, torch.Tensor], key: str) -> tuple[int, ...]:
    if key not in state_dict:
        raise CheckpointError(f"not a CAV-MAE Sync state dict: required tensor {key!r} is missing")
    return tuple(state_dict[key].shape)


def infer_config(state_dict: Mapping[str, torch.Tensor], **sizes: Any) -> ModelConfig:
    """Read the sizes off an official-layout state dict (no `module.` prefix); `sizes` take precedence.

    Heads default to embed_dim / 64 and decoder_embed_dim / 32 (the released model's); the mel-bin
    count defaults to 128 (the audio length is then derived from the audio position table).
    """
    given = normalize_sizes(sizes)
    dim, in_chans, patch, _ = _shape(state_dict, "patch_embed_v.proj.weight")
    num_audio = _shape(state_dict, "pos_embed_a")[1]
    num_visual = _shape(state_dict, "pos_embed_v")[1]
    dec_dim = _shape(state_dict, "decoder_embed.weight")[0]
    patch = given.get("patch_size", patch)
    mel_bins = given.get("mel_bins", 128)
    inferred: dict[str, Any] = {
        "embed_dim": dim,
        "num_heads": max(1, dim // HEAD_DIM),
        "mlp_ratio": _shape(state_dict, "blocks_a.0.mlp.fc1.weight")[0] / dim,
        "qkv_bias": "blocks_a.0.attn.qkv.bias" in state_dict,
        "modality_depth": _count_blocks(state_dict, "blocks_a"),
        "joint_depth": _count_blocks(state_dict, "blocks_u"),
        "decoder_embed_dim": dec_dim,
        "decoder_depth": _count_blocks(state_dict, "decoder_blocks"),
        "decoder_num_heads": max(1, dec_dim // DECODER_HEAD_DIM),
        "num_registers": state_dict["register_tokens"].shape[0] // 2 if "register_tokens" in state_dict else 0,
        "global_token": "cls_token_a" in state_dict,
        "audio_frames": num_audio // max(1, mel_bins // patch) * patch,
        "mel_bins": mel_bins,
        "image_size": math.isqrt(num_visual) * patch,
        "patch_size": patch,
        "in_chans": in_chans,
    }
    inferred.update(given)
    try:
        return ModelConfig(**inferred)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"cannot build a model from this state dict: {exc}") from exc


# --------------------------------------------------------------------------------------------- loading
def strip_prefix(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the `module.` prefix that nn.DataParallel / DDP add (all keys or none)."""
    keys = list(state_dict)
    if keys and all(k.startswith("module.") for k in keys):
        return {k[len("module.") :]: v for k, v in state_dict.items()}
    return dict(state_dict)


def unwrap_state_dict(obj: Any) -> Mapping[str, torch.Tensor]:
    """Accept a bare state dict or one nested under 'state_dict' / 'model' (common training dumps)."""
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError("the checkpoint does not hold a state dict of tensors")
    return obj


def build_model(config: ModelConfig, state_dict: Mapping[str, torch.Tensor]) -> CAVMAESync:
    """Build on the meta device, check names and shapes strictly, then adopt the tensors (eval mode)."""
    with torch.device("meta"):
        model = CAVMAESync(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    check_state_dict(expected, state_dict)
    tensors = {k: v.detach().to(torch.float32).contiguous() for k, v in state_dict.items()}
    model.load_state_dict(tensors, strict=True, assign=True)
    return model.eval()


def check_state_dict(expected: Mapping[str, tuple[int, ...]], state_dict: Mapping[str, torch.Tensor]) -> None:
    """Raise CheckpointError listing missing, unexpected and mis-shaped tensors, if any."""
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    misshaped = sorted(
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {expected[k]}"
        for k in set(expected) & set(state_dict)
        if tuple(state_dict[k].shape) != expected[k]
    )
    if missing or unexpected or misshaped:
        groups = (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped))
        parts = [
            f"{label} ({len(items)}): {', '.join(items[:20])}{' ...' if len(items) > 20 else ''}"
            for label, items in groups
            if items
        ]
        raise CheckpointError("state dict does not match the model; " + "; ".join(parts))


def load_official_state_dict(state_dict: Mapping[str, torch.Tensor], **sizes: Any) -> CAVMAESync:
    """A model from an in-memory official state dict (with or without `module.`), in eval mode.

    `sizes` are ModelConfig fields or the official constructor's names (num_heads, decoder_num_heads,
    modality_specific_depth, audio_length, ...); whatever is not given is read off the tensor shapes.
    """
    tensors = strip_prefix(unwrap_state_dict(state_dict))
    return build_model(infer_config(tensors, **sizes), tensors)


def read_torch_file(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        detail = next((ln.strip() for ln in str(exc).splitlines() if "Unsupported global" in ln), None)
        if detail is None:
            raise CheckpointError(f"{path}: corrupt or truncated PyTorch checkpoint: {_first_line(exc)}") from exc
        raise CheckpointError(
            f"{path}: refused to load: it contains pickled Python objects, not only tensors "
            f"(only weights_only loading is allowed): {detail}"
        ) from exc
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: corrupt or truncated PyTorch checkpoint: {_first_line(exc)}") from exc


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: corrupt or truncated safetensors file: {_first_line(exc)}") from exc
    return tensors, metadata


def _sniff(path: Path) -> str:
    """'safetensors', 'torch' (zip archive or legacy pickle) or 'unknown', from the first bytes."""
    with path.open("rb") as handle:
        head = handle.read(9)
    if len(head) == 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < 100_000_000:
        return "safetensors"
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        return "torch"
    return "unknown"


def load_model(path: str | os.PathLike[str], **overrides: Any) -> CAVMAESync:
    """Load either checkpoint format into an eval-mode model on the CPU.

    Our safetensors files carry their config; `overrides` replace some of its fields (for example
    frames_per_clip). For an official `.pth` (or a safetensors file without our metadata) the sizes
    are read off the tensors and `overrides` give what cannot be (num_heads, decoder_num_heads).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file")
    kind = _sniff(path)
    if kind == "unknown":
        raise CheckpointError(f"{path}: not a checkpoint (neither safetensors nor a PyTorch file)")
    if kind == "safetensors":
        tensors, metadata = _read_safetensors(path)
        if metadata.get("format") == HEAD_FORMAT:
            raise CheckpointError(f"{path}: a localization head adapter, not a model checkpoint")
        if metadata.get("format") == FORMAT_NAME:
            config = config_from_metadata(metadata, path).replace(**normalize_sizes(overrides))
            backbone = {k: v for k, v in tensors.items() if not k.startswith(HEAD_PREFIX)}
            return build_model(config, backbone)
        return load_official_state_dict(tensors, **overrides)
    return load_official_state_dict(read_torch_file(path), **overrides)


def read_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """A safetensors file's metadata ({} for a PyTorch file)."""
    path = Path(path)
    if _sniff(path) != "safetensors":
        return {}
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            return dict(handle.metadata() or {})
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: corrupt or truncated safetensors file: {_first_line(exc)}") from exc


def config_from_metadata(metadata: Mapping[str, str], path: Path) -> ModelConfig:
    if metadata.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: unsupported checkpoint format version {metadata.get('format_version')!r}")
    try:
        return ModelConfig.from_json(metadata["config"])
    except (KeyError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{path}: the checkpoint's config metadata is unreadable: {exc}") from exc


# --------------------------------------------------------------------------------------------- saving
def save_checkpoint(
    model: CAVMAESync,
    path: str | os.PathLike[str],
    extra_metadata: Mapping[str, str] | None = None,
    head: LocalizationHead | None = None,
) -> Path:
    """Write weights + config as safetensors, atomically (temp file in the same folder, then rename).

    With `head`, the localization head's tensors (under HEAD_PREFIX), its config and the backbone's
    fingerprint go into the same file; the backbone's tensors are written exactly as without it."""
    path = Path(path)
    metadata = {k: v for k, v in (extra_metadata or {}).items() if k not in (HEAD_CONFIG_KEY, HEAD_BACKBONE_KEY)}
    metadata.update(format=FORMAT_NAME, format_version=FORMAT_VERSION, config=model.config.to_json())
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if head is not None:
        head.config.check_backbone(model.config)
        metadata.update(_head_metadata(head, model))
        tensors.update({HEAD_PREFIX + k: v.detach().contiguous().cpu() for k, v in head.state_dict().items()})
    _write_safetensors(tensors, metadata, path)
    return path


def save_head(
    head: LocalizationHead,
    model: CAVMAESync,
    path: str | os.PathLike[str],
    extra_metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write a localization head alone (an adapter file naming the backbone it was trained on)."""
    path = Path(path)
    metadata = dict(extra_metadata or {})
    metadata.update(format=HEAD_FORMAT, format_version=FORMAT_VERSION, backbone_config=model.config.to_json())
    metadata.update(_head_metadata(head, model))
    _write_safetensors({k: v.detach().contiguous().cpu() for k, v in head.state_dict().items()}, metadata, path)
    return path


def _head_metadata(head: LocalizationHead, model: CAVMAESync) -> dict[str, str]:
    return {HEAD_CONFIG_KEY: head.config.to_json(), HEAD_BACKBONE_KEY: backbone_fingerprint(model)}


def load_localization_head(path: str | os.PathLike[str], model: CAVMAESync) -> LocalizationHead | None:
    """The localization head in a checkpoint or an adapter file, checked against `model` (eval mode).

    None for a checkpoint without one (an official `.pth`, or ours without a head). CheckpointError for
    an adapter or a head trained on another backbone (the fingerprints of the weights differ)."""
    path = Path(path)
    if not path.is_file() or _sniff(path) != "safetensors":
        if path.is_file() and _sniff(path) == "torch":
            return None
        raise CheckpointError(f"{path}: no such safetensors checkpoint or head file")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            keys = [k for k in handle.keys() if metadata.get("format") == HEAD_FORMAT or k.startswith(HEAD_PREFIX)]  # noqa: SIM118
            tensors = {k.removeprefix(HEAD_PREFIX): handle.get_tensor(k) for k in keys}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: corrupt or truncated safetensors file: {_first_line(exc)}") from exc
    if HEAD_CONFIG_KEY not in metadata:
        if metadata.get("format") == HEAD_FORMAT:
            raise CheckpointError(f"{path}: a head adapter without its {HEAD_CONFIG_KEY!r} metadata")
        return None
    return _build_head(path, metadata, tensors, model)


def _build_head(
    path: Path, metadata: Mapping[str, str], tensors: Mapping[str, torch.Tensor], model: CAVMAESync
) -> LocalizationHead:
    trained_on, loaded = metadata.get(HEAD_BACKBONE_KEY, "?"), backbone_fingerprint(model)
    if trained_on != loaded:
        raise CheckpointError(
            f"{path}: this localization head was trained on another backbone (weights {trained_on[:16]}), "
            f"not on the loaded model (weights {loaded[:16]}); train a head for this checkpoint with "
            "`cavsync train-localizer`, or localize with method=paper"
        )
    try:
        config = LocalizationHeadConfig.from_json(metadata[HEAD_CONFIG_KEY])
        config.check_backbone(model.config)
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{path}: the localization head's config is unusable: {exc}") from exc
    head = LocalizationHead(config)
    check_state_dict({k: tuple(v.shape) for k, v in head.state_dict().items()}, tensors)
    head.load_state_dict({k: v.float() for k, v in tensors.items()})
    return head.to(next(model.parameters()).device).eval()


def _write_safetensors(tensors: Mapping[str, torch.Tensor], metadata: dict[str, str], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(dict(tensors), tmp, metadata=metadata)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a checkpoint is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    log.info("saved %s (%d tensors)", path, len(tensors))
