"""The protection methods: what turns a spooled instance into the one a partner receives.

Every method has one shape (see :class:`~.method.ProtectionMethod`): a series' batch of
spooled files in, one :class:`~.method.Outcome` per file out. A method that cannot protect an
instance returns an outcome carrying a :class:`~dicom_gateway.errors.ProtectionError`; the
worker quarantines that instance (fail closed) unless its profile says
``on_unprotectable: forward``. Methods register by name in :mod:`.registry`, each with its typed
options (:mod:`.options`).

This package is the method library: the view of stored pixels, the methods, the device and
the surrogate files. It imports neither the configuration loader nor the metrics; the stage
that runs a profile's method for the worker is :mod:`dicom_gateway.stage`.
"""

from __future__ import annotations

from .device import protection_device
from .method import Outcome, ProtectionMethod, StudyContext
from .options import OptionError, Options, parse_epsilon
from .registry import (
    INSTANCE_SCOPED,
    create_method,
    instance_scoped,
    method_names,
    options_class,
    parse_options,
    register_method,
)

__all__ = [
    "INSTANCE_SCOPED",
    "OptionError",
    "Options",
    "Outcome",
    "ProtectionMethod",
    "StudyContext",
    "create_method",
    "instance_scoped",
    "method_names",
    "options_class",
    "parse_epsilon",
    "parse_options",
    "protection_device",
    "register_method",
]
