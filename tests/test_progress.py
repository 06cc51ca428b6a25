"""Progress of long command-line jobs (issue 16, item 5): per instance with an ETA, also inside
a series that a method protects in one call. Clocks are injected; nothing here waits."""

from __future__ import annotations

import io
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from gwutil import base_config, partner, sample_series, with_seal

from dicom_gateway.cli import main
from dicom_gateway.protect import Outcome, registry
from dicom_gateway.protect.options import NoneOptions

BUNDLED = Path(__file__).parents[1] / "dicom_gateway" / "defaults" / "pneumonia-cnn-small.pt"


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_bar_counts_done_units_and_estimates_the_rest() -> None:
    from dicom_gateway.progress import Progress, duration

    clock, out = _Clock(), io.StringIO()
    bar = Progress(156, "instances", stream=out, clock=clock)
    clock.now += 600
    bar.advance(40)
    clock.now += 90
    bar.update(48.5, note="series 1 of 2")
    lines = out.getvalue().splitlines()  # not a terminal: a line per update
    assert lines[0] == ("[#######.......................] 40/156 instances (26%), 10m00s, "
                        "ETA 29m00s")
    assert lines[1].endswith("48/156 instances (31%), 11m30s, ETA 25m29s, series 1 of 2")
    bar.update(156)
    assert out.getvalue().splitlines()[-1].endswith("156/156 instances (100%), 11m30s")
    assert [duration(s) for s in (0.4, 59, 61, 3599, 3600, 7380)] == [
        "0s", "59s", "1m01s", "59m59s", "1h00m", "2h03m"]


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_the_line_is_redrawn_in_place() -> None:
    from dicom_gateway.progress import Progress

    out = _Tty()
    bar = Progress(2, "rounds", stream=out, clock=_Clock())
    bar.advance()
    bar.advance()
    bar.close()
    assert out.getvalue().count("\r") == 2 and out.getvalue().endswith("(100%), 0s\n")


class _OneAtATime:
    """A stand-in method that protects a series in one call, as the real ones do, and says on
    stderr when it starts each instance; it reports each instance when done."""

    name = "one_at_a_time"

    def __init__(self, options: object) -> None:
        pass

    def __call__(self, paths: Sequence[Path], progress: Any = None) -> list[Outcome]:
        for index, _ in enumerate(paths):
            print(f"<starting instance {index + 1}>", file=sys.stderr)
            if progress is not None:
                progress(1)
        return [Outcome(source=p, output=p) for p in paths]


def test_offline_protect_moves_the_bar_inside_a_series(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    monkeypatch.setitem(registry._METHODS, "one_at_a_time", (_OneAtATime, NoneOptions))
    sample_series(tmp_path / "ct", 3)
    raw = with_seal(base_config(tmp_path / "spool", [partner("acme", 11112)], []),
                    tmp_path / "keys")
    raw["profiles"]["p"] = {"method": "one_at_a_time"}
    (tmp_path / "gw.yaml").write_text(yaml.safe_dump(raw))
    assert main(["protect", "--config", str(tmp_path / "gw.yaml"), "--profile", "p",
                 "--partner", "acme", str(tmp_path / "ct"), "--out", str(tmp_path / "out")]) == 0
    events = [re.sub(r"^\[[#.]+\] ", "", line)
              for line in capsys.readouterr().err.splitlines()]
    assert [e.split(" instances")[0] for e in events] == [
        "<starting instance 1>", "1/3", "<starting instance 2>", "2/3",
        "<starting instance 3>", "3/3"]  # the bar moves while the series is being protected
    assert "ETA" in events[1] and "ETA" in events[3] and "ETA" not in events[5]


def test_the_stage_reports_a_batch_exactly_once(tmp_path: Path) -> None:
    """Over- and under-reporting methods, and methods that do not report at all, each
    advance the bar by exactly their batch."""
    from dicom_gateway.metrics import Metrics
    from dicom_gateway.settings import ProfileConfig
    from dicom_gateway.stage import ProtectionStage

    def method(amounts: list[float] | None) -> type:
        class Reporting:
            def __init__(self, options: object) -> None:
                pass

            def __call__(self, paths: Sequence[Path], **kw: Any) -> list[Outcome]:
                for amount in amounts or []:
                    kw["progress"](amount)
                return [Outcome(source=p, output=p) for p in paths]

        class Silent:
            def __init__(self, options: object) -> None:
                pass

            def __call__(self, paths: Sequence[Path]) -> list[Outcome]:
                return [Outcome(source=p, output=p) for p in paths]

        return Silent if amounts is None else Reporting

    paths = [tmp_path / f"{i}.dcm" for i in range(3)]
    for amounts in (None, [], [0.5, 0.5], [2, 2, 2], [-1, 1]):
        with pytest.MonkeyPatch.context() as patch:
            patch.setitem(registry._METHODS, "m", (method(amounts), NoneOptions))
            stage = ProtectionStage({"p": ProfileConfig("p", "m", False, "quarantine", {})},
                                    Metrics())
            heard: list[float] = []
            stage.protect("p", paths, heard.append)
        assert sum(heard) == 3 and all(a > 0 for a in heard), (amounts, heard)


def test_the_perturbation_reports_every_batch_of_frames(tmp_path: Path) -> None:
    from dicom_gateway.protect.perturbation import AdversarialPerturbation

    files = sample_series(tmp_path / "ct", 3)
    method = AdversarialPerturbation({"surrogates": [str(BUNDLED)], "steps": 1, "batch": 2})
    heard: list[float] = []
    assert all(o.error is None for o in method(files, progress=heard.append))
    assert heard == [2.0, 1.0]  # two frames (two single-frame instances), then the third


def test_the_watermark_reports_every_frame(tmp_path: Path) -> None:
    from dicom_gateway.protect.watermark import AdversarialWatermark

    files = sample_series(tmp_path / "ct", 2)
    method = AdversarialWatermark({"surrogates": [str(BUNDLED)], "generations": 1,
                                   "population": 4, "texture": 0, "keepout_saliency": 0,
                                   "jpeg": False})
    heard: list[float] = []
    assert all(o.error is None for o in method(files, progress=heard.append))
    assert heard == [1.0, 1.0]  # single-frame instances: one report each, as each is done


def test_unlearnable_reports_its_rounds_as_shares_of_the_series(tmp_path: Path) -> None:
    from dicom_gateway.protect.unlearnable import Unlearnable

    files = sample_series(tmp_path / "ct", 3)
    method = Unlearnable({"surrogates": [str(BUNDLED)], "label_tag": "Modality",
                          "classes": ["CT", "XA"], "rounds": 2, "train_steps": 1,
                          "pgd_steps": 1, "lr": 1e-6})  # a tiny lr: the loss stays above stop
    heard: list[float] = []
    assert all(o.error is None for o in method(files, progress=heard.append))
    assert sum(heard) == pytest.approx(3)
    assert [a for a in heard if a > 1e-9] == pytest.approx([1.5, 1.5])  # a round, half each
