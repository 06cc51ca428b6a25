"""Region-of-interest masks supplied with a study as DICOM Segmentation objects (PS3.3 A.51).

Every frame of a SEG names its source image through the per-frame
``DerivationImageSequence > SourceImageSequence > ReferencedSOPInstanceUID`` (and, for a
multi-frame source, ``ReferencedFrameNumber``). All segments are united into one ROI per source
frame; fractional segmentations count where the value is at least half the maximum.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset

__all__ = ["SEGMENTATION_STORAGE", "RoiMasks", "find_segmentations", "read_segmentation"]

SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"

# SOP Instance UID -> {frame index (0-based) -> mask (rows, columns) bool}
RoiMasks = dict[str, dict[int, np.ndarray]]


def read_segmentation(ds: Dataset, into: RoiMasks | None = None) -> RoiMasks:
    """Add the ROI of every frame of the SEG ``ds`` to ``into`` (a new mapping by default)."""
    masks: RoiMasks = {} if into is None else into
    frames = np.asarray(ds.pixel_array)
    if frames.ndim == 2:
        frames = frames[None]
    fractional = str(ds.get("SegmentationType", "BINARY")).upper() == "FRACTIONAL"
    limit = float(ds.get("MaximumFractionalValue", 255)) / 2 if fractional else 0.5
    groups = ds.get("PerFrameFunctionalGroupsSequence") or []
    for index, frame in enumerate(frames):
        if index >= len(groups):
            break
        for derivation in groups[index].get("DerivationImageSequence") or []:
            for source in derivation.get("SourceImageSequence") or []:
                uid = str(source.ReferencedSOPInstanceUID)
                numbers = source.get("ReferencedFrameNumber") or [1]
                for number in np.atleast_1d(numbers):
                    key = int(number) - 1
                    roi = frame >= limit
                    per_source = masks.setdefault(uid, {})
                    per_source[key] = per_source[key] | roi if key in per_source else roi
    return masks


def find_segmentations(paths: Iterable[Path]) -> RoiMasks:
    """The ROI masks of every SEG instance among ``paths`` (other files are skipped)."""
    masks: RoiMasks = {}
    for path in paths:
        try:
            head = dcmread(path, stop_before_pixels=True)
        except Exception:
            continue
        if str(head.get("SOPClassUID", "")) == SEGMENTATION_STORAGE:
            read_segmentation(dcmread(path), masks)
    return masks
