"""Unlearnable examples: error-minimizing noise that gives a model trained on the released data
a shortcut instead of the anatomy (UMed: Lin et al., arXiv:2403.14250, 2024, for segmentation;
sample-wise EM: Huang et al., ICLR 2021, arXiv:2101.04898, for classification; full citations
in ``docs/references.md``).

Both run the bi-level *min-min* loop over a whole release (a dataset, or a series in the
gateway): a surrogate is trained for a few steps on the perturbed images, then every image's
perturbation is updated by projected sign-gradient steps that *minimize* the surrogate's loss,
until the surrogate's loss on the perturbed data is below ``stop_loss`` or ``rounds`` are done.

Segmentation (UMed): the perturbation lives only on the ROI and its contour band. The band
(dilation minus erosion of the mask, ``contour_radius`` pixels) gets the full budget
``epsilon``; the ROI interior gets ``epsilon`` times a texture weight from a local-binary-
pattern map, so smooth tissue is barely touched. UMed trains two U-Net generators (contour and
texture) to amortize the noise over images; here the perturbation itself is optimized per image
(the release is protected as a whole, so nothing needs amortizing), with the same loss
(Dice + cross-entropy), the same support and the same budget.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..progress import Progress, ReportProgress
from .method import Outcome, StudyContext, failed
from .options import UnlearnableOptions
from .surrogate import segmentation_loss
from .unlearnable_settings import DEFAULTS, applied_settings, default_rounds
from .view import View

__all__ = ["DEFAULTS", "RoundState", "Unlearnable", "UnlearnableResult", "applied_settings",
           "contour_band",
           "default_rounds", "error_minimizing_noise", "segmentation_budget",
           "shortcut_pattern", "texture_weight"]


def _dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    return F.max_pool2d(mask, 2 * radius + 1, stride=1, padding=radius) if radius else mask


def contour_band(masks: torch.Tensor, radius: int = 3) -> torch.Tensor:
    """Pixels within ``radius`` of the mask's boundary, both sides: dilation minus erosion."""
    eroded = 1 - _dilate(1 - masks, radius)
    return (_dilate(masks, radius) - eroded).clamp(0, 1)


def texture_weight(x: torch.Tensor, floor: float = 0.25) -> torch.Tensor:
    """Per-pixel texture in [floor, 1] from a local binary pattern: the number of 0/1
    transitions around the 8-neighbour code, over 4 (flat regions and ramps have 0, edges and
    spots, the "uniform" patterns, 2; non-uniform texture 4 or more and gets the full budget),
    on the channel mean, averaged over a 3x3 window."""
    gray = x.mean(1, keepdim=True)
    padded = F.pad(gray, (1, 1, 1, 1), mode="replicate")
    h, w = gray.shape[2:]
    ring = [(0, 0), (0, 1), (0, 2), (1, 2), (2, 2), (2, 1), (2, 0), (1, 0)]
    bits = torch.stack([(padded[:, :, dy:dy + h, dx:dx + w] > gray + 1 / 512).float()
                        for dy, dx in ring])
    transitions = (bits - bits.roll(1, dims=0)).abs().sum(0) / 4
    smooth = F.avg_pool2d(transitions, 3, stride=1, padding=1, count_include_pad=False)
    return floor + (1 - floor) * smooth.clamp(0, 1)


def segmentation_budget(x: torch.Tensor, masks: torch.Tensor, epsilon: float,
                        radius: int = 3, floor: float = 0.25) -> torch.Tensor:
    """UMed's per-pixel L-infinity budget: ``epsilon`` on the contour band, ``epsilon`` times
    the texture weight inside the ROI, 0 elsewhere; shaped like ``x``."""
    band = contour_band(masks, radius)
    interior = (masks - band).clamp(0, 1)
    budget = epsilon * (band + interior * texture_weight(x, floor))
    return budget.expand_as(x).contiguous()



@dataclass
class UnlearnableResult:
    delta: torch.Tensor  # like the images, |delta| <= budget, images + delta in [0, 1]
    rounds: int
    final_loss: float  # the surrogate's loss on the perturbed release at the end
    evaluations: int  # surrogate forward+backward passes per image


@dataclass
class RoundState:
    """Where the min-min loop stands after a whole round: enough to go on in another process
    exactly as the loop would have gone on (``protect-dataset`` keeps one after every round,
    so that an interrupted release resumes instead of starting over)."""

    done: int  # rounds completed
    delta: torch.Tensor
    model: dict[str, Any]  # the surrogate's state_dict
    optimizer: dict[str, Any]
    generator: torch.Tensor  # state of the generator that draws the training batches
    rng: torch.Tensor  # torch's global RNG state
    final: float
    evaluations: float


