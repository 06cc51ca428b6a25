"""Acceptance (d): TLS on the listener and towards partners (decision 0019).

Certificates are made per test (``peers_tls.TestCA``): the hospital's CA signs the gateway's,
the sending PACS's and the partner's certificates; a foreign CA signs an intruder's. Senders and
partners are real DCMTK ``storescu``/``storescp`` with ``+tls`` and Orthanc with DICOM TLS
(these need a private network namespace, like the other real-peer tests), and pynetdicom peers
on 127.0.0.1 with contexts of the standard library's own making (no gateway code in them).
"""

from __future__ import annotations

import logging
import os
import shutil
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from gwutil import base_config, metric, partner, running_gateway, sample, scrape, send, wait_metric
from peers import DcmtkStoreSCP, RecordingSCP, dcmtk_storescu, free_port
from peers_orthanc import OrthancPeer
from peers_tls import Issued, TestCA
from pynetdicom import AE, build_context
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicom_gateway.config import parse_config
from dicom_gateway.errors import ConfigError

ROUTE = [{"name": "all", "match": {}, "to": ["partner"], "profile": "passthrough"}]


@dataclass(frozen=True)
class PKI:
    ca: TestCA  # the hospital's CA: gateway, sending PACS and partner certificates
    foreign: TestCA  # another CA: an intruder's certificate
    gateway: Issued  # the gateway's certificate (server on the listener, client to partners)
    pacs: Issued  # the sending PACS (CN "pacs")
    partner: Issued  # the partner PACS's server certificate
    intruder: Issued  # from the foreign CA


@pytest.fixture
def pki(tmp_path: Path) -> PKI:
    ca, foreign = TestCA(tmp_path / "pki", "hospital"), TestCA(tmp_path / "pki", "foreign")
    return PKI(ca, foreign, ca.issue("gateway"), ca.issue("pacs"), ca.issue("partner"),
               foreign.issue("intruder"))


def tls_config(tmp_path: Path, pki: PKI, partner_port: int,
               partner_tls: dict[str, Any] | None = None, **listen_tls: Any) -> dict[str, Any]:
    """A gateway with a TLS listener (client certificates from the hospital's CA) and one
    partner ``partner`` over TLS (its certificate checked against the same CA)."""
    tls = {"ca": str(pki.ca.cert), "certificate": str(pki.gateway.cert),
           "private_key": str(pki.gateway.key)} if partner_tls is None else partner_tls
    raw = base_config(tmp_path / "spool", [partner("partner", partner_port, tls=tls)], ROUTE)
    raw["gateway"]["listen"]["tls"] = {"certificate": str(pki.gateway.cert),
                                       "private_key": str(pki.gateway.key),
                                       "client_ca": str(pki.ca.cert), **listen_tls}
    return raw


def client_context(pki: PKI, cert: Issued | None) -> ssl.SSLContext:
    """A sender's context made by the standard library alone: trusts the hospital's CA."""
    ctx = ssl.create_default_context(cafile=str(pki.ca.cert))
    if cert is not None:
        ctx.load_cert_chain(str(cert.cert), str(cert.key))
    return ctx


