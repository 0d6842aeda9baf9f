"""Train a reference model on an index, in index order (``exposure train-reference``).

Real checkpoints with a known data order: a GPT-NeoX-architecture model (transformers config, random
init) trained from scratch on the items of an index *in index order* -- step ``i`` consumes items
``[i*B, (i+1)*B)`` -- with AdamW (warmup, cosine decay), a fixed seed and deterministic kernels.
Checkpoints ``OUT/step{S}/`` (weights after ``S`` steps, plus the tokenizer) follow a Pythia-like
schedule and load with ``transformers.AutoModelForCausalLM`` / ``AutoTokenizer``; ``OUT/run.json``
records the settings, schedule, data identity, checkpoints and loss curve. Runs resume.

>>> from exposure.train import ModelConfig, train_reference
>>> train_reference("out/index", "out/model", config=ModelConfig(n_layers=4, d_model=256))  # doctest: +SKIP
"""

from exposure.training.checkpoints import default_checkpoints, pythia_like_checkpoints
from exposure.training.config import MODEL_PRESETS, ModelConfig, OptimConfig
from exposure.training.items import ArrayItems, IndexItems, ItemSource
from exposure.training.loop import RunPlan, train_items
from exposure.training.reference import DEFAULT_ITEMS_PER_STEP, plan_run, train_reference

__all__ = [
    "DEFAULT_ITEMS_PER_STEP",
    "MODEL_PRESETS",
    "ArrayItems",
    "IndexItems",
    "ItemSource",
    "ModelConfig",
    "OptimConfig",
    "RunPlan",
    "default_checkpoints",
    "plan_run",
    "pythia_like_checkpoints",
    "train_items",
    "train_reference",
]
