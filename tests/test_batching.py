"""How frames are chunked for the device (decision 0030): ``auto`` on the CPU, sizing from the
free memory on CUDA, and halving on out-of-memory. CUDA's memory is simulated here (no GPU in
CI): :class:`_Card` stands for the device at the edge this module talks to."""

from __future__ import annotations

import logging

import pytest

from dicom_gateway.protect.batching import (
    AUTO_LIMIT,
    CPU_BATCH,
    CUDA_PART,
    HEADROOM,
    PROBE,
    Batches,
    instances_per_part,
)


class _OutOfMemory(RuntimeError):
    pass


class _Card:
    """A device with ``capacity`` bytes where a frame costs ``per_frame`` at the peak."""

    def __init__(self, capacity: int, per_frame: int) -> None:
        self.capacity, self.per_frame, self.last, self.emptied = capacity, per_frame, 0, 0

    def start(self) -> None:
        self.last = 0

    def peak(self) -> int:
        return self.last

    def free(self) -> int:
        return self.capacity

    def out_of_memory(self, exc: BaseException) -> bool:
        self.emptied += isinstance(exc, _OutOfMemory)
        return isinstance(exc, _OutOfMemory)

    def work(self, done: list[tuple[int, int]]):  # type: ignore[no-untyped-def]
        def chunk(start: int, stop: int) -> None:
            if (stop - start) * self.per_frame > self.capacity:
                raise _OutOfMemory("CUDA out of memory")
            self.last = (stop - start) * self.per_frame
            done.append((start, stop))
        return chunk


def _covered(done: list[tuple[int, int]], total: int) -> bool:
    frames = [i for start, stop in done for i in range(start, stop)]
    return frames == list(range(total))


def test_auto_on_the_cpu_is_eight_frames_and_a_number_is_used_as_given() -> None:
    for setting, size in (("auto", CPU_BATCH), (3, 3)):
        done: list[tuple[int, int]] = []
        Batches(setting, "cpu").run(20, (64, 64, 1), _Card(0, 0).work(done))
        assert _covered(done, 20) and max(b - a for a, b in done) == size


def test_auto_on_cuda_fills_the_free_memory_measured_on_a_probe() -> None:
    card = _Card(capacity=100 * 2**20, per_frame=3 * 2**20)
    batches, done = Batches("auto", "cuda", card), []  # type: ignore[var-annotated]
    batches.run(200, (512, 512, 1), card.work(done))
    fits = int(card.capacity * HEADROOM) // card.per_frame
    assert done[0] == (0, PROBE) and {b - a for a, b in done[1:-1]} == {fits}
    assert _covered(done, 200) and batches.sizes[(512, 512, 1)] == fits
    done.clear()  # the next series of that size is not probed again
    batches.run(50, (512, 512, 1), card.work(done))
    assert done[0] == (0, fits) and _covered(done, 50)


def test_auto_on_cuda_stops_at_the_limit() -> None:
    card = _Card(capacity=2**40, per_frame=2**20)
    batches, done = Batches("auto", "cuda", card), []  # type: ignore[var-annotated]
    batches.run(1000, (224, 224, 1), card.work(done))
    assert max(b - a for a, b in done) == AUTO_LIMIT and _covered(done, 1000)


def test_out_of_memory_halves_the_chunk_and_keeps_the_smaller_size(
        caplog: pytest.LogCaptureFixture) -> None:
    card = _Card(capacity=10 * 2**20, per_frame=3 * 2**20)  # 3 frames fit, the profile says 16
    batches, done = Batches(16, "cuda", card), []  # type: ignore[var-annotated]
    with caplog.at_level(logging.WARNING):
        batches.run(40, (512, 512, 1), card.work(done))
    assert _covered(done, 40) and max(b - a for a, b in done) == 2  # 16 -> 8 -> 4 -> 2
    assert card.emptied == 3 and batches.sizes[(512, 512, 1)] == 2
    assert "ran out of memory for 16 frames" in caplog.text


def test_out_of_memory_at_one_frame_and_other_errors_are_the_series_errors() -> None:
    card = _Card(capacity=2**20, per_frame=3 * 2**20)  # not even one frame fits
    with pytest.raises(_OutOfMemory):
        Batches("auto", "cuda", card).run(4, (512, 512, 1), card.work([]))

    def broken(start: int, stop: int) -> None:
        raise ValueError("a bug")

    with pytest.raises(ValueError):
        Batches(8, "cuda", _Card(2**30, 1)).run(4, (8, 8, 1), broken)


def test_offline_parts() -> None:
    assert instances_per_part("auto", "cpu") == CPU_BATCH
    assert instances_per_part("auto", "cuda") == CUDA_PART
    assert instances_per_part(5, "cuda") == 5
