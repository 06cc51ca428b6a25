"""The name of the input view the gateway feeds surrogates (decision 0013).

Surrogate files declare the view they were trained in (``SurrogateInfo.view``); the loader
refuses any other, and :mod:`.view` implements this one. It lives apart from both so that
neither imports the other.
"""

from __future__ import annotations

__all__ = ["VIEW"]

# the header's window, else the full stored range (never a per-image stretch)
VIEW = "window-else-stored-range"
