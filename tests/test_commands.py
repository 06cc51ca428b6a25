"""The README's main job (`dicom-gateway demo`) and `serve` stopping cleanly on SIGTERM."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from gwutil import GatewayProcess, base_config


def test_demo_sends_a_study_through_and_reports(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "dicom_gateway.cli", "demo", "--out",
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "acknowledged (Success) by the gateway" in out
    n = len(list((tmp_path / "out" / "partner").glob("*.dcm")))
    assert n >= 2 and f"partner: {n}/{n} instances arrived" in out
    assert f"(adversarial_perturbation): {n} with protected pixels" in out
    assert "metrics: http://127.0.0.1:" in out and "Traceback" not in done.stderr


def test_serve_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    gw = GatewayProcess(base_config(tmp_path / "spool", [], []), tmp_path).start()
    assert gw.proc is not None
    gw.proc.terminate()
    assert gw.proc.wait(timeout=30) == 0
    assert "stopped" in gw.log_tail()


def test_serve_reports_a_busy_port_in_one_line(tmp_path: Path) -> None:
    with GatewayProcess(base_config(tmp_path / "a", [], []), tmp_path) as first:
        raw = base_config(tmp_path / "b", [], [])
        raw["gateway"]["listen"]["port"] = first.port
        cfg = tmp_path / "b.yaml"
        import yaml

        cfg.write_text(yaml.safe_dump(raw))
        done = subprocess.run([sys.executable, "-m", "dicom_gateway.cli", "serve", "--config",
                               str(cfg)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("dicom-gateway: cannot start:") and "Traceback" not in done.stderr
