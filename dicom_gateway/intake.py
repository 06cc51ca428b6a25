"""Intake: the data set of a received C-STORE, parsed and checked before anything is stored.

The header is parsed up to the pixel data, which is neither copied nor decoded. The data set
must be what the negotiated transfer syntax says (decision 0023): explicit or implicit VR as
the syntax says, Pixel Data encapsulated (items, ending with a Sequence Delimiter) under a
compressed syntax and native (a defined length that holds Rows x Columns x Samples x Frames x
Bits Allocated) under the others, no element of group 0002 (the file meta: the spool file's own
comes from the association), nothing cut short, and no larger than ``gateway.max_dataset_bytes``.
A deflated data set is inflated a chunk at a time: its header is kept, its pixel data only
counted, and inflating stops at the limit. A :class:`Refusal` carries the C-STORE status
(PS3.4 B.2.3, PS3.7 C), the metrics label and the ErrorComment the sender gets.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from io import BytesIO
from typing import Any, cast

from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.tag import BaseTag
from pydicom.uid import UID
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32, STANDARD_VR
from pynetdicom import evt
from pynetdicom.dimse_primitives import C_STORE

__all__ = ["Refusal", "Status", "data_set", "read_header", "request"]

# Pixel Data, Float Pixel Data, Double Float Pixel Data
_PIXEL_TAGS = frozenset((0x7FE00010, 0x7FE00008, 0x7FE00009))
_PIXEL_DATA = 0x7FE00010
_FLOAT_BITS = {0x7FE00008: 32, 0x7FE00009: 64}
_ROWS, _COLUMNS, _BITS, _SAMPLES = 0x00280010, 0x00280011, 0x00280100, 0x00280002
_FRAMES, _PHOTOMETRIC = 0x00280008, 0x00280004
_UNDEFINED = 0xFFFFFFFF
_ITEM, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE0DD
_NATIVE = frozenset(("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2",
                     "1.2.840.10008.1.2.1.99"))  # the syntaxes whose Pixel Data is not encapsulated
_VRS = frozenset(str(vr).encode() for vr in STANDARD_VR)
_LONG_VRS = frozenset(str(vr).encode() for vr in EXPLICIT_VR_LENGTH_32)
_IN, _OUT, _HEAD = 64 << 10, 1 << 20, 64 << 10  # inflate: input slice, output chunk, first header


class Status:
    """The C-STORE statuses this SCP answers with (PS3.4 B.2.3, PS3.7 C)."""

    SUCCESS = 0x0000
    PROCESSING_FAILURE = 0x0110  # unexpected error inside the gateway
    NOT_AUTHORIZED = 0x0124  # no route: the gateway is not allowed to take this instance
    OUT_OF_RESOURCES = 0xA700  # spool full or not writable
    DATASET_MISMATCH = 0xA900  # data set does not match the SOP class / request
    CANNOT_UNDERSTAND = 0xC000  # data set cannot be parsed, or is not what its syntax says


class Refusal(Exception):
    """A C-STORE answered with a failure status: ``status``, the metrics ``label`` and the
    ``comment`` sent as ErrorComment."""

    def __init__(self, status: int, label: str, comment: str) -> None:
        super().__init__(comment)
        self.status, self.label, self.comment = status, label, comment


def _invalid(comment: str, status: int = Status.CANNOT_UNDERSTAND) -> Refusal:
    """A refusal of malformed data (``0xC000`` unless said; ErrorComment: at most 64 chars)."""
    return Refusal(status, "invalid", comment)


def request(event: evt.Event) -> C_STORE:
    """The request of an ``EVT_C_STORE`` event (the only event whose request is read here)."""
    return cast(C_STORE, event.request)


def data_set(event: evt.Event) -> BytesIO:
    """The encoded data set of the C-STORE request (pynetdicom always hands one over here)."""
    stream = request(event).DataSet
    if stream is None:
        raise AttributeError("the C-STORE request carries no data set")
    return stream


def read_header(event: evt.Event, max_bytes: int) -> tuple[Dataset, bool]:
    """Parse the data set up to (not including) its pixel data and check it (module docstring);
    ``max_bytes``: ``gateway.max_dataset_bytes``, the most bytes it may have (inflated).

    Returns the header and whether pixel data follows. Routing sees every attribute before the
    pixel data (in practice all of them); the pixel bytes are neither copied nor decoded.
    """
    syntax = event.context.transfer_syntax
    stream = data_set(event)
    if syntax.is_deflated:
        with stream.getbuffer() as raw:
            return _Inflated(raw, max_bytes).read(syntax)
    total = stream.seek(0, 2)
    if total > max_bytes:
        raise _invalid(f"data set over gateway.max_dataset_bytes ({max_bytes})")
    with stream.getbuffer() as buf:
        _check_vr_mode(bytes(buf[:6]), syntax)
    stream.seek(0)
    ds = read_dataset(stream, syntax.is_implicit_VR, syntax.is_little_endian,
                      stop_when=_at_pixels)
    start = stream.tell()
    stream.seek(0)
    _check_elements(ds, syntax)
    if start >= total:
        return ds, False
    with stream.getbuffer() as buf:
        tag, length, size = _element_head(bytes(buf[start:start + 12]), syntax)
        value_at = start + size
        _check_pixel_encoding(ds, syntax, tag, length)
        if length == _UNDEFINED:
            end = _fragments_end(buf, value_at, total, syntax)
        elif total - value_at < length:
            raise _invalid("Pixel Data truncated")
        else:
            end = value_at + length
        trailing = bytes(buf[end:total]) if end < total else b""
    _check_trailing(trailing, syntax, tag)
    return ds, True


def _at_pixels(tag: BaseTag, vr: str | None, length: int) -> bool:
    return tag in _PIXEL_TAGS


def _syntax_name(syntax: UID) -> str:
    return syntax.keyword or str(syntax)


def _check_vr_mode(first: bytes, syntax: UID) -> None:
    """The first element's VR field (bytes 4-5) says whether the data set is explicit VR: a
    mismatch with the syntax would be read by pydicom (it switches with a warning) and then
    forwarded under the wrong label."""
    if len(first) < 6:
        return
    explicit = first[4:6] in _VRS
    if syntax.is_implicit_VR and explicit:
        raise _invalid(f"explicit VR data set under {_syntax_name(syntax)}")
    if not syntax.is_implicit_VR and not explicit:
        raise _invalid(f"implicit VR data set under {_syntax_name(syntax)}")


def _check_elements(ds: Dataset, syntax: UID) -> None:
    """No group 0002, an explicit VR on every element of an explicit syntax, no value shorter
    than its declared length (top level: an undefined-length sequence cut short does not parse)."""
    explicit = not syntax.is_implicit_VR
    for elem in ds.elements():
        if elem.tag >> 16 == 0x0002:
            raise _invalid(f"group 0002 element {elem.tag} in the data set")
        if explicit and elem.VR is None:  # pydicom read this element as implicit VR
            raise _invalid(f"implicit VR element {elem.tag} under {_syntax_name(syntax)}")
        value = getattr(elem, "value", None)
        length = getattr(elem, "length", _UNDEFINED)
        if isinstance(value, bytes) and length != _UNDEFINED and len(value) != length:
            raise _invalid(f"element {elem.tag} truncated: {len(value)} of {length} bytes")


def _longest(ds: Dataset) -> Iterator[tuple[BaseTag, int]]:
    """The declared length of every defined-length top-level element."""
    for elem in ds.elements():
        length = getattr(elem, "length", _UNDEFINED)
        if length != _UNDEFINED:
            yield elem.tag, length


def _element_head(head: bytes, syntax: UID, what: str = "Pixel Data") -> tuple[int, int, int]:
    """(tag, declared length, header size) of the element whose first bytes are ``head``
    (too few: ``what`` is truncated)."""
    if syntax.is_implicit_VR:
        fmt, size = "HHL", 8
    elif head[4:6] in _LONG_VRS:
        fmt, size = "HH4xL", 12
    else:
        fmt, size = "HH2xH", 8
    if len(head) < size:
        raise _invalid(f"{what} truncated")
    group, elem, length = struct.unpack_from(("<" if syntax.is_little_endian else ">") + fmt, head)
    return group << 16 | elem, length, size


def _check_pixel_encoding(ds: Dataset, syntax: UID, tag: int, length: int) -> None:
    """Pixel Data encapsulated (undefined length) under a compressed syntax, native (defined,
    long enough for the image the header describes) under the others."""
    name = _syntax_name(syntax)
    if tag == _PIXEL_DATA and str(syntax) not in _NATIVE:
        if length != _UNDEFINED:
            raise _invalid(f"native Pixel Data under {name}")
        return
    if length == _UNDEFINED:
        raise _invalid(f"encapsulated Pixel Data under {name}")
    need = _expected_length(ds, tag, "<" if syntax.is_little_endian else ">")
    if length < need:
        raise _invalid(f"Pixel Data of {length} bytes, the image needs {need}")


def _expected_length(ds: Dataset, tag: int, endian: str) -> int:
    """The bytes of native pixel data Rows x Columns x Samples per Pixel x Number of Frames x
    Bits Allocated need (PS3.5 8.1.1; YBR_FULL_422: two samples a pixel). Read from the
    elements as received: converting them with pydicom would cost more than all the rest."""
    def number(tag: int, default: int | None = None) -> int:
        value = _raw(ds, tag)
        if value is None or value == b"":
            if default is None:
                raise ValueError(tag)
            return default
        if isinstance(value, bytes):  # US, or IS for Number of Frames
            return (int(value.strip(b" \0")) if tag == _FRAMES
                    else cast(int, struct.unpack_from(endian + "H", value)[0]))
        return int(value)

    try:
        rows, columns, samples = number(_ROWS), number(_COLUMNS), number(_SAMPLES, 1)
        bits, frames = _FLOAT_BITS.get(tag) or number(_BITS), number(_FRAMES, 1)
    except (TypeError, ValueError, struct.error):
        raise _invalid("Pixel Data without valid Rows, Columns, Bits Allocated",
                       Status.DATASET_MISMATCH) from None
    if min(rows, columns, bits, samples, frames) < 0:
        raise _invalid("negative Number of Frames", Status.DATASET_MISMATCH)
    photometric = _raw(ds, _PHOTOMETRIC)
    if photometric in (b"YBR_FULL_422", "YBR_FULL_422"):
        samples = 2
    pixels = rows * columns * samples * frames
    return (pixels + 7) // 8 if bits == 1 else pixels * (bits // 8)


def _raw(ds: Dataset, tag: int) -> Any:
    """The value of a top-level element as read (bytes; not converted) or as set; None if
    absent."""
    elem = ds.get_item(tag, keep_deferred=True)
    return None if elem is None else elem.value


def _fragments_end(buf: memoryview, at: int, total: int, syntax: UID) -> int:
    """The end of encapsulated Pixel Data whose value starts at ``at``: items of defined
    length (the Basic Offset Table, then at least one fragment) up to a Sequence Delimiter."""
    item = struct.Struct(("<" if syntax.is_little_endian else ">") + "HHL")
    items = 0
    while at + 8 <= total:
        group, elem, length = item.unpack_from(buf, at)
        at += 8
        if group << 16 | elem == _SEQUENCE_END:
            if items < 2:
                raise _invalid("encapsulated Pixel Data without a fragment")
            return at
        if group << 16 | elem != _ITEM or length == _UNDEFINED:
            raise _invalid("encapsulated Pixel Data not made of items")
        at += length
        items += 1
    raise _invalid("Pixel Data truncated")


def _check_trailing(data: bytes, syntax: UID, pixel_tag: int) -> None:
    """What follows the pixel data: elements with greater tags only (PS3.5 7.1), whole."""
    if not data:
        return
    ds = read_dataset(BytesIO(data), syntax.is_implicit_VR, syntax.is_little_endian)
    for elem in ds.elements():
        if elem.tag <= pixel_tag:
            raise _invalid(f"element {elem.tag} after Pixel Data")
    _check_elements(ds, syntax)


class _Inflated:
    """A Deflated Explicit VR Little Endian data set (PS3.5 A.5), inflated a chunk at a time:
    the header is kept, the pixel data only counted, what follows it kept; more than
    ``max_bytes`` in all is refused as soon as it is inflated."""

    def __init__(self, raw: memoryview, max_bytes: int) -> None:
        self._raw, self._pos, self._max = raw, 0, max_bytes
        self._z = zlib.decompressobj(-zlib.MAX_WBITS)
        self._out = bytearray()  # the inflated bytes kept, from offset self._base on
        self._base = 0
        self._done = False

    @property
    def _produced(self) -> int:
        return self._base + len(self._out)

    def read(self, syntax: UID) -> tuple[Dataset, bool]:
        """The header and whether pixel data follows, everything checked as in read_header."""
        ds, start = self._header(syntax)
        _check_elements(ds, syntax)
        if start >= self._produced:
            return ds, False
        self._fill(start + 12)
        tag, length, size = _element_head(bytes(self._out[start:start + 12]), syntax)
        _check_pixel_encoding(ds, syntax, tag, length)  # deflated: native, defined length
        end = start + size + length
        if end > self._max:
            raise _invalid(f"Pixel Data over gateway.max_dataset_bytes ({self._max})")
        self._drop(end)  # the pixel values: inflated and counted, not kept
        if self._produced < end:
            raise _invalid("Pixel Data truncated")
        self._fill(end + 12)
        if len(self._out) >= 8:  # what follows, checked before it is inflated (a run of zeros?)
            after, declared, size = _element_head(bytes(self._out[:12]), syntax, "data set")
            if after <= tag:
                raise _invalid(f"element {BaseTag(after)} after Pixel Data")
            if declared != _UNDEFINED and end + size + declared > self._max:
                raise _invalid(f"element {BaseTag(after)} over gateway.max_dataset_bytes")
        self._fill(self._max + 1)
        _check_trailing(bytes(self._out), syntax, tag)
        return ds, True

    def _header(self, syntax: UID) -> tuple[Dataset, int]:
        """Parse ever longer inflated prefixes (doubling) until one reaches the pixel data or
        the data set ends; return the header and the offset of its pixel data element."""
        want = _HEAD
        while True:
            self._fill(want)
            prefix = bytes(self._out)
            _check_vr_mode(prefix[:6], syntax)
            stream = BytesIO(prefix)
            try:
                ds = read_dataset(stream, False, True, stop_when=_at_pixels)
            except Exception:
                if self._done:
                    raise
                want = 2 * len(prefix)
                continue
            if stream.tell() < len(prefix) or self._done:
                return ds, stream.tell()
            for tag, length in _longest(ds):
                if length > self._max:
                    raise _invalid(f"element {tag} over gateway.max_dataset_bytes")
            want = 2 * len(prefix)

    def _fill(self, end: int) -> None:
        """Inflate (and keep) until ``end`` bytes were produced or the data set ends."""
        while self._produced < end and self._step():
            pass

    def _drop(self, end: int) -> None:
        """Inflate up to offset ``end`` without keeping anything before it."""
        while True:
            cut = min(end - self._base, len(self._out))
            del self._out[:cut]
            self._base += cut
            if self._base >= end or not self._step():
                return

    def _step(self) -> bool:
        """Inflate one chunk; False once the deflate stream has ended."""
        if self._done:
            return False
        data: bytes | memoryview = self._z.unconsumed_tail
        if not data and self._pos < len(self._raw):
            data = self._raw[self._pos:self._pos + _IN]
            self._pos += len(data)
        try:
            chunk = self._z.decompress(data, _OUT)
        except zlib.error:
            raise _invalid("deflated data set corrupt") from None
        if not chunk and not data and not self._z.eof:
            raise _invalid("deflated data set truncated")
        self._done = self._z.eof  # bytes after the end of the stream are ignored, as pydicom does
        self._out += chunk
        if self._produced > self._max:
            raise _invalid(f"inflated data set over gateway.max_dataset_bytes ({self._max})")
        return True
