"""Primitives shared by the real-peer helpers: ports, netns guard, processes, pixel hashes."""

from __future__ import annotations

import hashlib
import io
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import IO

import pydicom
import pytest
from pydicom.dataset import Dataset

__all__ = [
    "ALLOW_HOST_NET_ENV",
    "LOCALHOST",
    "free_port",
    "in_private_netns",
    "log_tail",
    "pixel_sha256_of",
    "require_private_netns",
    "stop_process",
    "wait_listening",
]

ALLOW_HOST_NET_ENV = "DICOM_GATEWAY_ALLOW_HOST_NET"
LOCALHOST = "127.0.0.1"


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


def stop_process(
    proc: subprocess.Popen[bytes] | None, timeout: float = 15.0, *, graceful: bool = True
) -> None:
    """Signal the process group of ``proc`` (started with ``start_new_session=True``).

    SIGTERM first when ``graceful`` (SIGKILL after ``timeout``), else SIGKILL
    right away; waits for the process in both cases.
    """
    if proc is None or proc.poll() is not None:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL) if graceful else (signal.SIGKILL,):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=timeout)
            return
        except subprocess.TimeoutExpired:
            continue


def log_tail(log: IO[bytes] | None, limit: int = 4000) -> str:
    """Last ``limit`` bytes of a binary log file object, decoded."""
    if log is None:
        return ""
    log.flush()
    log.seek(0, io.SEEK_END)
    log.seek(max(0, log.tell() - limit))
    return log.read().decode(errors="replace")


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
