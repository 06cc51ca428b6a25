"""What an unauthorized user does to protected images before using them.

Test-time (input transformations): JPEG at quality 90/75/50, 3x3 median filter, Gaussian blur
(sigma 1), bit-depth reduction to 4 bits, random resize-crop (scale 0.8 to 1, back to size).
Against visible marks: cropping (blanking) or inpainting the mark's box (the attacker sees it;
we give the exact box, an upper bound on their localization) and a removal network trained on
(clean, marked) pairs the attacker makes with the same kind of logo at random places.
Against unlearnable data (training-time): image shortcut squeezing (ISS, Liu et al. 2023: JPEG
quality 10, grayscale) of the training set, and PGD adversarial training (Madry et al.).
"""

from __future__ import annotations

import io
import math
import sys
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["TEST_TIME", "adversarial_trainer", "blank_box", "grayscale", "inpaint_box", "jpeg",
           "removal_network", "train_removal_network"]


def jpeg(x: torch.Tensor, quality: int) -> torch.Tensor:
    """A real JPEG round trip (Pillow, 4:2:0 for colour) of each image of a [0, 1] batch."""
    from PIL import Image

    out = []
    for img in (x.clamp(0, 1) * 255).round().to(torch.uint8).numpy():
        arr = img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=quality)
        back = np.asarray(Image.open(io.BytesIO(buf.getvalue())))
        out.append(back[None] if back.ndim == 2 else back.transpose(2, 0, 1))
    return torch.from_numpy(np.stack(out)).float() / 255


def median3(x: torch.Tensor) -> torch.Tensor:
    p = F.pad(x, (1, 1, 1, 1), mode="replicate")
    return p.unfold(2, 3, 1).unfold(3, 3, 1).reshape(*x.shape, 9).median(-1).values


