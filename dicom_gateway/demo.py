"""``dicom-gateway demo``: the main job on embedded defaults, end to end on one machine.

Starts a local partner (a pynetdicom Storage SCP writing files), the gateway with
``defaults/demo.yaml``, sends a sample study (the real CT series from the shared data when
present, else pydicom's bundled examples), waits until every instance has arrived and prints
where the output landed and where the metrics are.
"""

from __future__ import annotations

import shutil
import threading
import time
import urllib.request
from importlib.resources import files
from pathlib import Path
from typing import Any, cast

import numpy as np
import yaml
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pynetdicom import AE, build_context, evt
from pynetdicom.dimse_primitives import C_STORE

from .config import parse_config
from .errors import GatewayError
from .gateway import Gateway
from .reactor_guard import guard
from .receive import accept_storage
from .settings import Config

__all__ = ["run_demo"]


def _sample_files(data_dir: str | None) -> tuple[list[Path], str]:
    base = Path(data_dir) if data_dir else Path(__file__).resolve().parents[2] / "shared" / "data"
    ct = base / "dicom" / "ct_kits_series"
    if ct.is_dir() and any(ct.glob("*.dcm")):
        return sorted(ct.glob("*.dcm")), f"real CT series {ct} (TCIA C4KC-KiTS)"
    names = ["CT_small.dcm", "MR_small.dcm"]
    return [Path(str(get_testdata_file(n))) for n in names], "pydicom bundled examples"


def _compare(expected: dict[str, Path], got: dict[str, Path], keys: Path
             ) -> tuple[int, int, int]:
    """As the partner would: verify and restore every arrived (sealed) instance, then count
    those whose pixels differ from the original, the largest change (stored units), and those
    restored bit-exactly (pixel digest and original SOP Instance UID)."""
    from .pixels import pixel_digest, read_pixels
    from .seal import load_partner_key, restore
    from .seal.keys import load_signing_public

    key = load_partner_key(keys / "partner" / "demo-partner.key")
    public = load_signing_public(keys / "gateway" / "gateway-signing.pub")
    changed = largest = exact = 0
    for path in got.values():
        sealed = dcmread(path)
        original = restore(sealed, key, public)
        source = expected.get(str(original.SOPInstanceUID))
        if source is None:
            continue
        before = read_pixels(dcmread(source)).values
        exact += pixel_digest(read_pixels(original).values) == pixel_digest(before)
        after = read_pixels(sealed).values.astype(np.int64)
        diff = int(np.abs(after - before).max()) if before.shape == after.shape else -1
        changed += diff > 0
        largest = max(largest, diff)
    return changed, largest, exact


class _Partner:
    """The demo's partner: a Storage SCP on loopback writing every instance to ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._lock = threading.Lock()
        self._arrived: dict[str, Path] = {}
        ae = AE(ae_title="PARTNER_PACS")
        ae.maximum_pdu_size = 0
        accept_storage(ae)
        server = ae.start_server(("127.0.0.1", 0), block=False,
                                 evt_handlers=[(evt.EVT_C_STORE, self._on_store)])
        assert server is not None  # block=False returns the running server
        self._server = server
        self.port: int = server.server_address[1]

    def _on_store(self, event: evt.Event) -> int:
        sop = cast(C_STORE, event.request).AffectedSOPInstanceUID
        path = self.directory / f"{sop}.dcm"
        path.write_bytes(event.encoded_dataset())
        with self._lock:
            self._arrived[str(sop)] = path
        return 0x0000

    def wait(self, count: int, seconds: float) -> dict[str, Path]:
        """What has arrived once ``count`` instances have, or ``seconds`` have passed."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            with self._lock:
                if len(self._arrived) >= count:
                    break
            time.sleep(0.2)
        with self._lock:
            return dict(self._arrived)

    def shutdown(self) -> None:
        self._server.shutdown()


