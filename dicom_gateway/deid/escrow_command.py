"""``dicom-gateway escrow open``: the hospital's command that reads a re-identification escrow
(:mod:`.escrow`, decision 0021) with the escrow private key.

For every instance opened, one line of JSON on stdout (JSON Lines: a script reads it line by
line): ``file``, ``sop_instance_uid`` (as in the file), ``key_id`` (the escrow key),
``original`` (DICOM JSON model, tag -> the value before de-identification: ``Dataset.from_json``
reads it) and ``added`` (tags de-identification added). Every instance not opened gets one line
on stderr with its reason, then a summary line on stderr.

Exit status, as ``verify`` and ``restore``: 0 every instance opened; 1 at least one was not
(another key, altered, unreadable), or an input holds no DICOM instance, or the key cannot be
read; 3 none failed but at least one carries no escrow.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

from pydicom import dcmread

from ..seal.command import Tally, dicom_inputs
from .escrow import EscrowError, load_escrow_private, open_escrow

__all__ = ["run_escrow_open"]


def run_escrow_open(key_file: str, inputs: Sequence[str]) -> int:
    """Open the escrow of every file with the private key in ``key_file``."""
    key = load_escrow_private(Path(key_file))
    tally = Tally()
    for path in dicom_inputs(inputs):
        try:
            ds = dcmread(path)
            opened = open_escrow(ds, key)
        except EscrowError as exc:
            reason, detail = exc.reason, str(exc)
        except Exception as exc:  # only the type: its message may quote the file's content
            reason, detail = "unreadable", type(exc).__name__
        else:
            tally.good += 1
            print(json.dumps({"file": str(path), "sop_instance_uid": str(
                ds.get("SOPInstanceUID", "")), "key_id": key.key_id,
                "original": opened.get("original", {}), "added": opened.get("added", [])},
                sort_keys=True))
            continue
        if reason == "no_escrow":
            tally.unsealed += 1
        else:
            tally.bad += 1
        print(f"dicom-gateway: {path}: not opened ({reason}): {detail}", file=sys.stderr)
    total = tally.good + tally.bad + tally.unsealed
    print(f"escrow open: {total} instance(s): {tally.good} opened, {tally.bad} failed, "
          f"{tally.unsealed} without escrow", file=sys.stderr)
    return tally.exit_status()
