"""``dicom-gateway protect``: apply a profile to files and folders, outside the gateway.

Files are grouped by series and written to ``--out`` as ``<SOPInstanceUID>.dcm``. A file that
cannot be protected is reported with its reason and nothing is written for it (fail closed);
the exit code is then non-zero. A progress bar on stderr counts instances with an ETA, inside
a long series too for methods that report their progress
(:class:`~dicom_gateway.protect.ProtectionMethod`).

Each instance is written as soon as its part of the series is done: the profile's ``batch``
instances for the perturbation (``auto``: 8 on the CPU, 64 on CUDA,
:func:`~dicom_gateway.protect.batching.instances_per_part`), one instance for the watermark
(the methods whose output for an instance does not depend on the rest of its series,
:data:`PER_INSTANCE`); for
any other method (``unlearnable``: a series is one release) at the end of the series. Each
goes through a temporary name, fsync'd, renamed, and is then noted in the journal
``.dicom-gateway-protect`` in ``--out``. A rerun into the same folder with the same profile
and partner skips every instance the journal lists whose file is there, so an interrupted run
loses at most the part in progress; a rerun with another profile, other settings or another
partner is refused (one folder, one release).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset

from ..errors import ConfigError, GatewayError
from ..metrics import Metrics
from ..progress import Progress
from ..protect import INSTANCE_SCOPED, Outcome
from ..protect.batching import instances_per_part
from ..protect.device import protection_device
from ..seal.service import SealService
from ..settings import Config
from ..stage import ProtectionStage, configure_device, study_context
from .durable import write_durably

__all__ = ["JOURNAL", "PER_INSTANCE", "OfflineRun", "protect_files"]

JOURNAL = ".dicom-gateway-protect"
PER_INSTANCE = INSTANCE_SCOPED - {"none"}


@dataclass
class OfflineRun:
    """What ``protect_files`` did: instances written now, instances an earlier run had written
    (skipped), and one line per instance that could not be protected."""

    written: int = 0
    kept: int = 0
    problems: list[str] = field(default_factory=list)


class _Journal:
    """The ``--out`` folder's record of finished instances: a header naming the run (profile,
    its settings, partner), then ``<source SOP Instance UID> <file name>`` per instance."""

    def __init__(self, out: Path, run: str) -> None:
        self.path = out / JOURNAL
        self.done: dict[str, str] = {}
        header = f"# dicom-gateway protect {run}"
        if self.path.is_file():
            lines = self.path.read_text(encoding="utf-8").splitlines()
            if not lines or lines[0] != header:
                raise GatewayError(f"{out}: holds the output of another protect run (other "
                                   "profile, settings or partner); give an empty --out")
            for line in lines[1:]:
                uid, _, name = line.partition(" ")
                if name:
                    self.done[uid] = name
            self._file = self.path.open("a", encoding="utf-8")
        else:
            self._file = self.path.open("w", encoding="utf-8")
            self._write(header)

    def finished(self, uid: str) -> bool:
        name = self.done.get(uid)
        return name is not None and (self.path.parent / name).is_file()

    def record(self, uid: str, name: str) -> None:
        self.done[uid] = name
        self._write(f"{uid} {name}")

    def _write(self, line: str) -> None:
        self._file.write(line + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()


def _run_name(config: Config, profile: str, partner: str | None) -> str:
    p = config.profiles[profile]
    settings = json.dumps({"method": p.method, "options": p.options.as_dict()},
                          sort_keys=True, default=str)
    digest = hashlib.sha256(settings.encode()).hexdigest()[:16]
    return f"profile={profile} partner={partner or '-'} settings={digest}"


def _parts(paths: list[Path], size: int) -> Iterable[list[Path]]:
    for start in range(0, len(paths), size):
        yield paths[start:start + size]


def _dicom_files(inputs: Iterable[Path]) -> Iterable[Path]:
    for path in inputs:
        candidates = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        yield from candidates


def protect_files(config: Config, profile: str, inputs: Sequence[Path], out: Path,
                  progress: bool = True, partner: str | None = None) -> OfflineRun:
    """Protect ``inputs`` with ``profile`` into ``out``, sealed for ``partner`` when the
    profile changes pixels (required then), skipping what an earlier run of the same profile
    wrote there (see the module docstring)."""
    stage = ProtectionStage(config.profiles, Metrics())
    method, options = config.profiles[profile].method, config.profiles[profile].options
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

    result = OfflineRun()
    series: dict[str, list[Path]] = defaultdict(list)
    uids: dict[Path, str] = {}
    for path in _dicom_files(inputs):
        if path.name == JOURNAL or path.name.endswith(".partial"):
            continue
        try:
            ds = dcmread(path, stop_before_pixels=True)
            series[str(ds.SeriesInstanceUID)].append(path)
            uids[path] = str(ds.SOPInstanceUID)
        except Exception as exc:
            result.problems.append(f"{path}: not a readable DICOM file ({type(exc).__name__})")
    total = sum(len(v) for v in series.values())
    study = study_context(p for paths in series.values() for p in paths)
    out.mkdir(parents=True, exist_ok=True)
    journal = _Journal(out, _run_name(config, profile, partner))
    bar = Progress(total, "instances") if progress and total else None
    part = (instances_per_part(getattr(options, "batch", 1), protection_device())
            if method in PER_INSTANCE else 1 << 30)
    try:
        for paths in series.values():
            todo = [p for p in paths if not journal.finished(uids[p])]
            result.kept += len(paths) - len(todo)
            if bar and len(todo) < len(paths):
                bar.advance(len(paths) - len(todo))
            for chunk in _parts(todo, part):
                for outcome in stage.protect(profile, chunk, bar.advance if bar else None,
                                             study):
                    _write(outcome, uids[outcome.source], out, journal, sealer, partner,
                           method, result)
    finally:
        journal.close()
        if bar:
            bar.close()
    return result


def _write(outcome: Outcome, uid: str, out: Path, journal: _Journal, sealer: SealService | None,
           partner: str | None, method: str, result: OfflineRun) -> None:
    """One outcome into ``out`` (sealed when the profile changes pixels) and the journal;
    ``uid`` is the source's SOP Instance UID."""
    if outcome.error is not None or outcome.output is None:
        error = outcome.error
        result.problems.append(f"{outcome.source}: {error.reason}: {error}" if error
                               else f"{outcome.source}: the method returned nothing")
        return
    output = outcome.output
    if sealer is not None and partner is not None:
        try:
            output = sealer.seal(partner, outcome.source, output, outcome.residual, method,
                                 dict(outcome.parameters))
        except Exception as exc:
            result.problems.append(f"{outcome.source}: seal_failed: {type(exc).__name__}: {exc}")
            return
    if isinstance(output, Dataset):
        ds = output
        name = f"{ds.SOPInstanceUID}.dcm"
        write_durably(lambda target: ds.save_as(target, enforce_file_format=True), out / name)
    else:  # a file passed as it is: the source itself, or another file the method names
        source = output
        sop = uid if source == outcome.source else dcmread(source, stop_before_pixels=True
                                                            ).SOPInstanceUID
        name = f"{sop}.dcm"
        write_durably(lambda target: shutil.copyfile(source, target), out / name)
    journal.record(uid, name)
    result.written += 1
