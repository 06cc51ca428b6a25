"""The fuzz suite's cases (decision 0025): :func:`make_case` draws one case of a family.

The element-level mutators are :mod:`fuzz_mutate`'s; here are the families that build whole
inputs: deflate bombs and broken deflate streams, hostile UID values, junk and mutated
A-ASSOCIATE-RQs on a raw socket, and malformed PDUs after an accepted association.
"""

from __future__ import annotations

import copy
import random
import struct
import zlib
from functools import partial

from fuzz_corpus import Seed
from fuzz_mutate import (
    DEFLATED,
    EXPLICIT,
    FAMILIES,
    GW_AE,
    HOSTILE_UIDS,
    IMPLICIT,
    SCU_AE,
    Case,
    deflate,
    elements,
    inflate,
    mutated,
    syntax_mismatch,
    with_value,
    zeros_deflated,
)
from fuzz_pdu import ECHO, assoc_rq, dimse_pdus, item, p_data, pdu, pdv
from pydicom.uid import UID

__all__ = ["ASSOC_CONTEXTS", "BOMB_MB", "CT_STORAGE", "assoc_request", "make_case",
           "regression_cases"]

CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
#: the association a ``pdu-assoc`` case opens: Verification (1) and CT Image Storage (3)
ASSOC_CONTEXTS = ((CT_STORAGE, (IMPLICIT, EXPLICIT)),)
#: inflated sizes of the deflate bombs, MiB (the fuzz gateway allows 16 MiB per data set)
BOMB_MB = (1, 4, 12, 24, 64, 256)
_PIXEL_DATA = 0x7FE00010


def assoc_request() -> bytes:
    """The A-ASSOCIATE-RQ of an allowed sender that ``pdu-assoc`` cases start with."""
    return assoc_rq(GW_AE, SCU_AE, contexts=ASSOC_CONTEXTS)


# -- deflate ----------------------------------------------------------------------------------
def _bomb(rnd: random.Random, seed: Seed, prefix: str) -> tuple[bytes, str, str]:
    """A deflated data set whose pixel data (or a private OB before it) inflates to ``mb``
    MiB of zeros: three raw deflate streams, each ending in a full flush, one after the other."""
    mb, in_header = rnd.choice(BOMB_MB), rnd.random() < 0.3
    ds = copy.deepcopy(seed.ds)
    if in_header:
        ds.add_new(0x00110010, "LO", "FUZZ BOMB")
        ds.add_new(0x00111010, "OB", b"")
    else:
        ds.Rows, ds.Columns = 4096, 128 * mb
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        del ds.PixelData
    data, sop = Seed(seed.name, ds, seed.syntax).body(prefix, UID(EXPLICIT))
    size = mb << 20
    if in_header:
        el = next(e for e in elements(data, EXPLICIT) if e.tag == 0x00111010)
        head = data[:el.length_at] + struct.pack("<I", size)
        rest = data[el.value_at:]
    else:
        head, rest = data + struct.pack("<HH", 0x7FE0, 0x0010) + b"OW\x00\x00" + \
            struct.pack("<I", size), b""
    c1, c3 = zlib.compressobj(6, zlib.DEFLATED, -15), zlib.compressobj(6, zlib.DEFLATED, -15)
    body = (c1.compress(head) + c1.flush(zlib.Z_FULL_FLUSH) + zeros_deflated(mb)
            + c3.compress(rest) + c3.flush())
    where = "private OB" if in_header else "pixel data"
    return body, f"bomb {mb} MiB in {where}, {len(body)} bytes sent ({seed.name})", sop


def _deflate_case(rnd: random.Random, seed: Seed, seeds: list[Seed],
                  prefix: str) -> tuple[bytes, str, str, str]:
    """A deflated data set: the body, what it is, its SOP Class and Instance UIDs."""
    kind = rnd.choice(("bomb", "bomb", "bomb", "random", "truncated", "trailing", "zlib",
                       "implicit", "empty"))
    if kind == "bomb":
        fit = [s for s in seeds if s.syntax in (IMPLICIT, EXPLICIT) and "PixelData" in s.ds
               and s.ds.get("SamplesPerPixel", 1) == 1 and "NumberOfFrames" not in s.ds]
        bomb_seed = rnd.choice(fit)
        return (*_bomb(rnd, bomb_seed, prefix), bomb_seed.sop_class)
    data, sop = seed.body(prefix, UID(IMPLICIT if kind == "implicit" else DEFLATED))
    if kind == "random":
        data = rnd.randbytes(rnd.randrange(1, 4096))
    elif kind == "truncated":
        data = data[:rnd.randrange(len(data))]
    elif kind == "trailing":
        data += rnd.randbytes(rnd.randrange(1, 64))
    elif kind == "zlib":
        data = zlib.compress(inflate(data))
    elif kind == "implicit":
        data = deflate(data)
    else:
        data = b""
    return data, f"{kind} ({seed.name})", sop, seed.sop_class


