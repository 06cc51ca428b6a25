"""Which device protection runs on: CUDA when torch sees one, else the CPU. Logged once."""

from __future__ import annotations

import functools
import logging

__all__ = ["protection_device"]

_log = logging.getLogger(__name__)


@functools.cache
def protection_device() -> str:
    """Return ``"cuda"`` or ``"cpu"``; torch is optional until a method needs it."""
    try:
        import torch
    except ImportError:
        device = "cpu"
        why = "torch not installed"
    else:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        why = f"torch {torch.__version__}"
    _log.info("protection device: %s (%s)", device, why)
    return device