@dataclass(frozen=True)
class _Loop:
    """The fixed inputs of one min-min run."""

    x: torch.Tensor
    targets: torch.Tensor
    budget: torch.Tensor
    model: nn.Module
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    step: float
    batch: int
    train_steps: int
    pgd_steps: int


def _train(loop: _Loop, delta: torch.Tensor, opt: torch.optim.Optimizer,
           generator: torch.Generator) -> None:
    """The surrogate's steps on the perturbed release (the inner *min* over the weights)."""
    x, model = loop.x, loop.model
    model.train()
    if len(x) < 2:  # one image (a single-frame instance): BatchNorm keeps its running
        for m in model.modules():  # statistics, as batch statistics of one are undefined
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()
    for _ in range(loop.train_steps):
        idx = torch.randint(0, len(x), (min(loop.batch, len(x)),), generator=generator)
        opt.zero_grad()
        loop.loss_fn(model((x[idx] + delta[idx]).clamp(0, 1)), loop.targets[idx]).backward()
        opt.step()


def _descend(loop: _Loop, delta: torch.Tensor, advanced: Callable[[float], None]) -> float:
    """Every image's perturbation a few projected sign steps down the surrogate's loss (the
    outer *min*), in place; returns the mean loss on the perturbed release."""
    x, batch, model = loop.x, loop.batch, loop.model
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    total = 0.0
    for i in range(0, len(x), batch):
        xb, tb, bb = x[i:i + batch], loop.targets[i:i + batch], loop.budget[i:i + batch]
        d = delta[i:i + batch].clone()
        for _ in range(loop.pgd_steps):
            d.requires_grad_(True)
            loss = loop.loss_fn(model((xb + d).clamp(0, 1)), tb)
            grad, = torch.autograd.grad(loss, d)
            with torch.no_grad():
                d = d - loop.step * grad.sign()
                d = torch.maximum(torch.minimum(d, bb), -bb)
                d = (xb + d).clamp(0, 1) - xb
        with torch.no_grad():
            delta[i:i + batch] = d
            total += float(loop.loss_fn(model(xb + d), tb)) * len(xb)
        if i + batch < len(x):  # the round's last batch: drawn by the caller, with the loss
            advanced((i + batch) / len(x))
    for p in model.parameters():
        p.requires_grad_(True)
    return total / len(x)


def error_minimizing_noise(x: torch.Tensor, targets: torch.Tensor, budget: torch.Tensor,
                           model: nn.Module, loss_fn: Callable[[torch.Tensor, torch.Tensor],
                                                               torch.Tensor] | None = None,
                           rounds: int = 20, train_steps: int = 10, pgd_steps: int = 10,
                           step: float | None = None, batch: int = 32, lr: float = 1e-3,
                           stop_loss: float = 0.01, seed: int = 0, progress: bool = False,
                           init: torch.Tensor | None = None,
                           on_progress: Callable[[float], None] | None = None,
                           resume: RoundState | None = None,
                           after_round: Callable[[RoundState], None] | None = None
                           ) -> UnlearnableResult:
    """The min-min loop over a release ``x`` ``(N, C, H, W)`` in [0, 1].

    ``targets`` are masks ``(N, 1, H, W)`` (loss: Dice + BCE) or labels ``(N,)`` (cross-
    entropy); ``budget`` is the per-pixel bound (a tensor like ``x``); ``model`` is the
    surrogate, trained in place. ``step`` defaults to a tenth of the largest budget.
    ``progress`` draws a bar of the rounds on stderr; ``on_progress`` hears the share of the
    rounds done, after every batch of images (a round over a large release takes minutes).
    ``after_round`` receives the loop's state after every round; given back as ``resume`` (with
    the same inputs) the loop goes on from there and ends as an uninterrupted run would.
    """
    if loss_fn is None:
        loss_fn = segmentation_loss if targets.ndim == 4 else F.cross_entropy
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    loop = _Loop(x, targets, budget, model, loss_fn,
                 step if step is not None else float(budget.max()) / 10, batch, train_steps,
                 pgd_steps)
    delta = torch.zeros_like(x) if init is None else init.clone()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    evaluations, final, done = 0.0, float("inf"), 0
    if resume is not None:
        done, delta, final, evaluations = (resume.done, resume.delta.clone(), resume.final,
                                           resume.evaluations)
        model.load_state_dict(resume.model)
        opt.load_state_dict(resume.optimizer)
        generator.set_state(resume.generator)
        torch.set_rng_state(resume.rng)
    bar = Progress(rounds, "rounds") if progress and rounds else None
    note = ""

    def advanced(round_share: float) -> None:
        """The loop is ``done - 1 + round_share`` rounds through."""
        if bar is not None:
            bar.update(done - 1 + round_share, note)
        if on_progress is not None:
            on_progress((done - 1 + round_share) / rounds)

    while done < rounds and not final < stop_loss:
        done += 1
        _train(loop, delta, opt, generator)
        evaluations += train_steps * min(batch, len(x)) / len(x)
        final = _descend(loop, delta, advanced)
        evaluations += pgd_steps + 1
        note = f"surrogate loss on protected data {final:.4f}"
        advanced(1.0)
        if after_round is not None:
            after_round(RoundState(
                done, delta.detach().clone(),
                {k: v.detach().clone() for k, v in model.state_dict().items()},
                copy.deepcopy(opt.state_dict()), generator.get_state(), torch.get_rng_state(),
                final, evaluations))
    if bar is not None:
        bar.close()
    return UnlearnableResult(delta.detach(), done, final, round(evaluations))


