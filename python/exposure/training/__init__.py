"""Reference pre-training: a GPT-NeoX model trained from scratch on an index's items in index order.

Public entry points are re-exported by :mod:`exposure.train`.
"""

from exposure.training.checkpoints import default_checkpoints, pythia_like_checkpoints
from exposure.training.config import MODEL_PRESETS, ModelConfig, OptimConfig
from exposure.training.items import ArrayItems, IndexItems, ItemSource
from exposure.training.loop import RunPlan, train_items

__all__ = [
    "MODEL_PRESETS",
    "ArrayItems",
    "IndexItems",
    "ItemSource",
    "ModelConfig",
    "OptimConfig",
    "RunPlan",
    "default_checkpoints",
    "pythia_like_checkpoints",
    "train_items",
]
