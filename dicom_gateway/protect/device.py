"""Which device protection runs on: CUDA when torch sees one (or as configured), else the CPU.

Chosen once per process by :func:`configure` (the gateway calls it at start with the
``protection`` settings, through :func:`dicom_gateway.stage.configure_device`), logged once,
exported as ``dicom_gateway_protection_device``.
"""

from __future__ import annotations

import logging

from ..errors import DeviceError

__all__ = ["configure", "protection_device"]

_log = logging.getLogger(__name__)
_chosen: str | None = None


def configure(device: str = "auto", threads: int = 0) -> str:
    """Pick the device (``auto``, ``cpu`` or ``cuda``) and torch's CPU thread count (0: torch's
    default); return the device. ``cuda`` without a usable GPU is a :class:`DeviceError`, not a
    fallback."""
    global _chosen
    import torch  # only profiles whose method needs torch get here, and the config checked it

    if threads > 0:
        torch.set_num_threads(threads)
    has_cuda = torch.cuda.is_available()
    if device == "cuda" and not has_cuda:
        raise DeviceError("cuda, but torch sees no CUDA device on this machine: use auto "
                          "or cpu, or make a GPU visible to the gateway")
    _chosen = "cuda" if device == "cuda" or (device == "auto" and has_cuda) else "cpu"
    why = f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads"
    if _chosen == "cuda":
        why += f", {torch.cuda.get_device_name(0)}"
    _log.info("protection device: %s (%s)", _chosen, why)
    return _chosen


def protection_device() -> str:
    """The configured device (configures with defaults on first use)."""
    return _chosen if _chosen is not None else configure()
