"""Input transformations for transfer attacks: each step of the attack takes the gradient
through randomly transformed copies of the image, so that the perturbation keeps working
under the changes an unknown model's pipeline makes and does not fit one surrogate's view.

- ``resize-pad``: input diversity (Xie et al., "Improving transferability of adversarial
  examples with input diversity", CVPR 2019): the image shrunk to 80-100 % at a random offset.
- ``augment``: the augmentation a partner trains with (:func:`practitioner_augment`: random
  resized crop, flip, small rotation, brightness and contrast jitter), as expectation over
  transformation (Athalye et al., "Synthesizing robust adversarial examples", ICML 2018): a
  model trained to ignore these changes sees what survives them.
- ``block-shuffle``: the image cut into a 2x2 or 3x3 grid of blocks, the blocks
  shuffled and each turned by a small random angle (block shuffle and rotation, Wang et al.,
  "Boosting adversarial transferability by block shuffle and rotation", CVPR 2024), which
  breaks the surrogate's reliance on the global layout.
- ``spectrum``: spectrum simulation (Long et al., "Frequency domain model augmentation for
  adversarial attack", ECCV 2022): at the surrogate's input size, Gaussian noise added and each
  coefficient of the image's 2-D DCT scaled by a random factor in [1 - rho, 1 + rho], which
  imitates models that weigh the frequency bands differently (the paper's sigma = 16/255,
  rho = 0.5). ``augment-spectrum`` draws the partner's augmentation first, then the spectrum.

Every transformation is differentiable (grid sampling) and drawn per image from ``generator``,
so a seeded attack is repeatable.
"""

from __future__ import annotations

import functools
import math
from typing import Any

__all__ = ["AUGMENT_FROM", "SPECTRUM_RHO", "SPECTRUM_SIGMA", "TRANSFORMS", "block_shuffle",
           "dct_matrix", "practitioner_augment", "resize_pad", "spectrum", "transform",
           "transform_for"]

TRANSFORMS = ("resize-pad", "augment", "block-shuffle", "spectrum", "augment-spectrum")
SPECTRUM_SIGMA = 16 / 255  # the spectrum simulation's noise (Long et al. 2022)
SPECTRUM_RHO = 0.5  # its DCT coefficients are scaled by U(1 - rho, 1 + rho)


def _uniform(n: int, low: float, high: float, generator: Any) -> Any:
    import torch

    return low + (high - low) * torch.rand(n, generator=generator)


def resize_pad(x: Any, size: tuple[int, int], generator: Any) -> Any:
    """``x`` shrunk to 80-100 % of ``size`` and placed at a random offset (zeros around)."""
    import torch
    import torch.nn.functional as F

    scale = 0.8 + 0.2 * float(torch.rand((), generator=generator))
    inner = (max(2, int(size[0] * scale)), max(2, int(size[1] * scale)))
    x = F.interpolate(x, size=inner, mode="bilinear", align_corners=False, antialias=True)
    top = int(torch.randint(0, size[0] - inner[0] + 1, (), generator=generator))
    left = int(torch.randint(0, size[1] - inner[1] + 1, (), generator=generator))
    return F.pad(x, (left, size[1] - inner[1] - left, top, size[0] - inner[0] - top))


