"""The fuzz suite's mutator (decision 0025): seeded cases, one family at a time.

A :class:`Case` is either a C-STORE (a SOP class, the SOP Instance UID of the request, the
negotiated transfer syntax and the data set bytes as sent) or bytes written on a raw socket,
before (``raw``) or after (``assoc``) an association is accepted. :func:`make_case` draws one
case of a family from a :class:`random.Random`: the same seed gives the same cases.

Families (:data:`FAMILIES`): ``flip`` (bytes flipped, inserted, deleted), ``truncate``,
``length`` (an element's length field lies), ``vr`` (an explicit VR replaced), ``meta`` (group
0002 injected), ``syntax`` (encoded in another syntax than the negotiated one), ``deflate``
(small deflate bombs and broken deflate streams), ``uid`` (hostile UID values), ``pdu-raw``
(junk and mutated A-ASSOCIATE-RQs) and ``pdu-assoc`` (malformed PDUs after the A-ASSOCIATE-AC).
The data set families work on top-level elements found by :func:`elements`.
"""

from __future__ import annotations

import random
import struct
import zlib
from dataclasses import dataclass
from functools import cache

from fuzz_corpus import Seed
from fuzz_pdu import IMPLICIT
from pydicom.uid import UID, generate_uid

__all__ = ["BIG", "DEFLATED", "EXPLICIT", "FAMILIES", "GW_AE", "HOSTILE_UIDS", "SCU_AE",
           "SYNTAXES", "Case", "Element", "deflate", "elements", "inflate", "mutated",
           "syntax_mismatch", "with_value", "zeros_deflated"]

GW_AE, SCU_AE = "EGRESS_GW", "HOSPITAL_PACS"
EXPLICIT, BIG, DEFLATED = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"
#: the syntaxes a case may be sent (negotiated) in
SYNTAXES = (IMPLICIT, EXPLICIT, BIG, DEFLATED, "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.70",
            "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.90")
FAMILIES = ("flip", "truncate", "length", "vr", "meta", "syntax", "deflate", "uid", "pdu-raw",
            "pdu-assoc")
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT",
             b"UV"}
_VRS = sorted(_LONG_VRS | {b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL",
                           b"IS", b"LO", b"LT", b"PN", b"SH", b"SL", b"SS", b"ST", b"TM", b"UI",
                           b"UL", b"US", b"ZZ", b"\x00\x00", b"  ", b"ob"})
_PIXEL_DATA = 0x7FE00010
_STUDY, _SERIES, _SOP = 0x0020000D, 0x0020000E, 0x00080018
HOSTILE_UIDS = (
    b"1.2.3\r\n2026-11-30 12:00:00,000 INFO dicom_gateway.forwarder: forwarded sop=1.2.3 (success)",
    b"1.2.3\x00\x00evil", b"1.2.\n", b"\r", b"1." * 40, b"9" * 65, b"1." * 2000, b"1.2.\xe9\xe8",
    "1.2.\u00fc.\u4e2d".encode(), b"\x1b[31m1.2.3\x1b[0m", b"1.2.3\\4.5.6", b"../../../../tmp/x",
    b"", b" ", b"1.2.3 ", b"%s%n%x", b"${jndi:ldap://x/a}", b"1.2.3" + b"\x00" * 40, b"\xff\xfe",
)


@dataclass
class Case:
    """One input: what is sent, and a line that says what it is (``detail``)."""

    family: str
    index: int
    kind: str  # "store", "raw" (bytes on a new connection) or "assoc" (after the AC)
    detail: str
    sop_class: str = ""
    sop: bytes = b""  # the request's SOP Instance UID (and the file meta's)
    syntax: str = ""  # the negotiated transfer syntax
    body: bytes = b""  # the data set as sent; raw and assoc: the bytes written
    must_refuse: bool = False  # a regression case the gateway must not answer Success


@dataclass(frozen=True)
class Element:
    """A top-level element: where it starts, its tag, where its VR, length and value are."""

    offset: int
    tag: int
    vr_at: int  # -1: implicit VR
    length_at: int
    length_size: int
    value_at: int
    length: int


def _order(syntax: str) -> str:
    return ">" if syntax == BIG else "<"


