"""The fuzz suite's runner (decision 0025): families of cases against one gateway, checked.

For each case: the ``serve`` process is alive (else a crash: it is restarted), the case got an
answer within the hang timeout, and every ``PROBE_EVERY`` cases a C-ECHO on a new association
is answered (else a hang). After each family: every instance answered Success is in the spool
or at the partner (else acknowledged-but-not-kept; found in ``failed/``: dead-lettered), no
file appeared in the run directory outside the spool, every new line of the gateway's log is
a record (not a traceback, not a forged line), a regression case marked ``must_refuse`` was
refused, and the peak RSS of the ``serve`` process during the family (``VmHWM`` reset through
``/proc/<pid>/clear_refs``, and sampled).
Each defect is written to ``findings/`` as the bytes sent and a line that says what they are.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from fuzz_cases import make_case
from fuzz_corpus import Seed, uid_prefix
from fuzz_harness import Sender, Target, expected_key, rss_kb
from fuzz_mutate import FAMILIES, Case

__all__ = ["PROBE_EVERY", "FamilyStats", "Report", "clean_case", "run_cases", "run_fuzz",
           "table"]

PROBE_EVERY = 50
_COLUMNS = ("inputs", "crashes", "hangs", "ack-not-kept", "outside", "peak RSS MB", "raw log",
            "success", "dead-letter")


@dataclass
class FamilyStats:
    """What one family's cases did."""

    family: str
    tried: int = 0
    success: int = 0  # answered 0x0000
    crashes: int = 0
    hangs: int = 0
    not_kept: int = 0
    outside: int = 0
    log_lines: int = 0  # lines in the gateway's log that are not records (tracebacks, forged)
    accepted: int = 0  # regression cases answered Success that must be refused
    dead_lettered: int = 0
    peak_rss_mb: float = 0.0
    outcomes: dict[str, int] = field(default_factory=dict)
    findings: list[str] = field(default_factory=list)

    @property
    def defects(self) -> int:
        return (self.crashes + self.hangs + self.not_kept + self.outside + self.log_lines
                + self.accepted)


@dataclass
class Report:
    idle_rss_mb: float
    families: list[FamilyStats]

    @property
    def defects(self) -> int:
        return sum(f.defects for f in self.families)


class _Peak:
    """The peak RSS of a process while open: ``VmHWM`` after resetting it, and sampling."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak_kb = pid, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> _Peak:
        with contextlib.suppress(OSError):  # "5": reset the peak RSS (Linux 4.0)
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            self.peak_kb = max(self.peak_kb, rss_kb(self.pid))

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_kb = max(self.peak_kb, rss_kb(self.pid, "VmHWM"), rss_kb(self.pid))


def clean_case(seed: Seed, prefix: str, index: int = 0) -> Case:
    """An unmutated instance of ``seed`` (fresh UIDs): the gateway must take it."""
    body, sop = seed.body(prefix)
    return Case("clean", index, "store", seed.name, seed.sop_class, sop.encode(),
                str(seed.syntax), body)


def _finding(stats: FamilyStats, out: Path, case: Case, what: str) -> None:
    stats.findings.append(f"{what}: {case.family}#{case.index} {case.kind} {case.detail[:200]}")
    out.mkdir(parents=True, exist_ok=True)
    name = f"{case.family}-{case.index:05d}"
    (out / f"{name}.bin").write_bytes(case.body)
    (out / f"{name}.txt").write_text(f"{what}\n{case!r}"[:4000] + "\n")


def run_cases(target: Target, sender: Sender, family: str, cases: Iterable[Case],
              findings: Path, drain_seconds: float = 60.0) -> FamilyStats:
    """Send ``cases`` and check the gateway's outcomes (module docstring)."""
    stats, acked = FamilyStats(family), {}
    before, log_at = target.outside_files(), target.log_size()
    with _Peak(target.pid) as peak:
        for case in cases:
            stats.tried += 1
            outcome, status = sender.send(case)
            label = outcome if status is None else f"0x{status:04X}"
            stats.outcomes[label] = stats.outcomes.get(label, 0) + 1
            if status == 0:
                stats.success += 1
                acked[expected_key(case)] = case
                if case.must_refuse:
                    stats.accepted += 1
                    _finding(stats, findings, case, "answered Success, must be refused")
            if not target.alive():
                stats.crashes += 1
                _finding(stats, findings, case, f"crash (exit {target.gateway.proc.poll()})")
                sender.close()
                target.restart()
                peak.pid = target.pid
            elif outcome == "hang" or (stats.tried % PROBE_EVERY == 0 and not sender.echo()):
                stats.hangs += 1
                _finding(stats, findings, case, f"hang ({outcome})")
        deadline = time.monotonic() + drain_seconds
        while time.monotonic() < deadline and not target.settled(acked):
            time.sleep(0.2)
        if not sender.echo():
            stats.hangs += 1
            stats.findings.append(f"hang: no C-ECHO answered after {family}")
    stats.peak_rss_mb = peak.peak_kb / 1024
    lost, failed = target.kept(acked)
    stats.not_kept, stats.dead_lettered = len(lost), len(failed)
    for key in sorted(lost):
        _finding(stats, findings, acked[key], "acknowledged but not kept")
    for key in sorted(failed):
        stats.findings.append(f"dead-lettered: {acked[key].family}#{acked[key].index} "
                              f"{acked[key].detail[:200]}")
    raw = target.raw_log_lines(log_at)
    stats.log_lines = len(raw)
    stats.findings += [f"log line that is no record: {line[:200]!r}" for line in raw[:20]]
    outside = target.outside_files() - before
    stats.outside = len(outside)
    stats.findings += [f"file outside the spool: {p}" for p in sorted(outside)]
    return stats


