"""De-identification: DICOM PS3.15 Annex E per route profile (decision 0018).

``table`` (the action table), ``options`` (the options and the ``deidentify`` block),
``pseudonym`` (keyed pseudonyms and date shifts), ``clean`` (dates and free text), ``engine``
(one instance for one partner), ``screen`` (pixels that may show identifiers), ``escrow`` (the
removed identifiers encrypted to the hospital's escrow key, decision 0021) and its command
``escrow_command``, ``service`` (what the gateway's worker uses).
"""

from .engine import Deidentifier
from .options import OPTIONS, PIXEL_RISKS, DeidOptionError, parse_deidentify
from .screen import pixel_risk
from .service import DeidService, needs_deidentification

__all__ = ["OPTIONS", "PIXEL_RISKS", "DeidOptionError", "DeidService", "Deidentifier",
           "needs_deidentification", "parse_deidentify", "pixel_risk"]
