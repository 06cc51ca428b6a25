"""How many frames of a series go to the device at once.

A profile's ``batch`` is a number (used as given) or ``auto``, the default. ``auto`` on the CPU is
:data:`CPU_BATCH` frames: torch already spreads one batch over every core, and larger batches
only hold more memory. ``auto`` on CUDA measures what one frame of this size costs on the first
chunk of :data:`PROBE` frames (the peak of torch's allocator during that chunk) and fills
:data:`HEADROOM` of the memory then free on the device (free on the device, plus what torch's
cache holds unused), up to :data:`AUTO_LIMIT`; the size is remembered per frame shape for the
next series. On either device, when CUDA runs out of memory (another process took some, or a
profile's number is too large for the card), the chunk is retried at half the size, down to one
frame, and the smaller size is remembered: a too-large batch costs time, never the series.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable
from typing import Protocol

__all__ = ["AUTO_LIMIT", "CPU_BATCH", "CUDA_PART", "HEADROOM", "PROBE", "Batches",
           "DeviceMemory", "instances_per_part"]

CPU_BATCH = 8
CUDA_PART = 64
PROBE = 2
HEADROOM = 0.7
AUTO_LIMIT = 256
_log = logging.getLogger(__name__)


class DeviceMemory(Protocol):
    """What :class:`Batches` asks of a CUDA device (:class:`_Cuda`; a test may pass its own)."""

    def start(self) -> None:
        """Begin measuring the peak of the memory allocated from now on."""

    def peak(self) -> int:
        """Bytes allocated at the peak since :meth:`start`, above what was allocated then."""

    def free(self) -> int:
        """Bytes a next chunk may use: free on the device plus torch's cached, unused ones."""

    def out_of_memory(self, exc: BaseException) -> bool:
        """``exc`` is the device running out of memory (then its cache is emptied)."""


class _Cuda:
    def __init__(self, device: str) -> None:
        import torch

        self.torch, self.device, self.base = torch, torch.device(device), 0

    def start(self) -> None:
        cuda = self.torch.cuda
        cuda.synchronize(self.device)
        cuda.reset_peak_memory_stats(self.device)
        self.base = cuda.memory_allocated(self.device)

    def peak(self) -> int:
        cuda = self.torch.cuda
        cuda.synchronize(self.device)
        return max(0, cuda.max_memory_allocated(self.device) - self.base)

    def free(self) -> int:
        cuda = self.torch.cuda
        free, _ = cuda.mem_get_info(self.device)
        cached = cuda.memory_reserved(self.device) - cuda.memory_allocated(self.device)
        return int(free + max(0, cached))

    def out_of_memory(self, exc: BaseException) -> bool:
        if not isinstance(exc, self.torch.cuda.OutOfMemoryError):
            return False
        self.torch.cuda.empty_cache()
        return True


class Batches:
    """Chunks for one method on one device; ``setting`` is the profile's ``batch``."""

    def __init__(self, setting: int | str, device: str,
                 memory: DeviceMemory | None = None) -> None:
        self.setting, self.device = setting, device
        self.memory = memory if memory is not None else (
            _Cuda(device) if device.startswith("cuda") else None)
        self.sizes: dict[Hashable, int] = {}  # learned per frame shape

    def run(self, total: int, shape: Hashable, work: Callable[[int, int], None]) -> None:
        """Call ``work(start, stop)`` over ``range(total)`` in chunks, each frame once."""
        start = 0
        while start < total:
            size = self._size(shape)
            probe = self.memory if size is None else None  # None only with a device memory
            size = min(size or PROBE, total - start)
            try:
                if probe is not None:
                    probe.start()
                work(start, start + size)
            except Exception as exc:
                if self.memory is None or not self.memory.out_of_memory(exc) or size == 1:
                    raise
                self.sizes[shape] = size // 2
                _log.warning("protection: the device ran out of memory for %d frames of %s: "
                             "%d at a time from now on", size, shape, size // 2)
                continue
            if probe is not None:
                self.sizes[shape] = self._fit(probe, shape, size)
            start += size

    def _size(self, shape: Hashable) -> int | None:
        """The chunk size, None when it is still to be measured (``auto`` on CUDA)."""
        if shape in self.sizes:
            return self.sizes[shape]
        if isinstance(self.setting, int):
            return self.setting
        return CPU_BATCH if self.memory is None else None

    def _fit(self, memory: DeviceMemory, shape: Hashable, probed: int) -> int:
        """The chunk size that fills the free memory, from a probe of ``probed`` frames."""
        per_frame, free = max(1, memory.peak() // probed), memory.free()
        size = max(1, min(AUTO_LIMIT, int(free * HEADROOM) // per_frame))
        _log.info("protection: %d frames of %s at a time (%.1f MiB each measured, %.0f MiB "
                  "free on %s)", size, shape, per_frame / 2**20, free / 2**20, self.device)
        return size


def instances_per_part(setting: int | str, device: str) -> int:
    """How many instances offline ``protect`` hands to the method at once (and writes when they
    are done): the profile's number, or for ``auto`` :data:`CPU_BATCH` on the CPU and
    :data:`CUDA_PART` on CUDA (room for a large batch, little lost to an interruption)."""
    if isinstance(setting, int):
        return max(1, setting)
    return CUDA_PART if device.startswith("cuda") else CPU_BATCH
