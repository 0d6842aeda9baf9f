"""exposure: when did a language model see a phrase during pre-training, and what did that do to it?

The engine (a C++ suffix-array index over a token stream in training order)::

    import exposure
    idx = exposure.build_index(tokens, "my-index", item_length=2049)
    idx = exposure.Index("my-index")
    idx.count([[1, 2, 3]]), idx.first_position([[1, 2, 3]]), idx.window_counts([[1, 2, 3]], bounds)
"""

from __future__ import annotations

__version__ = "0.1.0"

from exposure.engine import Context, Index, IndexBuilder, IndexFileError, assemble_index, build_index, parse_size

__all__ = [
    "Context",
    "Index",
    "IndexBuilder",
    "IndexFileError",
    "assemble_index",
    "build_index",
    "parse_size",
    "__version__",
]
