"""Checks a received instance against PS3.15 Table E.1-1, attribute by attribute.

The table's codes come from ``dicom_gateway.deid.table`` (the standard's data); what each code
must look like at the receiver is this module's own reading of PS3.15 E.1.1 and of the
resolutions decision 0018 documents, so the gateway's engine is not used to judge itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date

from pydicom.datadict import keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from dicom_gateway.deid.table import basic_action, option_action
from dicom_gateway.seal.uids import derive_uid
from dicom_gateway.settings import DeidConfig

__all__ = ["Report", "check_instance", "render_table"]

SET_BY_GATEWAY = {"PatientIdentityRemoved", "DeidentificationMethod",
                  "DeidentificationMethodCodeSequence", "LongitudinalTemporalInformationModified",
                  "PatientName", "PatientID"}
_TEXT = {"LO", "SH", "ST", "LT", "UT", "UC", "PN"}


@dataclass
class Report:
    shift: int = 0
    rows: list[tuple[str, str, str, str, str, str]] = field(default_factory=list)


def _expected(elem: DataElement, config: DeidConfig) -> tuple[str, str]:
    """(table code or '', action) for a public or private element."""
    options, tag, vr = config.options, int(elem.tag), elem.VR
    code = option_action(tag, options) or basic_action(tag) or ""
    if code:
        resolved = {"Z/D": "Z", "X/Z": "X", "X/D": "X", "X/Z/D": "X"}.get(code, code)
        if code == "X/Z/U*":
            resolved = "U" if vr in ("SQ", "UI") else "X"
        return code, resolved
    group = tag >> 16
    if 0x6000 <= group <= 0x60FF and not group % 2:
        return "", "X"
    long = {"retain-longitudinal-full-dates", "retain-longitudinal-modified-dates"} & options
    if vr in ("DA", "DT"):
        return "", ("C" if "retain-longitudinal-modified-dates" in options else "K" if long
                    else "X")
    if vr == "TM":
        return "", "K" if long else "X"
    if vr == "PN":
        return "", "X"
    if vr == "UI":
        return "", "K" if "retain-uids" in options else "U"
    return "", "K"


def _private(elem: DataElement, source: Dataset, config: DeidConfig) -> str:
    """K for a private element on the safe-private list (and for its creator), else X."""
    if "retain-safe-private" not in config.options:
        return "X"
    group, element = elem.tag.group, elem.tag.element
    if element < 0x100:  # a creator: kept when its block keeps an element
        return "K" if any(e.tag.group == group and e.tag.element >> 8 == element and
                          _private(e, source, config) == "K" for e in source) else "X"
    creator = source.get((group << 16) | (element >> 8))
    name = str(creator.value).strip() if creator is not None else ""
    return "K" if (group, name, element & 0xFF) in config.safe_private else "X"


def _short(elem: DataElement | None) -> str:
    if elem is None:
        return "(absent)"
    if elem.VR == "SQ":
        return f"{len(elem.value)} item(s)"
    if elem.VR in ("OB", "OW", "UN"):
        return f"{len(elem.value or b'')} bytes"
    text = ("\\".join(str(v) for v in elem.value) if elem.VM > 1 else
            "" if elem.value is None else str(elem.value))
    text = text.replace("|", "/")
    return (text[:37] + "...") if len(text) > 40 else text or "(empty)"


def _days(before: str, after: str) -> int:
    def parse(v: str) -> date:
        return date(int(v[:4]), int(v[4:6]), int(v[6:8]))
    return (parse(after) - parse(before)).days


def _check(elem: DataElement, got: DataElement | None, action: str, report: Report,
           secret: bytes, partner: str) -> None:
    name = elem.keyword or str(elem.tag)
    if action == "X":
        assert got is None, f"{name}: must be removed"
        return
    if action == "C" and elem.VR in _TEXT and got is None:
        return  # text that failed the screen gets its Basic Profile action (E.3.5: C)
    assert got is not None, f"{name}: must be present ({action})"
    if action == "Z":
        assert got.value in (None, "", []), f"{name}: must be empty"
    elif action == "D":
        assert got.value not in (None, "", []) and got.value != elem.value, f"{name}: dummy"
    elif action == "U" and elem.VR == "UI":
        values = list(elem.value) if elem.VM > 1 else [elem.value]
        want = [v if str(v).startswith("1.2.840.10008.") else
                derive_uid(secret, partner, str(v)) for v in values]
        assert (list(got.value) if got.VM > 1 else [got.value]) == want, f"{name}: UID"
    elif action == "C" and elem.VR in ("DA", "DT") and elem.value:
        moved = _days(str(elem.value), str(got.value))
        assert str(got.value)[8:] == str(elem.value)[8:], f"{name}: only the date moves"
        report.shift = report.shift or moved
        assert moved == report.shift and -365 <= moved <= -1, f"{name}: shift {moved}"
    elif action == "C" and elem.VR in _TEXT:
        assert got.value in (None, "", elem.value), f"{name}: cleaned text is kept or removed"
    elif elem.VR != "SQ" and action in ("K", "C"):
        assert got.value == elem.value, f"{name}: must be kept"


def check_instance(source: Dataset, got: Dataset, config: DeidConfig, secret: bytes,
                   partner: str, prefix: str = "", report: Report | None = None) -> Report:
    """Assert every attribute of ``got`` against ``source`` and the table; return the rows."""
    report = report if report is not None else Report()
    for elem in source:
        keyword = elem.keyword or keyword_for_tag(elem.tag)
        target = got.get(elem.tag)
        if prefix == "" and keyword in SET_BY_GATEWAY:
            report.rows.append((f"{elem.tag}", keyword, "", "set", _short(elem), _short(target)))
            continue
        code, action = (("private", _private(elem, source, config)) if elem.tag.is_private
                        else _expected(elem, config))
        _check(elem, target, action, report, secret, partner)
        label = keyword if not elem.tag.is_private else f"private {keyword or ''}".strip()
        report.rows.append((f"{prefix}{elem.tag}", label, code or "-", action, _short(elem),
                            _short(target)))
        if elem.VR == "SQ" and target is not None and action in ("K", "C", "U"):
            assert len(target.value) == len(elem.value), f"{keyword}: items"
            for before, after in zip(elem.value, target.value, strict=True):
                check_instance(before, after, config, secret, partner, prefix + "> ", report)
    if prefix == "":
        extra = {e.keyword for e in got if e.tag not in source}
        assert extra <= SET_BY_GATEWAY, f"attributes added: {sorted(extra - SET_BY_GATEWAY)}"
    return report


def render_table(rows: list[tuple[str, str, str, str, str, str]], block: dict[str, object]
                 ) -> str:
    """The Markdown table docs/deidentification.md shows (first received instance)."""
    lines = [f"Profile: `deidentify: {block}` (method `none`), partner `acme`, gateway secret "
             "fixed for the test run.", "",
             "| tag | attribute | Table E.1-1 | action | sent by the hospital | received |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {t} | {k} | {c} | {a} | {o} | {r} |" for t, k, c, a, o, r in rows]
    return "\n".join(lines) + "\n"
