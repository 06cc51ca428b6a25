"""A folder of surrogates named in a profile: the ensemble ``train-surrogate --ensemble`` wrote.

``train-surrogate --data DATA --ensemble --out DIR`` lists its members in ``DIR/ensemble.json``
(their files and SHA-256, and the recipe's member names). A profile's ``surrogates`` may name
``DIR`` instead of its files: :func:`ensemble_files` expands it to the files, in the
manifest's order, after checking that every member of the recipe was trained and that no file
changed since it was written. An unfinished ensemble (training interrupted: a rerun resumes
it) or a file replaced by hand is refused with what to do, never protected against silently:
fewer surrogates transfer worse (decisions 0034 and 0035), and the file a certificate names
must be the file the attack used.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

__all__ = ["MANIFEST", "EnsembleFolderError", "ensemble_files"]

MANIFEST = "ensemble.json"
_RERUN = "rerun `dicom-gateway train-surrogate --data DATA --ensemble --out {folder}`"


class EnsembleFolderError(ValueError):
    """A folder that is not a complete, unchanged ensemble; the message says why and what to
    do."""


def ensemble_files(folder: Path) -> tuple[Path, ...]:
    """The surrogate files of the ensemble in ``folder``, checked (see the module)."""
    manifest = folder / MANIFEST
    rerun = _RERUN.format(folder=folder)
    if not manifest.is_file():
        raise EnsembleFolderError(f"{folder}: a folder of surrogates needs the {MANIFEST} "
                                  "that `train-surrogate --ensemble` writes (or list the "
                                  "surrogate files)")
    try:
        raw = json.loads(manifest.read_text())
        members: dict[str, Any] = dict(raw["members"])
        recipe = [str(name) for name in raw.get("recipe", members)]
        files = {f: str(m["sha256"][f]) for m in members.values() for f in m["files"]}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise EnsembleFolderError(f"{manifest}: not an ensemble manifest ({exc})") from None
    missing = [name for name in recipe if name not in members]
    if missing or not files:
        raise EnsembleFolderError(
            f"{folder}: the ensemble is unfinished ({len(recipe) - len(missing)} of "
            f"{len(recipe)} members trained; missing: {', '.join(missing) or 'all'}): {rerun}")
    paths = []
    for name, digest in files.items():
        path = folder / name
        if not path.is_file():
            raise EnsembleFolderError(f"{path}: listed in {MANIFEST} but missing: {rerun}")
        if hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            raise EnsembleFolderError(f"{path}: changed since `train-surrogate --ensemble` "
                                      f"wrote it (SHA-256 differs from {MANIFEST}): {rerun}")
        paths.append(path)
    return tuple(paths)
