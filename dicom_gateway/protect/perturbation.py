"""Method ``adversarial_perturbation``: an imperceptible, bounded perturbation that makes the
surrogate ensemble misclassify (reversible adversarial examples: Liu et al., "Unauthorized AI
cannot recognize me", Pattern Recognition 2023; docs/references.md).

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
from .batching import Batches
from .diversity import transform_for
from .features import FEATURE_LOSSES, feature_layer, feature_loss
from .method import Outcome
from .options import PerturbationOptions
from .skip_gradient import skip_gradients
from .view import View, finish, prepare

__all__ = ["DEFAULTS", "LOSSES", "AdversarialPerturbation", "adapt", "attack", "gradient",
           "smoothing_size", "snapshot_sets"]

DEFAULTS = PerturbationOptions.defaults()  # a profile's defaults, for the lab's own runs
LOSSES = ("ce", "margin", "focus", *FEATURE_LOSSES)


def _adapt(x: Any, surrogate: Any, diversity: float, generator: Any,
           transform: str = "resize-pad") -> Any:
    """Victim-like preprocessing: channels, with probability ``diversity`` a random
    transformation of :mod:`.diversity` (default: input diversity's resize-and-pad, Xie et al.
    CVPR 2019), resize to the surrogate's input size."""
    import torch

    from .diversity import transform as transformed
    from .surrogate import as_input, match_channels

    if diversity > 0 and float(torch.rand((), generator=generator)) < diversity:
        x = match_channels(x, surrogate.info.channels)
        return transformed(x, transform, surrogate.info.input_size, generator)
    return as_input(x, surrogate)


def adapt(x: Any, surrogate: Any) -> Any:
    """``x`` as ``surrogate`` takes it (channels, input size), without input diversity."""
    return _adapt(x, surrogate, 0.0, None)


def _loss(logits: Any, labels: Any, kind: str) -> Any:
    """What the attack ascends: cross-entropy of the label to move away from, or the logit
    margin (best other class minus that class; Carlini and Wagner 2017), which keeps pushing
    past the decision boundary instead of flattening once the softmax saturates."""
    import torch
    import torch.nn.functional as F

    if kind == "ce":
        return F.cross_entropy(logits, labels, reduction="sum")
    true = logits.gather(1, labels[:, None])[:, 0]
    other = logits.masked_fill(F.one_hot(labels, logits.shape[1]).bool(), -torch.inf)
    return (other.max(1).values - true).sum()


def smoothing_size(setting: int | str, height: int, width: int) -> int:
    """The TI kernel size for an image: ``auto`` is an odd size near 1/32 of the shorter side
    (3 px at 48-64, 7 at 224, 17 at 512; off below 48 px), else the setting itself."""
    if setting != "auto":
        return int(setting)
    size = round(min(height, width) / 32)
    return size + 1 - size % 2 if size > 1 else 0


def _smoothing_kernel(size: int, channels: int) -> Any:
    """A normalized Gaussian (sigma = size / 4) for translation-invariant gradients (TI,
    Dong et al. CVPR 2019), one per channel."""
    import torch

    r = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-0.5 * (r / (size / 4)) ** 2)
    k = g[:, None] * g[None, :]
    return (k / k.sum()).expand(channels, 1, size, size).contiguous()


def gradient(adv: Any, surrogates: Sequence[Any], labels: Any, diversity: float,
             generator: Any, loss: str = "ce", scales: int = 1, balance: bool = False,
             transform: str = "resize-pad", copies: int = 1, clean: Any = None) -> Any:
    """The attack's ascent direction at ``adv``: the gradient of the ensemble loss, each
    surrogate seeing ``copies`` randomly transformed views (``transform``, with probability
    ``diversity`` each). ``scales`` > 1 averages over copies scaled by 1/2^i (scale
    invariance, Lin et al. ICLR 2020). ``balance`` normalizes each surrogate's gradient per
    image before summing, so that no single model dominates. The feature-level losses
    (:mod:`.features`) compare with ``clean``, the unperturbed batch; a surrogate without a
    known middle layer uses cross-entropy instead."""
    import torch

    total = torch.zeros_like(adv)
    for s in surrogates:
        adv_ = adv.detach().requires_grad_(True)
        layer = feature_layer(s) if loss in FEATURE_LOSSES else None
        if layer is not None:
            value = sum(feature_loss(loss, s, layer, clean / 2 ** i, adv_ / 2 ** i, labels,
                                     diversity, generator, transform)
                        for i in range(scales) for _ in range(copies))
        else:
            output_loss = "ce" if loss in FEATURE_LOSSES or loss == "focus" else loss
            value, still = 0, torch.zeros(len(adv), device=adv.device)
            for i in range(scales):
                for _ in range(copies):
                    logits = s.model(_adapt(adv_ / 2 ** i, s, diversity, generator, transform))
                    value = value + _loss(logits, labels, output_loss)
                    if loss == "focus":
                        still = still + logits.detach().softmax(1).gather(
                            1, labels[:, None])[:, 0]
        grad, = torch.autograd.grad(value, adv_)
        if balance or loss == "focus":
            grad = grad / grad.abs().mean(dim=(1, 2, 3), keepdim=True).clamp_min(1e-12)
        if loss == "focus":  # each member's share: how much it still sees the label
            grad = grad * (still / (scales * copies))[:, None, None, None]
        total = total + grad
    return total


