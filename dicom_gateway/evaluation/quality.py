"""Image quality of protected images against the originals: PSNR and SSIM (Wang et al. 2004,
Gaussian window 11, sigma 1.5, K1 0.01, K2 0.03), on values in [0, 1] quantized to the native
depth (8-bit for MedMNIST and the fundus photos, float for the MSD patches)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..protect.unlearnable import psnr  # the one PSNR of the project (pooled MSE, in dB)

__all__ = ["psnr", "ssim"]


def _window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    g = torch.exp(-((torch.arange(size, dtype=torch.float64) - size // 2) ** 2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]


def ssim(original: torch.Tensor, protected: torch.Tensor) -> float:
    """Mean SSIM over images and channels (valid windows only; images smaller than the window
    use a window of their size)."""
    x, y = original.double(), protected.double()
    c = x.shape[1]
    size = min(11, x.shape[2], x.shape[3])
    w = _window(size).to(x.device).expand(c, 1, size, size)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, w, groups=c)
    mx, my = blur(x), blur(y)
    vx, vy, cov = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return float(s.mean())
