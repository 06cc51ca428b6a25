"""How a watermark candidate is drawn and scored (the search is :mod:`.watermark_search`).

:func:`render` blends the logo into an image for a batch of candidate placements, and
:func:`label_probability` scores composites on the surrogates, averaged over the victim's
likely preprocessing (its input size by an antialiased resize, and the same followed by JPEG
q75). Two scorings share that code:

- :class:`FullScoring` renders every candidate at the image's own resolution, rounds it to the
  stored step and lets each surrogate resize it: exactly what the stored image will be.
- :class:`SmallScoring` renders the candidates on the image already resized to the surrogates'
  input size (the candidates' geometry scaled with it), so a 512x512 CT slice scored by a
  224x224 or 28x28 surrogate costs a 224x224 or 28x28 render per candidate. It approximates
  ``resize(blend(image, logo))`` by ``blend(resize(image), resize(logo))`` and skips the
  rounding; the hard constraints are checked on the candidate's rotated box instead of its
  rendered footprint (conservatively: the box's bounding rectangle, one pixel wider, must not
  touch the keep-out). Whatever the search keeps is drawn and checked again at full resolution
  (:meth:`FullScoring.exact`), so a mark that leaves the gateway never relies on the
  approximation; ``tests/test_protect_watermark.py`` measures how close it is.

Every tensor a scoring returns per candidate (scores, fooled, feasible) is on the CPU, where
the search keeps its candidates; the images live on the surrogates' device.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .surrogate import as_input

__all__ = ["FullScoring", "Scored", "SmallScoring", "as_stored", "box_area", "jpeg_round_trip",
           "label_margin", "label_probability", "make_scoring", "prepare_variants", "render"]

#: SmallScoring only where the image is at least this many times the surrogates' input size
SMALL_FROM_RATIO = 1.5
#: ... and its two axes are scaled alike (a square logo stays square within this)
SMALL_MAX_ANISOTROPY = 0.02


def jpeg_round_trip(x: torch.Tensor, quality: int = 75) -> torch.Tensor:
    """JPEG round trip of a batch in [0, 1] through Pillow (what a victim's pipeline does)."""
    import io

    import numpy as np
    from PIL import Image

    out = []
    for img in (x.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy():
        arr = img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=quality)
        back = np.asarray(Image.open(io.BytesIO(buf.getvalue())))
        out.append(back[None] if back.ndim == 2 else back.transpose(2, 0, 1))
    return torch.from_numpy(np.stack(out)).float().div(255).to(x.device)


def prepare_variants(x: torch.Tensor, surrogate: Any, jpeg: bool) -> list[torch.Tensor]:
    x = as_input(x, surrogate)
    return [x, jpeg_round_trip(x)] if jpeg else [x]


@torch.no_grad()
def label_probability(x: torch.Tensor, surrogates: Sequence[Any], label: int,
                       jpeg: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean probability of ``label`` per candidate, and whether every view is fooled."""
    probs, fooled = [], torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    for s in surrogates:
        for v in prepare_variants(x.to(_device(s)), s, jpeg):
            p = F.softmax(s.model(v), 1)
            probs.append(p[:, label])
            fooled &= p.argmax(1) != label
    return torch.stack(probs).mean(0), fooled


def label_margin(x: torch.Tensor, surrogates: Sequence[Any], label: int) -> torch.Tensor:
    """Mean logit margin of ``label`` over the runner-up (differentiable; > 0: still right)."""
    total = torch.zeros(x.shape[0], device=x.device)
    for s in surrogates:
        logits = s.model(as_input(x, s))
        other = logits.clone()
        other[:, label] = float("-inf")
        total = total + logits[:, label] - other.amax(1)
    return total / len(surrogates)


def as_stored(image: torch.Tensor, composite: torch.Tensor, alpha: torch.Tensor,
            quantum: float | None) -> torch.Tensor:
    """The composites as they will be stored: rounded to ``quantum`` under the mark, the
    original values elsewhere (``alpha``: ``(N, H, W)``)."""
    if quantum:
        composite = torch.round(composite / quantum) * quantum
    return torch.where(alpha.unsqueeze(1) > 0, composite, image.unsqueeze(0))


def render(image: torch.Tensor, logo: torch.Tensor, cand: torch.Tensor,
            quantum: float | None = 1 / 255) -> tuple[torch.Tensor, torch.Tensor]:
    """Blend the logo into ``image`` for each candidate ``(x, y, h, alpha[, angle[, level]])``
    (pixels, radians, grey level of the logo, white if absent; the box's corner pixels are ``x``
    and ``x + w - 1``, rotation about its centre).

    Returns the composites and the effective alpha per pixel, zero wherever the mark cannot
    change a stored value (alpha below half of ``quantum``), so ``alpha > 0`` is the footprint.
    """
    _, H, W = image.shape
    n = cand.shape[0]
    aspect = logo.shape[1] / logo.shape[0]
    cand = cand.to(image.device)
    x, y, h, a = cand[:, 0], cand[:, 1], cand[:, 2], cand[:, 3]
    angle = cand[:, 4] if cand.shape[1] > 4 else torch.zeros_like(x)
    level = cand[:, 5].view(-1, 1, 1, 1) if cand.shape[1] > 5 else 1.0
    w = h * aspect
    cx, cy = x + (w - 1) / 2, y + (h - 1) / 2
    cos, sin = torch.cos(angle), torch.sin(angle)
    kx, ky = 2 / (w - 1).clamp_min(1e-3), 2 / (h - 1).clamp_min(1e-3)
    sx, sy = (W - 1) / 2, (H - 1) / 2
    theta = torch.zeros(n, 2, 3, device=image.device)  # output grid -> logo coordinates
    theta[:, 0, 0] = cos * sx * kx
    theta[:, 0, 1] = sin * sy * kx
    theta[:, 0, 2] = (cos * (sx - cx) + sin * (sy - cy)) * kx
    theta[:, 1, 0] = -sin * sx * ky
    theta[:, 1, 1] = cos * sy * ky
    theta[:, 1, 2] = (-sin * (sx - cx) + cos * (sy - cy)) * ky
    grid = F.affine_grid(theta, [n, 1, H, W], align_corners=True)
    mask = F.grid_sample(logo.to(image.device).expand(n, 1, -1, -1), grid, mode="bilinear",
                         padding_mode="zeros", align_corners=True)
    alpha = mask * a.view(-1, 1, 1, 1)
    alpha = torch.where(alpha >= 0.5 * (quantum or 0.0), alpha, torch.zeros_like(alpha))
    return image.unsqueeze(0) * (1 - alpha) + alpha * level, alpha[:, 0]


def box_area(footprint: torch.Tensor) -> torch.Tensor:
    """Area of the bounding box of each ``(N, H, W)`` boolean footprint (0 if empty)."""
    def extent(any_along: torch.Tensor) -> torch.Tensor:
        idx = torch.arange(any_along.shape[1], device=any_along.device)
        first = torch.where(any_along, idx, any_along.shape[1]).amin(1)
        last = torch.where(any_along, idx, -1).amax(1)
        return (last - first + 1).clamp_min(0)
    return extent(footprint.any(2)) * extent(footprint.any(1))


def _device(surrogate: Any) -> torch.device:
    param = next(surrogate.model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


@dataclass
class Scored:
    """One batch of candidates scored: probability of the label left (lower is better),
    fooled on every view, feasible (footprint, area, keep-out); on the CPU. ``rendered`` and
    ``alpha`` are the exact composites as stored and their alpha, when the scoring drew them
    (:class:`FullScoring`), else None."""

    score: torch.Tensor
    fooled: torch.Tensor
    ok: torch.Tensor
    rendered: torch.Tensor | None = None
    alpha: torch.Tensor | None = None


@dataclass(frozen=True)
class FullScoring:
    """Candidates drawn at full resolution and rounded to ``quantum``, as they will be stored.
    ``feasible(alpha)``: the hard constraints on the rendered alpha."""

    image: torch.Tensor
    logo: torch.Tensor
    surrogates: Sequence[Any]
    label: int
    jpeg: bool
    quantum: float | None
    feasible: Any  # Callable[[torch.Tensor], torch.Tensor]

    def score(self, cand: torch.Tensor) -> Scored:
        rendered, alpha = render(self.image, self.logo, cand, quantum=self.quantum)
        rendered = as_stored(self.image, rendered, alpha, self.quantum)
        score, fooled = label_probability(rendered, self.surrogates, self.label, self.jpeg)
        ok = self.feasible(alpha).cpu()
        return Scored(score.cpu(), fooled.cpu() & ok, ok, rendered, alpha)

    def exact(self, cand: torch.Tensor) -> Scored:
        """The same as :meth:`score` (the full scoring is exact)."""
        return self.score(cand)


@dataclass(frozen=True)
class SmallScoring:
    """Candidates drawn on the image at the surrogates' input size (see the module docstring);
    :meth:`exact` defers to ``full``. ``box_ok(cand)``: the hard constraints on the
    candidates' boxes at full resolution."""

    full: FullScoring
    small: torch.Tensor
    sx: float  # small / full width
    sy: float  # small / full height
    box_ok: Any  # Callable[[torch.Tensor], torch.Tensor]

    def score(self, cand: torch.Tensor) -> Scored:
        c = cand.clone()  # corner pixel centres x .. x + w - 1 span [x - 0.5, x + w - 0.5]
        c[:, 0] = (c[:, 0] - 0.5) * self.sx + 0.5
        c[:, 1] = (c[:, 1] - 0.5) * self.sy + 0.5
        c[:, 2] = c[:, 2] * self.sy  # the logo's aspect is kept: both axes scale alike
        f = self.full
        composite, _ = render(self.small, f.logo, c, quantum=None)
        score, fooled = label_probability(composite, f.surrogates, f.label, f.jpeg)
        ok = self.box_ok(cand).cpu()
        return Scored(score.cpu(), fooled.cpu() & ok, ok)

    def exact(self, cand: torch.Tensor) -> Scored:
        return self.full.exact(cand)


def make_scoring(full: FullScoring, box_ok: Any, size: str) -> FullScoring | SmallScoring:
    """``size`` "surrogate": :class:`SmallScoring` where it applies (every surrogate takes one
    input size, the image is at least :data:`SMALL_FROM_RATIO` times larger, and both axes
    scale alike), else (and for "full") ``full``."""
    sizes = {tuple(s.info.input_size) for s in full.surrogates}
    if size != "surrogate" or len(sizes) != 1:
        return full
    (hs, ws), (h, w) = sizes.pop(), full.image.shape[1:]
    sy, sx = hs / h, ws / w
    if min(h / hs, w / ws) < SMALL_FROM_RATIO or abs(sx / sy - 1) > SMALL_MAX_ANISOTROPY:
        return full
    small = F.interpolate(full.image[None], size=(hs, ws), mode="bilinear",
                          align_corners=False, antialias=True)[0]
    return SmallScoring(full, small, sx, sy, box_ok)
