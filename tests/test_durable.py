"""Files the offline commands and the evaluation's cache write: whole or not at all, and two
writers of one file (two evaluations sharing a cache) both finish."""

from __future__ import annotations

from pathlib import Path

import pytest

from dicom_gateway.lab.durable import write_durably


def test_two_writers_of_one_file_both_finish(tmp_path: Path) -> None:
    """A second writer of the same target renaming its file while the first is still writing
    (what two evaluations protecting the same images into one cache did: the first one's
    rename took the other's temporary file away) does not fail either."""
    target = tmp_path / "protected-abc.pt"

    def first(path: Path) -> None:
        path.write_text("first")
        write_durably(lambda other: other.write_text("second"), target)  # the other run

    write_durably(first, target)
    assert target.read_text() == "first"  # the last rename wins, each file whole
    assert [p.name for p in tmp_path.iterdir()] == [target.name]
    plain = tmp_path / "plain"
    plain.write_text("x")  # the permissions any new file gets (protected output for the partner)
    assert target.stat().st_mode == plain.stat().st_mode


def test_a_failed_write_leaves_the_old_file_and_no_partial(tmp_path: Path) -> None:
    target = tmp_path / "ensemble.json"
    target.write_text("old")

    def broken(path: Path) -> None:
        path.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_durably(broken, target)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == [target.name]
