"""De-identification in the gateway: one :class:`~.engine.Deidentifier` per (profile, partner),
keyed from the gateway secret of the configuration's ``seal`` section (``uid_secret``); on a
profile with ``escrow``, the copy that leaves also carries the re-identification escrow
(:mod:`.escrow`, decision 0021)."""

from __future__ import annotations

from pathlib import Path

from pydicom.dataset import Dataset

from ..errors import ConfigError, InstanceError
from ..seal.keys import load_gateway_keys
from ..settings import Config
from .engine import Deidentifier
from .escrow import EscrowKey, load_escrow_public, write_escrow
from .screen import pixel_risk

__all__ = ["DeidService", "needs_deidentification"]


def needs_deidentification(config: Config) -> bool:
    """Whether any profile of ``config`` de-identifies."""
    return any(p.deidentify is not None for p in config.profiles.values())


class DeidService:
    """De-identifies and screens instances for the profiles that say ``deidentify``."""

    def __init__(self, config: Config) -> None:
        if config.seal is None:
            raise ConfigError(config.source, "seal", "a de-identifying profile needs the 'seal' "
                              "section: its uid_secret keys the pseudonyms, date shifts and "
                              "UIDs (files from 'dicom-gateway keys init')")
        keys = load_gateway_keys(Path(config.seal.signing_key), Path(config.seal.uid_secret))
        self._secret, self._root = keys.uid_secret, config.seal.uid_root
        self._profiles = config.profiles
        self._made: dict[tuple[str, str], Deidentifier] = {}
        self._escrow: dict[str, EscrowKey] = {
            name: load_escrow_public(Path(p.deidentify.escrow))
            for name, p in config.profiles.items()
            if p.deidentify is not None and p.deidentify.escrow is not None}

    def applies(self, profile: str) -> bool:
        return self._profiles[profile].deidentify is not None

    def screen(self, profile: str, ds: Dataset) -> InstanceError | None:
        """Why ``ds`` may not leave on ``profile`` (its pixels may show identifiers), or None."""
        settings = self._profiles[profile].deidentify
        if settings is None:
            return None
        found = pixel_risk(ds, settings.allow_pixel_risk)
        return InstanceError(*found) if found is not None else None

    def deidentify(self, profile: str, partner: str, ds: Dataset, escrow: bool = True
                   ) -> Dataset:
        """``ds`` de-identified for ``partner`` under ``profile`` (a copy), with the escrow of
        ``ds``'s identifiers when the profile has one; ``escrow`` False for a copy that does
        not leave (the seal's source: its private attributes never reach the partner)."""
        made = self._made.get((profile, partner))
        if made is None:
            settings = self._profiles[profile].deidentify
            if settings is None:
                raise ValueError(f"profile {profile!r} does not de-identify")
            made = Deidentifier(settings, self._secret, partner, self._root)
            self._made[(profile, partner)] = made
        out = made(ds)
        key = self._escrow.get(profile)
        if escrow and key is not None:  # after de-identification, which removes private blocks
            write_escrow(out, ds, key)
        return out
