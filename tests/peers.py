"""Test helpers for real DICOM peers: network guards, a recording SCP, DCMTK, sample data.

The Orthanc peer lives in :mod:`peers_orthanc`.  ``tests/`` is not a package:
modules import each other as top-level modules (pytest's default rootdir
``prepend`` import mode puts ``tests/`` on ``sys.path``).

Processes that bind every interface (``storescp``, Orthanc's DICOM port) are only
started inside a private network namespace (see :func:`require_private_netns`).
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import ALL_TRANSFER_SYNTAXES, AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

__all__ = [
    "ALLOW_HOST_NET_ENV",
    "DATA_ENV",
    "DcmtkStoreSCP",
    "RecordingSCP",
    "build_multiseries_study",
    "copy_ct_series",
    "dcmtk_env",
    "dcmtk_storescu",
    "free_port",
    "in_private_netns",
    "pixel_sha256_of",
    "require_private_netns",
    "require_shared_data",
    "shared_data_dir",
    "stop_process",
    "wait_listening",
]

ALLOW_HOST_NET_ENV = "DICOM_GATEWAY_ALLOW_HOST_NET"
DATA_ENV = "DICOM_GATEWAY_DATA"
CT_SERIES_SUBDIR = Path("dicom") / "ct_kits_series"
LOCALHOST = "127.0.0.1"
_UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


# --------------------------------------------------------------------------- network


def free_port() -> int:
    """Return a TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOCALHOST, 0))
        return int(sock.getsockname()[1])


def in_private_netns() -> bool:
    """Return True when ``lo`` is the only network interface of this process.

    Uses ``if_nameindex()`` (netlink, per network namespace) instead of
    ``/sys/class/net``: after a plain ``unshare --net`` sysfs still shows the
    host's interfaces because it reflects the namespace of whoever mounted it.
    """
    return [name for _, name in socket.if_nameindex()] == ["lo"]


def require_private_netns() -> None:
    """Skip the calling test unless inside a private netns or explicitly allowed."""
    if in_private_netns() or os.environ.get(ALLOW_HOST_NET_ENV) == "1":
        return
    pytest.skip(
        "needs a private network namespace (Orthanc/storescp bind all interfaces): run "
        "`unshare --net bash -c 'ip link set lo up && python -m pytest ...'` "
        f"or set {ALLOW_HOST_NET_ENV}=1"
    )


def _listening_ports() -> set[int]:
    ports: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if len(fields) > 3 and fields[3] == "0A":  # TCP_LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def wait_listening(port: int, timeout: float = 10.0) -> bool:
    """Wait until some socket of this netns listens on ``port`` (no connection made)."""
    deadline = time.monotonic() + timeout
    while port not in _listening_ports():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def stop_process(proc: subprocess.Popen[bytes] | None, timeout: float = 15.0) -> None:
    """SIGTERM the process group of ``proc`` (started with a new session), then SIGKILL."""
    if proc is None or proc.poll() is not None:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=timeout)
            return
        except subprocess.TimeoutExpired:
            continue


def _tail(log: IO[bytes] | None, limit: int = 4000) -> str:
    if log is None:
        return ""
    log.flush()
    log.seek(0, io.SEEK_END)
    log.seek(max(0, log.tell() - limit))
    return log.read().decode(errors="replace")


# --------------------------------------------------------------------------- pixels


def pixel_sha256_of(source: Dataset | str | os.PathLike[str] | bytes) -> str | None:
    """SHA-256 of the *decoded* pixel values (``pixel_array.tobytes()``), None if no pixels."""
    if isinstance(source, Dataset):
        ds = source
    elif isinstance(source, bytes):
        ds = pydicom.dcmread(io.BytesIO(source))
    else:
        ds = pydicom.dcmread(source)
    if "PixelData" not in ds:
        return None
    return hashlib.sha256(ds.pixel_array.tobytes()).hexdigest()


# --------------------------------------------------------------------------- recording SCP


def _is_stored(status: int) -> bool:
    return status in (0x0000, 0x0001) or status & 0xF000 == 0xB000


