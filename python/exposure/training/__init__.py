"""Reference pre-training: a GPT-NeoX model trained from scratch on an index's items in index order.

The public entry points are in :mod:`exposure.train`; these modules hold the pieces (config, items,
checkpoints, loop, reference).
"""
