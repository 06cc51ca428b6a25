"""The fuzz suite's target and senders (decision 0025).

:class:`Target` is ``dicom-gateway serve`` in its own process (:class:`gwutil.GatewayProcess`,
the gateway's temporary files directed into its run directory) forwarding everything, method
``none``, to a pynetdicom Storage SCP in this process on 127.0.0.1 that records the SOP
Instance UIDs it receives (:class:`peers_scp.RecordingSCP`). :class:`Sender` sends one
:class:`fuzz_mutate.Case` and says what came back: a C-STORE status, the connection closed
by the gateway, no answer within the hang timeout, or that pynetdicom would not send it.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import struct
import time
from collections.abc import Iterable, Iterator
from io import BytesIO
from pathlib import Path

from fuzz_cases import assoc_request
from fuzz_corpus import Seed, store_file
from fuzz_mutate import GW_AE, SCU_AE, SYNTAXES, Case
from gwutil import GatewayProcess, base_config, partner
from peers_scp import RecordingSCP
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.values import convert_UI
from pynetdicom import AE, _config, association
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicom_gateway.reactor_guard import guard
from dicom_gateway.spool import safe_key

__all__ = ["KEPT_STATES", "Sender", "Target", "expected_key", "meta_and_offset", "rss_kb"]

PARTNER_AE = "FUZZ_PARTNER"
#: the spool's states in the order an instance passes them (a listing in this order, then the
#: partner's, cannot miss an instance that moves meanwhile)
KEPT_STATES = ("inbox", "work", "outbox", "failed", "quarantine")
_RECORD = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ ")
#: the run directory's own files, beside the spool
_OWN = frozenset(("gateway.yaml", "gateway.log"))


def rss_kb(pid: int, field: str = "VmRSS") -> int:
    """``field`` of ``/proc/<pid>/status`` in kB (0 if the process is gone)."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def expected_key(case: Case) -> str:
    """The spool key of the instance a case sends, as the gateway reads its request's SOP
    Instance UID (:func:`dicom_gateway.spool.safe_key`)."""
    return safe_key(str(convert_UI(case.sop, True)))


def _spool_key(name: str) -> str:
    """The SOP key of a spool file name: ``<sop>~<record>`` (inbox, work) or
    ``<study>_<sop>`` (outbox, failed, quarantine)."""
    return name.split("~", 1)[0] if "~" in name else name.split("_", 1)[-1]


class Target:
    """The gateway under test, its partner, and what can be checked from outside."""

    def __init__(self, workdir: Path, max_dataset_bytes: int = 16 << 20,
                 log_level: str = "INFO") -> None:
        self.run_dir = workdir
        (workdir / "tmpdir").mkdir(parents=True, exist_ok=True)
        self.partner = RecordingSCP(PARTNER_AE, hash_pixels=False)
        sink = partner("sink", self.partner.port, PARTNER_AE,
                       retry={"initial_seconds": 0.2, "max_seconds": 0.5, "max_attempts": 3})
        raw = base_config(workdir / "spool", [sink], [
            {"name": "all", "match": {}, "to": ["sink"], "profile": "passthrough"}],
            handshake_timeout_seconds=2, acse_timeout_seconds=10, dimse_timeout_seconds=15,
            network_timeout_seconds=15, max_dataset_bytes=max_dataset_bytes)
        raw["log_level"] = log_level
        self.gateway = GatewayProcess(raw, workdir, env={"TMPDIR": str(workdir / "tmpdir")})
        self.spool = workdir / "spool"

    def start(self) -> Target:
        self.partner.start()
        self.gateway.start(timeout=60)
        return self

    def stop(self) -> None:
        self.gateway.stop()
        self.partner.stop()

    @property
    def port(self) -> int:
        return self.gateway.port

    @property
    def pid(self) -> int:
        assert self.gateway.proc is not None
        return self.gateway.proc.pid

    def alive(self) -> bool:
        return self.gateway.proc is not None and self.gateway.proc.poll() is None

    def restart(self) -> None:
        """After a crash: the same ports, the same spool."""
        self.gateway.stop()
        self.gateway.start(timeout=60)

    def log_size(self) -> int:
        return self.gateway.log_path.stat().st_size

    def raw_log_lines(self, since: int) -> list[str]:
        """Lines the gateway logged after byte ``since`` that are not log records (a record
        starts with its time): a traceback, or a line forged by a value with a line break."""
        with open(self.gateway.log_path, "rb") as f:
            f.seek(since)
            text = f.read().decode("utf-8", "replace")
        return [line for line in text.splitlines() if line and not _RECORD.match(line)]

    def outside_files(self) -> set[str]:
        """Every file under the run directory but the spool's and the gateway's own."""
        found = set()
        for root, dirs, files in os.walk(self.run_dir):
            rel = Path(root).relative_to(self.run_dir)
            if rel == Path("."):
                dirs[:] = [d for d in dirs if d != "spool"]
                files = [f for f in files if f not in _OWN]
            found.update(str(rel / f) for f in files)
        return found

    def kept(self, keys: Iterable[str]) -> tuple[set[str], set[str]]:
        """Of ``keys`` (spool keys of acknowledged instances): those neither in the spool nor
        at the partner, and those in ``failed/`` (dead-lettered)."""
        in_spool: dict[str, set[str]] = {}
        for state in KEPT_STATES:
            base = self.spool / state
            names = {_spool_key(p.stem) for p in base.rglob("*.dcm")} if base.is_dir() else set()
            in_spool[state] = names
        at_partner = {safe_key(s) for s in self.partner.received_sops}
        everywhere = set().union(*in_spool.values(), at_partner)
        wanted = set(keys)
        return wanted - everywhere, wanted & in_spool["failed"] - at_partner

    def settled(self, keys: Iterable[str]) -> bool:
        """Whether every one of ``keys`` has reached the partner, failed/ or quarantine/."""
        wanted = set(keys)
        done = {safe_key(s) for s in self.partner.received_sops}
        for state in ("failed", "quarantine"):
            base = self.spool / state
            if base.is_dir():
                done |= {_spool_key(p.stem) for p in base.rglob("*.dcm")}
        return wanted <= done


