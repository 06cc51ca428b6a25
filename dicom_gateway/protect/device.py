"""Which device protection runs on: CUDA when torch sees one (or as configured), else the CPU.

Chosen once per process by :func:`configure` (the gateway calls it at start with the
``protection`` settings), logged once, exported as ``dicom_gateway_protection_device``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ..errors import ConfigError, DeviceError

if TYPE_CHECKING:
    from ..config import Config

__all__ = ["configure", "configure_for", "protection_device"]

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


def configure_for(config: Config) -> str:
    """:func:`configure` with the configuration's ``protection`` settings, when a profile
    protects pixels (else ``cpu``, without loading torch). A device that is not there is a
    :class:`~dicom_gateway.errors.ConfigError` naming the file and ``protection.device``."""
    if all(p.method == "none" for p in config.profiles.values()):
        return "cpu"
    try:
        return configure(config.protection.device, config.protection.threads)
    except DeviceError as exc:
        raise ConfigError(config.source, "protection.device", str(exc)) from None


def protection_device() -> str:
    """The configured device (configures with defaults on first use)."""
    return _chosen if _chosen is not None else configure()
