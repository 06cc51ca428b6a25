"""A response the association's reactor took by mistake goes back to the request waiting for it.

pynetdicom 3 (checked on 3.0.4) runs a reactor thread on every association, requestor included.
Before a ``send_*`` call sends its request it asks the reactor to pause and waits until the
reactor says it is paused; but the reactor says so *before* it checks whether it may go on,
and clears the flag after. A ``send_*`` that clears the checkpoint in that window sees
"paused", sends, and the reactor, which did not pause, can take the response off the message
queue: it logs ``Received unexpected C-STORE service message`` and drops it, and the send
waits for the DIMSE timeout, aborts and returns an empty status. The same race is described
in pynetdicom issue #875 ("sporadic Received unexpected C-FIND service message"). It is rare
and needs a busy machine: one acknowledged instance in a few thousand, seen once in CI.

For the gateway's forwarder that would be a stall of ``dimse_timeout_seconds``, an aborted
association and the same instance sent twice (never a loss: a send without a response is
retried). :func:`guard` closes it without touching the reactor's loop: when the reactor is
handed a DIMSE *response* while a ``send_*`` call is still waiting (its checkpoint is cleared
from before the request is sent until after the response is taken), the response goes back
on the queue, where that call takes it. A response nobody waits for (it came after the
timeout, or was never asked for) is dropped as pynetdicom does. Requests from the peer are
served as before.

It relies on three names inside pynetdicom's ``Association`` (``_serve_request``,
``_reactor_checkpoint``, ``dimse.msg_queue``); ``tests/test_reactor_guard.py`` provokes the race
on a real association and fails if a pynetdicom release renames them.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from pynetdicom.association import Association

__all__ = ["guard"]

_log = logging.getLogger(__name__)


def guard(assoc: Association) -> Association:
    """Make ``assoc`` hand a response its reactor took by mistake back to the waiting request.

    Call it on a requestor association right after it is established, before the first
    ``send_*``; returns ``assoc``. ``assoc.returned_responses`` counts the responses handed back.
    """
    serve = assoc._serve_request
    checkpoint: threading.Event = assoc._reactor_checkpoint
    queue = assoc.dimse.msg_queue

    def serve_request(msg: Any, context_id: int) -> None:
        waiting = not checkpoint.is_set()  # a send_* call cleared it and has not set it again
        if waiting and not msg.is_valid_request and msg.is_valid_response:
            queue.put((context_id, msg))
            assoc.returned_responses += 1  # type: ignore[attr-defined]
            _log.debug("a %s response the reactor took went back to its request", msg.msg_type)
            return
        serve(msg, context_id)

    assoc.returned_responses = 0  # type: ignore[attr-defined]
    assoc._serve_request = serve_request  # type: ignore[method-assign]
    return assoc
