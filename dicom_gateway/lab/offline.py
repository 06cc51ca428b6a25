"""``dicom-gateway protect``: apply a profile to files and folders, outside the gateway.

Files are grouped by series (a batch per series, as in the gateway) and written to ``--out`` as
``<SOPInstanceUID>.dcm``. A file that cannot be protected is reported with its reason and
nothing is written for it (fail closed); the exit code is then non-zero. A progress bar on
stderr counts instances with an ETA, inside a long series too for methods that report their
progress (:class:`~dicom_gateway.protect.ProtectionMethod`).
"""

from __future__ import annotations

import shutil
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset

from ..errors import ConfigError, GatewayError
from ..metrics import Metrics
from ..progress import Progress
from ..seal.service import SealService
from ..settings import Config
from ..stage import ProtectionStage, configure_device, study_context

__all__ = ["protect_files"]


def _dicom_files(inputs: Iterable[Path]) -> Iterable[Path]:
    for path in inputs:
        candidates = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        yield from candidates


def protect_files(config: Config, profile: str, inputs: Sequence[Path], out: Path,
                  progress: bool = True, partner: str | None = None) -> tuple[int, list[str]]:
    """Protect ``inputs`` with ``profile``, sealed for ``partner`` when the profile changes
    pixels (required then); return (instances written, problems)."""
    stage = ProtectionStage(config.profiles, Metrics())
    method = config.profiles[profile].method
    sealer = None
    if method != "none":
        why = f"profile {profile!r} changes pixels, and protected output is always sealed"
        if partner is None:
            raise GatewayError(f"{why}: give --partner NAME of a partner with a 'key'")
        if config.seal is None:
            raise ConfigError(config.source, "seal", f"{why}: add a 'seal' section")
        if not config.partners[partner].key:
            index = list(config.partners).index(partner)
            raise ConfigError(config.source, f"partners[{index}].key", f"{why}: partner "
                              f"{partner!r} needs its public key file")
        sealer = SealService(config)
        configure_device(config)

    problems: list[str] = []
    series: dict[str, list[Path]] = defaultdict(list)
    for path in _dicom_files(inputs):
        try:
            ds = dcmread(path, stop_before_pixels=True)
            series[str(ds.SeriesInstanceUID)].append(path)
        except Exception as exc:
            problems.append(f"{path}: not a readable DICOM file ({type(exc).__name__})")
    total = sum(len(v) for v in series.values())
    study = study_context(p for paths in series.values() for p in paths)
    out.mkdir(parents=True, exist_ok=True)
    bar = Progress(total, "instances") if progress and total else None
    for paths in series.values():
        for outcome in stage.protect(profile, paths, bar.advance if bar else None, study):
            if outcome.error is not None:
                problems.append(f"{outcome.source}: {outcome.error.reason}: {outcome.error}")
            elif sealer is not None and partner is not None and outcome.output is not None:
                try:
                    sealed = sealer.seal(partner, outcome.source, outcome.output, outcome.residual,
                                         method, dict(outcome.parameters))
                except Exception as exc:
                    problems.append(f"{outcome.source}: seal_failed: {type(exc).__name__}: {exc}")
                else:
                    sealed.save_as(out / f"{sealed.SOPInstanceUID}.dcm", enforce_file_format=True)
            elif isinstance(outcome.output, Dataset):
                outcome.output.save_as(out / f"{outcome.output.SOPInstanceUID}.dcm",
                                       enforce_file_format=True)
            elif outcome.output is not None:
                sop = dcmread(outcome.output, stop_before_pixels=True).SOPInstanceUID
                shutil.copyfile(outcome.output, out / f"{sop}.dcm")
    if bar:
        bar.close()
    return total - sum(1 for p in problems if ": not a readable" not in p), problems
