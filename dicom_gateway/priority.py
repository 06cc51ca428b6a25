"""CPU priority of background work: receiving comes first (decision 0028).

A sender waits for every C-STORE response, so the receiving threads are the gateway's
foreground. Streaming (decision 0028) runs protection, sealing and forwarding while a study is
still arriving; on a machine with few cores they would take the CPU from the receiver and slow
every sender down. The assembler thread (protection, sealing, outbox) and the forwarder
processes therefore run at a lower priority (a higher nice value, Linux applies it per
thread): they use what receiving leaves, which on an idle gateway is everything.
"""

from __future__ import annotations

import contextlib
import os
import threading

__all__ = ["BACKGROUND_NICE", "run_in_background"]

#: added to the nice value of background threads and processes (CFS: about a tenth of the
#: CPU share of a nice-0 thread when both want the same core)
BACKGROUND_NICE = 10


def run_in_background(increment: int = BACKGROUND_NICE) -> None:
    """Lower the calling thread's CPU priority by ``increment`` (no-op where not permitted)."""
    with contextlib.suppress(OSError, AttributeError):
        tid = threading.get_native_id()
        now = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, min(19, now + increment))
