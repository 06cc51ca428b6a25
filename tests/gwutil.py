"""Running the gateway in tests: a config built from a dict, in-process or as a real process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from peers import free_port
from prometheus_client.parser import text_string_to_metric_families

from dicom_gateway.config import parse_config
from dicom_gateway.gateway import Gateway
from dicom_gateway.reactor_guard import guard
from dicom_gateway.settings import Config

__all__ = ["GatewayProcess", "base_config", "metric", "partner", "running_gateway", "sample",
           "sample_series", "scrape", "send", "uid_secret", "wait_metric", "with_seal"]

FAST_RETRY = {"initial_seconds": 0.2, "multiplier": 2.0, "max_seconds": 1.0,
              "max_attempts": 20, "jitter": 0.1}


def base_config(spool: Path, partners: list[dict[str, Any]], routes: list[dict[str, Any]],
                **gateway: Any) -> dict[str, Any]:
    """A config dict: allowed callers HOSPITAL_PACS and MODALITY, quiet time 0.5 s, fast retries."""
    g = {"ae_title": "EGRESS_GW", "listen": {"host": "127.0.0.1", "port": 0},
         "allowed_callers": ["HOSPITAL_PACS", "MODALITY"], "spool_dir": str(spool),
         "study_stable_seconds": 0.5, "rescan_seconds": 0.5}
    g.update(gateway)
    return {
        "gateway": g,
        "metrics": {"listen": {"host": "127.0.0.1", "port": 0}},
        "retry": dict(FAST_RETRY),
        "profiles": {"passthrough": {"method": "none"},
                     "needs-pixels": {"method": "none", "require_pixel_data": True}},
        "partners": partners,
        "routes": routes,
        "no_route": "reject",
    }


def partner(name: str, port: int, ae_title: str = "PARTNER", **extra: Any) -> dict[str, Any]:
    return {"name": name, "ae_title": ae_title, "host": "127.0.0.1", "port": port, **extra}


@contextmanager
def running_gateway(raw: dict[str, Any], source: str = "<test>") -> Iterator[Gateway]:
    config: Config = parse_config(raw, source)
    gw = Gateway(config)
    gw.start()
    try:
        yield gw
    finally:
        gw.stop()


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """All samples of ``/metrics``, parsed with prometheus_client's parser."""
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out = {}
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def metric(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
           **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


class GatewayProcess:
    """``dicom-gateway serve`` as a separate process, with fixed ports so it can be restarted."""

    def __init__(self, raw: dict[str, Any], workdir: Path,
                 env: dict[str, str] | None = None) -> None:
        """``env``: variables added to this process's environment for the gateway's; it runs
        in ``workdir``."""
        self.raw, self.workdir = raw, workdir
        self.env = {**os.environ, **env} if env else None
        self.port = raw["gateway"]["listen"]["port"] = (
            raw["gateway"]["listen"]["port"] or free_port())
        self.metrics_port = raw["metrics"]["listen"]["port"] = (
            raw["metrics"]["listen"]["port"] or free_port())
        self.config_path = workdir / "gateway.yaml"
        self.config_path.write_text(yaml.safe_dump(raw))
        self.log_path = workdir / "gateway.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> GatewayProcess:
        with open(self.log_path, "ab") as log:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "dicom_gateway.cli", "serve", "--config",
                 str(self.config_path)],
                stdout=log, stderr=log, env=self.env, cwd=self.workdir)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited {self.proc.returncode}: {self.log_tail()}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/readyz", timeout=1)
                return self
            except (urllib.error.URLError, OSError):
                time.sleep(0.05)
        raise RuntimeError(f"gateway not ready: {self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL: no cleanup of any kind, as in a power cut of the process."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_tail(self, n: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def __enter__(self) -> GatewayProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def send(port: int, datasets: list[Any], calling: str = "HOSPITAL_PACS",
         called: str = "EGRESS_GW", tls_args: Any = None) -> list[int]:
    """C-STORE datasets (or file paths) with pynetdicom; return each status (-1: no response).
    ``tls_args``: ``(ssl.SSLContext, server name)`` to associate over TLS."""
    from pydicom import dcmread
    from pynetdicom import AE, build_context

    loaded = [dcmread(d) if isinstance(d, (str, Path)) else d for d in datasets]
    classes: dict[str, set[str]] = {}
    for ds in loaded:
        classes.setdefault(str(ds.SOPClassUID), set()).add(str(ds.file_meta.TransferSyntaxUID))
    ae = AE(ae_title=calling)
    contexts = [build_context(c, [t]) for c, ts in classes.items() for t in sorted(ts)]
    assoc = guard(ae.associate("127.0.0.1", port, ae_title=called, contexts=contexts,
                               tls_args=tls_args))
    if not assoc.is_established:
        raise ConnectionRefusedError(f"association rejected={assoc.is_rejected}")
    statuses = []
    try:
        for ds in loaded:
            rsp = assoc.send_c_store(ds)
            statuses.append(int(getattr(rsp, "Status", -1)) if rsp is not None else -1)
    finally:
        assoc.release()
    return statuses


def sample(name: str = "CT_small.dcm", **attrs: Any) -> Any:
    """A pydicom bundled example with fresh Study/Series/SOP UIDs and the given attributes."""
    from pydicom import dcmread
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    ds = dcmread(get_testdata_file(name))
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = (
        generate_uid(), generate_uid(), generate_uid())
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    for k, v in attrs.items():
        setattr(ds, k, v)
    return ds


def sample_series(folder: Path, n: int, name: str = "CT_small.dcm") -> list[Path]:
    """``n`` files of one series made from a bundled example (CT_small: 128x128, quick to
    protect for real), in ``folder``."""
    from pydicom.uid import generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    series, files = generate_uid(), [folder / f"{i}.dcm" for i in range(n)]
    for f in files:
        sample(name, SeriesInstanceUID=series).save_as(f, enforce_file_format=True)
    return files


def wait_metric(port: int, name: str, value: float, timeout: float = 20.0, **labels: str) -> float:
    """Poll ``/metrics`` until the sample reaches ``value``; return the last value seen."""
    deadline = time.monotonic() + timeout
    seen = metric(scrape(port), name, **labels)
    while seen < value and time.monotonic() < deadline:
        time.sleep(0.05)
        seen = metric(scrape(port), name, **labels)
    return seen


def with_seal(raw: dict[str, Any], keys: Path) -> dict[str, Any]:
    """Add a ``seal`` section and a key for every partner (made with the real key commands'
    functions under ``keys``); partners' private keys are in ``keys/partners/NAME.key``."""
    from dicom_gateway.seal.keys import init_gateway_keys, new_partner_key

    if not (keys / "gateway" / "gateway-signing.key").exists():
        init_gateway_keys(keys / "gateway")
    raw["seal"] = {"signing_key": str(keys / "gateway" / "gateway-signing.key"),
                   "uid_secret": str(keys / "gateway" / "uid-secret.key"),
                   "gateway_id": "TEST-GW"}
    for p in raw["partners"]:
        if not (keys / "partners" / f"{p['name']}.key").exists():
            new_partner_key(p["name"], keys / "partners")
        p["key"] = str(keys / "partners" / f"{p['name']}.pub")
    return raw


def uid_secret(keys: Path) -> bytes:
    return bytes.fromhex((keys / "gateway" / "uid-secret.key").read_text().strip())


def option_problem(method: str, options: dict[str, Any]) -> str | None:
    """The key a method's options parsing refuses in ``options``, or None when accepted."""
    from dicom_gateway.protect import OptionError, parse_options

    try:
        parse_options(method, options)
    except OptionError as exc:
        return exc.key
    return None
