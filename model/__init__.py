"""cavsync.model: the CAV-MAE Sync network, its inputs and its checkpoints.

This package imports nothing from `training`, `indexer` or `service`.
"""

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
