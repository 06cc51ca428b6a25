"""Upper-layer PDUs written byte by byte (PS3.8 §9.3), for hostile senders (``bench/hostile``,
the fuzz suite): an A-ASSOCIATE-RQ with chosen values, P-DATA-TF PDUs, and a DIMSE message
encoded by pynetdicom to be mutated before it is sent.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from pydicom.uid import generate_uid
from pynetdicom.dimse_messages import C_ECHO_RQ, C_STORE_RQ
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.pdu import P_DATA_TF

__all__ = ["ECHO", "IMPLICIT", "assoc_rq", "dimse_pdus", "item", "p_data", "pdu", "pdv"]

ECHO = "1.2.840.10008.1.1"
IMPLICIT = "1.2.840.10008.1.2"
_APP = "1.2.840.10008.3.1.1.1"
_IMPL = "1.2.826.0.1.3680043.9.3811.3.0.4"


def item(kind: int, value: bytes) -> bytes:
    """An item: type, reserved, 2-byte length, value."""
    return struct.pack(">BBH", kind, 0, len(value)) + value


def pdu(kind: int, body: bytes) -> bytes:
    """A PDU: type, reserved, 4-byte length, body."""
    return struct.pack(">BBI", kind, 0, len(body)) + body


def assoc_rq(called: str, calling: str, app: str = _APP, abstract: str = ECHO,
             impl: str = _IMPL, contexts: Sequence[tuple[str, Sequence[str]]] = (),
             max_pdu: int = 16384) -> bytes:
    """An A-ASSOCIATE-RQ: presentation context 1 for ``abstract`` in implicit VR little
    endian, then ``contexts`` (abstract syntax, transfer syntaxes) as 3, 5, ..."""
    pcs = b""
    for n, (abstract_syntax, syntaxes) in enumerate([(abstract, [IMPLICIT]), *contexts]):
        sub = item(0x30, abstract_syntax.encode()) + b"".join(
            item(0x40, ts.encode()) for ts in syntaxes)
        pcs += item(0x20, bytes([1 + 2 * n, 0, 0, 0]) + sub)
    ui = item(0x50, item(0x51, struct.pack(">I", max_pdu)) + item(0x52, impl.encode()))
    body = (struct.pack(">HH", 1, 0) + called.encode().ljust(16) + calling.encode().ljust(16)
            + bytes(32) + item(0x10, app.encode()) + pcs + ui)
    return pdu(0x01, body)


def pdv(context_id: int, control: int, data: bytes) -> bytes:
    """A presentation data value item: length, context ID, message control header, data."""
    return struct.pack(">IBB", len(data) + 2, context_id, control) + data


def p_data(*pdvs: bytes) -> bytes:
    """A P-DATA-TF PDU of ``pdvs``."""
    return pdu(0x04, b"".join(pdvs))


def dimse_pdus(context_id: int, store: tuple[str, str, bytes] | None = None,
               max_pdu: int = 16384) -> list[bytes]:
    """A C-ECHO-RQ, or with ``store`` (SOP class, SOP instance, data set bytes) a C-STORE-RQ,
    as the P-DATA-TF PDUs pynetdicom sends."""
    from io import BytesIO

    if store is None:
        primitive: C_ECHO | C_STORE = C_ECHO()
        primitive.MessageID = 1
        primitive.AffectedSOPClassUID = ECHO
        message: C_ECHO_RQ | C_STORE_RQ = C_ECHO_RQ()
    else:
        primitive = C_STORE()
        primitive.MessageID, primitive.Priority = 1, 2
        primitive.AffectedSOPClassUID = store[0]
        primitive.AffectedSOPInstanceUID = store[1] or generate_uid()
        primitive.DataSet = BytesIO(store[2])
        message = C_STORE_RQ()
    message.primitive_to_message(primitive)
    out = []
    for primitive_pdu in message.encode_msg(context_id, max_pdu):
        tf = P_DATA_TF()
        tf.from_primitive(primitive_pdu)
        out.append(tf.encode())
    return out
