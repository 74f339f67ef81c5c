"""Choosing the torch device: one place, one error for a CUDA device that is not there."""

from __future__ import annotations

import torch

from hieramamba.errors import InputError


def resolve_device(device) -> torch.device:
    """``None``/``"auto"``: CUDA when available, else CPU. A CUDA device that this torch cannot
    use is an ``InputError`` naming why, not a traceback from torch's lazy CUDA init."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InputError(f"device {device!r} is not a torch device ({exc})") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = (f"torch {torch.__version__} is a CPU-only build" if torch.version.cuda is None
                   else "no CUDA device or driver is visible")
            raise InputError(f"device {device!r} requested but CUDA is not available: {why}")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InputError(f"device {device!r} requested but only {torch.cuda.device_count()} CUDA "
                             "device(s) are visible")
    return dev