def snapshot_sets(surrogates: Sequence[Any]) -> list[list[int]]:
    """Indices of the surrogates that are weight snapshots of one training run (``train-surrogate
    --snapshots``: the same ``lgv.init`` in their recipe), one list per run."""
    sets: dict[str, list[int]] = {}
    for i, s in enumerate(surrogates):
        init = (s.info.training.get("lgv") or {}).get("init")
        if init:
            sets.setdefault(str(init), []).append(i)
    return list(sets.values())


def _drawn(surrogates: Sequence[Any], sets: list[list[int]], per_step: int,
           generator: Any) -> list[Any]:
    """This step's ensemble: every surrogate that is no snapshot, and ``per_step`` of each
    snapshot set, drawn without replacement."""
    import torch

    if not sets:
        return list(surrogates)
    left_out: set[int] = set()
    for members in sets:
        order = torch.randperm(len(members), generator=generator).tolist()
        left_out.update(members[j] for j in order[per_step:])
    return [s for i, s in enumerate(surrogates) if i not in left_out]


def attack(x: Any, surrogates: Sequence[Any], epsilon: float = 8 / 255, steps: int = 10,
           momentum: float = 1.0, diversity: float = 0.5, seed: int = 0, labels: Any = None,
           loss: str = "ce", smoothing: int | str = 0, scales: int = 1,
           balance: bool = False, transform: str = "resize-pad", copies: int = 1,
           snapshots_per_step: int = 0, skip_gamma: float = 1.0, polish: int = 0) -> Any:
    """MI-FGSM (Dong et al. CVPR 2018) with input diversity against the ensemble, optionally
    with translation-invariant smoothing of the gradient (``smoothing``: kernel size in
    pixels of ``x``, 0 = off, ``auto``: :func:`smoothing_size`), scale invariance, a
    balanced ensemble, and ``copies`` views per step by ``transform`` (:mod:`.diversity`);
    ``x`` is
    ``(N, C, H, W)`` in [0, 1], L-infinity budget ``epsilon``. ``snapshots_per_step`` > 0:
    of each set of weight snapshots (:func:`snapshot_sets`), only that many drawn per step
    (LGV attacks one snapshot per iteration: Gubri et al., ECCV 2022); 0: all of them.
    ``skip_gamma`` < 1: the gradient through the surrogates' residual branches is scaled by it
    (SGM, :mod:`.skip_gradient`). ``polish`` > 0: that many plain steps after the others, on
    every surrogate, without input diversity, smoothing, momentum or skip-gradient scaling (the
    white-box attack's own last steps: they fool the surrogates themselves).

    ``labels``: the classes to move away from; default the ensemble's clean prediction (the
    gateway has no ground truth; an evaluation with labels passes them).
    """
    import torch
    import torch.nn.functional as F

    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r} (known: {', '.join(LOSSES)})")
    generator = torch.Generator().manual_seed(seed)
    if labels is None:
        with torch.no_grad():
            probs = torch.stack([F.softmax(s.model(_adapt(x, s, 0.0, generator)), 1)
                                 for s in surrogates])
            labels = probs.sum(0).argmax(1)
    smoothing = smoothing_size(smoothing, x.shape[2], x.shape[3])
    transform = transform_for(transform, x.shape[2], x.shape[3])
    kernel = _smoothing_kernel(smoothing, x.shape[1]).to(x.device) if smoothing > 1 else None
    alpha = 2.5 * epsilon / max(steps, 1)  # Madry et al.: reaches the boundary and moves along it
    adv, g = x.clone(), torch.zeros_like(x)
    if loss == "feature":  # the distortion's gradient vanishes at x itself: a random start
        noise = torch.rand(x.shape, generator=generator).to(x) * 2 - 1
        adv = (x + epsilon * noise).clamp(0.0, 1.0)
    sets = snapshot_sets(surrogates) if snapshots_per_step > 0 else []
    with skip_gradients(surrogates, skip_gamma):
        for _ in range(steps):
            step_surrogates = _drawn(surrogates, sets, snapshots_per_step, generator)
            grad = gradient(adv, step_surrogates, labels, diversity, generator, loss, scales,
                            balance, transform, copies, clean=x)
            if kernel is not None:
                grad = F.conv2d(grad, kernel, padding=smoothing // 2, groups=x.shape[1])
                grad = grad[..., :x.shape[2], :x.shape[3]]
            g = momentum * g + grad / grad.abs().mean(dim=(1, 2, 3),
                                                      keepdim=True).clamp_min(1e-12)
            with torch.no_grad():
                adv = adv + alpha * g.sign()
                adv = (x + (adv - x).clamp(-epsilon, epsilon)).clamp(0.0, 1.0)
    for _ in range(polish):
        grad = gradient(adv, surrogates, labels, 0.0, generator, loss, clean=x)
        with torch.no_grad():
            adv = adv + alpha * grad.sign()
            adv = (x + (adv - x).clamp(-epsilon, epsilon)).clamp(0.0, 1.0)
    return adv.detach()


class AdversarialPerturbation:
    """The gateway method: settings from the profile, a series batch per call."""

    name = "adversarial_perturbation"

    def __init__(self, options: PerturbationOptions | Mapping[str, Any]) -> None:
        from .device import protection_device
        from .surrogate import load_surrogate

        self.options = (options if isinstance(options, PerturbationOptions)
                        else PerturbationOptions.parse(options))
        self.device = protection_device()
        self.surrogates = [load_surrogate(p, self.device) for p in self.options.surrogates]
        self.batches = Batches(self.options.batch, self.device)

    def attack_options(self) -> dict[str, Any]:
        """The keyword arguments of :func:`attack` this profile sets (the certificate's)."""
        o = self.options
        return {"epsilon": o.epsilon, "steps": o.steps, "momentum": o.momentum,
                "diversity": o.diversity, "loss": o.loss, "smoothing": o.smoothing,
                "scales": o.scales, "balance": o.balance, "transform": o.transform,
                "copies": o.copies, "snapshots_per_step": o.snapshots_per_step,
                "skip_gamma": o.skip_gamma, "polish": o.polish}

    def __call__(self, paths: Sequence[Path],
                 progress: ReportProgress | None = None) -> list[Outcome]:
        """Protect a series: frames of the same size are attacked together, ``batch`` at a time
        (``progress`` hears each batch, a frame being a share of its instance)."""
        outcomes: list[Outcome | None] = [None] * len(paths)
        ready: dict[tuple[int, ...], list[tuple[int, View]]] = {}
        for index, path in enumerate(paths):
            view = prepare(path)
            if isinstance(view, Outcome):
                outcomes[index] = view
            else:
                ready.setdefault(view.values.shape[1:], []).append((index, view))
        parameters = {**self.attack_options(), "surrogates": [s.sha256 for s in self.surrogates]}
        for shape, group in ready.items():
            values = np.concatenate([v.values for _, v in group])
            shares = np.concatenate([np.full(len(v.values), 1 / len(v.values)) for _, v in group])
            delta = self._perturb(shape, values, shares, progress)
            offset = 0
            for index, view in group:
                frames = view.values.shape[0]
                outcomes[index] = finish(view, delta[offset:offset + frames], parameters)
                offset += frames
        return [outcome for outcome in outcomes if outcome is not None]

    def _perturb(self, shape: tuple[int, ...], values: np.ndarray, shares: np.ndarray,
                 progress: ReportProgress | None) -> np.ndarray:
        """The perturbation of frames ``values`` (N, H, W, C) of one size, in chunks that fit
        the device (:class:`~.batching.Batches`); ``shares``: each frame's part of its
        instance, for ``progress``."""
        import torch

        deltas = []

        def chunk(start: int, stop: int) -> None:
            frames = values[start:stop].transpose(0, 3, 1, 2)
            x = torch.from_numpy(np.ascontiguousarray(frames)).float().to(self.device)
            adv = attack(x, self.surrogates, **self.attack_options())
            deltas.append((adv - x).cpu().numpy().transpose(0, 2, 3, 1))
            if progress is not None:
                progress(float(shares[start:stop].sum()))

        self.batches.run(len(values), shape, chunk)
        return np.concatenate(deltas).astype(np.float64)
