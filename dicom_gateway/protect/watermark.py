"""Method ``adversarial_watermark``: a visible mark that makes unauthorized models misread the
image (MIAD-MARK: Wei et al., arXiv:2303.09858, 2023; full citations in
``docs/references.md``). The search itself is :mod:`.watermark_search`; this module holds the
gateway side: the profile's options, the logo, and one mark per frame of each instance.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from ..progress import ReportProgress
from .method import Outcome
from .options import WatermarkOptions
from .watermark_search import WatermarkResult, prepare_variants, search_watermark

__all__ = ["DEFAULTS", "AdversarialWatermark", "WatermarkResult", "gradcam_keepout", "load_logo",
           "render_text_logo", "search_settings", "search_watermark"]

DEFAULTS = WatermarkOptions.defaults()  # a profile's defaults, for the lab's own runs


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


def gradcam_keepout(image: torch.Tensor, surrogate: Any, fraction: float = 0.25) -> torch.Tensor:
    """Boolean (H, W) mask of the ``fraction`` most salient pixels (Grad-CAM of the predicted
    class on the surrogate's last convolution), to be kept free of the logo."""
    convs = [m for m in surrogate.model.modules() if isinstance(m, torch.nn.Conv2d)]
    feats: list[torch.Tensor] = []
    hook = convs[-1].register_forward_hook(lambda m, i, o: feats.append(o))
    try:
        x = prepare_variants(image[None], surrogate, False)[0].requires_grad_(True)
        logits = surrogate.model(x)
        grad, = torch.autograd.grad(logits[0, logits.argmax()], feats[-1])
    finally:
        hook.remove()
    cam = F.relu((grad.mean(dim=(2, 3), keepdim=True) * feats[-1]).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=image.shape[1:], mode="bilinear", align_corners=False)[0, 0]
    cam = cam.detach()
    if float(cam.max()) <= 0:
        return torch.zeros(image.shape[1:], dtype=torch.bool, device=image.device)
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

    def __init__(self, options: WatermarkOptions | Mapping[str, Any]) -> None:
        from .device import protection_device
        from .surrogate import load_surrogate

        self.options = (options if isinstance(options, WatermarkOptions)
                        else WatermarkOptions.parse(options))
        self.device = protection_device()
        self.surrogates = [load_surrogate(p, self.device) for p in self.options.surrogates]
        logo = self.options.logo
        self.logo = load_logo(None if logo is None else str(logo), self.options.logo_text,
                              self.options.logo_style)

    def __call__(self, paths: Sequence[Any],
                 progress: ReportProgress | None = None) -> list[Any]:
        """Search a mark for each frame of each instance; ``progress`` hears of every frame
        (the search takes seconds to minutes a frame, so a series would otherwise be silent)."""
        import numpy as np

        from .view import finish, prepare

        o = self.options
        settings = search_settings(o)
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
                image = torch.from_numpy(view.values[f].transpose(2, 0, 1)).float().to(
                    self.device)  # the surrogates' device
                keep = (gradcam_keepout(image, self.surrogates[0], o.keepout_saliency)
                        if o.keepout_saliency else None)
                r = search_watermark(image, self.surrogates, self.logo, keepout=keep,
                                     quantum=1.0 / (view.hi - view.lo), **settings)
                delta[f] = r.image.cpu().numpy().transpose(1, 2, 0) - view.values[f]
                marks.append({**r.params, "fooled": r.fooled, "score": r.score,
                              "textured": r.textured})
                report(1 / frames)
            outcomes.append(finish(view, delta, {
                "logo_sha256": _logo_digest(self.logo), "marks": marks,
                "max_area_fraction": o.max_area_fraction,
                "keepout_saliency": o.keepout_saliency,
                "texture": o.texture,
                "surrogates": [s.sha256 for s in self.surrogates]}))
        return outcomes


def search_settings(options: WatermarkOptions | Mapping[str, Any]) -> dict[str, Any]:
    """The :func:`search_watermark` keywords a profile's options stand for (a mapping: over the
    defaults)."""
    o = options.as_dict() if isinstance(options, WatermarkOptions) else {**DEFAULTS, **options}
    return {"max_area_fraction": float(o["max_area_fraction"]),
            "alpha_range": (float(o["alpha_min"]), float(o["alpha_max"])),
            "population": int(o["population"]), "generations": int(o["generations"]),
            "jpeg": bool(o["jpeg"]), "max_rotation": float(o["max_rotation"]),
            "texture": float(o["texture"]), "texture_steps": int(o["texture_steps"]),
            "scoring": str(o["scoring"])}


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
