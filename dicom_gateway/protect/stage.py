"""The protection stage: runs a profile's method over a series batch and times it."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..config import ProfileConfig
from ..errors import ProtectionError
from ..metrics import Metrics
from .method import Outcome, ProtectionMethod
from .registry import create_method

__all__ = ["ProtectionStage"]

_log = logging.getLogger(__name__)


class ProtectionStage:
    """Creates each profile's method once and applies it; a method crash fails closed."""

    def __init__(self, profiles: Mapping[str, ProfileConfig], metrics: Metrics) -> None:
        self._profiles = profiles
        self._metrics = metrics
        self._methods: dict[str, ProtectionMethod] = {}

    def profile(self, name: str) -> ProfileConfig:
        return self._profiles[name]

    def protect(self, profile_name: str, paths: Sequence[Path]) -> list[Outcome]:
        """Protect one series batch with the named profile; never raises for bad data."""
        profile = self._profiles[profile_name]
        started = time.perf_counter()
        try:
            method = self._methods.get(profile_name)
            if method is None:
                method = self._methods[profile_name] = create_method(profile.method, profile.options)
            outcomes = method(paths)
            if len(outcomes) != len(paths):
                raise RuntimeError(f"returned {len(outcomes)} outcomes for {len(paths)} instances")
        except Exception as exc:  # a method bug must not take the worker down: fail closed
            _log.exception("protection method %s failed on a batch of %d", profile.method, len(paths))
            outcomes = [Outcome(source=p, error=ProtectionError(
                "method_error", f"method {profile.method!r} failed: {type(exc).__name__}: {exc}"))
                for p in paths]
        elapsed = time.perf_counter() - started
        self._metrics.protect_seconds.labels(method=profile.method).observe(elapsed / max(len(paths), 1))
        return outcomes