# -- hostile UIDs -------------------------------------------------------------------------------
def _uid_case(rnd: random.Random, seed: Seed, prefix: str) -> tuple[bytes, str, bytes, str]:
    """Returns the body, its syntax, the request's SOP Instance UID and the detail."""
    syntax = str(seed.syntax)
    data, sop = seed.body(prefix)
    deflated = syntax == DEFLATED
    plain = inflate(data) if deflated else data
    value = rnd.choice(HOSTILE_UIDS)
    target = rnd.choice(("study", "series", "sop", "all"))
    tags = {"study": (0x0020000D,), "series": (0x0020000E,), "sop": (0x00080018,),
            "all": (0x0020000D, 0x0020000E, 0x00080018)}[target]
    for tag in tags:
        plain = with_value(plain, EXPLICIT if deflated else syntax, tag, value)
    request = sop.encode()
    if 0x00080018 in tags and 0 < len(value.rstrip(b"\x00 ")) <= 64:
        request = value  # else pynetdicom will not send it: the request keeps the valid one
    body = deflate(plain) if deflated else plain
    return body, syntax, request, f"{target} = {value[:40]!r} ({len(value)} bytes)"


# -- PDUs -------------------------------------------------------------------------------------
def _raw(rnd: random.Random) -> tuple[str, bytes]:
    rq = assoc_request()
    kind = rnd.choice(("random", "flip", "flip", "truncate", "length", "trailing", "type",
                       "text", "hostile"))
    if kind == "random":
        return kind, rnd.randbytes(rnd.randrange(1, 8192))
    if kind == "flip":
        data = bytearray(rq)
        for _ in range(rnd.choice((1, 2, 4, 8))):
            data[rnd.randrange(len(data))] ^= rnd.randrange(1, 256)
        return kind, bytes(data)
    if kind == "truncate":
        return kind, rq[:rnd.randrange(1, len(rq))]
    if kind == "length":
        at = rnd.choice((2, 74, 74 + 4 + 21, rnd.randrange(74, len(rq) - 2)))
        fmt = ">I" if at == 2 else ">H"
        lie = rnd.getrandbits(32 if at == 2 else 16)
        end = at + struct.calcsize(fmt)
        return f"length@{at}={lie}", rq[:at] + struct.pack(fmt, lie) + rq[end:]
    if kind == "trailing":
        return kind, rq + rnd.randbytes(rnd.randrange(1, 512))
    if kind == "type":
        first = rnd.choice((0x00, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x81, 0xFF))
        return f"type {first:#x}", pdu(first, rnd.randbytes(rnd.randrange(0, 64)))
    if kind == "text":
        return kind, rnd.choice((b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\x16\x03\x01\x02\x00\x01",
                                 b"SSH-2.0-OpenSSH_9.6\r\n", b"\r\n" * 100))
    value = rnd.choice(HOSTILE_UIDS).decode("latin-1")
    field = rnd.choice(("app", "abstract", "impl", "calling"))
    try:
        kw = {"calling": value[:16] or " "} if field == "calling" else {field: value or " "}
        return f"hostile {field}", assoc_rq(GW_AE, **{"calling": SCU_AE, **kw})
    except UnicodeEncodeError:
        return f"hostile {field} (latin-1)", rq.replace(ECHO.encode(), value.encode("latin-1"))


def _after_assoc(rnd: random.Random, seed: Seed, prefix: str) -> tuple[str, bytes]:
    kind = rnd.choice(("random", "flip-echo", "context", "pdv-length", "store-flip",
                       "store-cut", "unexpected", "huge"))
    if kind == "random":
        return kind, p_data(rnd.randbytes(rnd.randrange(0, 2048)))
    if kind in ("flip-echo", "store-flip"):
        store = None
        if kind == "store-flip":
            data, sop = seed.body(prefix, UID(IMPLICIT))
            store = (seed.sop_class, sop, data[:8192])
        data = bytearray(b"".join(dimse_pdus(1 if store is None else 3, store)))
        for _ in range(rnd.choice((1, 2, 4, 8))):
            data[rnd.randrange(len(data))] ^= rnd.randrange(1, 256)
        return kind, bytes(data)
    if kind == "context":
        return kind, b"".join(dimse_pdus(rnd.choice((0, 2, 5, 99, 255))))
    if kind == "pdv-length":
        lie = rnd.choice((0, 1, 0xFFFFFFFF, 0x7FFFFFFF, rnd.getrandbits(32)))
        return f"{kind}={lie}", pdu(0x04, struct.pack(">IBB", lie, 1, 3) + rnd.randbytes(16))
    if kind == "store-cut":
        data, sop = seed.body(prefix, UID(IMPLICIT))
        pdus = b"".join(dimse_pdus(3, (seed.sop_class, sop, data)))
        return kind, pdus[:rnd.randrange(1, len(pdus))]
    if kind == "unexpected":
        return kind, rnd.choice((assoc_request(), pdu(0x02, bytes(68)), pdu(0x06, bytes(4)),
                                 pdu(0x07, rnd.randbytes(4)), pdu(0x05, bytes(4)) * 3,
                                 item(0x10, b"1.2")))
    return kind, struct.pack(">BBI", 0x04, 0, 1 << 30) + pdv(1, 3, b"\x00" * 64)


