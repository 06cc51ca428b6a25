"""The search core of the visible adversarial watermark (MIAD-MARK: Wei et al., arXiv:2303.09858,
2023, after the black-box search of Adv-watermark: Jia et al., ACM MM 2020, arXiv:2008.01919;
full citations in ``docs/references.md``): render a placement, score it on the surrogates,
search placements, refine the fill. :mod:`.watermark` is the gateway method built on it; the
evaluation and the benchmarks use these names too.

A logo's position, scale, rotation and transparency are searched so the surrogate ensemble
stops predicting the image's label. Every generation renders the whole population in one batch
(``grid_sample`` with one affine transform per candidate) and scores it in one forward pass per
surrogate, averaged over the victim's likely preprocessing (antialiased resize, and the same
followed by JPEG q75). Candidates are scored as stored: quantized to the output's step.

Hard constraints, checked on the rendered mark: its footprint (every pixel it can change after
rounding) never touches the keep-out mask (lesion mask and/or the surrogate's Grad-CAM
saliency), and the footprint's bounding box never exceeds ``max_area_fraction`` of the image.

The logo's grey level is searched too (white to black by default). If the placement search
alone does not fool the ensemble and ``texture`` > 0, the fill of the best placements (the
search's best, and a grid of fully opaque largest boxes) is refined by gradient descent on the
surrogates (white-box: the gateway holds them): each pixel of the mark may deviate from the
logo's level by at most ``texture``, inside the same footprint. The search stops as soon as a
candidate fools every surrogate under every preprocessing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .surrogate import as_input

__all__ = ["WatermarkResult", "as_stored", "box_area", "jpeg_round_trip",
           "label_margin", "label_probability", "placement_params", "prepare_variants", "render",
           "search_watermark"]


@dataclass
class WatermarkResult:
    image: torch.Tensor  # (C, H, W) in [0, 1], quantized to the search's step
    params: dict[str, float]  # x, y (top-left of the unrotated box), height, width, alpha,
    # angle (degrees), level (grey level of the logo)
    fooled: bool
    score: float  # mean probability of the label left (lower is better)
    evaluations: int  # candidates scored
    footprint: torch.Tensor | None = None  # (H, W) bool: the pixels the mark may change
    textured: bool = False  # the fill was refined (``texture`` > 0 and the placement alone failed)


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
        for v in prepare_variants(x, s, jpeg):
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


@dataclass(frozen=True)
class _Geometry:
    """The search space of one image: candidate bounds ``lo``/``hi`` over (x, y, height, alpha,
    angle, level), the area budget in pixels, and the keep-out mask."""

    height: int
    width: int
    aspect: float  # the logo's width / height
    budget: float
    h_min: float
    h_max: float
    lo: torch.Tensor
    hi: torch.Tensor
    keepout: torch.Tensor | None

    @classmethod
    def of(cls, image: torch.Tensor, logo: torch.Tensor, max_area_fraction: float,
           alpha_range: tuple[float, float], max_rotation: float,
           levels: tuple[float, float], keepout: torch.Tensor | None) -> _Geometry:
        _, H, W = image.shape
        aspect = logo.shape[1] / logo.shape[0]
        budget = max_area_fraction * H * W
        h_max = min(math.sqrt(budget / aspect), H, W / aspect)
        h_min = max(h_max * 0.4, 2.0)
        turn = math.radians(max_rotation)
        lo = torch.tensor([0.0, 0.0, h_min, alpha_range[0], -turn, levels[0]])
        hi = torch.tensor([W - h_min * aspect, H - h_min, h_max, alpha_range[1], turn,
                           levels[1]])
        return cls(H, W, aspect, budget, h_min, h_max, lo, hi, keepout)

    def clip(self, c: torch.Tensor) -> torch.Tensor:
        c = torch.maximum(torch.minimum(c, self.hi), self.lo)
        a = self.aspect
        cos, sin = c[:, 4].cos().abs(), c[:, 4].sin().abs()  # the rotated box fits the budget
        c[:, 2] = torch.minimum(c[:, 2], (self.budget / ((a * cos + sin) * (a * sin + cos))
                                          ).sqrt()).clamp_min(min(self.h_min, self.h_max))
        c[:, 0] = torch.minimum(c[:, 0], self.width - c[:, 2] * a)  # the box inside the image
        c[:, 1] = torch.minimum(c[:, 1], self.height - c[:, 2])
        return c

    def feasible(self, alpha: torch.Tensor) -> torch.Tensor:
        foot = alpha > 0
        ok = foot.flatten(1).any(1) & (box_area(foot) <= self.budget + 1e-6)
        if self.keepout is not None:
            ok &= ~(foot & self.keepout.unsqueeze(0)).flatten(1).any(1)
        return ok

    def result(self, img: torch.Tensor, c: torch.Tensor, alpha: torch.Tensor, fooled: bool,
               score: float, evaluations: int, textured: bool = False) -> WatermarkResult:
        x, y, h, a, ang, level = (float(v) for v in c)
        return WatermarkResult(img, {"x": x, "y": y, "height": h, "width": h * self.aspect,
                                     "alpha": a, "angle": math.degrees(ang), "level": level},
                               fooled, score, evaluations, alpha > 0, textured)


@dataclass(frozen=True)
class _Scoring:
    """What every candidate is scored on: the image, the logo, the surrogates, the label to
    leave, the views (JPEG or not) and the stored step."""

    image: torch.Tensor
    logo: torch.Tensor
    surrogates: Sequence[Any]
    label: int
    jpeg: bool
    quantum: float | None

    def score(self, cand: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                 torch.Tensor]:
        """(as stored, alpha, probability of the label, fooled) per candidate."""
        rendered, alpha = render(self.image, self.logo, cand, quantum=self.quantum)
        rendered = as_stored(self.image, rendered, alpha, self.quantum)
        score, fooled = label_probability(rendered, self.surrogates, self.label, self.jpeg)
        return rendered, alpha, score, fooled


def search_watermark(image: torch.Tensor, surrogates: Sequence[Any], logo: torch.Tensor,
                     keepout: torch.Tensor | None = None, label: int | None = None,
                     max_area_fraction: float = 1 / 16,
                     alpha_range: tuple[float, float] = (0.4, 1.0), population: int = 48,
                     generations: int = 10, jpeg: bool = True, seed: int = 0,
                     max_rotation: float = 15.0, levels: tuple[float, float] = (0.0, 1.0),
                     texture: float = 0.5, texture_steps: int = 20, texture_candidates: int = 32,
                     quantum: float | None = 1 / 255) -> WatermarkResult:
    """Find (x, y, height, alpha, angle, level) for ``logo`` on ``image`` (C, H, W) in [0, 1].

    ``max_rotation`` in degrees (0: upright only); ``levels``: the range of the logo's grey
    level ((1, 1): white only); ``texture``: the most a pixel of the mark may deviate from that
    level in the refinement stage (0: none); ``quantum``: the step of the stored values in the
    view (candidates are scored rounded to it, and the footprint is where a stored value can
    change; None: not rounded).
    """
    g = torch.Generator().manual_seed(seed)
    geo = _Geometry.of(image, logo, max_area_fraction, alpha_range, max_rotation, levels,
                       keepout)
    if label is None:
        with torch.no_grad():
            label = int(torch.stack([F.softmax(s.model(as_input(image[None], s)), 1)
                                     for s in surrogates]).sum(0).argmax())
    scoring = _Scoring(image, logo, surrogates, label, jpeg, quantum)
    best, best_cand, evaluations = _evolve(scoring, geo, population, generations, g)
    if best is None or best.fooled:
        return best or WatermarkResult(image, {}, False, math.inf, evaluations)
    if texture > 0 and texture_steps > 0:
        pool_c, pool_s, scored, step = _texture_pool(scoring, geo, best_cand, best.score,
                                                     population, levels, alpha_range[1])
        evaluations += scored
        found = _texture(image, surrogates, logo, label, pool_c, pool_s, texture,
                         texture_steps, texture_candidates, jpeg, quantum, step)
        evaluations += found[-1]
        if found[0] is not None and (found[4] or found[3] < best.score):
            img, c, alpha, score, fooled, _ = found
            return geo.result(img, c, alpha, fooled, score, evaluations, textured=True)
    best.evaluations = evaluations
    return best


def _evolve(scoring: _Scoring, geo: _Geometry, population: int, generations: int,
            g: torch.Generator) -> tuple[WatermarkResult | None, torch.Tensor, int]:
    """The placement search: an elitist evolution over the candidates; returns the first
    candidate that fools every view (then ``fooled``), else the best feasible one, with its
    candidate vector and the candidates scored."""
    lo, hi = geo.lo, geo.hi
    cand = geo.clip(lo + (hi - lo) * torch.rand(population, 6, generator=g))
    cand[:, 5] = torch.where(torch.arange(population) % 2 == 0, hi[5], lo[5])  # at the ends
    spread = (hi - lo) * torch.tensor([0.08, 0.08, 0.1, 0.1, 0.15, 0.15])
    best: WatermarkResult | None = None
    best_cand = cand[0]
    evaluations = 0
    for _ in range(generations):
        rendered, alpha, score, fooled = scoring.score(cand)
        evaluations += len(cand)
        ok = geo.feasible(alpha)
        score = torch.where(ok, score, torch.full_like(score, math.inf))
        fooled &= ok
        if fooled.any():
            i = int(torch.nonzero(fooled)[torch.argmin(score[fooled])])
            return (geo.result(rendered[i], cand[i], alpha[i], True, float(score[i]),
                               evaluations), cand[i], evaluations)
        order = torch.argsort(score)
        i = int(order[0])
        if ok[i] and (best is None or float(score[i]) < best.score):
            best = geo.result(rendered[i], cand[i], alpha[i], False, float(score[i]),
                              evaluations)
            best_cand = cand[i]
        elite = cand[order[: max(4, population // 6)]]
        parents = elite[torch.randint(0, len(elite), (population,), generator=g)]
        cand = geo.clip(parents + spread * torch.randn(population, 6, generator=g))
        cand[: len(elite)] = elite  # keep the elite unchanged
    return best, best_cand, evaluations


def _texture_pool(scoring: _Scoring, geo: _Geometry, best_cand: torch.Tensor,
                  best_score: float, population: int, levels: tuple[float, float],
                  alpha_max: float) -> tuple[torch.Tensor, torch.Tensor, int, float]:
    """The texture's candidates: the search's best placement and a grid of upright boxes of
    the largest size, fully opaque, on whole pixels, at both ends of the grey range (the
    texture's reach is alpha x texture, and a placement poor for a flat logo can be good for
    a textured one). Returns candidates, their scores, the candidates scored, the grid step."""
    aspect, h_grid = geo.aspect, geo.h_max
    while math.ceil(h_grid * aspect - 1e-6) * math.ceil(h_grid - 1e-6) > geo.budget + 1e-6:
        h_grid *= 0.95  # its footprint at whole-pixel positions fits the budget
    step = float(max(1, int(geo.h_max / 3)))
    ys = torch.arange(0.0, max(geo.height - h_grid, 0.0) + 1, step)
    xs = torch.arange(0.0, max(geo.width - h_grid * aspect, 0.0) + 1, step)
    grid = torch.cartesian_prod(ys, xs, torch.tensor([float(levels[0]), float(levels[1])]))
    ones = torch.ones_like(grid[:, 0])
    grid = torch.stack([grid[:, 1], grid[:, 0], ones * h_grid, ones * alpha_max,
                        ones * 0.0, grid[:, 2]], 1)
    pool_c, pool_s = [best_cand[None]], [torch.tensor([best_score])]
    for start in range(0, len(grid), population):
        part = grid[start:start + population]
        _, alpha, score, _ = scoring.score(part)
        ok = geo.feasible(alpha)
        pool_c.append(part[ok])
        pool_s.append(score[ok])
    return torch.cat(pool_c), torch.cat(pool_s), len(grid), step


def placement_params(c: torch.Tensor, aspect: float) -> dict[str, float]:
    """The certificate's parameters of an upright white candidate ``(x, y, h, alpha)`` (the
    batch-1 reference search in ``bench/protect`` uses it)."""
    x, y, h, a = (float(v) for v in c[:4])
    return {"x": x, "y": y, "height": h, "width": h * aspect, "alpha": a}


def _texture(image: torch.Tensor, surrogates: Sequence[Any], logo: torch.Tensor, label: int,
             pool: torch.Tensor, scores: torch.Tensor, texture: float, steps: int, count: int,
             jpeg: bool, quantum: float | None, cell: float) -> tuple[Any, ...]:
    """Refine the fill of the ``count`` best placements, at most one per ``cell`` of position
    and per end of the grey range (sign-gradient descent on the surrogates' label margin, fill
    within ``texture`` of the logo's level and inside [0, 1]). Candidates are scored as stored,
    under every preprocessing, when the margin says one may be fooled and at the end."""
    chosen, seen = [], set()
    for j in torch.argsort(scores).tolist():
        key = (round(float(pool[j, 0]) / cell), round(float(pool[j, 1]) / cell),
               round(float(pool[j, 5])))
        if key not in seen:
            seen.add(key)
            chosen.append(j)
        if len(chosen) == count:
            break
    best: tuple[Any, ...] = (None, None, None, math.inf, False)
    evaluations = 0
    chunk = max(1, int(2e7 // image.numel()))  # bounded memory at native resolution
    for first in range(0, len(chosen), chunk):
        cand = pool[chosen[first:first + chunk]]
        with torch.no_grad():
            _, alpha = render(image, logo, cand, quantum=quantum)
        alpha = alpha.unsqueeze(1)
        colour = cand[:, 5].view(-1, 1, 1, 1).expand(-1, image.shape[0], *image.shape[1:])
        delta = torch.zeros_like(colour)
        for step in range(steps + 1):
            delta.requires_grad_(True)
            margin = label_margin(image.unsqueeze(0) * (1 - alpha) + alpha * (colour + delta),
                             surrogates, label)
            grad, = torch.autograd.grad(margin.sum(), delta)
            delta = delta.detach()
            if bool((margin < 0).any()) or step == steps:  # score as stored, every view
                with torch.no_grad():
                    out = as_stored(image, image.unsqueeze(0) * (1 - alpha)
                                  + alpha * (colour + delta), alpha[:, 0], quantum)
                    score, fooled = label_probability(out, surrogates, label, jpeg)
                evaluations += len(cand)
                i = int(torch.argmin(score))
                if fooled.any():
                    i = int(torch.nonzero(fooled)[torch.argmin(score[fooled])])
                if fooled[i] or float(score[i]) < best[3]:
                    best = (out[i], cand[i], alpha[i, 0], float(score[i]), bool(fooled[i]))
                if fooled[i]:
                    return (*best, evaluations)
                if step == steps:
                    break
            with torch.no_grad():  # a step of a quarter of the bound, then project
                delta = (delta - texture / 4 * grad.sign()).clamp(-texture, texture)
                delta = (colour + delta).clamp(0, 1) - colour
    return (*best, evaluations)
