"""Scoring BLiMP minimal pairs at the checkpoints of a pre-training run (``exposure eval``).

Modules:

* :mod:`exposure.scoring.pairs` -- read and validate the pairs table, tokenize it, check the tokenizer.
* :mod:`exposure.scoring.batching` -- length-bucketed, right-padded batches under a token budget.
* :mod:`exposure.scoring.attention` -- one attention row per sequence from the model's own queries and keys.
* :mod:`exposure.scoring.runs` -- checkpoints of a run (local ``step{S}/`` folders or a hub model id).
* :mod:`exposure.scoring.forward` -- one checkpoint's log-probabilities, hidden states and attention rows.
* :mod:`exposure.scoring.store` -- the output directory: ``run.json``, per-checkpoint files, resuming.

The public entry points are :func:`exposure.evaluate.evaluate_run` and :func:`exposure.evaluate.load_results`.
"""