def _head(body: bytes, off: int, syntax: str) -> tuple[int, int, int, int, int] | None:
    """The element header at ``off``: tag, VR offset (-1: implicit), length offset and
    size, length; ``None`` where it does not fit."""
    e = _order(syntax)
    if off + 8 > len(body):
        return None
    group, number = struct.unpack_from(e + "HH", body, off)
    if syntax == IMPLICIT or group == 0xFFFE:
        vr_at, length_at, size = -1, off + 4, 4
    elif body[off + 4:off + 6] in _LONG_VRS:
        vr_at, length_at, size = off + 4, off + 8, 4
    else:
        vr_at, length_at, size = off + 4, off + 6, 2
    if length_at + size > len(body):
        return None
    length = struct.unpack_from(e + ("I" if size == 4 else "H"), body, length_at)[0]
    return group << 16 | number, vr_at, length_at, size, length


def _undefined_end(body: bytes, off: int, syntax: str, depth: int = 0) -> int | None:
    """Where the undefined-length value starting at ``off`` ends (after its delimiter):
    items and nested sequences are walked; ``None`` if it never ends."""
    while depth < 16 and (head := _head(body, off, syntax)) is not None:
        tag, _, length_at, size, length = head
        off = length_at + size
        if tag in (0xFFFEE0DD, 0xFFFEE00D):
            return off
        if length == 0xFFFFFFFF:
            end = _undefined_end(body, off, syntax, depth + 1)
            if end is None:
                return None
            off = end
        else:
            off += length
    return None


def elements(body: bytes, syntax: str, limit: int = 400) -> list[Element]:
    """The top-level elements of a (not deflated) data set, up to whatever cannot be one."""
    out: list[Element] = []
    off: int | None = 0
    while off is not None and len(out) < limit and (head := _head(body, off, syntax)):
        tag, vr_at, length_at, size, length = head
        out.append(Element(off, tag, vr_at, length_at, size, length_at + size, length))
        off = (_undefined_end(body, length_at + size, syntax) if length == 0xFFFFFFFF
               else length_at + size + length)
    return out


def with_value(body: bytes, syntax: str, tag: int, value: bytes) -> bytes:
    """``body`` with the value of top-level element ``tag`` replaced (its length fixed)."""
    for el in elements(body, syntax):
        if el.tag == tag:
            padded = value + b"\x00" * (len(value) % 2)
            fmt = _order(syntax) + ("I" if el.length_size == 4 else "H")
            return (body[:el.length_at] + struct.pack(fmt, len(padded)) + padded
                    + body[el.value_at + el.length:])
    return body


def inflate(body: bytes) -> bytes:
    return zlib.decompress(body, -15)


def deflate(body: bytes) -> bytes:
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    return c.compress(body) + c.flush()


def _header_end(body: bytes, syntax: str) -> int:
    """Where the pixel data's value starts (the end of the data set if it has none)."""
    for el in elements(body, syntax):
        if el.tag == _PIXEL_DATA:
            return el.value_at
    return len(body)


# -- data set families ------------------------------------------------------------------------
def _flip(rnd: random.Random, body: bytearray, syntax: str) -> str:
    end = _header_end(bytes(body), syntax)
    done = []
    for _ in range(rnd.choice((1, 1, 2, 4, 8, 16))):
        at = rnd.randrange(max(1, end if rnd.random() < 0.75 else len(body)))
        op = rnd.choice(("xor", "xor", "zero", "ff", "insert", "delete"))
        if op == "insert":
            body[at:at] = rnd.randbytes(rnd.choice((1, 2, 4, 7)))
        elif op == "delete":
            del body[at:at + rnd.choice((1, 2, 4, 7))]
        elif at < len(body):
            body[at] = {"zero": 0, "ff": 0xFF}.get(op, body[at] ^ rnd.randrange(1, 256))
        done.append(f"{op}@{at}")
    return " ".join(done)


def _truncate(rnd: random.Random, body: bytearray, syntax: str) -> str:
    els, end = elements(bytes(body), syntax), _header_end(bytes(body), syntax)
    pick = rnd.random()
    if pick < 0.3 and els:
        at = rnd.choice(els).offset + rnd.randrange(0, 12)
    elif pick < 0.7:
        at = rnd.randrange(max(1, end))
    else:
        at = rnd.randrange(len(body))
    del body[at:]
    return f"cut@{at}"


