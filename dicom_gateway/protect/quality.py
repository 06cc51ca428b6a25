"""Image quality of protected images against the originals, the project's one PSNR and SSIM:
PSNR over a whole set (pooled mean squared error, in dB) and SSIM (Wang et al. 2004, Gaussian
window 11, sigma 1.5, K1 0.01, K2 0.03), both on values in [0, 1]. The dataset job, the
evaluation and the benchmarks report these."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["psnr", "ssim"]


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB for images in [0, 1], over the whole set (pooled mean squared error, in
    double precision); inf when identical."""
    mse = float(((a.double() - b.double()) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def _window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    g = torch.exp(-((torch.arange(size, dtype=torch.float64) - size // 2) ** 2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]


def ssim(original: torch.Tensor, protected: torch.Tensor, chunk: int = 16) -> float:
    """Mean SSIM over images and channels (valid windows only; images smaller than the window
    use a window of their size), ``chunk`` images at a time: the convolution's working memory
    grows with the window's 121 taps (618 images of 224x224 at once asked for 27 GB)."""
    total, count = 0.0, 0
    for start in range(0, len(original), chunk):
        s = _ssim_map(original[start:start + chunk], protected[start:start + chunk])
        total, count = total + float(s.sum()), count + s.numel()
    return total / max(count, 1)


def _ssim_map(original: torch.Tensor, protected: torch.Tensor) -> torch.Tensor:
    x, y = original.double(), protected.double()
    c = x.shape[1]
    size = min(11, x.shape[2], x.shape[3])
    w = _window(size).to(x.device).expand(c, 1, size, size)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, w, groups=c)
    mx, my = blur(x), blur(y)
    vx, vy, cov = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    return ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
