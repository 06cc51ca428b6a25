"""Issue 15, items 1, 6, 8 and the called AE title of 9 (decision 0022): connections that
never associate, junk PDUs, more senders than associations, and a called AE title that is not
the gateway's, against the admission gate in front of pynetdicom.

Each gateway test fails on the listener without the gate: there, idle sockets counted against
``max_associations`` until the ACSE timeout (and cost two threads each), junk reached
pynetdicom's parser and was logged with its values, and a request over the limit was refused
at once. The full-size measurements (1,000 sockets for 60 s, 100 senders) are ``bench/hostile``.
"""

from __future__ import annotations

import logging
import random
import socket
import ssl
import struct
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from gwutil import base_config, running_gateway, sample, send
from peers_tls import TestCA
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicom_gateway.config import parse_config
from dicom_gateway.errors import ConfigError
from dicom_gateway.gateway import Gateway
from dicom_gateway.peer_log import PeerLogLimit, limit_pynetdicom_logs
from dicom_gateway.settings import ConnectionLimits
from dicom_gateway.wire import MAX_PEEK, Malformed, read_request

LONG_UID = ("1." * 30_000)[:-1]  # a 59,999-character "UID"


# -- helpers ----------------------------------------------------------------------------------
def _raw(tmp_path: Path, **gateway: Any) -> dict[str, Any]:
    raw = base_config(tmp_path / "spool", [], [], **gateway)
    raw["no_route"] = "discard"
    return raw


def _tls_raw(tmp_path: Path, **gateway: Any) -> tuple[dict[str, Any], ssl.SSLContext]:
    """A config with a TLS listener (a throwaway CA), and a sender's client context."""
    ca = TestCA(tmp_path / "pki", "hospital")
    server, pacs = ca.issue("gateway"), ca.issue("pacs")
    raw = _raw(tmp_path, **gateway)
    raw["gateway"]["listen"]["tls"] = {"certificate": str(server.cert),
                                       "private_key": str(server.key),
                                       "client_ca": str(ca.cert)}
    client = ssl.create_default_context(cafile=str(ca.cert))
    client.load_cert_chain(str(pacs.cert), str(pacs.key))
    return raw, client


def _value(gw: Gateway, name: str, **labels: str) -> float:
    return gw.metrics.registry.get_sample_value(f"dicom_gateway_{name}", labels) or 0.0


def _connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0))


def _closed_by_gateway(sock: socket.socket, within: float) -> bool:
    sock.settimeout(within)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except OSError:  # reset
        return True


@contextmanager
def _idle(port: int, n: int, source: str = "127.0.0.1") -> Iterator[list[socket.socket]]:
    socks = [_connect(port, source) for _ in range(n)]
    try:
        yield socks
    finally:
        for s in socks:
            s.close()


def _associate(port: int, calling: str = "HOSPITAL_PACS", called: str = "EGRESS_GW",
               **kw: Any) -> Association:
    ae = AE(ae_title=calling)
    ae.acse_timeout = 30
    ae.add_requested_context(Verification)
    return ae.associate("127.0.0.1", port, ae_title=called, **kw)


def _echo(port: int, **kw: Any) -> int:
    assoc = _associate(port, **kw)
    assert assoc.is_established, f"rejected={assoc.is_rejected} aborted={assoc.is_aborted}"
    try:
        return int(assoc.send_c_echo().Status)
    finally:
        assoc.release()


