"""The fuzz suite in CI (issue 15, deliver 2; decision 0025): about 1,000 seeded cases.

Ten families of mutated data sets over C-STORE and malformed PDUs (:mod:`fuzz_mutate`,
:mod:`fuzz_cases`) against ``dicom-gateway serve`` in its own process, forwarding to a Storage
SCP on 127.0.0.1 (:mod:`fuzz_harness`). Each family must end with no crash, no hang, no
instance answered Success that is neither in the spool nor at the partner, no file written
outside the spool, and no gateway log line that is not a record (a traceback, a forged line).
The fixed regression cases are what the suite found and issue 15's defects. ``bench/fuzz``
is the long mode (20,000 cases).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from fuzz_cases import regression_cases
from fuzz_corpus import ct_seeds, pydicom_seeds, uid_prefix
from fuzz_harness import Sender, Target
from fuzz_mutate import FAMILIES
from fuzz_run import Report, run_cases, run_fuzz, table
from peers_data import CT_SERIES_SUBDIR, DATA_ENV

SEED = 15
HANG_SECONDS = 30.0


@pytest.fixture(autouse=True)
def _quiet() -> None:
    warnings.simplefilter("ignore")  # pydicom warns about every invalid value it encodes


def _clean(report: Report) -> None:
    findings = [f"{f.family}: {x}" for f in report.families for x in f.findings
                if not x.startswith("dead-lettered")]
    assert report.defects == 0, table(report) + "\n" + "\n".join(findings[:40])


def test_the_regression_cases_are_refused_or_kept_and_logged_in_records(tmp_path: Path) -> None:
    seeds = pydicom_seeds()
    seed = next(s for s in seeds if s.name == "CT_small.dcm")
    cases = regression_cases(seed, uid_prefix(SEED))
    target = Target(tmp_path / "run").start()
    try:
        with Sender(target.port, [seed], tmp_path, HANG_SECONDS).sending() as sender:
            stats = run_cases(target, sender, "regression", cases, tmp_path / "findings")
        log = target.gateway.log_path.read_text(errors="replace")
    finally:
        target.stop()
    assert stats.tried == len(cases) and stats.defects == 0, stats
    assert stats.success == 2  # the line feed and the NUL: kept, and logged escaped
    assert "DULServiceProvider thread ended (AttributeError" in log  # one bounded line
    assert "Traceback" not in log and "\x00" not in log
    assert not any(line.startswith("2026-11-30 12:00:00,000 INFO forged")
                   for line in log.splitlines())


def test_fuzz_over_pydicoms_test_files(tmp_path: Path) -> None:
    report = run_fuzz(tmp_path, pydicom_seeds(), 70, SEED, hang_seconds=HANG_SECONDS)
    print(table(report))
    assert [f.tried for f in report.families] == [70] * len(FAMILIES)
    _clean(report)
    taken = {f.family: f.success for f in report.families}
    assert taken["flip"] and taken["uid"] and taken["vr"]  # the checks saw accepted instances
    after_ac = report.families[FAMILIES.index("pdu-assoc")].outcomes
    assert "not accepted" not in after_ac, after_ac  # the malformed PDUs came after an AC


def test_fuzz_over_the_real_ct_series(tmp_path: Path) -> None:
    seeds = ct_seeds()
    if seeds is None:
        pytest.skip(f"the CT-series part needs the shared data: {CT_SERIES_SUBDIR} under "
                    f"${DATA_ENV} (default ../shared/data); the pydicom part ran")
    report = run_fuzz(tmp_path, seeds, 30, SEED + 1, hang_seconds=HANG_SECONDS)
    print(table(report))
    assert sum(f.tried for f in report.families) == 30 * len(FAMILIES)
    _clean(report)
