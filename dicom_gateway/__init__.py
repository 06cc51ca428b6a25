"""dicom-gateway: a DICOM store-and-forward egress node that protects pixels for partners.

The public surface is small on purpose: the command line (:mod:`dicom_gateway.cli`), the
configuration loader and the :class:`Gateway` that wires the store-and-forward path.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("dicom-gateway")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+local"

__all__ = ["__version__"]
