"""Search for a visible adversarial watermark (MedLocker / MIAD-MARK, after Adv-watermark's
black-box search; ``shared/research/protection-methods.md`` §1.3).

A logo's position, scale and transparency are searched so the surrogate ensemble stops
predicting the image's label. Every generation renders the whole population in one batch
(``grid_sample`` with one affine transform per candidate) and scores it in one forward pass per
surrogate, averaged over the victim's likely preprocessing (antialiased resize, and the same
followed by JPEG q75). The keep-out mask (lesion mask and/or the surrogate's Grad-CAM saliency)
is a hard constraint: a candidate touching it is discarded. The logo's box never exceeds
``max_area_fraction`` of the image. The search stops as soon as a candidate fools every
surrogate under every preprocessing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .method import Outcome, check_common_options

__all__ = ["AdversarialWatermark", "WatermarkResult", "gradcam_keepout", "render_text_logo",
           "search_watermark"]


@dataclass
class WatermarkResult:
    image: torch.Tensor  # (C, H, W) in [0, 1]
    params: dict[str, float]  # x, y (top-left, pixels), height, width (pixels), alpha
    fooled: bool
    score: float  # mean probability of the label left (lower is better)
    evaluations: int  # candidates scored


def render_text_logo(text: str = "PROTECTED", height: int = 48) -> torch.Tensor:
    """A logo as an alpha mask ``(h, w)`` in [0, 1], rendered with PIL's default font."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=height)
    left, top, right, bottom = font.getbbox(text)
    img = Image.new("L", (right - left + 4, bottom - top + 4), 0)
    ImageDraw.Draw(img).text((2 - left, 2 - top), text, fill=255, font=font)
    return torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(
        img.height, img.width).float() / 255.0


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


def _prep_variants(x: torch.Tensor, surrogate: Any, jpeg: bool) -> list[torch.Tensor]:
    c = surrogate.info.channels
    if x.shape[1] != c:
        x = x.mean(1, keepdim=True).expand(-1, c, -1, -1)
    x = F.interpolate(x, size=surrogate.info.input_size, mode="bilinear", align_corners=False,
                      antialias=True)
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


