"""Search for a visible adversarial watermark (MIAD-MARK: Wei et al., arXiv:2303.09858, 2023,
after the black-box search of Adv-watermark: Jia et al., ACM MM 2020, arXiv:2008.01919; full
citations in ``docs/references.md``).

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
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from ..progress import ReportProgress
from .method import Outcome, check_common_options, is_number

__all__ = ["AdversarialWatermark", "WatermarkResult", "gradcam_keepout", "load_logo",
           "render_text_logo", "search_settings", "search_watermark"]


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


def render_text_logo(text: str = "PROTECTED", height: int = 48,
                     style: str = "badge") -> torch.Tensor:
    """A logo as an alpha mask ``(h, w)`` in [0, 1], rendered with PIL's default font.

    ``style`` "text": the glyphs, cropped to their ink; "badge": a filled box with the glyphs
    knocked out (a margin of a fifth of the height around them), which covers its box.
    """
    from PIL import Image, ImageDraw, ImageFont

    if style not in ("text", "badge"):
        raise ValueError(f"unknown logo style {style!r} (text, badge)")
    font = ImageFont.load_default(size=height)
    left, top, right, bottom = font.getbbox(text)
    img = Image.new("L", (int(right - left) + 4, int(bottom - top) + 4), 0)
    ImageDraw.Draw(img).text((2 - left, 2 - top), text, fill=255, font=font)
    box = img.getbbox()
    if box is not None:  # the ink only: the box is what the area budget pays for
        img = img.crop(box)
    glyphs = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(
        img.height, img.width).float() / 255.0
    if style == "text":
        return glyphs
    m = max(1, round(img.height / 5))
    badge = torch.ones(img.height + 2 * m, img.width + 2 * m)
    badge[m:m + img.height, m:m + img.width] -= glyphs
    return badge


def _jpeg(x: torch.Tensor, quality: int = 75) -> torch.Tensor:
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


def _resize(x: torch.Tensor, surrogate: Any) -> torch.Tensor:
    c = surrogate.info.channels
    if x.shape[1] != c:
        x = x.mean(1, keepdim=True).expand(-1, c, -1, -1)
    if tuple(x.shape[2:]) == tuple(surrogate.info.input_size):
        return x
    return F.interpolate(x, size=surrogate.info.input_size, mode="bilinear", align_corners=False,
                         antialias=True)


def _prep_variants(x: torch.Tensor, surrogate: Any, jpeg: bool) -> list[torch.Tensor]:
    x = _resize(x, surrogate)
    return [x, _jpeg(x)] if jpeg else [x]


@torch.no_grad()
def _label_probability(x: torch.Tensor, surrogates: Sequence[Any], label: int,
                       jpeg: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean probability of ``label`` per candidate, and whether every view is fooled."""
    probs, fooled = [], torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    for s in surrogates:
        for v in _prep_variants(x, s, jpeg):
            p = F.softmax(s.model(v), 1)
            probs.append(p[:, label])
            fooled &= p.argmax(1) != label
    return torch.stack(probs).mean(0), fooled


def _margin(x: torch.Tensor, surrogates: Sequence[Any], label: int) -> torch.Tensor:
    """Mean logit margin of ``label`` over the runner-up (differentiable; > 0: still right)."""
    total = torch.zeros(x.shape[0], device=x.device)
    for s in surrogates:
        logits = s.model(_resize(x, s))
        other = logits.clone()
        other[:, label] = float("-inf")
        total = total + logits[:, label] - other.amax(1)
    return total / len(surrogates)


def _stored(image: torch.Tensor, composite: torch.Tensor, alpha: torch.Tensor,
            quantum: float | None) -> torch.Tensor:
    """The composites as they will be stored: rounded to ``quantum`` under the mark, the
    original values elsewhere (``alpha``: ``(N, H, W)``)."""
    if quantum:
        composite = torch.round(composite / quantum) * quantum
    return torch.where(alpha.unsqueeze(1) > 0, composite, image.unsqueeze(0))


