"""The torch device a command runs on: ``auto``, ``cpu``, ``cuda``, ``cuda:1``, ``mps``, ..."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def resolve_device(device: str | torch.device) -> torch.device:
    """The ``torch.device`` for ``device``; ``"auto"``: CUDA when available, else CPU. A device this torch cannot
    use is a ``ValueError`` that says so (not a failure at the first tensor moved there)."""
    import torch

    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"unknown device {device!r} (auto, cpu, cuda, cuda:N, mps)") from exc
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested, but torch sees no CUDA device")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r} requested, but torch sees {torch.cuda.device_count()} CUDA device(s)")
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r} requested, but this torch cannot use MPS here")
    return resolved
