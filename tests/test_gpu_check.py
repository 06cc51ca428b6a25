"""``bench/gpu-check`` (issue 14): the checks it runs on a GPU machine hold on the CPU, so the
script cannot rot between the rare sessions that have a GPU; on CUDA it runs for real."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "gpu-check"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=900, check=False)


def test_gpu_check_passes_its_checks_on_the_cpu(tmp_path: Path) -> None:
    done = _run("--device", "cpu", "--quick", "-n", "1", "--sizes", "xray", "--methods",
                "adversarial_perturbation,adversarial_watermark", "--json",
                str(tmp_path / "out.json"))
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
    assert done.stdout.count("PASS") == 2 and "FAIL" not in done.stdout
    import json

    results = json.loads((tmp_path / "out.json").read_text())["results"]
    assert {r["method"] for r in results} == {"adversarial_perturbation",
                                              "adversarial_watermark"}
    assert all(r["images_per_s"] > 0 and all(r["checks"].values()) for r in results)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: see the next test")
def test_gpu_check_says_when_there_is_no_gpu() -> None:
    done = _run()
    assert done.returncode == 2
    assert "no CUDA device" in done.stderr


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_gpu_check_on_cuda() -> None:
    done = _run("--quick", "-n", "2")
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