def server_context(server: Issued, client_ca: Path) -> ssl.SSLContext:
    """A partner's context: its certificate; client certificates required from ``client_ca``."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(server.cert), str(server.key))
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cafile=str(client_ca))
    return ctx


@pytest.fixture
def tls_partner(pki: PKI) -> Iterator[RecordingSCP]:
    with RecordingSCP("PARTNER", ssl_context=server_context(pki.partner, pki.ca.cert)) as scp:
        yield scp


# -- DCMTK and Orthanc (private network namespace) ----------------------------------------------
def _storescu_tls(pki: PKI, cert: Issued | None) -> list[str]:
    own = ["+tls", str(cert.key), str(cert.cert), "-pw"] if cert is not None else ["+tla"]
    return [*own, "+cf", str(pki.ca.cert)]


def test_storescu_with_a_certificate_from_the_ca_reaches_storescp_over_tls(
        tmp_path: Path, pki: PKI) -> None:
    storescp_tls = ["+tls", str(pki.partner.key), str(pki.partner.cert), "-pw",
                    "+cf", str(pki.ca.cert)]  # requires a client certificate from the CA
    with DcmtkStoreSCP(tmp_path / "received", "PARTNER", extra_args=storescp_tls) as scp:
        raw = tls_config(tmp_path, pki, scp.port)
        raw["partners"][0]["associations"] = 1
        files = [tmp_path / f"{i}.dcm" for i in range(3)]
        for f in files:
            sample().save_as(f, enforce_file_format=True)
        with running_gateway(raw) as gw:
            done = dcmtk_storescu(files, "127.0.0.1", gw.receiver.port or 0, "HOSPITAL_PACS",
                                  "EGRESS_GW", extra_args=_storescu_tls(pki, pki.pacs))
            assert done.returncode == 0, done.stdout + done.stderr
            assert scp.wait_for_count(3, timeout=30) == 3, scp.log_tail()
            samples = scrape(gw.endpoint.port)  # type: ignore[union-attr]
    assert metric(samples, "dicom_gateway_received_instances_total", calling_ae="HOSPITAL_PACS",
                  status="stored") == 3
    assert metric(samples, "dicom_gateway_plain_tcp_links", link="listener", partner="") == 0
    assert metric(samples, "dicom_gateway_plain_tcp_links", link="partner",
                  partner="partner") == 0


@pytest.mark.parametrize("who", ["no certificate", "certificate from another CA"])
def test_storescu_is_refused_at_the_tls_handshake(tmp_path: Path, pki: PKI, who: str,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    cert, reason = (None, "no_certificate") if who == "no certificate" else (
        pki.intruder, "untrusted_certificate")
    with RecordingSCP("PARTNER") as plain:
        raw = tls_config(tmp_path, pki, plain.port)
        del raw["partners"][0]["tls"]
        f = tmp_path / "one.dcm"
        sample(PatientName="SECRET^TLS").save_as(f, enforce_file_format=True)
        with caplog.at_level(logging.INFO), running_gateway(raw) as gw:
            done = dcmtk_storescu([f], "127.0.0.1", gw.receiver.port or 0, "HOSPITAL_PACS",
                                  "EGRESS_GW", extra_args=[*_storescu_tls(pki, cert), "-d"])
            ops = gw.endpoint.port  # type: ignore[union-attr]
            refused = wait_metric(ops, "dicom_gateway_inbound_tls_refusals_total", 1,
                                  reason=reason)
            samples = scrape(ops)
    output = done.stdout + done.stderr
    print(f"storescu ({who}) exit {done.returncode}:\n" + "\n".join(
        line for line in output.splitlines() if "TLS" in line or "ssl" in line.lower()
        or "Association" in line))
    assert done.returncode != 0
    assert "Association Request Failed" in output and "Association Accepted" not in output, output
    assert refused == 1  # the gateway saw a failed handshake, for this reason
    assert metric(samples, "dicom_gateway_associations_total", result="accepted") == 0
    assert metric(samples, "dicom_gateway_received_instances_total", calling_ae="HOSPITAL_PACS",
                  status="stored") == 0
    lines = [r.getMessage() for r in caplog.records if "TLS handshake refused" in r.getMessage()]
    assert lines and f": {reason} (" in lines[0] and "127.0.0.1:" in lines[0], lines
    assert not any("SECRET" in r.getMessage() for r in caplog.records)
    assert plain.attempts == 0


def test_forwarding_to_orthanc_with_dicom_tls(tmp_path: Path, pki: PKI) -> None:
    orthanc_tls = {"DicomTlsEnabled": True, "DicomTlsCertificate": str(pki.partner.cert),
                   "DicomTlsPrivateKey": str(pki.partner.key),
                   "DicomTlsTrustedCertificates": str(pki.ca.cert),
                   "DicomTlsRemoteCertificateRequired": True}
    with OrthancPeer(tmp_path / "orthanc", extra_config=orthanc_tls) as orthanc:
        raw = tls_config(tmp_path, pki, orthanc.dicom_port)
        raw["partners"][0]["ae_title"] = orthanc.aet
        datasets = [sample() for _ in range(3)]
        with running_gateway(raw) as gw:
            assert send(gw.receiver.port or 0, datasets,
                        tls_args=(client_context(pki, pki.pacs), "127.0.0.1")) == [0, 0, 0]
            assert orthanc.wait_for_count(3, timeout=60) == 3, orthanc.log_tail()
        assert orthanc.sop_instance_uids() == {str(ds.SOPInstanceUID) for ds in datasets}
        # the same Orthanc refuses the gateway over plain TCP: TLS is what carried the instances
        ae = AE("EGRESS_GW")
        ae.acse_timeout = 5
        plain = ae.associate("127.0.0.1", orthanc.dicom_port, [build_context(Verification)],
                             ae_title=orthanc.aet)
        assert not plain.is_established


# -- pynetdicom peers on 127.0.0.1 ----------------------------------------------------------------
def test_tls_on_both_hops_and_calling_ae_pins(tmp_path: Path, pki: PKI,
                                              tls_partner: RecordingSCP) -> None:
    raw = tls_config(tmp_path, pki, tls_partner.port,
                     callers={"HOSPITAL_PACS": {"subject_cn": "pacs"},
                              "MODALITY": {"sha256": pki.intruder.sha256}})
    with running_gateway(raw) as gw:
        port = gw.receiver.port or 0
        ds = sample()
        assert send(port, [ds], tls_args=(client_context(pki, pki.pacs), "127.0.0.1")) == [0]
        assert tls_partner.wait_for_count(1, timeout=30) == 1
        assert tls_partner.received_sops == {str(ds.SOPInstanceUID)}
        # the PACS's certificate is not the one pinned for MODALITY: A-ASSOCIATE-RJ
        ae = AE("MODALITY")
        assoc = ae.associate("127.0.0.1", port, [build_context(Verification)],
                             ae_title="EGRESS_GW",
                             tls_args=(client_context(pki, pki.pacs), "127.0.0.1"))
        assert assoc.is_rejected
        rj = assoc.acceptor.primitive
        assert (rj.result, rj.result_source, rj.diagnostic) == (0x01, 0x01, 0x03)
        samples = scrape(gw.endpoint.port)  # type: ignore[union-attr]
    assert metric(samples, "dicom_gateway_inbound_tls_refusals_total",
                  reason="calling_ae_mismatch") == 1
    assert metric(samples, "dicom_gateway_associations_total", result="rejected") == 1


def _settled(port: int, name: str, timeout: float = 20.0, **labels: str) -> float:
    """Poll ``/metrics`` until the sample is 0; return the last value seen."""
    deadline = time.monotonic() + timeout
    while (seen := metric(scrape(port), name, **labels)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return seen


def _outbox(spool: Path) -> list[Path]:
    return sorted(p for p in (spool / "outbox" / "partner").glob("*.dcm"))


@pytest.mark.parametrize("wrong", ["ca", "pin"])
def test_a_wrong_partner_certificate_stops_delivery_and_loses_nothing(
        tmp_path: Path, pki: PKI, wrong: str) -> None:
    impostor = pki.foreign.issue("impostor")  # what the partner presents
    with RecordingSCP("PARTNER", ssl_context=server_context(impostor, pki.ca.cert)) as scp:
        trusted = tmp_path / "partner-ca.crt"  # the partner's CA as the gateway has it
        shutil.copyfile(pki.ca.cert, trusted)
        check = {"ca": str(trusted)} if wrong == "ca" else {"sha256": pki.partner.sha256}
        raw = tls_config(tmp_path, pki, scp.port, {**check, "certificate": str(pki.gateway.cert),
                                                   "private_key": str(pki.gateway.key)})
        ds = sample()
        with running_gateway(raw) as gw:
            ops = gw.endpoint.port  # type: ignore[union-attr]
            assert send(gw.receiver.port or 0, [ds],
                        tls_args=(client_context(pki, pki.pacs), "127.0.0.1")) == [0]
            assert wait_metric(ops, "dicom_gateway_forward_retries_total", 2, partner="partner",
                               reason="tls_certificate") >= 2
            samples = scrape(ops)
            assert metric(samples, "dicom_gateway_partner_up", partner="partner") == 0
            assert scp.attempts == 0 and scp.received == []  # no DICOM ever reached it
            state = next(tmp_path.glob("spool/outbox/partner/*.state.json")).read_text()
            assert "tls_certificate" in state and (
                "not trusted" in state if wrong == "ca" else "not a pinned one" in state), state
            assert len(_outbox(tmp_path / "spool")) == 1  # still in the outbox
            if wrong == "ca":  # fix the CA file in place: picked up without a restart
                os.replace(pki.foreign.cert, trusted)
                assert scp.wait_for_count(1, timeout=30) == 1
                assert _settled(ops, "dicom_gateway_queue_depth", partner="partner") == 0
        if wrong == "ca":
            assert scp.received_sops == {str(ds.SOPInstanceUID)}
            assert _outbox(tmp_path / "spool") == []
        else:
            assert len(_outbox(tmp_path / "spool")) == 1  # kept across the stop


def test_the_listener_certificate_is_reloaded_without_a_restart(
        tmp_path: Path, pki: PKI, tls_partner: RecordingSCP) -> None:
    live = tmp_path / "live"
    live.mkdir()
    cert, key = live / "gateway.crt", live / "gateway.key"
    shutil.copyfile(pki.gateway.cert, cert)
    shutil.copy2(pki.gateway.key, key)
    raw = tls_config(tmp_path, pki, tls_partner.port)
    raw["gateway"]["listen"]["tls"].update(certificate=str(cert), private_key=str(key))
    renewed = pki.ca.issue("gateway", "renewed")
    sender = client_context(pki, pki.pacs)
    first = [sample() for _ in range(2)]
    with running_gateway(raw) as gw:
        port = gw.receiver.port or 0
        ae = AE("HOSPITAL_PACS")
        assoc = ae.associate("127.0.0.1", port, [build_context(first[0].SOPClassUID)],
                             ae_title="EGRESS_GW", tls_args=(sender, "127.0.0.1"))
        assert assoc.is_established
        assert assoc.send_c_store(first[0]).Status == 0
        old = assoc.dul.socket.socket.getpeercert(binary_form=True)  # type: ignore[union-attr]
        for new, path in ((renewed.key, key), (renewed.cert, cert)):  # rename into place
            shutil.copy2(new, path.with_suffix(".tmp"))
            os.replace(path.with_suffix(".tmp"), path)
        assert assoc.send_c_store(first[1]).Status == 0  # the open association goes on
        assoc.release()
        second = [sample(), sample()]
        assoc = ae.associate("127.0.0.1", port, [build_context(second[0].SOPClassUID)],
                             ae_title="EGRESS_GW", tls_args=(sender, "127.0.0.1"))
        new = assoc.dul.socket.socket.getpeercert(binary_form=True)  # type: ignore[union-attr]
        assert [assoc.send_c_store(ds).Status for ds in second] == [0, 0]
        assoc.release()
        assert tls_partner.wait_for_count(4, timeout=30) == 4
    from dicom_gateway.tls import fingerprint

    assert fingerprint(old or b"") == pki.gateway.sha256
    assert fingerprint(new or b"") == renewed.sha256  # the new association saw the new one
    assert tls_partner.received_sops == {str(ds.SOPInstanceUID) for ds in first + second}


def test_plain_tcp_links_are_announced(tmp_path: Path, recording_scp: RecordingSCP,
                                       caplog: pytest.LogCaptureFixture) -> None:
    raw = base_config(tmp_path / "spool", [partner("partner", recording_scp.port)], ROUTE)
    with caplog.at_level(logging.WARNING), running_gateway(raw) as gw:
        samples = scrape(gw.endpoint.port)  # type: ignore[union-attr]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("PLAIN TCP" in w and "gateway.listen.tls" in w for w in warnings), warnings
    assert any("partner partner" in w and "PLAIN TCP" in w for w in warnings), warnings
    assert metric(samples, "dicom_gateway_plain_tcp_links", link="listener", partner="") == 1
    assert metric(samples, "dicom_gateway_plain_tcp_links", link="partner",
                  partner="partner") == 1


# -- configuration --------------------------------------------------------------------------------
def _error(raw: dict[str, Any]) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        parse_config(raw, "gw.yaml")
    return caught.value


def test_configuration_errors_name_the_file_and_the_key(tmp_path: Path, pki: PKI) -> None:
    raw = tls_config(tmp_path, pki, free_port())
    parse_config(raw, "gw.yaml")  # as made: accepted
    listen = raw["gateway"]["listen"]["tls"]

    missing = tmp_path / "nowhere.crt"
    err = _error({**raw, "gateway": {**raw["gateway"], "listen": {
        **raw["gateway"]["listen"], "tls": {**listen, "client_ca": str(missing)}}}})
    assert err.path == "gateway.listen.tls.client_ca" and str(missing) in err.problem

    os.chmod(pki.gateway.key, 0o644)
    err = _error(raw)
    assert err.path == "gateway.listen.tls.private_key"
    assert str(pki.gateway.key) in err.problem and "0644" in err.problem
    os.chmod(pki.gateway.key, 0o600)

    if os.geteuid() == 0:
        os.chown(pki.gateway.key, 65534, -1)
        err = _error(raw)
        assert err.path == "gateway.listen.tls.private_key" and "owned by uid 65534" in err.problem
        os.chown(pki.gateway.key, 0, -1)

    listen["private_key"] = str(pki.pacs.key)  # another certificate's key
    err = _error(raw)
    assert err.path == "gateway.listen.tls.private_key" and "not the private key" in err.problem
    listen["private_key"] = str(pki.gateway.key)

    listen["callers"] = {"NOBODY": {"subject_cn": "x"}}
    assert "allowed_callers" in _error(raw).problem
    listen["callers"] = {"MODALITY": {"sha256": "12:34"}}
    assert _error(raw).path == "gateway.listen.tls.callers.MODALITY.sha256"
    del listen["callers"]

    partner_tls = raw["partners"][0]["tls"]
    raw["partners"][0]["tls"] = {"certificate": str(pki.gateway.cert),
                                 "private_key": str(pki.gateway.key)}
    err = _error(raw)
    assert err.path == "partners[0].tls" and "'ca'" in err.problem and "'sha256'" in err.problem
    raw["partners"][0]["tls"] = {**partner_tls, "certificate": None}
    assert _error(raw).path == "partners[0].tls.certificate"
    raw["partners"][0]["tls"] = {**partner_tls, "ca": str(pki.gateway.key)}  # a key, not a CA
    err = _error(raw)
    assert err.path == "partners[0].tls.ca" and "no PEM certificate" in err.problem


def test_the_handshake_is_refused_before_any_dicom_for_a_plain_client(
        tmp_path: Path, pki: PKI, tls_partner: RecordingSCP) -> None:
    raw = tls_config(tmp_path, pki, tls_partner.port)
    with running_gateway(raw) as gw:
        with pytest.raises(ConnectionRefusedError):
            send(gw.receiver.port or 0, [sample()])  # plain TCP to the TLS listener
        ops = gw.endpoint.port  # type: ignore[union-attr]
        assert wait_metric(ops, "dicom_gateway_inbound_tls_refusals_total", 1,
                           reason="not_tls") == 1
        assert metric(scrape(ops), "dicom_gateway_associations_active") == 0


def test_the_tls_12_suites_are_bcp_195s() -> None:
    from dicom_gateway.tls import MINIMUM_VERSION, TLS12_CIPHERS

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.set_ciphers(TLS12_CIPHERS)
    tls12 = [c["name"] for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert tls12 and all(n.startswith("ECDHE-") and ("GCM" in n or "CHACHA20" in n)
                         for n in tls12), tls12
    assert ssl.TLSVersion.TLSv1_2 == MINIMUM_VERSION


def test_a_silent_client_costs_its_own_thread_a_timeout_not_the_accept_loop(pki: PKI) -> None:
    import socket

    from dicom_gateway.settings import ListenTLS
    from dicom_gateway.tls import ListenerTLS

    listener = ListenerTLS(ListenTLS(str(pki.gateway.cert), str(pki.gateway.key),
                                     str(pki.ca.cert)), handshake_timeout=0.3)
    server, client = socket.socketpair()
    with client:
        started = time.monotonic()
        wrapped = listener.ssl_context.wrap_socket(server, server_side=True)  # the accept loop
        assert time.monotonic() - started < 0.1  # no handshake there
        with wrapped:
            assert listener.handshake(wrapped) == ("timeout", "no TLS handshake within 0.3 s")
