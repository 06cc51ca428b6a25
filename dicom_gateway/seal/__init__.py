"""The seal: signed manifest and encrypted bit-exact restoration payload in private tags."""

from .keys import GatewayKeys, PartnerKey, init_gateway_keys, load_gateway_keys, load_partner_key
from .opener import SealError, restore, verify
from .sealer import seal

__all__ = ["GatewayKeys", "PartnerKey", "SealError", "init_gateway_keys", "load_gateway_keys",
           "load_partner_key", "restore", "seal", "verify"]
