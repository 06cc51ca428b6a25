"""Protect evaluation images through the gateway's own code path, so that a report figure is a
figure of what partners receive.

Each image is written as an 8-bit MONOCHROME2 (or RGB) Secondary Capture instance without a
window, one series, exactly as a modality or a conversion tool would send it; the profile's
method is created by name from the public registry (as the gateway's protection stage does)
and applied to the files; the protected pixel values are read back from the datasets the
method produced (what the seal then signs and the partner decodes), divided by 255.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from ...protect import create_method

__all__ = ["protect_through_gateway", "wrap_as_dicom"]


def wrap_as_dicom(images: torch.Tensor, folder: Path) -> list[Path]:
    """Write ``images`` (``(N, C, H, W)`` in [0, 1], C = 1 or 3) as 8-bit DICOM files."""
    folder.mkdir(parents=True, exist_ok=True)
    study, series = generate_uid(), generate_uid()
    values = torch.round(images.clamp(0, 1) * 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    paths = []
    for i, pixels in enumerate(values):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
        ds.SOPClassUID = SecondaryCaptureImageStorage
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.Modality, ds.ConversionType, ds.InstanceNumber = "OT", "WSD", i + 1
        ds.PatientID, ds.PatientName = "EVAL", "EVAL^IMAGES"
        ds.Rows, ds.Columns = pixels.shape[:2]
        ds.SamplesPerPixel = pixels.shape[2]
        ds.PhotometricInterpretation = "MONOCHROME2" if pixels.shape[2] == 1 else "RGB"
        if pixels.shape[2] == 3:
            ds.PlanarConfiguration = 0
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.PixelData = np.ascontiguousarray(pixels[..., 0] if pixels.shape[2] == 1
                                            else pixels).tobytes()
        path = folder / f"{i:06d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _read_back(output: Any) -> np.ndarray:
    from pydicom import dcmread

    ds = output if isinstance(output, Dataset) else dcmread(output)
    arr = np.asarray(ds.pixel_array)
    if arr.ndim == 2:
        arr = arr[None]
    elif arr.ndim == 3 and int(ds.get("SamplesPerPixel", 1)) == 3:
        arr = arr.transpose(2, 0, 1)
    return arr


def protect_through_gateway(method: str, options: Mapping[str, Any], images: torch.Tensor,
                            chunk: int = 32, progress: bool = True,
                            workdir: Path | None = None,
                            parameters: list[Any] | None = None) -> tuple[torch.Tensor, float]:
    """``images`` protected by ``method`` with ``options`` (surrogate paths as in a profile)
    through DICOM files, and the protection's seconds per image. An instance the method
    refuses raises: an evaluation must not silently score an unprotected image. ``parameters``
    (a list) receives each instance's certificate parameters, in order (a watermark's
    placement, from which the evaluation renders its footprint)."""
    protector = create_method(method, options)
    out = torch.empty_like(images)
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        paths = wrap_as_dicom(images, Path(tmp))
        started = time.monotonic()
        for start in range(0, len(paths), chunk):
            outcomes = protector(paths[start:start + chunk])
            for offset, outcome in enumerate(outcomes):
                if outcome.error is not None or outcome.output is None:
                    raise RuntimeError(f"image {start + offset}: not protected: "
                                       f"{outcome.error}")
                out[start + offset] = torch.from_numpy(
                    _read_back(outcome.output).astype(np.float32) / 255.0)
                if parameters is not None:
                    parameters.append(dict(outcome.parameters))
            if progress:
                done = min(start + chunk, len(paths))
                rate = (time.monotonic() - started) / done
                print(f"\r  {method}: {done}/{len(paths)} through the gateway path, "
                      f"{rate:.2f} s/image, ETA {rate * (len(paths) - done):.0f}s", end="",
                      file=sys.stderr, flush=True)
        seconds = (time.monotonic() - started) / max(len(paths), 1)
    if progress:
        print(file=sys.stderr)
    return out, seconds