def _affine(x: Any, theta: Any) -> Any:
    import torch.nn.functional as F

    grid = F.affine_grid(theta.to(x.dtype).to(x.device), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def practitioner_augment(x: Any, masks: Any = None, generator: Any = None
                         ) -> tuple[Any, Any]:
    """The augmentation a practitioner trains with at 224 (torchvision's RandomResizedCrop,
    flip, small rotation and intensity jitter, per sample): crop 64-100 % of the area at an
    aspect ratio in [3/4, 4/3], rotate by up to 10 degrees, flip half of the images,
    brightness and contrast +-10 %. ``masks`` (if any) follow the geometry, nearest-neighbour.
    The evaluation trains its victims with it; the attack's ``augment`` draws from it."""
    import torch
    import torch.nn.functional as F

    n = x.shape[0]

    def u(low: float, high: float) -> Any:
        return _uniform(n, low, high, generator)

    scale = u(0.8, 1.0)
    aspect = torch.exp(u(math.log(3 / 4), math.log(4 / 3)) / 2)
    sx, sy = (scale * aspect).clamp(max=1.0), (scale / aspect).clamp(max=1.0)
    angle = u(-math.pi / 18, math.pi / 18)
    flip = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
    tx, ty = (1 - sx) * u(-1, 1), (1 - sy) * u(-1, 1)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack([torch.stack([sx * cos * flip, -sy * sin, tx], 1),
                         torch.stack([sx * sin * flip, sy * cos, ty], 1)], 1).to(x)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    contrast = u(0.9, 1.1).view(-1, 1, 1, 1).to(x)
    brightness = u(-0.1, 0.1).view(-1, 1, 1, 1).to(x)
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    out = ((out - mean) * contrast + mean + brightness).clamp(0, 1)
    if masks is not None:
        masks = F.grid_sample(masks, grid, mode="nearest", padding_mode="zeros",
                              align_corners=False)
    return out, masks


def block_shuffle(x: Any, generator: Any, max_angle: float = 24.0) -> Any:
    """``x`` cut into an even grid of 2x2 or 3x3 blocks (drawn), the blocks shuffled (one
    permutation for the batch) and each turned by up to ``max_angle`` degrees about its
    centre."""
    import torch
    import torch.nn.functional as F

    h, w = x.shape[2], x.shape[3]
    parts = int(torch.randint(2, 4, (), generator=generator))

    def cuts(length: int) -> list[int]:
        return [length * i // parts for i in range(parts + 1)]

    rows, cols = cuts(h), cuts(w)
    blocks = []
    for r in range(len(rows) - 1):
        for c in range(len(cols) - 1):
            block = x[:, :, rows[r]:rows[r + 1], cols[c]:cols[c + 1]]
            if min(block.shape[2:]) < 2:
                blocks.append(block)
                continue
            angle = math.radians(max_angle) * float(2 * torch.rand((), generator=generator) - 1)
            cos, sin = math.cos(angle), math.sin(angle)
            theta = torch.tensor([[cos, -sin, 0.0], [sin, cos, 0.0]]).expand(len(x), 2, 3)
            blocks.append(_affine(block, theta))
    order = torch.randperm(len(blocks), generator=generator).tolist()
    # a block moving into a slot one pixel taller or wider (sizes not divisible by the grid)
    # is resized to it, so the image keeps its size
    slots = [(rows[r + 1] - rows[r], cols[c + 1] - cols[c])
             for r in range(len(rows) - 1) for c in range(len(cols) - 1)]
    placed = [F.interpolate(blocks[i], size=slot, mode="bilinear", align_corners=False)
              if tuple(blocks[i].shape[2:]) != slot else blocks[i]
              for i, slot in zip(order, slots, strict=True)]
    per_row = len(cols) - 1
    return torch.cat([torch.cat(placed[r * per_row:(r + 1) * per_row], 3)
                      for r in range(len(rows) - 1)], 2)


@functools.lru_cache(maxsize=8)
def dct_matrix(n: int) -> Any:
    """The orthonormal DCT-II matrix of size ``n`` (rows: frequencies): ``D @ v`` is the
    transform of ``v`` and ``D.T`` its inverse."""
    import torch

    k = torch.arange(n, dtype=torch.float64).view(-1, 1)
    i = torch.arange(n, dtype=torch.float64).view(1, -1)
    d = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2 / n)
    d[0] /= math.sqrt(2)
    return d.float()


def spectrum(x: Any, generator: Any, sigma: float = SPECTRUM_SIGMA,
             rho: float = SPECTRUM_RHO) -> Any:
    """One spectrum-simulation copy of ``x``: ``IDCT(DCT(x + noise) * mask)`` with Gaussian
    ``noise`` of deviation ``sigma`` and ``mask`` uniform in [1 - rho, 1 + rho] per
    coefficient (not clamped: the surrogate sees the transformed signal as it is)."""
    import torch

    noise = torch.randn(x.shape, generator=generator).to(x) * sigma
    mask = (1 - rho + 2 * rho * torch.rand(x.shape, generator=generator)).to(x)
    dh, dw = dct_matrix(x.shape[2]).to(x), dct_matrix(x.shape[3]).to(x)
    freq = dh @ (x + noise) @ dw.T
    return dh.T @ (freq * mask) @ dw


# below this many pixels on the shorter side, ``auto`` is resize-and-pad: on 28x28 thumbnails
# it transferred better than the partner's augmentation in 15 of 18 victim comparisons, while
# at 224x224 the augmentation did (decisions 0017, 0032)
AUGMENT_FROM = 64


def transform_for(setting: str, height: int, width: int) -> str:
    """The transformation for an image: ``auto`` is ``resize-pad`` below :data:`AUGMENT_FROM`
    pixels on the shorter side and ``augment`` from there up; else the setting itself."""
    if setting != "auto":
        return setting
    return "resize-pad" if min(height, width) < AUGMENT_FROM else "augment"


def transform(x: Any, kind: str, size: tuple[int, int], generator: Any) -> Any:
    """One random copy of ``x`` by the transformation ``kind`` (of :data:`TRANSFORMS`), at
    ``size`` (the surrogate's input size; ``augment`` and ``block-shuffle`` resize after,
    ``spectrum`` works at ``size``)."""
    import torch.nn.functional as F

    if kind == "resize-pad":
        return resize_pad(x, size, generator)
    if kind in ("augment", "augment-spectrum"):
        x = practitioner_augment(x, generator=generator)[0]
    elif kind == "block-shuffle":
        x = block_shuffle(x, generator)
    elif kind != "spectrum":
        raise ValueError(f"unknown transformation {kind!r} (known: {', '.join(TRANSFORMS)})")
    if tuple(x.shape[2:]) != tuple(size):
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    return spectrum(x, generator) if kind.endswith("spectrum") else x