def _length(rnd: random.Random, body: bytearray, syntax: str) -> str:
    els = elements(bytes(body), syntax)
    if not els:
        return _flip(rnd, body, syntax)
    el = rnd.choice(els)
    lie = rnd.choice((0xFFFFFFFF, 0xFFFFFFFE, el.length + 2, max(0, el.length - 2),
                      el.length + 1, 0, 0x7FFFFFF0, 2 * len(body), rnd.getrandbits(32)))
    lie &= 0xFFFF if el.length_size == 2 else 0xFFFFFFFF
    fmt = _order(syntax) + ("I" if el.length_size == 4 else "H")
    body[el.length_at:el.length_at + el.length_size] = struct.pack(fmt, lie)
    return f"({el.tag >> 16:04X},{el.tag & 0xFFFF:04X}) length {el.length} -> {lie}"


def _vr(rnd: random.Random, body: bytearray, syntax: str) -> str:
    els = [el for el in elements(bytes(body), syntax) if el.vr_at >= 0]
    if not els:
        return _length(rnd, body, syntax)
    el, vr = rnd.choice(els), rnd.choice(_VRS)
    body[el.vr_at:el.vr_at + 2] = vr
    return f"({el.tag >> 16:04X},{el.tag & 0xFFFF:04X}) VR -> {vr!r}"


def _meta(rnd: random.Random, body: bytearray, syntax: str) -> str:
    e, implicit = _order(syntax), syntax == IMPLICIT
    number, vr, value = rnd.choice((
        (0x0010, b"UI", rnd.choice((BIG, IMPLICIT, EXPLICIT, DEFLATED)).encode()),
        (0x0003, b"UI", generate_uid().encode()), (0x0002, b"UI", b"1.2.840.10008.5.1.4.1.1.7"),
        (0x0000, b"UL", struct.pack(e + "I", 200)), (0x0001, b"OB", b"\x00\x01"),
        (0x0016, b"AE", b"EVIL_AE "), (rnd.randrange(0x10000), b"UN", rnd.randbytes(8))))
    value += b"\x00" * (len(value) % 2)
    if implicit:
        head = struct.pack(e + "HHI", 2, number, len(value))
    elif vr in _LONG_VRS:
        head = struct.pack(e + "HH", 2, number) + vr + struct.pack(e + "HI", 0, len(value))
    else:
        head = struct.pack(e + "HH", 2, number) + vr + struct.pack(e + "H", len(value))
    els = elements(bytes(body), syntax)
    at = 0 if rnd.random() < 0.7 or not els else rnd.choice(els).offset
    body[at:at] = head + value
    return f"(0002,{number:04X}) {vr.decode('latin-1')} at {at}"


_MUTATORS = {"flip": _flip, "truncate": _truncate, "length": _length, "vr": _vr, "meta": _meta}


def mutated(family: str, rnd: random.Random, seed: Seed,
            prefix: str) -> tuple[bytes, str, str, str]:
    """A data set family's case: the body, its syntax, what was done, the SOP Instance UID."""
    syntax = str(seed.syntax)
    if family == "vr" and syntax in (IMPLICIT, DEFLATED):
        syntax = EXPLICIT
    data, sop = seed.body(prefix, UID(syntax))
    deflated = syntax == DEFLATED
    plain = bytearray(inflate(data) if deflated else data)
    detail = _MUTATORS[family](rnd, plain, EXPLICIT if deflated else syntax)
    return (deflate(bytes(plain)) if deflated else bytes(plain)), syntax, detail, sop


def syntax_mismatch(rnd: random.Random, seed: Seed,
                    prefix: str) -> tuple[bytes, str, str, str]:
    """Encoded in one syntax, sent under another (as :func:`mutated` returns)."""
    encoded = rnd.choice((str(seed.syntax), IMPLICIT, EXPLICIT, BIG, DEFLATED))
    try:
        data, sop = seed.body(prefix, UID(encoded))
    except Exception:  # pydicom cannot write it so (a compressed seed as big endian)
        encoded = str(seed.syntax)
        data, sop = seed.body(prefix, UID(encoded))
    sent = rnd.choice([s for s in SYNTAXES if s != encoded])
    return data, sent, f"encoded {UID(encoded).name}, sent as {UID(sent).name}", sop


@cache
def zeros_deflated(mb: int) -> bytes:
    """``mb`` MiB of zeros as raw deflate blocks that refer to nothing before them and end in
    a full flush (not final): they may follow, and be followed by, another stream's blocks."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    chunk, parts = bytes(1 << 20), []
    for _ in range(mb):
        parts.append(c.compress(chunk))
    return b"".join(parts) + c.flush(zlib.Z_FULL_FLUSH)
