"""Retry policy and status classification (the network behaviour is in test_partner_down)."""

from __future__ import annotations

from dicom_gateway.delivery import backoff_seconds
from dicom_gateway.forward import classify_status
from dicom_gateway.settings import RetryConfig


def test_backoff_doubles_to_the_cap_with_bounded_jitter() -> None:
    r = RetryConfig(initial_seconds=30, multiplier=2, max_seconds=600, max_attempts=10, jitter=0.2)
    mid = [backoff_seconds(r, n, rand=lambda: 0.5) for n in range(1, 8)]
    assert mid == [30, 60, 120, 240, 480, 600, 600]
    assert backoff_seconds(r, 1, rand=lambda: 0.0) == 24.0
    assert backoff_seconds(r, 1, rand=lambda: 1.0) == 36.0


def test_status_classes() -> None:
    assert classify_status(0x0000) == "success"
    assert {classify_status(s) for s in (0xB000, 0xB006, 0xB007)} == {"warning"}
    assert {classify_status(s) for s in (0xA700, 0xA7FF, 0x0110)} == {"retry"}
    assert {classify_status(s) for s in (0xA900, 0xC000, 0xC211, 0x0122, 0x0124)} == {"refused"}