def _wait(condition: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return bool(condition())


def _item(kind: int, value: bytes) -> bytes:
    return struct.pack(">BBH", kind, 0, len(value)) + value


def _rq(app: str = "1.2.840.10008.3.1.1.1", abstract: str = "1.2.840.10008.1.1",
        calling: str = "HOSPITAL_PACS", called: str = "EGRESS_GW") -> bytes:
    """An A-ASSOCIATE-RQ written byte by byte (PS3.8 §9.3.2)."""
    pc = _item(0x20, bytes([1, 0, 0, 0]) + _item(0x30, abstract.encode())
               + _item(0x40, b"1.2.840.10008.1.2"))
    ui = _item(0x50, _item(0x51, struct.pack(">I", 16384)) + _item(0x52, b"1.2.3.4"))
    body = (struct.pack(">HH", 1, 0) + called.encode().ljust(16) + calling.encode().ljust(16)
            + bytes(32) + _item(0x10, app.encode()) + pc + ui)
    return struct.pack(">BBI", 1, 0, len(body)) + body


def _length(pdu: bytes) -> bytes:
    """``pdu`` with its length field made to fit what follows it."""
    return pdu[:2] + struct.pack(">I", len(pdu) - 6) + pdu[6:]


def _hostile(port: int, payload: bytes) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        try:
            s.sendall(payload)
            while s.recv(65536):
                pass
        except OSError:
            pass


def _audit_text(tmp_path: Path) -> str:
    return "".join(p.read_text() for p in sorted((tmp_path / "spool" / "audit").glob("*.jsonl")))


# -- item 1: idle connections -------------------------------------------------------------------
def test_idle_connections_cannot_starve_associations_and_cost_no_threads(tmp_path: Path) -> None:
    with running_gateway(_raw(tmp_path, max_associations=2)) as gw:
        port = gw.receiver.port or 0
        before = threading.active_count()
        with _idle(port, 40) as idle:
            assert _wait(lambda: _value(gw, "inbound_connections_pending") == 40)
            threads = threading.active_count() - before
            started = time.monotonic()
            assert _echo(port) == 0
            assert send(port, [sample()]) == [0]
            took = time.monotonic() - started
            assert not any(_closed_by_gateway(s, 0.01) for s in idle)  # within their deadline
    assert threads <= 1, f"{threads} threads for 40 idle connections"
    assert took < 10


def test_a_connection_without_a_whole_request_is_closed_at_the_handshake_timeout(
        tmp_path: Path) -> None:
    with running_gateway(_raw(tmp_path, handshake_timeout_seconds=0.5)) as gw:
        port = gw.receiver.port or 0
        silent, slow = _connect(port), _connect(port)
        slow.sendall(_rq()[:40])  # half a request, then nothing
        started = time.monotonic()
        assert _closed_by_gateway(silent, 5) and _closed_by_gateway(slow, 5)
        assert time.monotonic() - started < 3
        assert _wait(lambda: _value(gw, "inbound_connections_refused_total",
                                    reason="handshake_timeout") == 2)
        assert _echo(port) == 0


def test_one_address_holds_at_most_its_share_and_all_at_most_the_total(tmp_path: Path) -> None:
    """127.0.0.2-4 are other source addresses on the loopback interface."""
    raw = _raw(tmp_path, max_pending_per_source=4, max_pending_connections=8,
               handshake_timeout_seconds=60)
    with running_gateway(raw) as gw:
        port = gw.receiver.port or 0
        with _idle(port, 4, "127.0.0.2") as mine, _idle(port, 4, "127.0.0.3") as others:
            assert _wait(lambda: _value(gw, "inbound_connections_pending") == 8)
            with _idle(port, 1, "127.0.0.2"):  # a fifth from .2: its own oldest goes
                assert _closed_by_gateway(mine[0], 5)
                assert not any(_closed_by_gateway(s, 0.1) for s in [*mine[1:], *others])
                with _idle(port, 1, "127.0.0.4"):  # a ninth in all: the oldest of all goes
                    assert _closed_by_gateway(mine[1], 5)
                    assert not any(_closed_by_gateway(s, 0.1) for s in [*mine[2:], *others])
                    assert _echo(port) == 0  # gets in at once: it too closes the oldest
                    assert _closed_by_gateway(mine[2], 1)
        assert _value(gw, "inbound_connections_refused_total",
                      reason="too_many_from_source") == 1
        assert _value(gw, "inbound_connections_refused_total", reason="too_many_pending") == 2


def test_idle_connections_cannot_starve_a_tls_listener(tmp_path: Path) -> None:
    raw, client = _tls_raw(tmp_path, max_associations=2, handshake_timeout_seconds=1)
    with running_gateway(raw) as gw:
        port = gw.receiver.port or 0
        with _idle(port, 20) as idle:
            assert send(port, [sample()], tls_args=(client, "127.0.0.1")) == [0]
            assert _closed_by_gateway(idle[0], 5)  # the handshake timeout, from the accept
            assert _wait(lambda: _value(gw, "inbound_connections_refused_total",
                                        reason="handshake_timeout") == 20)


def test_a_request_cut_short_by_a_half_close_is_closed_at_once(tmp_path: Path) -> None:
    """Found by the fuzz suite (decision 0025): a peer that sends part of an A-ASSOCIATE-RQ and
    shuts down its side was held to the handshake deadline, the gate's selector woken for its
    end of stream on every turn meanwhile."""
    with running_gateway(_raw(tmp_path, handshake_timeout_seconds=60)) as gw:
        port = gw.receiver.port or 0
        rq = _rq()
        for cut in (3, 40, len(rq) - 1):  # in the header, the fixed fields, the items
            with _connect(port) as sock:
                sock.sendall(rq[:cut])
                sock.shutdown(socket.SHUT_WR)
                assert _closed_by_gateway(sock, 10), cut
        assert _value(gw, "inbound_connections_refused_total", reason="handshake_timeout") == 0
        assert _echo(port) == 0


# -- item 6: junk ---------------------------------------------------------------------------------
def test_junk_is_refused_before_pynetdicom_and_logs_a_bounded_amount(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rnd = random.Random(15)
    junk = [_rq(app=LONG_UID), _rq(abstract=LONG_UID), rnd.randbytes(4000),
            struct.pack(">BBI", 4, 0, 12) + bytes(12)]  # and a P-DATA-TF first
    with caplog.at_level(logging.WARNING), running_gateway(_raw(tmp_path)) as gw:
        port = gw.receiver.port or 0
        for payload in junk * 25:
            _hostile(port, payload)
        assert _echo(port) == 0
        refused = _value(gw, "inbound_connections_refused_total", reason="malformed")
    assert refused == 100
    assert not [r for r in caplog.records if r.name.startswith("pynetdicom")]
    assert len(caplog.text) < 2000, caplog.text[:3000]  # the first of its kind, not 100
    assert "1.1.1.1.1.1" not in caplog.text


def test_pynetdicom_tracebacks_become_one_bounded_line_and_are_rate_limited(
        caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("pynetdicom.test_hostile")
    limit = PeerLogLimit(burst=3, window=60)
    logger.addFilter(limit)
    try:
        with caplog.at_level(logging.WARNING):
            for _ in range(50):
                try:
                    raise ValueError(f"Invalid 'Application Context Name' value '{LONG_UID}'")
                except ValueError as exc:
                    logger.error("Exception in DUL.run(), aborting association")
                    logger.exception(exc)
            records = [r for r in caplog.records if r.name == logger.name]
            limit.window = 0  # the window is over: what was held back is counted in one line
            limit.flush()
    finally:
        logger.removeFilter(limit)
    assert len(records) == 6  # three from each of the two places
    assert all(r.exc_info is None and "\n" not in r.getMessage() and len(r.getMessage()) < 1200
               for r in records)
    assert "ValueError: Invalid 'Application Context Name'" in records[1].getMessage()
    assert sum("47 more log record(s)" in r.getMessage() for r in caplog.records) == 2
    installed = limit_pynetdicom_logs()
    assert installed in logging.getLogger("pynetdicom.dul").filters


# -- item 8: more senders than associations -------------------------------------------------------
def test_a_request_waits_for_a_free_association_instead_of_being_refused(tmp_path: Path) -> None:
    raw = _raw(tmp_path, max_associations=1, association_wait_seconds=20)
    with running_gateway(raw) as gw:
        port = gw.receiver.port or 0
        first = _associate(port)
        assert first.is_established
        result: list[Association] = []
        waiter = threading.Thread(target=lambda: result.append(_associate(port)))
        waiter.start()
        assert _wait(lambda: _value(gw, "association_requests_waiting") == 1)
        time.sleep(0.5)
        assert not result  # still waiting: neither accepted nor refused
        first.release()
        waiter.join(20)
        assert result and result[0].is_established
        result[0].release()
        assert _value(gw, "associations_total", result="rejected") == 0


def test_past_the_wait_a_request_gets_a_transient_local_limit_rejection(tmp_path: Path) -> None:
    raw = _raw(tmp_path, max_associations=1, association_wait_seconds=0.5)
    with running_gateway(raw) as gw:
        port = gw.receiver.port or 0
        first = _associate(port)
        started = time.monotonic()
        second = _associate(port)
        took = time.monotonic() - started
        first.release()
        assert second.is_rejected and 0.4 < took < 5
        rj = second.acceptor.primitive
        assert (rj.result, rj.result_source, rj.diagnostic) == (0x02, 0x03, 0x02)
        assert _wait(lambda: '"association_limit"' in _audit_text(tmp_path))
        assert _value(gw, "inbound_connections_refused_total", reason="association_limit") == 1


def test_more_senders_than_associations_all_get_through(tmp_path: Path) -> None:
    raw = _raw(tmp_path, max_associations=2, association_wait_seconds=30)
    with running_gateway(raw) as gw:
        port = gw.receiver.port or 0
        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(lambda _: send(port, [sample() for _ in range(3)]),
                                     range(8)))
        assert statuses == [[0, 0, 0]] * 8
        assert _value(gw, "associations_total", result="rejected") == 0
        assert _value(gw, "association_wait_duration_seconds_count") == 8


# A-ASSOCIATE-RJ, permanent, from the service user: calling AE title not recognised (3), called
# AE title not recognised (7). The gate answers these within microseconds, and pynetdicom as a
# requestor can then report an abort instead (its association thread finds the transport already
# closed by its own DUL thread before it reads the answer), so these answers are read on the wire.
_RJ_CALLING_AE = bytes([3, 0, 0, 0, 0, 4, 0, 1, 1, 3])
_RJ_CALLED_AE = bytes([3, 0, 0, 0, 0, 4, 0, 1, 1, 7])


def _answer_to(port: int, called: str = "EGRESS_GW", calling: str = "HOSPITAL_PACS",
               tls: ssl.SSLContext | None = None) -> tuple[bytes, bool]:
    """The PDU the gateway answers an A-ASSOCIATE-RQ with, read off the wire,
    and whether it then closed the connection (FIN, not a reset that could lose the answer)."""
    raw = _connect(port)
    with tls.wrap_socket(raw, server_hostname="127.0.0.1") if tls else raw as sock:
        sock.sendall(_rq(calling=calling, called=called))
        answer = b""
        while len(answer) < 10 and (got := sock.recv(10 - len(answer))):
            answer += got
        return answer, _closed_by_gateway(sock, within=5)


def test_an_unknown_calling_ae_is_rejected_by_the_gate_and_audited(tmp_path: Path) -> None:
    with running_gateway(_raw(tmp_path)) as gw:
        port = gw.receiver.port or 0
        assert _answer_to(port, calling="INTRUDER") == (_RJ_CALLING_AE, True)
        assert _wait(lambda: '"calling_ae_not_allowed"' in _audit_text(tmp_path))
        assert "INTRUDER" in _audit_text(tmp_path)
        assert _value(gw, "associations_total", result="rejected") == 1


# -- item 9: the called AE title ----------------------------------------------------------------
def test_a_wrong_called_ae_is_rejected_by_the_gate_counted_and_audited(tmp_path: Path) -> None:
    # the echo keeps a pynetdicom peer in the loop
    with running_gateway(_raw(tmp_path)) as gw:
        port = gw.receiver.port or 0
        assert _answer_to(port, "OTHER_GW") == (_RJ_CALLED_AE, True)
        assert _answer_to(port, "egress_gw") == (_RJ_CALLED_AE, True)  # case is significant
        assert _echo(port) == 0  # the right one still associates
        assert _value(gw, "inbound_connections_refused_total",
                      reason="called_ae_not_recognised") == 2
        assert _value(gw, "associations_total", result="rejected") == 2
        assert _wait(lambda: _audit_text(tmp_path).count('"called_ae_not_recognised"') == 2)


def test_a_wrong_called_ae_is_rejected_on_a_tls_listener(tmp_path: Path) -> None:
    raw, client = _tls_raw(tmp_path)
    with running_gateway(raw) as gw:
        port = gw.receiver.port or 0
        assert _answer_to(port, "OTHER_GW", tls=client) == (_RJ_CALLED_AE, True)
        assert _echo(port, tls_args=(client, "127.0.0.1")) == 0
        assert _wait(lambda: '"called_ae_not_recognised"' in _audit_text(tmp_path))


def test_with_the_check_off_any_called_ae_is_accepted(tmp_path: Path) -> None:
    with running_gateway(_raw(tmp_path, require_called_ae_title=False)) as gw:
        port = gw.receiver.port or 0
        assoc = _associate(port, called="OTHER_GW")
        assert assoc.is_established
        assert int(assoc.send_c_echo().Status) == 0
        assoc.release()
        assert _value(gw, "associations_total", result="rejected") == 0


def test_require_called_ae_title_is_a_checked_bool_defaulting_to_true(tmp_path: Path) -> None:
    assert parse_config(_raw(tmp_path), "x").gateway.require_called_ae_title is True
    with pytest.raises(ConfigError) as caught:
        parse_config(_raw(tmp_path, require_called_ae_title="no"), "/etc/gw.yaml")
    message = str(caught.value)
    assert "/etc/gw.yaml" in message and "gateway.require_called_ae_title" in message
    assert "expected bool" in message


# -- configuration and the request check ----------------------------------------------------------
@pytest.mark.parametrize(("key", "value", "problem"), [
    ("handshake_timeout_seconds", 0, "must be greater than 0"),
    ("max_pending_connections", "many", "expected int"),
    ("max_pending_per_source", 1000, "must not be greater than max_pending_connections"),
    ("association_wait_seconds", -1, "must be 0 or greater"),
])
def test_limit_keys_are_checked_and_errors_name_file_and_key(tmp_path: Path, key: str,
                                                             value: Any, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(_raw(tmp_path, **{key: value}), "/etc/gw.yaml")
    message = str(caught.value)
    assert "/etc/gw.yaml" in message and f"gateway.{key}" in message and problem in message


def test_limit_defaults_and_values(tmp_path: Path) -> None:
    assert parse_config(_raw(tmp_path), "x").gateway.limits == ConnectionLimits()
    limits = parse_config(_raw(tmp_path, handshake_timeout_seconds=2, max_pending_connections=9,
                               max_pending_per_source=3, association_wait_seconds=0),
                          "x").gateway.limits
    assert limits == ConnectionLimits(2.0, 9, 3, 0.0)


def test_the_request_check() -> None:
    rq = _rq()
    assert read_request(rq[:3]) is None and read_request(rq[:-1]) is None
    request = read_request(rq)
    assert request is not None and request.checked
    assert (request.length, request.calling_ae, request.called_ae) == (
        len(rq), "HOSPITAL_PACS", "EGRESS_GW")
    for bad in (_rq(app=LONG_UID), _rq(abstract="1.2\x1b[31m"), _rq(calling="A\\B"),
                b"GET / HTTP/1.1\r\n", rq + b"\x04", _length(rq[:-23])):  # no user info
        with pytest.raises(Malformed):
            read_request(bad)
    big = _rq(app="1.2", abstract="1.2.3") + bytes(MAX_PEEK)  # a length past what is peeked
    big = _length(big)
    request = read_request(big[:MAX_PEEK])
    assert request is not None and not request.checked and request.calling_ae == "HOSPITAL_PACS"
