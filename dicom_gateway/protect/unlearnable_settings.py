"""The settings of method ``unlearnable``, shared by a gateway profile and
``dicom-gateway protect-dataset``: one set of defaults, and which settings applied to a release.

Torch-free, so that the configuration and the command line can read them without loading the
method.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from .options import UnlearnableOptions

__all__ = ["DEFAULTS", "applied_settings", "default_rounds"]

# The one set of defaults, a profile's and ``protect-dataset``'s: the options class's.
# ``rounds`` None: by task, :func:`default_rounds`.
DEFAULTS: Mapping[str, Any] = MappingProxyType(UnlearnableOptions.defaults())
_SEGMENTATION_ONLY = ("contour_radius", "texture_floor", "init")
_MIN_MIN_ONLY = ("train_steps", "pgd_steps", "lr")


def default_rounds(segmentation: bool) -> int:
    """Min-min rounds when ``rounds`` is null: 0 for segmentation, where the shortcut pattern
    alone measured best (decision 0009), 3 for classification."""
    return 0 if segmentation else 3


def applied_settings(settings: Mapping[str, Any], segmentation: bool, rounds_run: int
                     ) -> dict[str, Any]:
    """The settings that shaped a release, for its report and its seal: ``epsilon`` always;
    ``contour_radius``, ``texture_floor`` and ``init`` only for segmentation (a classification
    budget is uniform and starts from zero); ``train_steps``, ``pgd_steps`` and ``lr`` only
    when min-min rounds ran. Reporting a setting that did not apply misleads the reader."""
    keys = ["epsilon", *(_SEGMENTATION_ONLY if segmentation else ()),
            *(_MIN_MIN_ONLY if rounds_run else ())]
    return {k: type(DEFAULTS[k])(settings[k]) for k in keys}