def gaussian(x: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    r = max(1, math.ceil(2 * sigma))
    g = torch.exp(-torch.arange(-r, r + 1, dtype=x.dtype) ** 2 / (2 * sigma**2))
    g = g / g.sum()
    c = x.shape[1]
    p = F.pad(x, (r, r, r, r), mode="reflect")
    p = F.conv2d(p, g.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(p, g.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def bit_depth(x: torch.Tensor, bits: int = 4) -> torch.Tensor:
    levels = 2**bits - 1
    return torch.round(x * levels) / levels


def resize_crop(x: torch.Tensor, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    h, w = x.shape[2:]
    out = torch.empty_like(x)
    for i in range(len(x)):
        s = 0.8 + 0.2 * float(torch.rand((), generator=g))
        ch, cw = max(2, round(h * s)), max(2, round(w * s))
        top = int(torch.randint(0, h - ch + 1, (), generator=g))
        left = int(torch.randint(0, w - cw + 1, (), generator=g))
        out[i] = F.interpolate(x[i:i + 1, :, top:top + ch, left:left + cw], size=(h, w),
                               mode="bilinear", align_corners=False, antialias=True)[0]
    return out


def grayscale(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] != 3:
        return x
    g = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
    return g.expand(-1, 3, -1, -1).contiguous()


TEST_TIME: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "jpeg90": lambda x: jpeg(x, 90),
    "jpeg75": lambda x: jpeg(x, 75),
    "jpeg50": lambda x: jpeg(x, 50),
    "median3": median3,
    "gaussian1": gaussian,
    "bits4": bit_depth,
    "resize_crop": resize_crop,
}


def _box(footprint: torch.Tensor) -> torch.Tensor:
    """The bounding boxes of ``(N, H, W)`` footprints, as masks."""
    out = torch.zeros_like(footprint)
    for i, f in enumerate(footprint):
        ys, xs = torch.nonzero(f, as_tuple=True)
        if len(ys):
            out[i, int(ys.min()):int(ys.max()) + 1, int(xs.min()):int(xs.max()) + 1] = True
    return out


def blank_box(x: torch.Tensor, footprint: torch.Tensor) -> torch.Tensor:
    """Crop the mark away: its box filled with the image's mean value."""
    box = _box(footprint).unsqueeze(1)
    return torch.where(box, x.mean(dim=(2, 3), keepdim=True).expand_as(x), x)


def inpaint_box(x: torch.Tensor, footprint: torch.Tensor, iterations: int = 200) -> torch.Tensor:
    """Harmonic inpainting of the mark's box (repeated 4-neighbour averaging from its rim)."""
    box = _box(footprint).unsqueeze(1).expand_as(x)
    y = torch.where(box, x.mean(dim=(2, 3), keepdim=True).expand_as(x), x)
    kernel = torch.tensor([[0, 0.25, 0], [0.25, 0, 0.25], [0, 0.25, 0]]).view(1, 1, 3, 3)
    kernel = kernel.expand(x.shape[1], 1, 3, 3)
    for _ in range(iterations):
        avg = F.conv2d(F.pad(y, (1, 1, 1, 1), mode="replicate"), kernel, groups=x.shape[1])
        y = torch.where(box, avg, x)
    return y


class _Removal(nn.Module):
    """A small residual encoder-decoder (the attacker's watermark-removal network)."""

    def __init__(self, channels: int) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(cout, cout, 3, padding=1), nn.ReLU())
        self.enc1, self.enc2 = block(channels, 32), block(32, 64)
        self.up = nn.ConvTranspose2d(64, 32, 2, 2)
        self.dec = block(64, 32)
        self.out = nn.Conv2d(32, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(F.max_pool2d(e1, 2))
        up = self.up(e2)
        up = F.pad(up, (0, x.shape[3] - up.shape[3], 0, x.shape[2] - up.shape[2]))
        return (x + self.out(self.dec(torch.cat([up, e1], 1)))).clamp(0, 1)


def removal_network(channels: int) -> nn.Module:
    """An untrained removal network (to load a trained one's weights into)."""
    return _Removal(channels)


def train_removal_network(clean: torch.Tensor, marked: torch.Tensor, epochs: int, seed: int,
                          progress: bool = True) -> nn.Module:
    """Fit the removal network on pairs (L1 loss, Adam); return it in eval mode."""
    torch.manual_seed(seed)
    net = _Removal(clean.shape[1])
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    started = time.monotonic()
    for epoch in range(epochs):
        net.train()
        order = torch.randperm(len(clean))
        total = 0.0
        for i in range(0, len(clean), 64):
            idx = order[i:i + 64]
            opt.zero_grad()
            loss = F.l1_loss(net(marked[idx]), clean[idx])
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        if progress:
            print(f"\r  removal network epoch {epoch + 1}/{epochs} L1 {total / len(clean):.4f} "
                  f"{time.monotonic() - started:.0f}s", end="", file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    return net.eval()


def adversarial_trainer(data: object, val: object, epochs: int, seed: int, epsilon: float = 8 / 255,
                        steps: int = 3, progress: bool = True) -> Callable[[nn.Module], float]:
    """A trainer for :func:`.victims.train_cached`: PGD adversarial training (``steps`` steps
    of size epsilon/2 within the L-infinity ball), best epoch by clean validation accuracy."""
    from ..train import accuracy

    def train(model: nn.Module) -> float:
        torch.manual_seed(seed)
        images, labels = data.images, data.labels  # type: ignore[attr-defined]
        opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
        best, state = -1.0, None
        started = time.monotonic()
        for epoch in range(epochs):
            order = torch.randperm(len(images))
            for i in range(0, len(images), 64):
                idx = order[i:i + 64]
                x, y = images[idx], labels[idx]
                model.eval()
                d = (torch.rand_like(x) * 2 - 1) * epsilon
                for _ in range(steps):
                    d.requires_grad_(True)
                    grad, = torch.autograd.grad(F.cross_entropy(model((x + d).clamp(0, 1)), y),
                                                d)
                    d = (d.detach() + epsilon / 2 * grad.sign()).clamp(-epsilon, epsilon)
                model.train()
                opt.zero_grad()
                F.cross_entropy(model((x + d).clamp(0, 1)), y).backward()
                opt.step()
            score = accuracy(model, val.images, val.labels)  # type: ignore[attr-defined]
            if score > best:
                best, state = score, {k: v.clone() for k, v in model.state_dict().items()}
            if progress:
                print(f"\r  adversarial training epoch {epoch + 1}/{epochs} val acc {score:.3f}"
                      f" {time.monotonic() - started:.0f}s", end="", file=sys.stderr,
                      flush=True)
        if progress:
            print(file=sys.stderr)
        if state is not None:
            model.load_state_dict(state)
        return best
    return train
