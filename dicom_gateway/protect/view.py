"""The normalized view protection methods optimize in, and the way back to stored values.

Monochrome images are seen through the header's window (after the modality LUT), else through
their full stored range (0-255 for 8 bits stored: the ``/255`` that ``train-surrogate`` and
every image library apply), never a per-image stretch: a stretch would show the surrogate a
view no victim trains on and shrink the budget in stored units. MONOCHROME1 is inverted so
models see MONOCHROME2; colour uses the full stored range. This is the view a surrogate file
declares (:data:`VIEW`), decision 0013.
PALETTE COLOR is seen through its lookup table as RGB and written as RGB (the palette cannot
carry a perturbation); the seal then keeps the original indices and palette (decision 0008).
A change made in the view is mapped back to stored units, rounded and clipped to the stored
range, and written losslessly; the outcome keeps the exact residual (original - protected, in
the written image's values).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import dcmread

from ..pixels import PixelError, Pixels, read_pixels, write_pixels
from .declared_view import VIEW
from .method import Outcome, failed

__all__ = ["VIEW", "View", "finish", "prepare"]


@dataclass
class View:
    """One instance, decoded, with its frames in the normalized [0, 1] view."""

    path: Path
    ds: Any
    pixels: Pixels
    values: np.ndarray  # (frames, rows, columns, samples) in [0, 1]
    lo: float
    hi: float


def prepare(path: Path) -> View | Outcome:
    """Decode ``path`` into a :class:`View`, or a failed outcome with the reason."""
    ds = dcmread(path)
    try:
        pixels = read_pixels(ds)
    except PixelError as exc:
        return failed(path, exc.reason, str(exc))
    if pixels.photometric == "PALETTE COLOR":
        try:
            pixels = _palette_as_rgb(ds, pixels)
        except Exception as exc:
            return failed(path, "unsupported_photometric", f"PALETTE COLOR lookup table "
                          f"unusable: {type(exc).__name__}: {exc}")
        ds = _without_palette(ds)
    lo, hi = _view_range(ds, pixels)
    values = np.clip((pixels.values.astype(np.float64) - lo) / (hi - lo), 0.0, 1.0)
    if pixels.photometric == "MONOCHROME1":
        values = 1.0 - values
    return View(path, ds, pixels, values, lo, hi)


def finish(view: View, delta: np.ndarray, parameters: dict[str, Any]) -> Outcome:
    """Apply a change made in the view (same shape as ``view.values``) to the stored values."""
    if view.pixels.photometric == "MONOCHROME1":
        delta = -delta
    vmin, vmax = _stored_limits(view.pixels)
    stored = view.pixels.values.astype(np.float64)
    protected = np.clip(np.rint(stored + delta * (view.hi - view.lo)), vmin, vmax).astype(
        view.pixels.values.dtype)
    out = write_pixels(view.ds, Pixels(protected, view.pixels.photometric, view.pixels.bits_stored))
    residual = view.pixels.values.astype(np.int64) - protected.astype(np.int64)
    return Outcome(source=view.path, output=out, residual=residual, parameters={
        **parameters, "view_range": [float(view.lo), float(view.hi)]})


def _palette_as_rgb(ds: Any, pixels: Pixels) -> Pixels:
    """The indexed image through its lookup tables, as RGB stored values (8 or 16 bits, the
    tables' entry size)."""
    from pydicom.pixels.processing import apply_color_lut

    rgb = apply_color_lut(pixels.values[..., 0], ds)
    bits = 8 if rgb.dtype.itemsize == 1 else 16
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8 if bits == 8 else np.uint16)
    return Pixels(rgb.reshape(*pixels.values.shape[:3], 3), "RGB", bits)


def _without_palette(ds: Any) -> Any:
    """A copy of ``ds`` without the palette attributes (the output is RGB)."""
    import copy

    out = copy.deepcopy(ds)
    for elem in list(out):
        if elem.tag.group == 0x0028 and "PaletteColorLookupTable" in (elem.keyword or ""):
            del out[elem.tag]
    return out


def _stored_limits(pixels: Pixels) -> tuple[int, int]:
    if pixels.signed:
        return -(1 << (pixels.bits_stored - 1)), (1 << (pixels.bits_stored - 1)) - 1
    return 0, (1 << pixels.bits_stored) - 1


def _view_range(ds: Any, pixels: Pixels) -> tuple[float, float]:
    """Stored values mapped to [0, 1]: the window if the header has one, else the full
    stored range."""
    if pixels.photometric.startswith("MONOCHROME") and "WindowCenter" in ds and "WindowWidth" in ds:
        center = float(np.atleast_1d(ds.WindowCenter)[0])
        width = float(np.atleast_1d(ds.WindowWidth)[0])
        slope = float(ds.get("RescaleSlope", 1) or 1)
        intercept = float(ds.get("RescaleIntercept", 0) or 0)
        lo = (center - width / 2 - intercept) / slope
        hi = (center + width / 2 - intercept) / slope
        if hi > lo:
            return lo, hi
    vmin, vmax = _stored_limits(pixels)
    return float(vmin), float(vmax)
