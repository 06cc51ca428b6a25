"""``dicom-gateway verify`` and ``restore``: the partner's commands.

Every instance found ends in one of three tallies, and both commands end with a one-line
summary of them:

- *valid* (``restore``: *restored*): every check of :func:`.opener.verify` passed;
- *invalid* (``restore``: *failed*): a check failed, the file is unreadable, or the payload is
  not for this key;
- *not sealed*: no dicom-gateway private block (passed through unprotected, or a PACS dropped
  private tags).

Exit status, a contract partners' scripts rely on (``docs/partners.md``):

==  =====================================================================================
0   every instance is valid (restored)
1   at least one is invalid (failed), or nothing was checked: an input holds no DICOM
    instance, or a key cannot be read
3   none is invalid, but at least one is not sealed
==  =====================================================================================

An input (file or folder) that holds no DICOM instance is an error before anything is checked:
a script that points at the wrong or a still empty folder must not read the run as success.
Inside a folder, a file that is not DICOM counts as invalid (fail closed: a damaged file is
never skipped quietly).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydicom.dataset import Dataset

from ..errors import GatewayError

__all__ = ["EXIT_NOT_SEALED", "Tally", "dicom_inputs", "run_restore", "run_verify"]

EXIT_NOT_SEALED = 3
_PREAMBLE = 128  # PS3.10 §7.1: a 128-byte preamble, then the prefix "DICM"
_T = TypeVar("_T")


@dataclass
class Tally:
    """The outcome counts of one run."""

    good: int = 0
    bad: int = 0
    unsealed: int = 0

    def exit_status(self) -> int:
        if self.bad:
            return 1
        return EXIT_NOT_SEALED if self.unsealed else 0

    def summary(self, good: str, bad: str) -> str:
        total = self.good + self.bad + self.unsealed
        return (f"{total} instance(s): {self.good} {good}, {self.bad} {bad}, "
                f"{self.unsealed} not sealed")


def _is_dicom_file(path: Path) -> bool:
    """A DICOM file as PS3.10 writes it: preamble and ``DICM`` prefix (what dcmread needs)."""
    try:
        with path.open("rb") as f:
            head = f.read(_PREAMBLE + 4)
    except OSError:
        return False
    return head[_PREAMBLE:] == b"DICM"


def _files(item: Path) -> list[Path]:
    if item.is_dir():
        return sorted(p for p in item.rglob("*") if p.is_file())
    if item.is_file():
        return [item]
    raise GatewayError(f"{item}: no such file or folder")


def _nothing_found(given: str, files: list[Path]) -> str:
    """What an input without a DICOM instance holds, named as the user gave it."""
    item = Path(given)
    if item.is_file():
        return f"{given}: not a DICOM file (no DICM prefix after the 128-byte preamble)"
    if not files:
        return f"{given}: no DICOM instance: the folder is empty"
    return (f"{given}: no DICOM instance: the folder holds {len(files)} file(s), none of them "
            f"DICOM (e.g. {files[0].relative_to(item)})")


def dicom_inputs(inputs: Sequence[str]) -> list[Path]:
    """The files of ``inputs`` (folders searched recursively); raise :class:`GatewayError`,
    one line naming every input that holds no DICOM instance and what it holds instead."""
    files: list[Path] = []
    empty: list[str] = []
    for given in inputs:
        found = _files(Path(given))
        if not any(_is_dicom_file(p) for p in found):
            empty.append(_nothing_found(given, found))
        files.extend(found)
    if empty:
        raise GatewayError("; ".join(empty))
    return files


def _gateway_public(path: str | None) -> Any:
    from .keys import load_signing_public

    return load_signing_public(Path(path)) if path else None


_Failed = Callable[[Path, str, Exception], None]


def _checked(files: Sequence[Path], check: Callable[[Dataset], _T], tally: Tally,
             failed: _Failed) -> Iterator[tuple[Path, _T]]:
    """``(path, check(dataset))`` for every file that passes; the others are tallied (no seal:
    not sealed; any other seal problem, or an unreadable file: bad) and handed to ``failed``
    with their reason."""
    from pydicom import dcmread

    from .opener import SealError

    for path in files:
        error: Exception
        try:
            result = check(dcmread(path))
        except SealError as exc:
            reason, error = exc.reason, exc
        except Exception as exc:
            reason, error = "unreadable", exc
        else:
            tally.good += 1
            yield path, result
            continue
        if reason == "no_seal":
            tally.unsealed += 1
        else:
            tally.bad += 1
        failed(path, reason, error)


def _print_invalid(path: Path, reason: str, error: Exception) -> None:
    if reason == "no_seal":
        print(f"{path}: NOT SEALED: {error}")
    elif reason == "unreadable":
        print(f"{path}: INVALID (unreadable): {type(error).__name__}: {error}")
    else:
        print(f"{path}: INVALID ({reason}): {error}")


def _print_not_restored(path: Path, reason: str, error: Exception) -> None:
    # only the type of an unexpected error: its message may quote the file's content
    detail = type(error).__name__ if reason == "unreadable" else str(error)
    print(f"dicom-gateway: {path}: not restored ({reason}): {detail}", file=sys.stderr)


def run_verify(gateway_key: str, inputs: Sequence[str]) -> int:
    """Check the seal of every file; one line per file, then the summary."""
    from .opener import verify

    public = _gateway_public(gateway_key)
    tally = Tally()
    for path, v in _checked(dicom_inputs(inputs), lambda ds: verify(ds, public), tally,
                            _print_invalid):
        m = v.manifest
        print(f"{path}: VALID issuer {m['gateway']['id']} (key {m['gateway']['key_id']}), "
              f"partner {m['partner']['name']} (key {m['partner']['key_id']}), method "
              f"{m['method']}, time {m['time']}, parameters "
              f"{json.dumps(m['parameters'], sort_keys=True)[:300]}")
    print(f"verify: {tally.summary('valid', 'invalid')}")
    return tally.exit_status()


def run_restore(key_file: str, gateway_key: str | None, inputs: Sequence[str], out: Path) -> int:
    """Restore every sealed file into ``out``; one stderr line per file not restored, then
    the summary."""
    from .keys import load_partner_key
    from .opener import restore

    key = load_partner_key(Path(key_file))
    public = _gateway_public(gateway_key)
    files = dicom_inputs(inputs)
    out.mkdir(parents=True, exist_ok=True)
    tally = Tally()
    for _, original in _checked(files, lambda ds: restore(ds, key, public), tally,
                                _print_not_restored):
        original.save_as(out / f"{original.SOPInstanceUID}.dcm", enforce_file_format=True)
    if public is not None:
        checked = (f"signature checked with gateway key {public[1]}, pixels checked against "
                   "the signed original digest")
    else:
        checked = ("signature NOT checked (--no-verify): the pixels match the digest in the "
                   "manifest, but nothing shows that the gateway wrote that manifest")
    print(f"restore: {tally.summary('restored', 'failed')}; written to {out}; {checked}")
    return tally.exit_status()