def _render(image: torch.Tensor, logo: torch.Tensor, cand: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Blend a white logo into ``image`` for each candidate (x, y, h, alpha, in pixels)."""
    _, H, W = image.shape
    n = cand.shape[0]
    aspect = logo.shape[1] / logo.shape[0]
    x, y, h, a = cand.unbind(1)
    w = h * aspect
    theta = torch.zeros(n, 2, 3, device=image.device)
    theta[:, 0, 0] = W / w
    theta[:, 1, 1] = H / h
    theta[:, 0, 2] = (W - 1 - 2 * x - (w - 1)) / w  # map the logo box onto the image grid
    theta[:, 1, 2] = (H - 1 - 2 * y - (h - 1)) / h
    grid = F.affine_grid(theta, (n, 1, H, W), align_corners=True)
    mask = F.grid_sample(logo.expand(n, 1, -1, -1), grid, mode="bilinear", padding_mode="zeros",
                         align_corners=True)
    alpha = mask * a.view(-1, 1, 1, 1)
    return image.unsqueeze(0) * (1 - alpha) + alpha, mask[:, 0]


def search_watermark(image: torch.Tensor, surrogates: Sequence[Any], logo: torch.Tensor,
                     keepout: torch.Tensor | None = None, label: int | None = None,
                     max_area_fraction: float = 1 / 16, alpha_range: tuple[float, float] = (0.4, 1.0),
                     population: int = 48, generations: int = 10, jpeg: bool = True,
                     seed: int = 0) -> WatermarkResult:
    """Find (x, y, height, alpha) for ``logo`` on ``image`` (C, H, W) in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    _, H, W = image.shape
    aspect = logo.shape[1] / logo.shape[0]
    h_max = min(math.sqrt(max_area_fraction * H * W / aspect), H, W / aspect)
    h_min = max(h_max * 0.4, 2.0)
    if label is None:
        with torch.no_grad():
            label = int(sum(F.softmax(s.model(_prep_variants(image[None], s, False)[0]), 1)
                            for s in surrogates).argmax())
    lo = torch.tensor([0.0, 0.0, h_min, alpha_range[0]])
    hi = torch.tensor([W - h_min * aspect, H - h_min, h_max, alpha_range[1]])

    def clip(c: torch.Tensor) -> torch.Tensor:
        c = torch.maximum(torch.minimum(c, hi), lo)
        c[:, 0] = torch.minimum(c[:, 0], W - c[:, 2] * aspect)  # keep the box inside the image
        c[:, 1] = torch.minimum(c[:, 1], H - c[:, 2])
        return c

    cand = clip(lo + (hi - lo) * torch.rand(population, 4, generator=g))
    best, best_score, evaluations = None, math.inf, 0
    for _ in range(generations):
        rendered, mask = _render(image, logo, cand)
        score, fooled = _label_probability(rendered, surrogates, label, jpeg)
        evaluations += len(cand)
        if keepout is not None:  # hard constraint: zero overlap with the keep-out mask
            touches = ((mask > 0.02) & keepout.unsqueeze(0)).flatten(1).any(1)
            score = torch.where(touches, torch.full_like(score, math.inf), score)
            fooled &= ~touches
        order = torch.argsort(score)
        if fooled.any():
            i = int(torch.nonzero(fooled)[torch.argmin(score[fooled])])
            return WatermarkResult(rendered[i], _params(cand[i], aspect), True, float(score[i]),
                                   evaluations)
        if float(score[order[0]]) < best_score:
            best_score, best = float(score[order[0]]), (rendered[order[0]], cand[order[0]])
        elite = cand[order[: max(4, population // 6)]]
        spread = (hi - lo) * torch.tensor([0.08, 0.08, 0.1, 0.1])
        parents = elite[torch.randint(0, len(elite), (population,), generator=g)]
        cand = clip(parents + spread * torch.randn(population, 4, generator=g))
        cand[: len(elite)] = elite  # keep the elite unchanged
    if best is None:
        return WatermarkResult(image, {}, False, math.inf, evaluations)
    return WatermarkResult(best[0], _params(best[1], aspect), False, best_score, evaluations)


def _params(c: torch.Tensor, aspect: float) -> dict[str, float]:
    x, y, h, a = (float(v) for v in c)
    return {"x": x, "y": y, "height": h, "width": h * aspect, "alpha": a}


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

    Profile keys: ``surrogates`` (required), ``logo`` (image file; default: rendered text),
    ``logo_text`` ("PROTECTED"), ``max_area_fraction`` (1/16), ``alpha_min``/``alpha_max``
    (0.4/1.0), ``keepout_saliency`` (fraction of most salient pixels kept free, 0.25; 0 = none),
    ``population`` (48), ``generations`` (10). Marked images are BurnedInAnnotation material:
    the seal sets the attribute.
    """

    name = "adversarial_watermark"
    _DEFAULTS: dict[str, Any] = {"logo": None, "logo_text": "PROTECTED",
                                 "max_area_fraction": 1 / 16, "alpha_min": 0.4, "alpha_max": 1.0,
                                 "keepout_saliency": 0.25, "population": 48, "generations": 10}

    def __init__(self, options: dict[str, Any]) -> None:
        from .device import protection_device
        from .surrogate import load_surrogate

        self.options = {**self._DEFAULTS, **options}
        self.device = protection_device()
        self.surrogates = [load_surrogate(Path(p), self.device) for p in options["surrogates"]]
        self.logo = _load_logo(self.options["logo"], str(self.options["logo_text"]))

    @staticmethod
    def validate(options: dict[str, Any]) -> tuple[str, str] | None:
        problem = check_common_options(options, AdversarialWatermark._DEFAULTS)
        if problem:
            return problem
        frac = options.get("max_area_fraction", 1 / 16)
        if not isinstance(frac, (int, float)) or not 0 < frac <= 0.25:
            return "max_area_fraction", "must be in (0, 0.25]"
        logo = options.get("logo")
        if logo is not None and not Path(str(logo)).is_file():
            return "logo", f"logo file not found: {logo}"
        return None

    def __call__(self, paths: Sequence[Any]) -> list[Any]:
        import numpy as np

        from .view import finish, prepare

        o = self.options
        outcomes = []
        for path in paths:
            view = prepare(path)
            if isinstance(view, Outcome):
                outcomes.append(view)
                continue
            delta = np.zeros_like(view.values)
            marks = []
            for f in range(view.values.shape[0]):  # each frame gets its own mark
                image = torch.from_numpy(view.values[f].transpose(2, 0, 1)).float()
                keep = (gradcam_keepout(image, self.surrogates[0], float(o["keepout_saliency"]))
                        if o["keepout_saliency"] else None)
                r = search_watermark(image, self.surrogates, self.logo, keepout=keep,
                                     max_area_fraction=float(o["max_area_fraction"]),
                                     alpha_range=(float(o["alpha_min"]), float(o["alpha_max"])),
                                     population=int(o["population"]),
                                     generations=int(o["generations"]))
                delta[f] = r.image.numpy().transpose(1, 2, 0) - view.values[f]
                marks.append({**r.params, "fooled": r.fooled, "score": r.score})
            outcomes.append(finish(view, delta, {
                "logo_sha256": _logo_digest(self.logo), "marks": marks,
                "max_area_fraction": float(o["max_area_fraction"]),
                "keepout_saliency": float(o["keepout_saliency"]),
                "surrogates": [s.sha256 for s in self.surrogates]}))
        return outcomes


def _load_logo(path: str | None, text: str) -> torch.Tensor:
    if path is None:
        return render_text_logo(text, 48)
    from PIL import Image

    img = Image.open(path)
    alpha = img.getchannel("A") if "A" in img.getbands() else img.convert("L")
    return torch.frombuffer(bytearray(alpha.tobytes()), dtype=torch.uint8).view(
        alpha.height, alpha.width).float() / 255.0


def _logo_digest(logo: torch.Tensor) -> str:
    import hashlib

    return hashlib.sha256((logo * 255).round().to(torch.uint8).numpy().tobytes()).hexdigest()
