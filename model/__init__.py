"""cavsync.model: the CAV-MAE Sync network, its inputs and its checkpoints.

This package imports nothing from `training`, `indexer` or `service`. Its names are loaded on first use
(PEP 562): `import model.media` or `from model.config import ModelConfig` does not import torch, so the
command line's help answers at once; `from model import load_model` imports what it needs then.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from model.checkpoint import (
        CheckpointError,
        load_localization_head,
        load_model,
        load_official_state_dict,
        save_checkpoint,
    )
    from model.config import PRESETS, ModelConfig, ObjectiveConfig, preset
    from model.features import Clip, PreprocessConfig, load_clips, load_image, load_query_audio, load_query_frames
    from model.media import (
        MediaError,
        MediaTimeoutError,
        MediaTooLongError,
        MediaTooShortError,
        NoUsableStreamError,
        UnreadableMediaError,
        UnsupportedMediaError,
    )
    from model.network import CAVMAESync, Encoded, Modality, PretrainOutput
    from model.similarity import STRATEGIES, Strategy

# name -> the module that defines it
_EXPORTS = {
    "model.checkpoint": (
        "CheckpointError",
        "load_localization_head",
        "load_model",
        "load_official_state_dict",
        "save_checkpoint",
    ),
    "model.config": ("PRESETS", "ModelConfig", "ObjectiveConfig", "preset"),
    "model.features": (
        "Clip",
        "PreprocessConfig",
        "load_clips",
        "load_image",
        "load_query_audio",
        "load_query_frames",
    ),
    "model.media": (
        "MediaError",
        "MediaTimeoutError",
        "MediaTooLongError",
        "MediaTooShortError",
        "NoUsableStreamError",
        "UnreadableMediaError",
        "UnsupportedMediaError",
    ),
    "model.network": ("CAVMAESync", "Encoded", "Modality", "PretrainOutput"),
    "model.similarity": ("STRATEGIES", "Strategy"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}


def __getattr__(name: str) -> Any:
    """An exported name, imported from its module on first use (then cached in this package); a submodule."""
    module = _WHERE.get(name)
    if module is None:  # a submodule not imported yet (`model.network`), as an eager package would have it
        try:
            return importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from exc
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "CAVMAESync",
    "CheckpointError",
    "Clip",
    "MediaError",
    "MediaTimeoutError",
    "MediaTooLongError",
    "MediaTooShortError",
    "NoUsableStreamError",
    "PreprocessConfig",
    "UnreadableMediaError",
    "UnsupportedMediaError",
    "load_clips",
    "load_image",
    "load_query_audio",
    "load_query_frames",
    "Encoded",
    "Modality",
    "STRATEGIES",
    "Strategy",
    "ModelConfig",
    "ObjectiveConfig",
    "PRESETS",
    "PretrainOutput",
    "load_localization_head",
    "load_model",
    "load_official_state_dict",
    "preset",
    "save_checkpoint",
]
