"""A real Orthanc 1.10 server as a test peer (separate process, REST via urllib)."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

import pydicom
from peers_base import (
    free_port,
    pixel_sha256_of,
    require_private_netns,
    stop_process,
    wait_listening,
)
from pydicom.dataset import Dataset

__all__ = ["OrthancPeer"]


class OrthancPeer:
    """Orthanc server with its own config, storage and free ports; a context manager.

    Orthanc 1.10 has no bind-address option: both its DICOM and HTTP ports listen
    on all interfaces (HTTP refuses non-loopback clients via
    ``RemoteAccessAllowed: false``).  :meth:`start` therefore calls
    :func:`peers_base.require_private_netns`.

    Parameters
    ----------
    workdir : Path, optional
        Holds ``orthanc.json``, ``orthanc.log``, storage and index; a temporary
        directory (removed on exit) by default.
    aet : str
        DICOM AE title of Orthanc (called AE titles are not checked).
    extra_config : dict, optional
        Merged over the generated configuration.
    startup_timeout : float
        Seconds to wait for REST ``/system`` to answer.
    """

    def __init__(
        self,
        workdir: Path | None = None,
        aet: str = "ORTHANC",
        *,
        dicom_port: int | None = None,
        http_port: int | None = None,
        extra_config: dict[str, Any] | None = None,
        startup_timeout: float = 30.0,
    ) -> None:
        self._own_workdir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="orthanc-"))
        self.aet = aet
        self.dicom_port = dicom_port or free_port()
        self.http_port = http_port or free_port()
        self.startup_timeout = startup_timeout
        self.config: dict[str, Any] = {
            "Name": f"gateway-test-{aet}",
            "StorageDirectory": str(self.workdir / "storage"),
            "IndexDirectory": str(self.workdir / "index"),
            "DicomAet": aet,
            "DicomPort": self.dicom_port,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowEcho": True,
            "DicomModalities": {},
            "OrthancPeers": {},
            "Plugins": [],
            "SaveJobs": False,
            "StorageCompression": False,
            **(extra_config or {}),
        }
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> Self:
        """Start Orthanc and wait for REST and DICOM; restartable with the same data/ports."""
        require_private_netns()
        if self._proc is not None and self._proc.poll() is None:
            return self
        self.workdir.mkdir(parents=True, exist_ok=True)
        config_path = self.workdir / "orthanc.json"
        config_path.write_text(json.dumps(self.config, indent=2))
        self._log = open(self.workdir / "orthanc.log", "ab+")  # noqa: SIM115 - closed in stop()
        self._proc = subprocess.Popen(
            ["Orthanc", str(config_path)],
            cwd=self.workdir,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if self._proc is None or self._proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited during startup:\n{self.log_tail()}")
            try:
                self.rest_json("/system", timeout=1.0)
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"Orthanc REST not up on {self.http_port} after "
                        f"{self.startup_timeout:.0f}s:\n{self.log_tail()}"
                    ) from None
                time.sleep(0.1)
        if not wait_listening(self.dicom_port, timeout=max(1.0, deadline - time.monotonic())):
            raise RuntimeError(
                f"Orthanc DICOM port {self.dicom_port} not listening:\n{self.log_tail()}"
            )

    def stop(self, graceful: bool = True) -> None:
        """Stop Orthanc and wait for it; storage is kept for :meth:`start`.

        A graceful stop (SIGTERM) takes about 3 s in Orthanc 1.10;
        ``graceful=False`` SIGKILLs it (a crash; committed instances survive).
        """
        stop_process(self._proc, timeout=20.0, graceful=graceful)
        self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, limit: int = 4000) -> str:
        path = self.workdir / "orthanc.log"
        return path.read_bytes()[-limit:].decode(errors="replace") if path.exists() else ""

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop(graceful=False)  # the test is over: skip Orthanc's ~3 s shutdown
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # ------------------------------------------------------------------ REST

    def rest(self, path: str, data: bytes | None = None, timeout: float = 30.0) -> bytes:
        """GET (or POST when ``data`` is given) ``path`` on the REST API; raw body."""
        url = f"http://127.0.0.1:{self.http_port}{path}"
        with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=timeout) as rsp:
            body: bytes = rsp.read()
        return body

    def rest_json(self, path: str, data: bytes | None = None, timeout: float = 30.0) -> Any:
        return json.loads(self.rest(path, data, timeout))

    def instances(self) -> list[str]:
        """Orthanc identifiers of all stored instances."""
        return list(self.rest_json("/instances"))

    def instance_count(self) -> int:
        return int(self.rest_json("/statistics")["CountInstances"])

    def sop_instance_uids(self) -> set[str]:
        return {i["MainDicomTags"]["SOPInstanceUID"] for i in self.rest_json("/instances?expand")}

    def find_instance(self, sop_uid: str) -> str:
        """Orthanc identifier of the instance with this SOPInstanceUID (KeyError if absent)."""
        for hit in self.rest_json("/tools/lookup", data=sop_uid.encode()):
            if hit["Type"] == "Instance":
                return str(hit["ID"])
        raise KeyError(f"SOPInstanceUID {sop_uid} not stored in Orthanc {self.aet}")

    def file_bytes(self, orthanc_id: str) -> bytes:
        """The DICOM file exactly as Orthanc stored it."""
        return self.rest(f"/instances/{orthanc_id}/file")

    def dataset(self, sop_uid: str) -> Dataset:
        return pydicom.dcmread(io.BytesIO(self.file_bytes(self.find_instance(sop_uid))))

    def pixel_sha256(self, sop_uid: str) -> str | None:
        """SHA-256 of the decoded pixel values of the stored instance (see ``pixel_sha256_of``)."""
        return pixel_sha256_of(self.dataset(sop_uid))

    def wait_for_count(self, n: int, timeout: float = 10.0) -> int:
        """Wait until at least ``n`` instances are stored; return the count reached."""
        deadline = time.monotonic() + timeout
        while (count := self.instance_count()) < n and time.monotonic() < deadline:
            time.sleep(0.1)
        return count
