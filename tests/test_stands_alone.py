"""The repository stands alone: no tracked file points at documents outside it.

A user has the repository, not the workspace it was written in: no product brief, research
notes, style guide or hooks beside the checkout, none of that workspace's absolute paths, and
no numbering of decisions other than the project's own ``docs/decisions/NNNN-*.md``. Papers
are cited directly (``docs/references.md``). The one outside location the code may name is
the data folder that tests, benchmarks and the evaluation read by path
(``$DICOM_GATEWAY_DATA``, default ``../shared/data`` beside the checkout), whose absence they
handle.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
THIS = Path(__file__).resolve().relative_to(ROOT).as_posix()

OUTSIDE = {
    "a file beside the checkout other than the data folder": r"shared/(?!data\b)",
    "research notes": r"research[/ ]notes?\b|research/protection-methods",
    "the product brief": r"\bBRIEF\b|(?i:\bthe brief\b|\bbrief's\b|\bbrief §)",
    "a workspace guide": r"\b(?:DEVELOPERS|STYLE)\.md\b",
    "an absolute workspace path": r"(?<![\w.~-])/work/",
    "a decision number that is not a docs/decisions record": r"(?i:\bdecisions? \d{1,3}(?!\d))",
    "an issue's closing note": r"(?i:closing note)",
}
PATTERN = re.compile("|".join(f"(?P<p{i}>{p})" for i, p in enumerate(OUTSIDE.values())))
WHAT = list(OUTSIDE)

# Lines in modules being rewritten on another branch, which this change leaves alone so that
# the branches merge cleanly: (path, text of the line). Remove an entry once its line is gone.
PENDING: set[tuple[str, str]] = set()


def tracked_files() -> list[str]:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                             check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: no list of tracked files")
    return [p for p in out.decode().split("\0") if p]


def outside_references(path: str, text: str) -> list[str]:
    """``path:line: what (match)`` for every reference to something outside the repository."""
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        if (path, line.strip()) in PENDING:
            continue
        for m in PATTERN.finditer(line):
            what = WHAT[int(next(k for k, v in m.groupdict().items() if v is not None)[1:])]
            found.append(f"{path}:{number}: {what} ({m.group(0)!r})")
    return found


def test_the_pattern_catches_what_it_is_for() -> None:
    caught = ["see shared/research/protection-methods.md §1.3", "BRIEF decisions 4-5",
              "(decision 3: never forward a partial study)", "Decision 1 of the brief",
              "research notes §5.1", "read STYLE.md", "Data: /work/shared/data/x.npz",
              "see the closing note of issue 2", "the brief's reference"]
    kept = ["decision 0006", "docs/decisions/0008-seal.md", "default ../shared/data",
            "`$DICOM_GATEWAY_DATA` or `shared/data`", "spool_dir/work/<study>", "briefly",
            "issue 3 asks for <= 5 %", "PS3.5 §7.8"]
    assert all(outside_references("x", line) for line in caught)
    assert not [line for line in kept if outside_references("x", line)]


def test_no_tracked_file_points_outside_the_repository() -> None:
    found = []
    for path in tracked_files():
        if path == THIS:
            continue
        try:
            text = (ROOT / path).read_text(encoding="utf-8")
        except (UnicodeDecodeError, FileNotFoundError, IsADirectoryError):
            continue  # binary (images, model weights) or deleted in the working tree
        found += outside_references(path, text)
    assert not found, "\n".join(found)
