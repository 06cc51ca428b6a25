"""Sealing in the gateway and the offline command: the keys of one configuration, loaded once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset

from ..errors import ConfigError
from ..settings import Config
from .keys import GatewayKeys, PartnerKey, load_gateway_keys, load_partner_key
from .sealer import seal

__all__ = ["VISIBLE_METHODS", "SealService"]

VISIBLE_METHODS = frozenset({"adversarial_watermark"})


class SealService:
    """Seals protected outcomes for partners named in the configuration."""

    def __init__(self, config: Config) -> None:
        if config.seal is None:
            raise ConfigError(config.source, "seal", "no 'seal' section: protected output is "
                              "always sealed (files from 'dicom-gateway keys init')")
        self._config = config.seal
        self._gateway: GatewayKeys = load_gateway_keys(Path(config.seal.signing_key),
                                                       Path(config.seal.uid_secret))
        self._partners: dict[str, PartnerKey] = {
            name: load_partner_key(Path(p.key)) for name, p in config.partners.items() if p.key}

    def key_ids(self) -> dict[str, str]:
        """The key ids in use: ``gateway`` (the signing key) and each partner's by name."""
        return {"gateway": self._gateway.key_id,
                **{name: key.key_id for name, key in self._partners.items()}}

    def has_partner(self, name: str) -> bool:
        return name in self._partners

    def seal(self, partner: str, source: Path | Dataset, protected: Path | Dataset,
             residual: Any, method: str, parameters: dict[str, Any]) -> Dataset:
        """``source`` is the instance before protection: on a de-identifying profile the
        de-identified one, so the payload never holds a removed identifier (decision 0018)."""
        original = source if isinstance(source, Dataset) else dcmread(source)
        out = protected if isinstance(protected, Dataset) else dcmread(protected)
        return seal(original, out, residual, method, dict(parameters), self._gateway,
                    self._config.gateway_id, self._partners[partner], self._config.uid_root,
                    visible=method in VISIBLE_METHODS)
