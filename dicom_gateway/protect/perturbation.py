"""Method ``adversarial_perturbation``: an imperceptible, bounded perturbation that makes the
surrogate ensemble misclassify (reversible-adversarial-example style; see
``shared/research/protection-methods.md``).

Attack: momentum iterative FGSM (MI-FGSM, Dong et al. 2018) with input diversity (DI, Xie et
al. 2019) over an ensemble of surrogates, each seeing the image through its own victim-like
preprocessing (channel adaptation and resize to its input size), L-infinity budget
``epsilon`` in the normalized [0, 1] view. The untargeted label is the ensemble's own clean
prediction (the gateway has no ground truth). The result is mapped back to the stored integer
domain at native resolution and rounded; :mod:`dicom_gateway.pixels` writes it losslessly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..progress import ReportProgress
from .method import Outcome, check_common_options, is_number, parse_epsilon
from .view import View, finish, prepare

__all__ = ["AdversarialPerturbation", "attack"]

_DEFAULTS = {"epsilon": 8 / 255, "steps": 10, "momentum": 1.0, "diversity": 0.5, "batch": 8}


def _adapt(x: Any, surrogate: Any, diversity: float, generator: Any) -> Any:
    """Victim-like preprocessing: channels, optional random resize-and-pad, resize to input."""
    import torch
    import torch.nn.functional as F

    c = surrogate.info.channels
    if x.shape[1] != c:
        x = x.mean(1, keepdim=True).expand(-1, c, -1, -1) if c in (1, 3) else x
        x = x[:, :c] if x.shape[1] > c else x
    size = surrogate.info.input_size
    if diversity > 0 and float(torch.rand((), generator=generator)) < diversity:
        scale = 0.85 + 0.15 * float(torch.rand((), generator=generator))
        inner = (max(2, int(size[0] * scale)), max(2, int(size[1] * scale)))
        x = F.interpolate(x, size=inner, mode="bilinear", align_corners=False, antialias=True)
        top = int(torch.randint(0, size[0] - inner[0] + 1, (), generator=generator))
        left = int(torch.randint(0, size[1] - inner[1] + 1, (), generator=generator))
        return F.pad(x, (left, size[1] - inner[1] - left, top, size[0] - inner[0] - top))
    if tuple(x.shape[2:]) != tuple(size):  # antialiased, as image libraries resize
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    return x


def attack(x: Any, surrogates: Sequence[Any], epsilon: float = 8 / 255, steps: int = 10,
           momentum: float = 1.0, diversity: float = 0.5, seed: int = 0, labels: Any = None) -> Any:
    """MI-FGSM + DI against the ensemble; ``x`` is ``(N, C, H, W)`` in [0, 1].

    ``labels``: the classes to move away from; default the ensemble's clean prediction (the
    gateway has no ground truth; an evaluation with labels passes them).
    """
    import torch
    import torch.nn.functional as F

    generator = torch.Generator().manual_seed(seed)
    if labels is None:
        with torch.no_grad():
            probs = sum(F.softmax(s.model(_adapt(x, s, 0.0, generator)), 1) for s in surrogates)
            labels = probs.argmax(1)
    alpha = 2.5 * epsilon / max(steps, 1)  # Madry et al.: reaches the boundary and moves along it
    adv, g = x.clone(), torch.zeros_like(x)
    for _ in range(steps):
        adv.requires_grad_(True)
        loss = sum(F.cross_entropy(s.model(_adapt(adv, s, diversity, generator)), labels)
                   for s in surrogates) / len(surrogates)
        grad, = torch.autograd.grad(loss, adv)
        g = momentum * g + grad / grad.abs().mean(dim=(1, 2, 3), keepdim=True).clamp_min(1e-12)
        with torch.no_grad():
            adv = adv + alpha * g.sign()
            adv = (x + (adv - x).clamp(-epsilon, epsilon)).clamp(0.0, 1.0)
    return adv.detach()


class AdversarialPerturbation:
    """The gateway method: settings from the profile, a series batch per call."""

    name = "adversarial_perturbation"

    def __init__(self, options: Mapping[str, Any]) -> None:
        from .device import protection_device
        from .surrogate import load_surrogate

        self.options = {**_DEFAULTS, **options}
        self.device = protection_device()
        self.surrogates = [load_surrogate(Path(p), self.device) for p in options["surrogates"]]

    @staticmethod
    def validate(options: Mapping[str, Any]) -> tuple[str, str] | None:
        problem = check_common_options(options, _DEFAULTS)
        if problem:
            return problem
        try:
            parse_epsilon(options.get("epsilon", _DEFAULTS["epsilon"]))
        except ValueError as exc:
            return "epsilon", str(exc)
        for key, top in (("steps", 1000), ("batch", 4096)):
            value = options.get(key, _DEFAULTS[key])
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= top:
                return key, f"must be an integer in [1, {top}]"
        for key, low, high in (("momentum", 0.0, 10.0), ("diversity", 0.0, 1.0)):
            if not is_number(options.get(key, _DEFAULTS[key]), low, high):
                return key, f"must be a number in [{low:g}, {high:g}]"
        return None

    def __call__(self, paths: Sequence[Path],
                 progress: ReportProgress | None = None) -> list[Outcome]:
        """Protect a series: frames of the same size are attacked together, ``batch`` at a time
        (``progress`` hears each batch, a frame being a share of its instance)."""
        import torch

        outcomes: list[Outcome | None] = [None] * len(paths)
        ready: dict[tuple[int, ...], list[tuple[int, View]]] = {}
        for index, path in enumerate(paths):
            view = prepare(path)
            if isinstance(view, Outcome):
                outcomes[index] = view
            else:
                ready.setdefault(view.values.shape[1:], []).append((index, view))
        o = self.options
        parameters = {"epsilon": float(o["epsilon"]), "steps": int(o["steps"]),
                      "momentum": float(o["momentum"]), "diversity": float(o["diversity"]),
                      "surrogates": [s.sha256 for s in self.surrogates]}
        for group in ready.values():
            values = np.concatenate([v.values for _, v in group])
            shares = np.concatenate([np.full(len(v.values), 1 / len(v.values)) for _, v in group])
            deltas = []
            for start in range(0, len(values), int(o["batch"])):
                chunk = values[start:start + int(o["batch"])].transpose(0, 3, 1, 2)
                x = torch.from_numpy(np.ascontiguousarray(chunk)).float().to(self.device)
                adv = attack(x, self.surrogates, float(o["epsilon"]), int(o["steps"]),
                             float(o["momentum"]), float(o["diversity"]))
                deltas.append((adv - x).cpu().numpy().transpose(0, 2, 3, 1))
                if progress is not None:
                    progress(float(shares[start:start + int(o["batch"])].sum()))
            delta = np.concatenate(deltas).astype(np.float64)
            offset = 0
            for index, view in group:
                frames = view.values.shape[0]
                outcomes[index] = finish(view, delta[offset:offset + frames], parameters)
                offset += frames
        return [o for o in outcomes if o is not None]