# -- one case -----------------------------------------------------------------------------------
def make_case(family: str, index: int, rnd: random.Random, seeds: list[Seed],
              prefix: str) -> Case:
    """Case ``index`` of ``family``, drawn from ``rnd`` over ``seeds``."""
    assert family in FAMILIES, family
    seed = rnd.choice(seeds)
    if family == "pdu-raw":
        detail, payload = _raw(rnd)
        return Case(family, index, "raw", detail, body=payload)
    if family == "pdu-assoc":
        detail, payload = _after_assoc(rnd, seed, prefix)
        return Case(family, index, "assoc", f"{detail} ({seed.name})", body=payload)
    if family == "deflate":
        body, detail, sop, sop_class = _deflate_case(rnd, seed, seeds, prefix)
        return Case(family, index, "store", detail, sop_class, sop.encode(), DEFLATED, body)
    if family == "uid":
        body, syntax, request, detail = _uid_case(rnd, seed, prefix)
        return Case(family, index, "store", f"{detail} ({seed.name})", seed.sop_class,
                    request, syntax, body)
    make = syntax_mismatch if family == "syntax" else partial(mutated, family)
    body, syntax, detail, sop = make(rnd, seed, prefix)
    return Case(family, index, "store", f"{detail} ({seed.name})", seed.sop_class, sop.encode(),
                syntax, body)



# -- regression cases ---------------------------------------------------------------------------
def _store(name: str, seed: Seed, body: bytes, syntax: str, sop: str, refuse: bool) -> Case:
    return Case("regression", 0, "store", name, seed.sop_class, sop.encode(), syntax, body,
                must_refuse=refuse)


def regression_cases(seed: Seed, prefix: str) -> list[Case]:
    """Fixed inputs: what the fuzz suite found (the two PDUs that killed pynetdicom's reactor
    thread with a traceback on stderr) and issue 15's defects, on ``seed`` (an explicit VR
    little endian image with native pixels: ``CT_small.dcm``)."""
    explicit, sop = seed.body(prefix, UID(EXPLICIT))
    implicit, sop2 = seed.body(prefix, UID(IMPLICIT))
    meta_be = struct.pack("<HH", 2, 0x10) + b"UI" + struct.pack("<H", 20) + \
        b"1.2.840.10008.1.2.2\x00"
    meta_uid = struct.pack("<HH", 2, 3) + b"UI" + struct.pack("<H", 8) + b"1.2.3.4\x00"
    lf, lf_sop = seed.body(prefix, UID(EXPLICIT))
    lf = with_value(lf, EXPLICIT, 0x0020000D, b"1.2.3\n2026-11-30 12:00:00,000 INFO forged")
    nul, nul_sop = seed.body(prefix, UID(EXPLICIT))
    nul_request = nul_sop[:40] + "\x00\x00x"
    nul = with_value(nul, EXPLICIT, 0x00080018, nul_request.encode())
    cases = [
        Case("regression", 0, "assoc", "command set without a Command Field (reactor died)",
             body=p_data(pdv(1, 3, struct.pack("<HHI", 0, 2, 18) + ECHO.encode() + b"\x00"))),
        Case("regression", 0, "assoc", "A-ABORT with source 230 (reactor died)",
             body=pdu(0x07, bytes([0, 0, 230, 0]))),
        _store("(0002,0010) big endian injected", seed, meta_be + explicit, EXPLICIT, sop, True),
        _store("(0002,0003) injected", seed, meta_uid + explicit, EXPLICIT, sop, True),
        _store("implicit VR under explicit", seed, implicit, EXPLICIT, sop2, True),
        _store("native pixels under JPEG Baseline", seed, explicit, "1.2.840.10008.1.2.4.50",
               sop, True),
        _store("native pixels under RLE", seed, explicit, "1.2.840.10008.1.2.5", sop, True),
        _store("line feed in the Study Instance UID", seed, lf, EXPLICIT, lf_sop, False),
        _store("NUL in the SOP Instance UID", seed, nul, EXPLICIT, nul_request, False),
    ]
    rnd = random.Random(15)
    while len(cases) < 13:  # deflate bombs: 24, 64 and 256 MiB, pixel data and a private OB
        body, detail, bomb_sop = _bomb(rnd, seed, prefix)
        if "bomb 1 " not in detail and "bomb 4 " not in detail and "bomb 12 " not in detail:
            cases.append(_store(detail, seed, body, DEFLATED, bomb_sop, True))
    for i, case in enumerate(cases):
        case.index = i
    return cases