def run_fuzz(workdir: Path, seeds: list[Seed], per_family: int, seed: int,
             families: Iterable[str] = FAMILIES, hang_seconds: float = 30.0,
             log: Callable[[str], None] = lambda _: None) -> Report:
    """``per_family`` cases of each family over ``seeds`` (seeded by ``seed``) against a
    gateway started in ``workdir``; findings under ``workdir/findings``."""
    target = Target(workdir / "run").start()
    prefix = uid_prefix(seed)
    try:
        sender = Sender(target.port, seeds, workdir, hang_seconds)
        with sender.sending():
            warm = run_cases(target, sender, "clean",
                             [clean_case(s, prefix, i) for i, s in enumerate(seeds[:4])],
                             workdir / "findings")
            if warm.success != warm.tried or warm.defects:
                raise RuntimeError(f"clean instances not taken: {warm}")
            time.sleep(2)
            idle = rss_kb(target.pid) / 1024
            results = []
            for family in families:
                rnd = random.Random(f"{seed}/{family}")
                cases = (make_case(family, i, rnd, seeds, prefix) for i in range(per_family))
                stats = run_cases(target, sender, family, cases, workdir / "findings")
                log(f"{family}: {stats.tried} inputs, {stats.success} success, "
                    f"{stats.defects} defects, outcomes {stats.outcomes}")
                results.append(stats)
        return Report(idle, results)
    finally:
        target.stop()


def table(report: Report) -> str:
    """The per-family table (and the idle RSS) as text."""
    lines = [f"{'family':12}" + "".join(f"{c:>14}" for c in _COLUMNS)]
    for f in report.families:
        values = (f.tried, f.crashes, f.hangs, f.not_kept, f.outside, f"{f.peak_rss_mb:.0f}",
                  f.log_lines, f.success, f.dead_lettered)
        lines.append(f"{f.family:12}" + "".join(f"{v:>14}" for v in values))
    total = [sum(getattr(f, k) for f in report.families) for k in
             ("tried", "crashes", "hangs", "not_kept", "outside")]
    peak = max((f.peak_rss_mb for f in report.families), default=0.0)
    raw = sum(f.log_lines for f in report.families)
    success = sum(f.success for f in report.families)
    dead = sum(f.dead_lettered for f in report.families)
    lines.append(f"{'total':12}" + "".join(f"{v:>14}" for v in
                                            (*total, f"{peak:.0f}", raw, success, dead)))
    lines.append(f"idle RSS of the serve process: {report.idle_rss_mb:.0f} MB")
    return "\n".join(lines)
