"""The search core of the visible adversarial watermark (MIAD-MARK: Wei et al., arXiv:2303.09858,
2023, after the black-box search of Adv-watermark: Jia et al., ACM MM 2020, arXiv:2008.01919;
full citations in ``docs/references.md``): render a placement, score it on the surrogates,
search placements, refine the fill. :mod:`.watermark` is the gateway method built on it; the
evaluation and the benchmarks use these names too.

A logo's position, scale, rotation and transparency are searched so the surrogate ensemble
stops predicting the image's label. Every generation renders the whole population in one batch
(``grid_sample`` with one affine transform per candidate) and scores it in one forward pass per
surrogate, averaged over the victim's likely preprocessing (antialiased resize, and the same
followed by JPEG q75). By default (``scoring="surrogate"``) an image larger than the
surrogates' input is scored on a render at that input size, and what the search keeps is
drawn and checked again at full resolution, quantized to the output's step, as stored
(:mod:`.watermark_scoring`); ``scoring="full"`` scores every candidate that way.

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
from .watermark_scoring import (
    FullScoring,
    Scored,
    SmallScoring,
    as_stored,
    box_area,
    jpeg_round_trip,
    label_margin,
    label_probability,
    make_scoring,
    prepare_variants,
    render,
)

__all__ = ["WatermarkResult", "as_stored", "box_area", "jpeg_round_trip",
           "label_margin", "label_probability", "placement_params", "prepare_variants", "render",
           "search_watermark"]
#: how many candidates the approximate scoring says fool the ensemble are drawn and checked
#: at full resolution per generation
CONFIRM = 4


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


@dataclass(frozen=True)
class _Geometry:
    """The search space of one image: candidate bounds ``lo``/``hi`` over (x, y, height, alpha,
    angle, level), the area budget in pixels, and the keep-out mask."""

    height: int
    width: int
    aspect: float  # the logo's width / height
    logo_rows: int  # the logo's height in its own pixels
    budget: float
    h_min: float
    h_max: float
    lo: torch.Tensor
    hi: torch.Tensor
    keepout: torch.Tensor | None
    table: torch.Tensor | None  # the keep-out's summed-area table, (H + 1, W + 1), on the CPU

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
        table = (F.pad(keepout.cpu().long().cumsum(0).cumsum(1), (1, 0, 1, 0))
                 if keepout is not None else None)
        return cls(H, W, aspect, logo.shape[0], budget, h_min, h_max, lo, hi, keepout, table)

    def clip(self, c: torch.Tensor) -> torch.Tensor:
        c = torch.maximum(torch.minimum(c, self.hi), self.lo)
        a = self.aspect
        cos, sin = c[:, 4].cos().abs(), c[:, 4].sin().abs()  # the rotated box fits the budget
        c[:, 2] = torch.minimum(c[:, 2], (self.budget / ((a * cos + sin) * (a * sin + cos))
                                          ).sqrt()).clamp_min(min(self.h_min, self.h_max))
        c[:, 0] = torch.minimum(c[:, 0], self.width - c[:, 2] * a)  # the box inside the image
        c[:, 1] = torch.minimum(c[:, 1], self.height - c[:, 2])
        return c

    def box_ok(self, c: torch.Tensor) -> torch.Tensor:
        """The hard constraints on the candidates' rotated boxes (for the approximate scoring):
        the bounding rectangle, widened by one logo pixel (bilinear sampling reaches that far)
        and one image pixel each side, fits the area budget and is clear of the keep-out (its
        summed-area table)."""
        a = self.aspect
        w, h = c[:, 2] * a, c[:, 2]
        cos, sin = c[:, 4].cos().abs(), c[:, 4].sin().abs()
        cx, cy = c[:, 0] + (w - 1) / 2, c[:, 1] + (h - 1) / 2
        fringe = h / self.logo_rows  # bilinear sampling reaches one logo pixel past the box
        hx = (w * cos + h * sin) / 2 + fringe + 1
        hy = (w * sin + h * cos) / 2 + fringe + 1
        fits = (2 * hx - 2) * (2 * hy - 2) <= self.budget + 1e-6
        if self.table is None:
            return fits
        x0 = (cx - hx).floor().clamp(0, self.width).long()
        x1 = (cx + hx).ceil().clamp(0, self.width).long() + 1
        y0 = (cy - hy).floor().clamp(0, self.height).long()
        y1 = (cy + hy).ceil().clamp(0, self.height).long() + 1
        table = self.table
        x1, y1 = x1.clamp(max=self.width), y1.clamp(max=self.height)
        inside = table[y1, x1] - table[y0, x1] - table[y1, x0] + table[y0, x0]
        return fits & (inside == 0)

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


def search_watermark(image: torch.Tensor, surrogates: Sequence[Any], logo: torch.Tensor,
                     keepout: torch.Tensor | None = None, label: int | None = None,
                     max_area_fraction: float = 1 / 16,
                     alpha_range: tuple[float, float] = (0.4, 1.0), population: int = 48,
                     generations: int = 10, jpeg: bool = True, seed: int = 0,
                     max_rotation: float = 15.0, levels: tuple[float, float] = (0.0, 1.0),
                     texture: float = 0.5, texture_steps: int = 20, texture_candidates: int = 32,
                     quantum: float | None = 1 / 255, scoring: str = "surrogate"
                     ) -> WatermarkResult:
    """Find (x, y, height, alpha, angle, level) for ``logo`` on ``image`` (C, H, W) in [0, 1].

    ``max_rotation`` in degrees (0: upright only); ``levels``: the range of the logo's grey
    level ((1, 1): white only); ``texture``: the most a pixel of the mark may deviate from that
    level in the refinement stage (0: none); ``quantum``: the step of the stored values in the
    view (candidates are scored rounded to it, and the footprint is where a stored value can
    change; None: not rounded); ``scoring``: "surrogate" (candidates scored on a render at the
    surrogates' input size where the image is larger, the result checked at full resolution)
    or "full" (every candidate at full resolution).
    """
    g = torch.Generator().manual_seed(seed)
    geo = _Geometry.of(image, logo, max_area_fraction, alpha_range, max_rotation, levels,
                       keepout)
    if label is None:
        with torch.no_grad():
            label = int(torch.stack([F.softmax(s.model(as_input(image[None], s)), 1)
                                     for s in surrogates]).sum(0).argmax())
    full = FullScoring(image, logo, surrogates, label, jpeg, quantum, geo.feasible)
    scorer = make_scoring(full, geo.box_ok, scoring)
    best, best_cand, evaluations = _evolve(scorer, geo, population, generations, g)
    if best is None or best.fooled:
        return best or WatermarkResult(image, {}, False, math.inf, evaluations)
    if texture > 0 and texture_steps > 0:
        pool_c, pool_s, scored, step = _texture_pool(scorer, geo, best_cand, best.score,
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


def _exact(scorer: FullScoring | SmallScoring, geo: _Geometry, cand: torch.Tensor,
           s: Scored, i: int, evaluations: int) -> WatermarkResult | None:
    """Candidate ``i`` of a scored batch as a result drawn at full resolution and as stored,
    or None if it is not feasible there (the approximate scoring's box test let it through)."""
    if s.rendered is not None and s.alpha is not None:  # the full scoring drew it already
        return geo.result(s.rendered[i], cand[i], s.alpha[i], bool(s.fooled[i]),
                          float(s.score[i]), evaluations)
    e = scorer.exact(cand[i:i + 1])
    if not bool(e.ok[0]):
        return None
    assert e.rendered is not None and e.alpha is not None
    return geo.result(e.rendered[0], cand[i], e.alpha[0], bool(e.fooled[0]), float(e.score[0]),
                      evaluations)


def _evolve(scorer: FullScoring | SmallScoring, geo: _Geometry, population: int,
            generations: int, g: torch.Generator
            ) -> tuple[WatermarkResult | None, torch.Tensor, int]:
    """The placement search: an elitist evolution over the candidates; returns the first
    candidate that fools every view (then ``fooled``; at full resolution, as stored), else the
    best feasible one, with its candidate vector and the candidates scored."""
    lo, hi = geo.lo, geo.hi
    cand = geo.clip(lo + (hi - lo) * torch.rand(population, 6, generator=g))
    cand[:, 5] = torch.where(torch.arange(population) % 2 == 0, hi[5], lo[5])  # at the ends
    spread = (hi - lo) * torch.tensor([0.08, 0.08, 0.1, 0.1, 0.15, 0.15])
    best: tuple[float, torch.Tensor, Scored, int] | None = None  # score, batch, scored, index
    best_cand = cand[0]
    evaluations = 0
    for _ in range(generations):
        s = scorer.score(cand)
        evaluations += len(cand)
        score = torch.where(s.ok, s.score, torch.full_like(s.score, math.inf))
        fooled = s.fooled.clone()
        for i in torch.nonzero(fooled).flatten()[torch.argsort(score[fooled])][:CONFIRM]:
            r = _exact(scorer, geo, cand, s, int(i), evaluations)
            if r is not None and r.fooled:
                return r, cand[int(i)], evaluations
            fooled[int(i)] = False  # not at full resolution: the search goes on
            score[int(i)] = math.inf if r is None else r.score
        order = torch.argsort(score)
        i = int(order[0])
        if bool(s.ok[i]) and math.isfinite(float(score[i])) and (
                best is None or float(score[i]) < best[0]):
            best = (float(score[i]), cand, s, i)  # each generation's batch is a new tensor
            best_cand = cand[i]
        elite = cand[order[: max(4, population // 6)]]
        parents = elite[torch.randint(0, len(elite), (population,), generator=g)]
        cand = geo.clip(parents + spread * torch.randn(population, 6, generator=g))
        cand[: len(elite)] = elite  # keep the elite unchanged
    if best is None:
        return None, best_cand, evaluations
    _, batch, scored, i = best
    return _exact(scorer, geo, batch, scored, i, evaluations), best_cand, evaluations


def _texture_pool(scorer: FullScoring | SmallScoring, geo: _Geometry, best_cand: torch.Tensor,
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
        s = scorer.score(part)
        pool_c.append(part[s.ok])
        pool_s.append(s.score[s.ok])
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
        colour = cand[:, 5].to(image.device).view(-1, 1, 1, 1).expand(
            -1, image.shape[0], *image.shape[1:])
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