class Sender:
    """Sends cases to the target: C-STOREs over one association with a presentation context
    per SOP class and transfer syntax (re-opened when the gateway ends it), raw bytes on a
    connection of their own. ``hang_seconds``: how long an answer may take."""

    def __init__(self, port: int, seeds: Iterable[Seed], workdir: Path,
                 hang_seconds: float) -> None:
        self.port, self.hang = port, hang_seconds
        self.file = workdir / "case.dcm"
        self.ae = AE(ae_title=SCU_AE)
        self.ae.acse_timeout = self.ae.network_timeout = self.ae.connection_timeout = hang_seconds
        self.ae.dimse_timeout = hang_seconds
        pairs = {(s.sop_class, str(t)) for s in seeds for t in (*SYNTAXES, s.syntax)}
        for sop_class, syntax in sorted(pairs)[:128]:  # pynetdicom proposes 128 at most
            self.ae.add_requested_context(sop_class, [syntax])
        self.assoc: Association | None = None

    @contextlib.contextmanager
    def sending(self) -> Iterator[Sender]:
        """pynetdicom sends a file's data set as it is (no decoding) while this is open, from
        where the file meta's group length says the meta ends (:func:`meta_and_offset`)."""
        before = _config.STORE_SEND_CHUNKED_DATASET, association.split_dataset
        _config.STORE_SEND_CHUNKED_DATASET = True
        association.split_dataset = meta_and_offset
        try:
            yield self
        finally:
            _config.STORE_SEND_CHUNKED_DATASET, association.split_dataset = before
            self.close()

    def close(self) -> None:
        if self.assoc is not None and self.assoc.is_established:
            with contextlib.suppress(Exception):
                self.assoc.release()
        self.assoc = None

    def send(self, case: Case) -> tuple[str, int | None]:
        """``(outcome, status)``: outcome ``answered`` (with the C-STORE status), ``closed``
        (the gateway ended the connection or association), ``hang``, ``not sent`` (pynetdicom
        would not send it) or ``not accepted`` (no A-ASSOCIATE-AC before a ``pdu-assoc``)."""
        if case.kind == "store":
            return self._store(case)
        return self._raw(case.body, after_assoc=case.kind == "assoc"), None

    def _store(self, case: Case) -> tuple[str, int | None]:
        store_file(self.file, case.sop_class, case.sop, case.syntax, case.body)
        started = time.monotonic()
        if self.assoc is None or not self.assoc.is_established:
            self.assoc = guard(self.ae.associate("127.0.0.1", self.port, ae_title=GW_AE))
            if not self.assoc.is_established:
                return self._late(started), None
            started = time.monotonic()
        try:
            rsp = self.assoc.send_c_store(self.file)
        except Exception:  # pynetdicom will not send it (a UID over 64 characters, ...)
            return "not sent", None
        if "Status" in rsp:
            return "answered", int(rsp.Status)
        return self._late(started), None

    def _late(self, started: float) -> str:
        """No answer: ``hang`` if the timeout ran out, else the gateway ``closed`` it."""
        return "hang" if time.monotonic() - started >= 0.9 * self.hang else "closed"

    def _raw(self, payload: bytes, after_assoc: bool) -> str:
        deadline = time.monotonic() + self.hang
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=self.hang) as s:
                if after_assoc:
                    s.sendall(assoc_request())
                    if not _read_pdu(s).startswith(b"\x02"):
                        return "not accepted"  # nothing to be malformed after
                s.sendall(payload)
                s.shutdown(socket.SHUT_WR)
                while s.recv(65536):
                    s.settimeout(max(0.01, deadline - time.monotonic()))
        except TimeoutError:
            return "hang"
        except OSError:
            pass  # reset by the gateway: an answer
        return "closed"

    def echo(self) -> bool:
        """A C-ECHO on an association of its own: the gateway still answers."""
        ae = AE(ae_title=SCU_AE)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.hang
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", self.port, ae_title=GW_AE)
        if not assoc.is_established:
            return False
        try:
            rsp = assoc.send_c_echo()
            return "Status" in rsp and int(rsp.Status) == 0
        finally:
            assoc.release()


def meta_and_offset(path: Path) -> tuple[Dataset, int]:
    """The file meta of a :func:`fuzz_corpus.store_file` file and where the data set starts.
    pynetdicom's own ``split_dataset`` reads group 0002 elements for as long as they come, so
    a data set that starts with injected ones would lose them to the meta."""
    with open(path, "rb") as fp:
        head = fp.read(144)
        end = 144 + struct.unpack_from("<I", head, 140)[0]
        fp.seek(144)
        meta = read_dataset(BytesIO(fp.read(end - 144)), is_implicit_VR=False,
                            is_little_endian=True)
    return meta, end


def _read_pdu(s: socket.socket) -> bytes:
    """One PDU from ``s`` (what arrived if the peer closes first)."""
    data = b""
    while len(data) < 6 or len(data) < 6 + int.from_bytes(data[2:6], "big"):
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    return data
