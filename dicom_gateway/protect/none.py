"""Method ``none``: pass-through. The instance leaves exactly as it was received.

This is the store-and-forward baseline (and what a route uses for data that needs no
protection); the protection stage still runs, so the data path is the same as for real methods.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .method import Outcome
from .options import NoneOptions

__all__ = ["NoneMethod"]


class NoneMethod:
    """Forward the spooled file unchanged (it is hard-linked into the outbox, not copied)."""

    name = "none"

    def __init__(self, options: NoneOptions | Mapping[str, Any] | None = None) -> None:
        self.options = options if isinstance(options, NoneOptions) else NoneOptions.parse(
            options or {})

    def __call__(self, paths: Sequence[Path]) -> list[Outcome]:
        return [Outcome(source=p, output=p) for p in paths]