def _render(image: torch.Tensor, logo: torch.Tensor, cand: torch.Tensor,
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


def _box_area(footprint: torch.Tensor) -> torch.Tensor:
    """Area of the bounding box of each ``(N, H, W)`` boolean footprint (0 if empty)."""
    def extent(any_along: torch.Tensor) -> torch.Tensor:
        idx = torch.arange(any_along.shape[1], device=any_along.device)
        first = torch.where(any_along, idx, any_along.shape[1]).amin(1)
        last = torch.where(any_along, idx, -1).amax(1)
        return (last - first + 1).clamp_min(0)
    return extent(footprint.any(2)) * extent(footprint.any(1))


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
    _, H, W = image.shape
    aspect = logo.shape[1] / logo.shape[0]
    budget = max_area_fraction * H * W
    h_max = min(math.sqrt(budget / aspect), H, W / aspect)
    h_min = max(h_max * 0.4, 2.0)
    turn = math.radians(max_rotation)
    if label is None:
        with torch.no_grad():
            label = int(torch.stack([F.softmax(s.model(_resize(image[None], s)), 1)
                                     for s in surrogates]).sum(0).argmax())
    lo = torch.tensor([0.0, 0.0, h_min, alpha_range[0], -turn, levels[0]])
    hi = torch.tensor([W - h_min * aspect, H - h_min, h_max, alpha_range[1], turn, levels[1]])

    def clip(c: torch.Tensor) -> torch.Tensor:
        c = torch.maximum(torch.minimum(c, hi), lo)
        cos, sin = c[:, 4].cos().abs(), c[:, 4].sin().abs()  # the rotated box fits the budget
        c[:, 2] = torch.minimum(c[:, 2], (budget / ((aspect * cos + sin) * (aspect * sin + cos))
                                          ).sqrt()).clamp_min(min(h_min, h_max))
        c[:, 0] = torch.minimum(c[:, 0], W - c[:, 2] * aspect)  # keep the box inside the image
        c[:, 1] = torch.minimum(c[:, 1], H - c[:, 2])
        return c

    def feasible(alpha: torch.Tensor) -> torch.Tensor:
        foot = alpha > 0
        ok = foot.flatten(1).any(1) & (_box_area(foot) <= budget + 1e-6)
        if keepout is not None:
            ok &= ~(foot & keepout.unsqueeze(0)).flatten(1).any(1)
        return ok

    def result(img: torch.Tensor, c: torch.Tensor, alpha: torch.Tensor, fooled: bool,
               score: float, textured: bool = False) -> WatermarkResult:
        x, y, h, a, ang, level = (float(v) for v in c)
        return WatermarkResult(img, {"x": x, "y": y, "height": h, "width": h * aspect,
                                     "alpha": a, "angle": math.degrees(ang), "level": level},
                               fooled, score, evaluations, alpha > 0, textured)

    cand = clip(lo + (hi - lo) * torch.rand(population, 6, generator=g))
    cand[:, 5] = torch.where(torch.arange(population) % 2 == 0, hi[5], lo[5])  # start at the ends
    spread = (hi - lo) * torch.tensor([0.08, 0.08, 0.1, 0.1, 0.15, 0.15])
    best: WatermarkResult | None = None
    best_cand = cand[0]
    evaluations = 0
    for _ in range(generations):
        rendered, alpha = _render(image, logo, cand, quantum=quantum)
        rendered = _stored(image, rendered, alpha, quantum)
        score, fooled = _label_probability(rendered, surrogates, label, jpeg)
        evaluations += len(cand)
        ok = feasible(alpha)
        score = torch.where(ok, score, torch.full_like(score, math.inf))
        fooled &= ok
        if fooled.any():
            i = int(torch.nonzero(fooled)[torch.argmin(score[fooled])])
            return result(rendered[i], cand[i], alpha[i], True, float(score[i]))
        order = torch.argsort(score)
        i = int(order[0])
        if ok[i] and (best is None or float(score[i]) < best.score):
            best = result(rendered[i], cand[i], alpha[i], False, float(score[i]))
            best_cand = cand[i]
        elite = cand[order[: max(4, population // 6)]]
        parents = elite[torch.randint(0, len(elite), (population,), generator=g)]
        cand = clip(parents + spread * torch.randn(population, 6, generator=g))
        cand[: len(elite)] = elite  # keep the elite unchanged
    if best is None:
        return WatermarkResult(image, {}, False, math.inf, evaluations)
    if texture > 0 and texture_steps > 0:
        # the texture's candidates: the search's best placement and a grid of upright boxes of
        # the largest size, fully opaque, on whole pixels, at both ends of the grey range (the
        # texture's reach is alpha x texture, and a placement poor for a flat logo can be good
        # for a textured one)
        h_grid = h_max
        while math.ceil(h_grid * aspect - 1e-6) * math.ceil(h_grid - 1e-6) > budget + 1e-6:
            h_grid *= 0.95  # its footprint at whole-pixel positions fits the budget
        step = float(max(1, int(h_max / 3)))
        ys = torch.arange(0.0, max(H - h_grid, 0.0) + 1, step)
        xs = torch.arange(0.0, max(W - h_grid * aspect, 0.0) + 1, step)
        grid = torch.cartesian_prod(ys, xs, torch.tensor([float(levels[0]), float(levels[1])]))
        ones = torch.ones_like(grid[:, 0])
        grid = torch.stack([grid[:, 1], grid[:, 0], ones * h_grid, ones * alpha_range[1],
                            ones * 0.0, grid[:, 2]], 1)
        pool_c, pool_s = [best_cand[None]], [torch.tensor([best.score])]
        for start in range(0, len(grid), population):
            part = grid[start:start + population]
            rendered, alpha = _render(image, logo, part, quantum=quantum)
            score, _ = _label_probability(_stored(image, rendered, alpha, quantum), surrogates,
                                          label, jpeg)
            evaluations += len(part)
            ok = feasible(alpha)
            pool_c.append(part[ok])
            pool_s.append(score[ok])
        found = _texture(image, surrogates, logo, label, torch.cat(pool_c), torch.cat(pool_s),
                         texture, texture_steps, texture_candidates, jpeg, quantum, step)
        evaluations += found[-1]
        if found[0] is not None and (found[4] or found[3] < best.score):
            img, c, alpha, score, fooled, _ = found
            return result(img, c, alpha, fooled, score, textured=True)
    best.evaluations = evaluations
    return best


def _params(c: torch.Tensor, aspect: float) -> dict[str, float]:
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
            _, alpha = _render(image, logo, cand, quantum=quantum)
        alpha = alpha.unsqueeze(1)
        colour = cand[:, 5].view(-1, 1, 1, 1).expand(-1, image.shape[0], *image.shape[1:])
        delta = torch.zeros_like(colour)
        for step in range(steps + 1):
            delta.requires_grad_(True)
            margin = _margin(image.unsqueeze(0) * (1 - alpha) + alpha * (colour + delta),
                             surrogates, label)
            grad, = torch.autograd.grad(margin.sum(), delta)
            delta = delta.detach()
            if bool((margin < 0).any()) or step == steps:  # score as stored, every view
                with torch.no_grad():
                    out = _stored(image, image.unsqueeze(0) * (1 - alpha)
                                  + alpha * (colour + delta), alpha[:, 0], quantum)
                    score, fooled = _label_probability(out, surrogates, label, jpeg)
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


def gradcam_keepout(image: torch.Tensor, surrogate: Any, fraction: float = 0.25) -> torch.Tensor:
    """Boolean (H, W) mask of the ``fraction`` most salient pixels (Grad-CAM of the predicted
    class on the surrogate's last convolution), to be kept free of the logo."""
    convs = [m for m in surrogate.model.modules() if isinstance(m, torch.nn.Conv2d)]
    feats: list[torch.Tensor] = []
    hook = convs[-1].register_forward_hook(lambda m, i, o: feats.append(o))
    try:
        x = _prep_variants(image[None], surrogate, False)[0].requires_grad_(True)
        logits = surrogate.model(x)
        grad, = torch.autograd.grad(logits[0, logits.argmax()], feats[-1])
    finally:
        hook.remove()
    cam = F.relu((grad.mean(dim=(2, 3), keepdim=True) * feats[-1]).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=image.shape[1:], mode="bilinear", align_corners=False)[0, 0]
    cam = cam.detach()
    if float(cam.max()) <= 0:
        return torch.zeros(image.shape[1:], dtype=torch.bool)
    return (cam >= torch.quantile(cam.flatten(), 1 - fraction)).detach()


class AdversarialWatermark:
    """Method ``adversarial_watermark``: the gateway side of :func:`search_watermark`.

    Profile keys: ``surrogates`` (required), ``logo`` (image file; default: built in, see
    ``logo_style``), ``logo_style`` ("solid": a filled box; "badge": ``logo_text`` knocked out
    of a filled box; "text": the glyphs of ``logo_text``), ``logo_text`` ("PROTECTED"),
    ``max_area_fraction`` (1/16), ``alpha_min``/``alpha_max`` (0.4/1.0), ``max_rotation``
    (degrees, 15), ``keepout_saliency`` (fraction of most salient pixels kept free, 0.25;
    0 = none), ``population`` (48), ``generations`` (10), ``texture`` (0.5; 0 = the flat
    logo), ``texture_steps`` (20), ``jpeg`` (true: also score after JPEG q75). Marked images
    are BurnedInAnnotation material: the seal sets the attribute.
    """

    name = "adversarial_watermark"
    _DEFAULTS: ClassVar[dict[str, Any]] = {
        "logo": None, "logo_style": "solid", "logo_text": "PROTECTED", "max_area_fraction": 1 / 16,
        "alpha_min": 0.4, "alpha_max": 1.0, "max_rotation": 15.0, "keepout_saliency": 0.25,
        "population": 48, "generations": 10, "texture": 0.5, "texture_steps": 20, "jpeg": True}

    def __init__(self, options: dict[str, Any]) -> None:
        from .device import protection_device
        from .surrogate import load_surrogate

        self.options = {**self._DEFAULTS, **options}
        self.device = protection_device()
        self.surrogates = [load_surrogate(Path(p), self.device) for p in options["surrogates"]]
        self.logo = load_logo(self.options["logo"], str(self.options["logo_text"]),
                              str(self.options["logo_style"]))

    @staticmethod
    def validate(options: dict[str, Any]) -> tuple[str, str] | None:
        problem = check_common_options(options, AdversarialWatermark._DEFAULTS)
        if problem:
            return problem
        o = {**AdversarialWatermark._DEFAULTS, **options}

        def number(key: str, low: float, high: float) -> bool:
            return is_number(o[key], low, high)

        if not number("max_area_fraction", 0, 0.25) or o["max_area_fraction"] == 0:
            return "max_area_fraction", "must be in (0, 0.25]"
        for key, low, high in (("alpha_min", 0, 1), ("alpha_max", 0, 1), ("texture", 0, 1),
                               ("max_rotation", 0, 180), ("keepout_saliency", 0, 0.9)):
            if not number(key, low, high):
                return key, f"must be a number in [{low}, {high}]"
        if o["alpha_min"] > o["alpha_max"] or o["alpha_max"] == 0:
            return "alpha_max", "must be > 0 and >= alpha_min"
        for key, low, high in (("population", 4, 4096), ("generations", 1, 1000),
                               ("texture_steps", 0, 1000)):
            v = o[key]
            if not isinstance(v, int) or isinstance(v, bool) or not low <= v <= high:
                return key, f"must be an integer in [{low}, {high}]"
        if o["logo_style"] not in ("solid", "badge", "text"):
            return "logo_style", "must be one of solid, badge, text"
        if not isinstance(o["jpeg"], bool):
            return "jpeg", "must be true or false"
        logo = o["logo"]
        if logo is not None and not Path(str(logo)).is_file():
            return "logo", f"logo file not found: {logo}"
        return None

    def __call__(self, paths: Sequence[Any],
                 progress: ReportProgress | None = None) -> list[Any]:
        """Search a mark for each frame of each instance; ``progress`` hears of every frame
        (the search takes seconds to minutes a frame, so a series would otherwise be silent)."""
        import numpy as np

        from .view import finish, prepare

        o = self.options
        report = progress or (lambda amount: None)
        outcomes = []
        for path in paths:
            view = prepare(path)
            if isinstance(view, Outcome):
                outcomes.append(view)
                report(1)
                continue
            delta = np.zeros_like(view.values)
            marks = []
            frames = view.values.shape[0]
            for f in range(frames):  # each frame gets its own mark
                image = torch.from_numpy(view.values[f].transpose(2, 0, 1)).float()
                keep = (gradcam_keepout(image, self.surrogates[0], float(o["keepout_saliency"]))
                        if o["keepout_saliency"] else None)
                r = search_watermark(image, self.surrogates, self.logo, keepout=keep,
                                     quantum=1.0 / (view.hi - view.lo), **search_settings(o))
                delta[f] = r.image.numpy().transpose(1, 2, 0) - view.values[f]
                marks.append({**r.params, "fooled": r.fooled, "score": r.score,
                              "textured": r.textured})
                report(1 / frames)
            outcomes.append(finish(view, delta, {
                "logo_sha256": _logo_digest(self.logo), "marks": marks,
                "max_area_fraction": float(o["max_area_fraction"]),
                "keepout_saliency": float(o["keepout_saliency"]),
                "texture": float(o["texture"]),
                "surrogates": [s.sha256 for s in self.surrogates]}))
        return outcomes


def search_settings(options: dict[str, Any]) -> dict[str, Any]:
    """The :func:`search_watermark` keywords a profile's options (defaults filled) stand for."""
    o = {**AdversarialWatermark._DEFAULTS, **options}
    return {"max_area_fraction": float(o["max_area_fraction"]),
            "alpha_range": (float(o["alpha_min"]), float(o["alpha_max"])),
            "population": int(o["population"]), "generations": int(o["generations"]),
            "jpeg": bool(o["jpeg"]), "max_rotation": float(o["max_rotation"]),
            "texture": float(o["texture"]), "texture_steps": int(o["texture_steps"])}


def load_logo(path: str | None, text: str = "PROTECTED", style: str = "solid") -> torch.Tensor:
    """The logo's alpha mask: the file's alpha channel (else its luminance), or a built-in one
    (``style`` "solid": a filled square; else :func:`render_text_logo` of ``text``)."""
    if path is None:
        return torch.ones(16, 16) if style == "solid" else render_text_logo(text, 48, style)
    from PIL import Image

    img = Image.open(path)
    alpha = img.getchannel("A") if "A" in img.getbands() else img.convert("L")
    return torch.frombuffer(bytearray(alpha.tobytes()), dtype=torch.uint8).view(
        alpha.height, alpha.width).float() / 255.0


def _logo_digest(logo: torch.Tensor) -> str:
    import hashlib

    return hashlib.sha256((logo * 255).round().to(torch.uint8).numpy().tobytes()).hexdigest()