class RecordingSCP:
    """In-process pynetdicom Storage SCP on 127.0.0.1 recording every stored instance.

    Parameters
    ----------
    ae_title : str
        AE title of the SCP (called AE titles are not checked).
    port : int, optional
        Listening port; a free one by default.  Kept across ``stop()``/``start()``.
    status : int
        C-STORE status answered to every request.  Only success/warning statuses
        record the instance; failures only bump :attr:`attempts`.  May be changed
        while running, as may ``delay_seconds``.
    delay_seconds : float
        Sleep before answering each C-STORE.
    accept_transfer_syntaxes : list of str, optional
        Restrict the accepted transfer syntaxes (default: all known to pynetdicom).
    store_dir : Path, optional
        Write each received instance there as ``<SOPInstanceUID>.dcm`` (as received).
    hash_pixels : bool
        Decode and hash the pixels of each instance on receipt.
    """

    def __init__(
        self,
        ae_title: str = "RECORDER",
        *,
        port: int | None = None,
        status: int = 0x0000,
        delay_seconds: float = 0.0,
        accept_transfer_syntaxes: Sequence[str] | None = None,
        store_dir: Path | None = None,
        hash_pixels: bool = True,
    ) -> None:
        self.ae_title = ae_title
        self.port = port or free_port()
        self.status = status
        self.delay_seconds = delay_seconds
        self.accept_transfer_syntaxes = list(accept_transfer_syntaxes or ALL_TRANSFER_SYNTAXES)
        self.store_dir = store_dir
        self.hash_pixels = hash_pixels
        self._cond = threading.Condition()
        self._server: Any = None
        self.reset()

    def reset(self) -> None:
        """Forget everything recorded so far."""
        with self._cond:
            self._received: list[tuple[str, str]] = []
            self._counts: Counter[str] = Counter()
            self._hashes: dict[str, str | None] = {}
            self._connections = 0
            self._attempts = 0

    def start(self) -> RecordingSCP:
        """Start listening (non-blocking); restartable on the same port."""
        if self._server is not None:
            return self
        ae = AE(self.ae_title)
        ae.maximum_pdu_size = 0
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, self.accept_transfer_syntaxes)
        ae.add_supported_context(Verification)
        handlers = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_CONN_OPEN, self._on_conn_open)]
        self._server = ae.start_server((LOCALHOST, self.port), block=False, evt_handlers=handlers)
        return self

    def stop(self) -> None:
        """Abort open associations and close the listening socket."""
        server, self._server = self._server, None
        if server is None:
            return
        for assoc in list(server.active_associations):
            assoc.abort()
        server.shutdown()

    def __enter__(self) -> RecordingSCP:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _on_conn_open(self, event: evt.Event) -> None:
        with self._cond:
            self._connections += 1

    def _on_store(self, event: evt.Event) -> int:
        with self._cond:
            self._attempts += 1
        if self.delay_seconds > 0:
            time.sleep(self.delay_seconds)
        status = self.status
        if not _is_stored(status):
            return status
        sop_uid = str(event.request.AffectedSOPInstanceUID)
        digest: str | None = None
        if self.hash_pixels:
            ds = event.dataset
            ds.file_meta = event.file_meta
            digest = pixel_sha256_of(ds)
        if self.store_dir is not None:
            (self.store_dir / f"{sop_uid}.dcm").write_bytes(event.encoded_dataset())
        with self._cond:
            self._received.append((sop_uid, str(event.context.transfer_syntax)))
            self._counts[sop_uid] += 1
            self._hashes[sop_uid] = digest
            self._cond.notify_all()
        return status

    def wait_for_count(self, n: int, timeout: float = 10.0) -> int:
        """Wait until at least ``n`` instances were stored; return the count reached."""
        with self._cond:
            self._cond.wait_for(lambda: len(self._received) >= n, timeout=timeout)
            return len(self._received)

    @property
    def received(self) -> list[tuple[str, str]]:
        """``(SOPInstanceUID, transfer syntax UID)`` per stored instance, arrival order."""
        with self._cond:
            return list(self._received)

    @property
    def received_sops(self) -> set[str]:
        with self._cond:
            return set(self._counts)

    @property
    def sop_counts(self) -> Counter[str]:
        with self._cond:
            return Counter(self._counts)

    @property
    def duplicates(self) -> int:
        """Deliveries beyond the first one of each SOP instance."""
        with self._cond:
            return sum(count - 1 for count in self._counts.values())

    @property
    def pixel_hashes(self) -> dict[str, str | None]:
        """SOPInstanceUID -> :func:`pixel_sha256_of` of the last delivery."""
        with self._cond:
            return dict(self._hashes)

    @property
    def connection_count(self) -> int:
        """TCP connections opened to this SCP (EVT_CONN_OPEN)."""
        with self._cond:
            return self._connections

    @property
    def attempts(self) -> int:
        """C-STORE requests received, whatever status was answered."""
        with self._cond:
            return self._attempts


# --------------------------------------------------------------------------- DCMTK


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
    skips reverse DNS.  Files are named ``<modality>.<SOPInstanceUID>``, so a
    duplicate overwrites.  ``fork=True`` serves parallel associations.
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

    def start(self) -> DcmtkStoreSCP:
        """Start storescp and wait until it listens (restartable on the same port)."""
        require_private_netns()
        if self._proc is not None and self._proc.poll() is None:
            return self
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._log = self._log or tempfile.TemporaryFile()
        command = ["storescp", "-aet", self.ae_title, "-od", str(self.out_dir), "+xa", "-pm", "-dhl"]
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
        return _tail(self._log)

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

    def __enter__(self) -> DcmtkStoreSCP:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
        if self._log is not None:
            self._log.close()
            self._log = None