def shortcut_pattern(masks: torch.Tensor, budget: torch.Tensor) -> torch.Tensor:
    """The starting perturbation for segmentation: a pixel checkerboard at the full budget, in
    phase inside the ROI and in opposite phase on the band outside it, so the ROI and its rim
    carry a pattern a first convolution separates trivially (the shortcut min-min refines)."""
    h, w = masks.shape[-2:]
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    checker = ((yy + xx) % 2 * 2 - 1).to(budget.dtype)
    return budget * checker * (2 * masks - 1)


class Unlearnable:
    """Method ``unlearnable`` in the gateway: a series is one release.

    Segmentation (the surrogate is a segmenter): the ROI comes from a DICOM SEG instance of the
    same study (:mod:`.masks`); SEG instances themselves pass unchanged (they are the labels
    being shared); an image the SEG does not cover is left unchanged (no ROI, nothing to hide);
    a series with no SEG at all is refused (``no_roi_mask``, quarantined).
    Classification (the surrogate is a classifier): the label of each instance is the value of
    ``label_tag`` looked up in ``classes``; an instance without one is refused (``no_label``).
    The surrogate is a starting point: the min-min loop fine-tunes a copy on the release.
    Fully convolutional surrogates run at the image's own resolution.
    """

    name = "unlearnable"

    def __init__(self, options: UnlearnableOptions | Mapping[str, Any]) -> None:
        from .device import protection_device
        from .surrogate import load_surrogate

        self.options = (options if isinstance(options, UnlearnableOptions)
                        else UnlearnableOptions.parse(options))
        self.device = protection_device()
        self.surrogate = load_surrogate(self.options.surrogates[0], self.device)

    def __call__(self, paths: Sequence[Path], progress: ReportProgress | None = None,
                 study: StudyContext | None = None) -> list[Outcome]:
        """Protect a series as one release; ``progress`` hears each shape group's instances
        as shares of its min-min rounds. A segmentation surrogate protects the ROIs of the
        study's DICOM SEG instances (``study``, from the worker)."""
        from pydicom import dcmread
        from pydicom.tag import Tag

        from .masks import SEGMENTATION_STORAGE, find_segmentations
        from .view import prepare

        outcomes: list[Outcome | None] = [None] * len(paths)
        views: list[tuple[int, View]] = []
        for index, path in enumerate(paths):
            head = dcmread(path, stop_before_pixels=True)
            if str(head.get("SOPClassUID", "")) == SEGMENTATION_STORAGE:
                outcomes[index] = Outcome(source=path, output=path,
                                          parameters={"passed": "segmentation labels"})
                continue
            view = prepare(path)
            if isinstance(view, Outcome):
                outcomes[index] = view
            else:
                views.append((index, view))
        segmentation = self.surrogate.info.task == "segmentation"
        targets: dict[int, torch.Tensor] = {}
        if segmentation and views:
            rois = find_segmentations(study.segmentations if study is not None else ())
            if not any(str(v.ds.SOPInstanceUID) in rois for _, v in views):
                for index, view in views:
                    outcomes[index] = failed(view.path, "no_roi_mask", "unlearnable needs the ROI: "
                                             "no DICOM SEG in the study references this series")
                views = []
            for index, view in views:
                frames, rows, cols = view.values.shape[:3]
                per = rois.get(str(view.ds.SOPInstanceUID), {})
                m = np.zeros((frames, 1, rows, cols), np.float32)
                for f, roi in per.items():
                    if 0 <= f < frames and roi.shape == (rows, cols):
                        m[f, 0] = roi
                targets[index] = torch.from_numpy(m)
        elif views:
            tag, classes = str(self.options.label_tag), list(self.options.classes or ())
            kept = []
            for index, view in views:
                element = view.ds.get(Tag(tag))
                value = None if element is None else str(element.value)
                if value not in classes:
                    # the value itself may be clinical data: it stays out of logs and reasons
                    what = "is missing" if value is None else "is not one of the configured classes"
                    outcomes[index] = failed(view.path, "no_label", f"{tag} {what}")
                    continue
                targets[index] = torch.full((view.values.shape[0],), classes.index(value))
                kept.append((index, view))
            views = kept
        groups: dict[tuple[int, ...], list[tuple[int, View]]] = {}
        for index, view in views:
            groups.setdefault(view.values.shape[1:], []).append((index, view))
        for group in groups.values():
            self._protect_group(group, targets, outcomes, segmentation,
                                progress or (lambda amount: None))
        return [o for o in outcomes if o is not None]

    def _protect_group(self, group: list[tuple[int, View]], targets: dict[int, torch.Tensor],
                       outcomes: list[Outcome | None], segmentation: bool,
                       report: ReportProgress) -> None:
        import copy

        from .view import finish

        o = self.options.as_dict()
        x = torch.from_numpy(np.ascontiguousarray(np.concatenate(
            [v.values for _, v in group]).transpose(0, 3, 1, 2))).float().to(self.device)
        y = torch.cat([targets[i] for i, _ in group]).to(self.device)
        if x.shape[1] != self.surrogate.info.channels:
            for index, view in group:
                outcomes[index] = failed_outcome(view.path, x.shape[1],
                                                 self.surrogate.info.channels)
            return
        try:  # the noise lives at native size: the surrogate must take the image as it is
            with torch.no_grad():
                self.surrogate.model.eval()(x[:1])
        except RuntimeError:
            for index, view in group:
                outcomes[index] = failed(view.path, "surrogate_mismatch",
                                         f"the image ({x.shape[2]}x{x.shape[3]}) is too small "
                                         f"for the surrogate (trained at "
                                         f"{'x'.join(map(str, self.surrogate.info.input_size))})")
            return
        eps = float(o["epsilon"])
        if segmentation:
            budget = segmentation_budget(x, y, eps, int(o["contour_radius"]),
                                         float(o["texture_floor"]))
            init = shortcut_pattern(y, budget) if o["init"] == "pattern" else None
        else:
            budget, init = torch.full_like(x, eps), None
        model = copy.deepcopy(self.surrogate.model)
        rounds = o["rounds"] if o["rounds"] is not None else default_rounds(segmentation)
        reported = 0.0

        def share(fraction: float) -> None:  # the group's instances, as the rounds go
            nonlocal reported
            report(len(group) * fraction - reported)
            reported = len(group) * fraction

        result = error_minimizing_noise(x, y, budget, model, rounds=int(rounds),
                                        train_steps=int(o["train_steps"]),
                                        pgd_steps=int(o["pgd_steps"]), lr=float(o["lr"]),
                                        init=init, on_progress=share)
        delta = result.delta.cpu().numpy().transpose(0, 2, 3, 1).astype(np.float64)
        parameters = {"task": self.surrogate.info.task,
                      **applied_settings(o, segmentation, result.rounds),
                      "rounds": result.rounds, "release_size": len(x),
                      "surrogates": [self.surrogate.sha256]}
        offset = 0
        for index, view in group:
            frames = view.values.shape[0]
            outcomes[index] = finish(view, delta[offset:offset + frames], parameters)
            offset += frames
        share(1.0)  # the rounds may stop early (the loss reached stop_loss), or be none


def failed_outcome(path: Path, image_channels: int, surrogate_channels: int) -> Outcome:
    return failed(path, "surrogate_mismatch", f"the surrogate takes {surrogate_channels} "
                  f"channel(s), the image has {image_channels}")
