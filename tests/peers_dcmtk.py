"""DCMTK ``storescu`` / ``storescp`` as real peers (subprocesses, TCP_NODELAY=1)."""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Self

import pydicom
from peers_base import free_port, log_tail, require_private_netns, stop_process, wait_listening
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

__all__ = ["DcmtkStoreSCP", "dcmtk_env", "dcmtk_storescu"]

_UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


def dcmtk_env() -> dict[str, str]:
    """Environment for DCMTK tools: Debian's DCMTK leaves Nagle on unless TCP_NODELAY=1."""
    return {**os.environ, "TCP_NODELAY": "1"}


def _dicom_files(paths: Iterable[Path]) -> Iterable[Path]:
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file())
        else:
            yield path


def _storescu_config(paths: Iterable[Path]) -> str:
    """Association profile: per SOP class, one context per TS found plus an uncompressed one."""
    syntaxes: dict[str, set[str]] = {}
    for path in _dicom_files(paths):
        try:
            meta = pydicom.filereader.read_file_meta_info(path)
            syntaxes.setdefault(str(meta.MediaStorageSOPClassUID), set()).add(
                str(meta.TransferSyntaxUID)
            )
        except (InvalidDicomError, AttributeError, OSError):
            continue  # storescu reports unreadable files itself
    groups: dict[str, str] = {}
    contexts: list[str] = []
    for sop_class, found in sorted(syntaxes.items()):
        for ts in sorted(found):
            contexts.append(f"{sop_class}\\{groups.setdefault(ts, f'TS{len(groups)}')}")
        contexts.append(f"{sop_class}\\Uncompressed")
    if len(contexts) > 128:
        raise ValueError(f"{len(contexts)} presentation contexts needed, DICOM allows 128")
    lines = ["[[TransferSyntaxes]]", "[Uncompressed]"]
    lines += [f"TransferSyntax{i} = {ts}" for i, ts in enumerate(_UNCOMPRESSED, 1)]
    for ts, name in groups.items():
        lines += [f"[{name}]", f"TransferSyntax1 = {ts}"]
    lines += ["[[PresentationContexts]]", "[Gateway]"]
    lines += [f"PresentationContext{i} = {pc}" for i, pc in enumerate(contexts, 1)]
    lines += ["[[Profiles]]", "[Default]", "PresentationContexts = Gateway"]
    return "\n".join(lines) + "\n"


def dcmtk_storescu(
    files_or_dirs: Iterable[str | os.PathLike[str]],
    host: str,
    port: int,
    calling_aet: str = "STORESCU",
    called_aet: str = "ANY-SCP",
    extra_args: Sequence[str] = (),
    timeout: float = 120.0,
) -> subprocess.CompletedProcess[str]:
    """Send files (directories are scanned recursively) with DCMTK ``storescu``.

    A generated association profile (``-xf``) proposes, for every SOP class in
    the input, each transfer syntax found in the files in a context of its own
    plus an uncompressed (explicit, implicit VR LE) fallback, so files go out
    exactly as stored whenever the peer accepts their syntax.  storescu cannot
    decompress (RLE/JPEG/JPEG-LS/J2K) for the fallback; such a file then fails.
    Returns the completed process unchecked: storescu halts on the first failed
    store and exits with the high byte of its status (0xA700 -> 167), printing
    statuses only with ``-v``.  With ``-nh`` (go on after failures) it exits 0
    even when stores failed: check the peer, or ``-v`` output, instead.
    """
    paths = [Path(p) for p in files_or_dirs]
    with tempfile.TemporaryDirectory(prefix="storescu-") as tmp:
        config = Path(tmp) / "storescu.cfg"
        config.write_text(_storescu_config(paths))
        command = [
            "storescu", "-aet", calling_aet, "-aec", called_aet,
            "-xf", str(config), "Default", "+sd", "+r", "-to", "10", "-ta", "10",
            *extra_args, host, str(port), *map(str, paths),
        ]  # fmt: skip
        return subprocess.run(
            command, capture_output=True, text=True, env=dcmtk_env(), timeout=timeout, check=False
        )


class DcmtkStoreSCP:
    """DCMTK ``storescp`` subprocess writing every received instance into ``out_dir``.

    Flags: ``+xa`` accepts all supported transfer syntaxes (compressed ones are
    written as received), ``-pm`` also accepts unknown SOP classes, ``-dhl``
    skips reverse DNS.  Files are named ``<SOP class abbrev.>.<SOPInstanceUID>``
    (e.g. ``CT.1.2...``), so a duplicate overwrites.  Not ``+B`` (bit preserving):
    it writes while receiving, so a half-written file could be counted.  ``fork=True`` serves
    parallel associations.
    storescp binds all interfaces, so :func:`require_private_netns` applies.
    """

    def __init__(
        self,
        out_dir: Path,
        ae_title: str = "STORESCP",
        *,
        port: int | None = None,
        fork: bool = False,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.out_dir = out_dir
        self.ae_title = ae_title
        self.port = port or free_port()
        self.fork = fork
        self.extra_args = list(extra_args)
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self) -> Self:
        """Start storescp and wait until it listens (restartable on the same port)."""
        require_private_netns()
        if self._proc is not None and self._proc.poll() is None:
            return self
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._log = self._log or tempfile.TemporaryFile()  # noqa: SIM115 - closed in __exit__
        command = ["storescp", "-aet", self.ae_title, "-od", str(self.out_dir)]
        command += ["+xa", "-pm", "-dhl"]
        command += ["--fork"] if self.fork else []
        command += [*self.extra_args, str(self.port)]
        self._proc = subprocess.Popen(
            command, stdout=self._log, stderr=subprocess.STDOUT, env=dcmtk_env(),
            start_new_session=True,
        )  # fmt: skip
        if not wait_listening(self.port) or self._proc.poll() is not None:
            self.stop()
            raise RuntimeError(f"storescp did not listen on {self.port}:\n{self.log_tail()}")
        return self

    def stop(self) -> None:
        stop_process(self._proc)
        self._proc = None

    def log_tail(self) -> str:
        return log_tail(self._log)

    def files(self) -> list[Path]:
        return sorted(p for p in self.out_dir.iterdir() if p.is_file())

    def file_count(self) -> int:
        return len(self.files())

    def wait_for_count(self, n: int, timeout: float = 10.0) -> int:
        """Wait until at least ``n`` files exist; return the count reached."""
        deadline = time.monotonic() + timeout
        while (count := self.file_count()) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        return count

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        if self._log is not None:
            self._log.close()
            self._log = None