# --------------------------------------------------------------------------- sample data


def shared_data_dir() -> Path | None:
    """``$DICOM_GATEWAY_DATA`` (default ``<repo>/../shared/data``) if it holds the CT series."""
    default = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    base = Path(os.environ.get(DATA_ENV) or default)
    return base if (base / CT_SERIES_SUBDIR).is_dir() else None


def require_shared_data() -> Path:
    """Return :func:`shared_data_dir` or skip the calling test naming the expected path."""
    base = shared_data_dir()
    if base is None:
        expected = os.environ.get(DATA_ENV) or Path(__file__).resolve().parents[1].parent / "shared" / "data"
        pytest.skip(f"shared test data absent: expected {Path(expected) / CT_SERIES_SUBDIR} (set {DATA_ENV})")
    return base


def copy_ct_series(
    dest: Path,
    n_instances: int | None = None,
    study_uid: str | None = None,
    *,
    fresh_uids: bool = False,
) -> list[Path]:
    """Copy the real 18-slice CT series into ``dest`` (skips if the data is absent).

    ``n_instances`` beyond 18 cycles through the slices with fresh SOPInstanceUIDs
    and InstanceNumbers (same series).  ``study_uid`` sets StudyInstanceUID on all;
    ``fresh_uids`` gives every instance and the series new UIDs (for a second,
    distinct copy).  Untouched slices are copied byte for byte.
    """
    sources = sorted((require_shared_data() / CT_SERIES_SUBDIR).glob("*.dcm"))
    count = len(sources) if n_instances is None else n_instances
    series_uid = generate_uid() if fresh_uids else None
    dest.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for index in range(count):
        source = sources[index % len(sources)]
        target = dest / f"ct_{index + 1:05d}.dcm"
        replica = index >= len(sources)
        if not (replica or fresh_uids or study_uid):
            shutil.copyfile(source, target)
        else:
            ds = pydicom.dcmread(source)
            if replica or fresh_uids:
                ds.SOPInstanceUID = generate_uid()
                ds.InstanceNumber = index + 1
            if series_uid:
                ds.SeriesInstanceUID = series_uid
            if study_uid:
                ds.StudyInstanceUID = study_uid
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.save_as(target, enforce_file_format=True)
        written.append(target)
    return written


# One series per file: (pydicom test file, transfer syntax it exercises).
MULTISERIES_SOURCES = (
    "CT_small.dcm",  # CT, explicit VR little endian
    "MR_small.dcm",  # MR, explicit VR little endian
    "MR_small_RLE.dcm",  # MR, RLE lossless
    "MR_small_jpeg_ls_lossless.dcm",  # MR, JPEG-LS lossless
    "MR_small_jp2klossless.dcm",  # MR, JPEG 2000 lossless
    "JPEG2000.dcm",  # SC (NM), JPEG 2000
    "examples_rgb_color.dcm",  # US, RGB, explicit VR little endian
    "SC_rgb_rle_2frame.dcm",  # SC, RGB multi-frame, RLE
    "SC_rgb_jpeg_dcmtk.dcm",  # SC, YBR_FULL, JPEG baseline (lossy)
)


def build_multiseries_study(dest: Path, study_uid: str | None = None) -> list[Path]:
    """Write a 9-series / 9-instance study from pydicom's bundled test files.

    All share a new StudyInstanceUID (or ``study_uid``) and one made-up patient;
    each source file gets its own SeriesInstanceUID and a fresh SOPInstanceUID.
    Original transfer syntaxes (incl. compressed) are kept.
    """
    study_uid = study_uid or generate_uid()
    dest.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for number, name in enumerate(MULTISERIES_SOURCES, 1):
        source = get_testdata_file(name)
        if source is None:
            raise FileNotFoundError(f"pydicom test file {name} not found")
        ds = pydicom.dcmread(source)
        ds.PatientName, ds.PatientID = "GATEWAY^MULTISERIES", "GWTEST0001"
        ds.PatientBirthDate, ds.PatientSex = "19700101", "O"
        ds.StudyInstanceUID, ds.StudyID, ds.AccessionNumber = study_uid, "1", "GWACC0001"
        ds.StudyDate, ds.StudyTime, ds.StudyDescription = "20240101", "120000", "Gateway multiseries"
        ds.SeriesInstanceUID, ds.SeriesNumber = generate_uid(), number
        ds.SOPInstanceUID, ds.InstanceNumber = generate_uid(), 1
        ds.Modality = ds.get("Modality") or "OT"
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        target = dest / f"{number:02d}_{Path(name).stem}.dcm"
        ds.save_as(target, enforce_file_format=True)
        written.append(target)
    return written
