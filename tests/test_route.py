"""Routing rules: exact, list and regex matchers on fields and any tag; order and fan-out."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset

from dicom_gateway.config import parse_config
from dicom_gateway.route import Router, parse_matcher


def _ds(**kw: object) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.Modality = "CT"
    for k, v in kw.items():
        setattr(ds, k, v)
    return ds


def _router(routes: list[dict[str, object]]) -> Router:
    raw = {"gateway": {"ae_title": "GW", "allowed_callers": ["A"], "spool_dir": "/tmp/x"},
           "partners": [{"name": n, "ae_title": n.upper(), "host": "127.0.0.1", "port": 1}
                        for n in ("p1", "p2", "p3")],
           "profiles": {"other": {"method": "none"}},
           "routes": routes}
    return Router(parse_config(raw, "t").routes)


def test_matcher_forms() -> None:
    assert parse_matcher("CT").matches("CT") and not parse_matcher("CT").matches("CTX")
    assert parse_matcher(["CT", "MR"]).matches("MR")
    assert parse_matcher({"regex": "C."}).matches("CT")
    assert not parse_matcher({"regex": "C"}).matches("CT")  # whole value
    assert parse_matcher("B").matches(["A", "B"])  # any value of a multi-valued element
    assert not parse_matcher("CT").matches(None)
    for bad in (None, True, [], {"re": "x"}, {"regex": "("}):
        with pytest.raises(ValueError):
            parse_matcher(bad)


def test_fan_out_first_profile_wins_and_stop() -> None:
    r = _router([
        {"name": "a", "match": {"modality": "CT"}, "to": ["p1", "p2"], "profile": "none"},
        {"name": "b", "match": {"calling_ae": "A"}, "to": ["p2", "p3"], "profile": "other"},
    ])
    got = {(d.partner, d.profile, d.route) for d in r.destinations(_ds(), "A", "GW")}
    assert got == {("p1", "none", "a"), ("p2", "none", "a"), ("p3", "other", "b")}
    r = _router([
        {"name": "a", "match": {"modality": "CT"}, "to": ["p1"], "profile": "none", "stop": True},
        {"name": "b", "match": {}, "to": ["p3"], "profile": "none"},
    ])
    assert [d.partner for d in r.destinations(_ds(), "A", "GW")] == ["p1"]


def test_all_matchers_must_match() -> None:
    r = _router([{"name": "a", "to": ["p1"], "profile": "none", "match": {
        "calling_ae": "A", "called_ae": "GW", "modality": ["CT"],
        "sop_class_uid": "1.2.840.10008.5.1.4.1.1.2",
        "tags": {"SeriesDescription": {"regex": "(?i).*research.*"}, "0008,0070": ["ACME"]}}}])
    ok = _ds(SeriesDescription="Research arm 2", Manufacturer="ACME")
    assert r.destinations(ok, "A", "GW")
    assert not r.destinations(ok, "B", "GW")
    assert not r.destinations(ok, "A", "OTHER")
    assert not r.destinations(_ds(SeriesDescription="clinical", Manufacturer="ACME"), "A", "GW")
    assert not r.destinations(_ds(Manufacturer="ACME"), "A", "GW")  # absent tag never matches
