"""The pynetdicom reactor race (dicom_gateway/reactor_guard.py), provoked on a real association.

The reactor is made to sit inside the window the race needs: it has said "paused" but goes on
and reads the message queue once the response is there, while the sending thread is held for a
moment after sending, so that the reactor reaches the response first. Without the guard the
C-STORE then gets no response (pynetdicom logs "Received unexpected C-STORE service message");
with it every C-STORE gets its Success and the guard counts the responses it handed back.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from peers_scp import RecordingSCP
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid
from pynetdicom import AE, build_context
from pynetdicom.association import Association

from dicom_gateway.reactor_guard import guard

SENDS = 4


def _instance() -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "OT"
    return ds


class _Window(threading.Event):
    """The reactor's checkpoint, widened: after the checkpoint lets the reactor through (it has
    already said "paused"), it lingers 50 ms, and if a send cleared the checkpoint meanwhile it
    waits (up to 5 s) for that send's response to arrive before going on to read the queue."""

    def __init__(self, assoc: Association) -> None:
        super().__init__()
        self.set()
        self.queue = assoc.dimse.msg_queue

    def wait(self, timeout: float | None = None) -> bool:
        result = super().wait(timeout)
        time.sleep(0.05)
        deadline = time.monotonic() + 5
        while not self.is_set() and self.queue.empty() and time.monotonic() < deadline:
            time.sleep(0.005)
        return result


def _provoke(assoc: Association) -> None:
    """Widen the reactor's window, and hold the sender 1 s after each request leaves."""
    assoc._reactor_checkpoint = _Window(assoc)
    send = assoc.dimse.send_msg

    def send_then_linger(*args: Any) -> None:
        send(*args)
        time.sleep(1.0)

    assoc.dimse.send_msg = send_then_linger  # type: ignore[method-assign]


def _store_all(guarded: bool) -> tuple[list[int | None], int]:
    scp = RecordingSCP(hash_pixels=False).start()
    try:
        ae = AE(ae_title="SENDER")
        ae.dimse_timeout = 3
        assoc = ae.associate("127.0.0.1", scp.port, ae_title=scp.ae_title,
                             contexts=[build_context(SecondaryCaptureImageStorage,
                                                     [ExplicitVRLittleEndian])])
        assert assoc.is_established
        _provoke(assoc)
        if guarded:
            guard(assoc)
        statuses: list[int | None] = []
        for _ in range(SENDS):
            rsp = assoc.send_c_store(_instance())
            statuses.append(int(rsp.Status) if "Status" in rsp else None)
            if statuses[-1] is None:
                break  # pynetdicom aborted the association after the timeout
        if assoc.is_established:
            assoc.release()
        return statuses, getattr(assoc, "returned_responses", 0)
    finally:
        scp.stop()


def test_without_the_guard_the_provoked_race_loses_a_response() -> None:
    statuses, _ = _store_all(guarded=False)
    assert None in statuses, f"the race was not provoked: {statuses}"


def test_the_guard_hands_every_taken_response_back() -> None:
    statuses, returned = _store_all(guarded=True)
    assert statuses == [0x0000] * SENDS
    assert returned >= 1, "the race was not provoked, so the guard was not exercised"
