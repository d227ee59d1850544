"""cavsync.model: the CAV-MAE Sync network, its inputs and its checkpoints.

This package imports nothing from `training`, `indexer` or `service`.
"""

from model.checkpoint import (
    CheckpointError,
    load_model,
    load_official_state_dict,
    save_checkpoint,
)
from model.config import PRESETS, ModelConfig, ObjectiveConfig, preset
from model.network import CAVMAESync, Encoded, PretrainOutput

__all__ = [
    "CAVMAESync",
    "CheckpointError",
    "Encoded",
    "ModelConfig",
    "ObjectiveConfig",
    "PRESETS",
    "PretrainOutput",
    "load_model",
    "load_official_state_dict",
    "preset",
    "save_checkpoint",
]
