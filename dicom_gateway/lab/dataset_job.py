"""``dicom-gateway protect-dataset``: make a labelled release unlearnable as a whole.

Reads a labelled set (layouts in :mod:`.datasets`), runs the min-min loop of
:mod:`dicom_gateway.protect.unlearnable` over it, and writes the protected release in the same
layout under the
output folder with ``report.json`` (the settings that applied, PSNR, surrogate loss, rounds,
time). Values are quantized as stored: 8-bit for ``.npz`` and image folders, float32 for
``.h5``. The originals are not written (they stay with the hospital). After every round the
loop's state is kept in the output folder (:mod:`.round_checkpoint`), so that a rerun of an
interrupted job resumes there.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DatasetError
from ..protect.quality import psnr
from ..protect.surrogate import (
    SEGMENTATION_ARCHITECTURES,
    build_model,
    load_surrogate,
)
from ..protect.unlearnable import error_minimizing_noise, segmentation_budget, shortcut_pattern
from ..protect.unlearnable_settings import DEFAULTS, applied_settings, default_rounds
from .datasets import ImageSet, load_images
from .round_checkpoint import RoundCheckpoint
from .train import describe

__all__ = ["DatasetJob", "protect_dataset"]


@dataclass
class DatasetJob:
    """Settings of one run (the CLI's options); the method's defaults are a profile's
    (:data:`dicom_gateway.protect.unlearnable_settings.DEFAULTS`), so a release and a gateway
    series get the same
    protection unless told otherwise."""

    data: Path
    out: Path
    split: str = "train"
    surrogate: Path | None = None
    arch: str | None = None
    epsilon: float = DEFAULTS["epsilon"]
    rounds: int | None = DEFAULTS["rounds"]  # None: by task, default_rounds
    train_steps: int = DEFAULTS["train_steps"]
    pgd_steps: int = DEFAULTS["pgd_steps"]
    contour_radius: int = DEFAULTS["contour_radius"]
    texture_floor: float = DEFAULTS["texture_floor"]
    init: str = DEFAULTS["init"]
    lr: float = DEFAULTS["lr"]
    mask_suffix: str = "_mask"
    seed: int = 0


def _model(job: DatasetJob, data: ImageSet) -> tuple[torch.nn.Module, str]:
    if job.surrogate is not None:
        s = load_surrogate(job.surrogate)
        if (s.info.task == "segmentation") != (data.task == "segmentation"):
            raise DatasetError(f"{job.surrogate} is a {s.info.task} model, the data is {data.task}")
        return s.model, s.sha256
    arch = job.arch or ("unet-small" if data.task == "segmentation" else "cnn-small")
    if (arch in SEGMENTATION_ARCHITECTURES) != (data.task == "segmentation"):
        raise DatasetError(f"architecture {arch} does not fit {data.task} data")
    classes = data.classes or tuple(
        str(c) for c in range(int(data.labels.max()) + 1))  # type: ignore[union-attr]
    return build_model(describe(arch, data, classes)), f"fresh {arch}"


def protect_dataset(job: DatasetJob, progress: bool = True) -> dict[str, Any]:
    """Run the job; return the report (also written as ``report.json``)."""
    torch.manual_seed(job.seed)
    data = load_images(job.data, job.split, mask_suffix=job.mask_suffix)
    model, surrogate = _model(job, data)
    started = time.monotonic()
    segmentation = data.masks is not None
    if data.masks is not None:
        targets = data.masks
        budget = segmentation_budget(data.images, targets, job.epsilon, job.contour_radius,
                                     job.texture_floor)
        init = shortcut_pattern(targets, budget) if job.init == "pattern" else None
    else:
        assert data.labels is not None
        targets, budget, init = data.labels, torch.full_like(data.images, job.epsilon), None
    rounds = job.rounds if job.rounds is not None else default_rounds(segmentation)
    checkpoint = RoundCheckpoint(job.out, _job_key(job, data, targets, surrogate, rounds))
    resume = checkpoint.load()
    if resume is not None and progress:
        print(f"protect-dataset: resuming after round {resume.done} of {rounds} "
              f"({checkpoint.path.name})", file=sys.stderr)
    result = error_minimizing_noise(data.images, targets, budget, model, rounds=rounds,
                                    train_steps=job.train_steps, pgd_steps=job.pgd_steps,
                                    lr=job.lr, seed=job.seed, progress=progress, init=init,
                                    resume=resume, after_round=checkpoint.save)
    protected = (data.images + result.delta).clamp(0, 1)
    if job.data.suffix != ".h5" and job.data.suffix != ".hdf5":
        protected = (protected * 255).round() / 255  # stored as 8-bit
    elapsed = time.monotonic() - started
    job.out.mkdir(parents=True, exist_ok=True)
    written = _write(job, data, protected)
    report = {
        "method": "unlearnable", "task": data.task, "data": job.data.name, "split": job.split,
        "images": len(data), **applied_settings(vars(job), segmentation, result.rounds),
        "rounds": result.rounds, "surrogate": surrogate, "surrogate_final_loss": (
            result.final_loss if result.rounds else None),
        "psnr_db": psnr(data.images, protected),
        "max_abs_change": float((protected - data.images).abs().max()),
        "changed_fraction": float(((protected - data.images).abs() > 1e-6).float().mean()),
        "seconds": elapsed, "resumed_after_round": resume.done if resume else None,
        "written": str(written)}
    (job.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    checkpoint.remove()
    return report


def _job_key(job: DatasetJob, data: ImageSet, targets: torch.Tensor, surrogate: str,
             rounds: int) -> str:
    """What a checkpoint must match to be resumed: the images and targets, the surrogate and
    every setting that changes the loop."""
    digest = hashlib.sha256()
    for tensor in (data.images, targets):  # hashed in place: a release may be gigabytes
        digest.update(np.ascontiguousarray(tensor.numpy()).data)
    settings = {k: v for k, v in vars(job).items() if k not in ("data", "out")}
    digest.update(json.dumps({**settings, "rounds": rounds, "surrogate": surrogate},
                             sort_keys=True, default=str).encode())
    return digest.hexdigest()


def _write(job: DatasetJob, data: ImageSet, protected: torch.Tensor) -> Path:
    if job.data.suffix == ".npz":
        target = job.out / job.data.name
        with np.load(job.data) as src:
            arrays = {k: src[k] for k in src.files}
        images = (protected * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        original = arrays[f"{job.split}_images"]
        arrays[f"{job.split}_images"] = images.reshape(original.shape)
        np.savez_compressed(target, **arrays)
        return target
    if job.data.suffix in (".h5", ".hdf5"):
        import h5py

        target = job.out / job.data.name
        with h5py.File(target, "w") as f:
            f.create_dataset("images", data=protected.numpy().astype(np.float32),
                             compression="gzip")
            assert data.masks is not None
            f.create_dataset("labels", data=data.masks.numpy().astype(np.float32),
                             compression="gzip")
        return target
    return _write_folder(job.out, data, protected)


def _write_folder(out: Path, data: ImageSet, protected: torch.Tensor) -> Path:
    from PIL import Image

    def save(arr: torch.Tensor, path: Path) -> None:
        a = (arr * 255).round().to(torch.uint8).numpy()
        Image.fromarray(a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0)).save(path)

    for i, image in enumerate(protected):
        if data.masks is not None:
            (out / "images").mkdir(exist_ok=True)
            (out / "masks").mkdir(exist_ok=True)
            save(image, out / "images" / f"{i:05d}.png")
            save(data.masks[i], out / "masks" / f"{i:05d}.png")
        else:
            assert data.labels is not None
            folder = out / data.classes[int(data.labels[i])]
            folder.mkdir(exist_ok=True)
            save(image, folder / f"{i:05d}.png")
    return out
