"""The protection stage: methods that turn a spooled instance into the one a partner receives.

Every method has one shape (see :class:`~.method.ProtectionMethod`): a series' batch of
spooled files in, one :class:`~.method.Outcome` per file out. A method that cannot protect an
instance returns an outcome carrying a :class:`~dicom_gateway.errors.ProtectionError`; the
worker quarantines that instance (fail closed) unless its profile says
``on_unprotectable: forward``. Methods register by name in :mod:`.registry`.
"""

from __future__ import annotations

from .device import protection_device
from .method import Outcome, ProtectionMethod
from .registry import create_method, method_names, register_method, validate_options
from .stage import ProtectionStage

__all__ = [
    "Outcome",
    "ProtectionMethod",
    "ProtectionStage",
    "create_method",
    "method_names",
    "protection_device",
    "register_method",
    "validate_options",
]