def _demo_config(out: Path, partner_port: int, verbose: bool) -> tuple[dict[str, Any], Config]:
    """``defaults/demo.yaml`` pointed at the partner, with fresh keys for the gateway and the
    partner under ``out/keys``; written to ``out/gateway.yaml`` and parsed."""
    defaults = files("dicom_gateway").joinpath("defaults")
    raw = yaml.safe_load(defaults.joinpath("demo.yaml").read_text())
    raw["partners"][0]["port"] = partner_port
    raw["log_level"] = "INFO" if verbose else "WARNING"
    for profile in raw["profiles"].values():
        profile["surrogates"] = [str(defaults.joinpath(f)) for f in profile.get("surrogates", [])]
    from .seal.keys import init_gateway_keys, new_partner_key

    init_gateway_keys(out / "keys" / "gateway")  # the hospital's identity ...
    new_partner_key("demo-partner", out / "keys" / "partner")  # ... and the partner's key pair
    raw["seal"] = {"signing_key": "keys/gateway/gateway-signing.key",
                   "uid_secret": "keys/gateway/uid-secret.key", "gateway_id": "EGRESS_GW-demo"}
    raw["partners"][0]["key"] = "keys/partner/demo-partner.pub"
    (out / "gateway.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    config = parse_config(raw, "<embedded defaults: dicom_gateway/defaults/demo.yaml>", out)
    return raw, config


def _print_metrics(metrics_url: str) -> None:
    print(f"metrics: {metrics_url}  (health: /healthz, /readyz)")
    body = urllib.request.urlopen(metrics_url, timeout=5).read().decode()
    for line in body.splitlines():
        if line.startswith(("dicom_gateway_received_instances_total",
                            "dicom_gateway_forwarded_instances_total{",
                            "dicom_gateway_queue_depth")):
            print("  " + line)


def _serve_until_interrupted() -> None:
    print("serving until Ctrl-C ...")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass


def run_demo(out: Path, serve: bool = False, data_dir: str | None = None,
             verbose: bool = False) -> int:
    if out.exists():
        shutil.rmtree(out)
    received_dir = out / "partner"
    received_dir.mkdir(parents=True)
    partner = _Partner(received_dir)
    raw, config = _demo_config(out, partner.port, verbose)
    gateway = Gateway(config)
    gateway.start()
    try:
        sources, what = _sample_files(data_dir)
        print(f"gateway {config.gateway.ae_title} listening on 127.0.0.1:{gateway.receiver.port}; "
              f"sending {len(sources)} instances: {what}")
        expected = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in sources}
        acked = _send(sources, gateway.receiver.port or 0, config.gateway.ae_title)
        print(f"sender: {acked}/{len(sources)} acknowledged (Success) by the gateway")
        got = partner.wait(len(expected), config.gateway.study_stable_seconds + 60)
        changed, largest, exact = _compare(expected, got, out / "keys")
        profile = raw["routes"][0]["profile"]
        assert gateway.endpoint is not None
        print(f"partner: {len(got)}/{len(expected)} instances arrived in {received_dir.resolve()}; "
              f"profile {profile!r} ({raw['profiles'][profile]['method']}): {changed} with "
              f"protected pixels, largest change {largest} stored units")
        print(f"partner: {exact}/{len(got)} verified with the gateway's public key and restored "
              f"bit-exactly with the partner key (keys in {(out / 'keys').resolve()})")
        print(f"spool:   {(out / 'spool').resolve()}   config: {(out / 'gateway.yaml').resolve()}")
        _print_metrics(f"http://127.0.0.1:{gateway.endpoint.port}/metrics")
        if serve:
            _serve_until_interrupted()
        return 0 if len(got) == len(expected) == changed == acked == exact else 1
    finally:
        gateway.stop()
        partner.shutdown()


def _send(paths: list[Path], port: int, called: str) -> int:
    ae = AE(ae_title="DEMO_PACS")
    classes: dict[str, set[str]] = {}
    for p in paths:
        ds = dcmread(p, stop_before_pixels=True)
        classes.setdefault(str(ds.SOPClassUID), set()).add(str(ds.file_meta.TransferSyntaxUID))
    contexts = [build_context(c, sorted(ts)) for c, ts in classes.items()]
    assoc = guard(ae.associate("127.0.0.1", port, ae_title=called, contexts=contexts))
    if not assoc.is_established:
        raise GatewayError("the gateway refused the demo association")
    acked = 0
    try:
        for p in paths:
            rsp = assoc.send_c_store(dcmread(p))
            acked += int(getattr(rsp, "Status", -1) == 0)
    finally:
        assoc.release()
    return acked
