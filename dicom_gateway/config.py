"""Configuration: one YAML file, validated fully at load into frozen typed objects.

Every error names the file, the key path and the problem (:class:`~.errors.ConfigError`).
Unknown keys are errors too: a typo must not silently fall back to a default. Relative paths
are resolved against the configuration file's directory. Keys: ``config/gateway.example.yaml``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from . import config_checks as checks
from .config_audit import audit_settings
from .config_limits import LIMIT_KEYS, connection_limits
from .config_tls import listen_tls, partner_tls
from .config_yaml import read_yaml
from .deid.options import DeidOptionError, parse_deidentify
from .errors import ConfigError, KeyFileError
from .protect.options import NoneOptions, OptionError
from .protect.registry import instance_scoped, method_names, parse_options
from .route import Matcher, Route, parse_matcher, tag_from_key
from .seal.keys import load_gateway_keys, load_partner_key
from .settings import (
    Config,
    GatewayConfig,
    ListenConfig,
    MetricsConfig,
    NoRoute,
    PartnerConfig,
    ProfileConfig,
    ProtectionConfig,
    RetryConfig,
    SealConfig,
)

__all__ = ["load_config", "parse_config"]


class _Reader:
    """Walks a YAML mapping while tracking the key path for error messages."""

    def __init__(self, source: str, data: Any, path: str = "") -> None:
        self.source, self.data, self.path = source, data, path

    def error(self, problem: str, key: str | None = None) -> ConfigError:
        return ConfigError(self.source, self._join(key) if key is not None else self.path, problem)

    def _join(self, key: str | int) -> str:
        if isinstance(key, int):
            return f"{self.path}[{key}]"
        return f"{self.path}.{key}" if self.path else key

    def mapping(self, allowed: Sequence[str]) -> _Reader:
        if self.data is None:
            self.data = {}
        if not isinstance(self.data, Mapping):
            raise self.error(f"expected a mapping, got {type(self.data).__name__}")
        for key in self.data:
            if key not in allowed:
                raise self.error(f"unknown key (allowed: {', '.join(allowed)})", str(key))
        return self

    def child(self, key: str | int) -> _Reader:
        if isinstance(key, int):
            value = self.data[key]
        else:
            value = self.data.get(key) if isinstance(self.data, Mapping) else None
        return _Reader(self.source, value, self._join(key))

    def has(self, key: str) -> bool:
        return isinstance(self.data, Mapping) and self.data.get(key) is not None

    def has_data(self) -> bool:
        return self.data is not None

    def get(self, key: str, kind: type, default: Any = ..., *, check: Any = None) -> Any:
        if not self.has(key):
            if default is ...:
                raise self.error("required key is missing", key)
            return default
        value = self.data[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if (kind is not bool and isinstance(value, bool)) or not isinstance(value, kind):
            raise self.error(f"expected {kind.__name__}, got {type(value).__name__}", key)
        if check is not None:
            problem = check(value)
            if problem:
                raise self.error(problem, key)
        return value

    def get_scalar(self, kind: type, check: Any = None) -> Any:
        """This node itself as a ``kind`` (a list item), checked."""
        if not isinstance(self.data, kind) or isinstance(self.data, bool):
            raise self.error(f"expected {kind.__name__}, got {type(self.data).__name__}")
        problem = check(self.data) if check else None
        if problem:
            raise self.error(problem)
        return self.data

    def items(self) -> list[_Reader]:
        if not isinstance(self.data, list):
            raise self.error(f"expected a list, got {type(self.data).__name__}")
        return [self.child(i) for i in range(len(self.data))]


def _listen(r: _Reader, default_host: str, default_port: int,
            tls: tuple[Path, Sequence[str]] | None = None) -> ListenConfig:
    """A listen address; ``tls`` (base directory, allowed callers): a DICOM listener, which
    may have a ``tls`` block (``config_tls``)."""
    r.mapping(["host", "port", "tls"] if tls else ["host", "port"])
    return ListenConfig(r.get("host", str, default_host),
                        r.get("port", int, default_port, check=checks.port),
                        listen_tls(r.child("tls"), *tls) if tls and r.has("tls") else None)


def _retry(r: _Reader, base: RetryConfig) -> RetryConfig:
    r.mapping(["initial_seconds", "multiplier", "max_seconds", "max_attempts", "jitter"])
    retry = RetryConfig(
        initial_seconds=r.get("initial_seconds", float, base.initial_seconds,
                              check=checks.positive),
        multiplier=r.get("multiplier", float, base.multiplier,
                         check=lambda v: None if v >= 1 else "must be 1 or greater"),
        max_seconds=r.get("max_seconds", float, base.max_seconds, check=checks.positive),
        max_attempts=r.get("max_attempts", int, base.max_attempts, check=checks.positive),
        jitter=r.get("jitter", float, base.jitter,
                     check=lambda v: None if 0 <= v < 1 else "must be in [0, 1)"),
    )
    if retry.max_seconds < retry.initial_seconds:
        raise r.error("max_seconds must not be smaller than initial_seconds", "max_seconds")
    return retry


def _gateway(r: _Reader, base_dir: Path) -> GatewayConfig:
    r.mapping(["ae_title", "listen", "allowed_callers", "spool_dir", "max_associations",
               "study_stable_seconds", "max_pdu_bytes", "acse_timeout_seconds",
               "dimse_timeout_seconds", "network_timeout_seconds", "rescan_seconds",
               "max_dataset_bytes", "require_called_ae_title", "drain_seconds",
               *LIMIT_KEYS])  # config_limits: decision 0022
    callers_r = r.child("allowed_callers")
    if not r.has("allowed_callers"):
        raise r.error("required key is missing (list the AE titles allowed to send)",
                      "allowed_callers")
    callers = tuple(c.get_scalar(str, checks.ae_title) for c in callers_r.items())
    if not callers:
        raise callers_r.error("must list at least one calling AE title")
    return GatewayConfig(
        ae_title=r.get("ae_title", str, check=checks.ae_title),
        listen=_listen(r.child("listen"), "127.0.0.1", 11112, (base_dir, callers)),
        allowed_callers=callers,
        spool_dir=base_dir / r.get("spool_dir", str),
        max_associations=r.get("max_associations", int, 10, check=checks.positive),
        study_stable_seconds=r.get("study_stable_seconds", float, 30.0, check=checks.non_negative),
        max_pdu_bytes=r.get("max_pdu_bytes", int, 0, check=checks.non_negative),
        acse_timeout_seconds=r.get("acse_timeout_seconds", float, 30.0, check=checks.positive),
        dimse_timeout_seconds=r.get("dimse_timeout_seconds", float, 60.0, check=checks.positive),
        network_timeout_seconds=r.get("network_timeout_seconds", float, 60.0,
                                      check=checks.positive),
        rescan_seconds=r.get("rescan_seconds", float, 5.0, check=checks.positive),
        max_dataset_bytes=r.get("max_dataset_bytes", int, 1 << 30, check=checks.positive),
        limits=connection_limits(r),
        require_called_ae_title=r.get("require_called_ae_title", bool, True),
        drain_seconds=r.get("drain_seconds", float, 30.0, check=checks.non_negative),
    )


def _partner(r: _Reader, gateway_ae: str, retry: RetryConfig, base_dir: Path) -> PartnerConfig:
    r.mapping(["name", "ae_title", "host", "port", "calling_ae_title", "associations",
               "max_pdu_bytes", "connect_timeout_seconds", "acse_timeout_seconds",
               "dimse_timeout_seconds", "idle_release_seconds", "retry", "key", "tls"])
    key = r.get("key", str, None)
    return PartnerConfig(
        name=r.get("name", str, check=checks.name),
        ae_title=r.get("ae_title", str, check=checks.ae_title),
        host=r.get("host", str),
        port=r.get("port", int, check=checks.port),
        calling_ae_title=r.get("calling_ae_title", str, gateway_ae, check=checks.ae_title),
        associations=r.get("associations", int, 2, check=checks.positive),
        max_pdu_bytes=r.get("max_pdu_bytes", int, 0, check=checks.non_negative),
        connect_timeout_seconds=r.get("connect_timeout_seconds", float, 5.0, check=checks.positive),
        acse_timeout_seconds=r.get("acse_timeout_seconds", float, 10.0, check=checks.positive),
        dimse_timeout_seconds=r.get("dimse_timeout_seconds", float, 10.0, check=checks.positive),
        idle_release_seconds=r.get("idle_release_seconds", float, 10.0, check=checks.positive),
        retry=_retry(r.child("retry"), retry) if r.has("retry") else retry,
        key=str(base_dir / key) if key else None,
        tls=partner_tls(r.child("tls"), base_dir) if r.has("tls") else None,
    )


def _profile(name: str, r: _Reader, base_dir: Path) -> ProfileConfig:
    """A profile: ``method``, the two keys every profile has, and the method's own settings,
    which the method parses (:func:`~.protect.registry.parse_options`; its paths relative to
    the configuration file)."""
    if not isinstance(r.data, Mapping):
        raise r.error("expected a mapping with at least 'method'")
    method = r.get("method", str, check=lambda m: None if m in method_names()
                   else f"unknown method {m!r} (available: {', '.join(method_names())})")
    common = {"method", "require_pixel_data", "on_unprotectable", "deidentify", "release"}
    try:
        options = parse_options(method, {k: v for k, v in r.data.items() if k not in common},
                                base_dir)
    except OptionError as exc:
        raise r.error(exc.problem, exc.key) from None
    try:  # PS3.15 Annex E de-identification: deid/options.py, decision 0018
        deidentify = (parse_deidentify(r.data["deidentify"], base_dir)  # escrow: relative path
                      if r.has("deidentify") else None)
    except DeidOptionError as exc:
        raise r.child("deidentify").error(exc.problem, exc.key or None) from None
    return ProfileConfig(
        name=name,
        method=method,
        require_pixel_data=r.get("require_pixel_data", bool, method != "none"),
        on_unprotectable=r.get("on_unprotectable", str, "quarantine",
                               check=lambda v: None if v in ("quarantine", "forward")
                               else "must be 'quarantine' or 'forward'"),
        options=options,
        deidentify=deidentify,
        release=r.get("release", str, "instance" if instance_scoped(method) else "study",
                      check=lambda v: _release_problem(method, v)),
    )


def _release_problem(method: str, value: str) -> str | None:
    """``release: instance`` only for a method that reads no other instance (decision 0028)."""
    if value not in ("instance", "study"):
        return "must be 'instance' or 'study'"
    return (f"method {method!r} protects a whole series with its study's context, so its "
            f"instances wait for the study to be quiet: use 'study' (or leave it out)"
            if value == "instance" and not instance_scoped(method) else None)


_MATCH_KEYS = ("calling_ae", "called_ae", "modality", "sop_class_uid", "tags")


def _route(r: _Reader, partners: Mapping[str, PartnerConfig],
           profiles: Mapping[str, ProfileConfig]) -> Route:
    r.mapping(["name", "match", "to", "profile", "stop"])
    name = r.get("name", str, check=checks.name)
    m = r.child("match").mapping(_MATCH_KEYS)
    matchers: list[tuple[str, Any, Matcher]] = []
    for key in _MATCH_KEYS[:-1]:
        if m.has(key):
            matchers.append((key, None, _matcher(m.child(key))))
    if m.has("tags"):
        tags = m.child("tags")
        if not isinstance(tags.data, Mapping):
            raise tags.error("expected a mapping of DICOM keyword or 'GGGG,EEEE' to a value")
        for key in tags.data:
            try:
                tag = tag_from_key(str(key))
            except ValueError as exc:
                raise tags.error(str(exc), str(key)) from None
            matchers.append(("tag", tag, _matcher(tags.child(key))))
    to_r = r.child("to")
    if not r.has("to"):
        raise r.error("required key is missing (list of partner names)", "to")
    to = tuple(s.get_scalar(str, lambda p: None if p in partners else f"unknown partner {p!r}")
               for s in to_r.items())
    if not to:
        raise to_r.error("must name at least one partner")
    profile = r.get("profile", str, check=checks.known("profile", profiles))
    return Route(name=name, matchers=tuple(matchers), to=to, profile=profile,
                 stop=r.get("stop", bool, False))


def _matcher(r: _Reader) -> Matcher:
    try:
        return parse_matcher(r.data)
    except ValueError as exc:
        raise r.error(str(exc)) from None


def parse_config(data: Any, source: str, base_dir: Path | None = None) -> Config:
    """Validate a parsed YAML document and return the :class:`Config` it describes."""
    base = base_dir if base_dir is not None else Path.cwd()
    root = _Reader(source, data).mapping(
        ["gateway", "metrics", "retry", "protection", "profiles", "partners", "routes",
         "no_route", "log_level", "seal", "audit"])
    gateway = _gateway(root.child("gateway"), base)
    mr = root.child("metrics").mapping(["enabled", "listen"])
    metrics = MetricsConfig(mr.get("enabled", bool, True),
                            _listen(mr.child("listen"), "127.0.0.1", 9108))
    retry = _retry(root.child("retry"), RetryConfig())

    profiles: dict[str, ProfileConfig] = {"none": ProfileConfig("none", "none", False, "quarantine",
                                                               NoneOptions())}
    pr = root.child("profiles")
    if pr.has_data():
        if not isinstance(pr.data, Mapping):
            raise pr.error("expected a mapping of profile name to settings")
        for pname in pr.data:
            if checks.name(str(pname)):
                raise pr.error(checks.name(str(pname)) or "", str(pname))
            profiles[str(pname)] = _profile(str(pname), pr.child(pname), base)

    partners: dict[str, PartnerConfig] = {}
    for item in root.child("partners").items() if root.has("partners") else []:
        partner = _partner(item, gateway.ae_title, retry, base)
        if partner.name in partners:
            raise item.error(f"duplicate partner name {partner.name!r}", "name")
        partners[partner.name] = partner

    routes: list[Route] = []
    for item in root.child("routes").items() if root.has("routes") else []:
        route = _route(item, partners, profiles)
        if any(x.name == route.name for x in routes):
            raise item.error(f"duplicate route name {route.name!r}", "name")
        routes.append(route)

    no_route = _no_route(root, partners, profiles)
    level = root.get("log_level", str, "INFO", check=lambda v: None if v in (
        "DEBUG", "INFO", "WARNING", "ERROR") else "must be DEBUG, INFO, WARNING or ERROR")
    pr_r = root.child("protection").mapping(["device", "threads"])
    protection = ProtectionConfig(
        device=pr_r.get("device", str, "auto", check=lambda v: None if v in ("auto", "cpu", "cuda")
                        else "must be auto, cpu or cuda"),
        threads=pr_r.get("threads", int, 0, check=checks.non_negative))
    seal = _seal(root, gateway.ae_title, base) if root.has("seal") else None
    _check_sealing(root, seal, partners, profiles, routes, no_route)
    audit = audit_settings(root.child("audit"), gateway.spool_dir, base)  # decision 0020
    return Config(source, gateway, metrics, profiles, partners, tuple(routes), no_route, level,
                  protection, seal, audit)


def _seal(root: _Reader, gateway_ae: str, base: Path) -> SealConfig:
    r = root.child("seal").mapping(["signing_key", "uid_secret", "gateway_id", "uid_root"])
    signing = str(base / r.get("signing_key", str))
    secret = str(base / r.get("uid_secret", str))
    root_uid = r.get("uid_root", str, "2.25", check=lambda v: None if (
        len(v) <= 40 and all(p.isdigit() and (p == "0" or not p.startswith("0"))
                             for p in v.split("."))) else "must be a UID root of at most 40 "
        "characters (digits and dots)")
    try:
        load_gateway_keys(Path(signing), Path(secret))
    except KeyFileError as exc:
        raise r.error(str(exc), "signing_key" if signing in str(exc) else "uid_secret") from None
    return SealConfig(signing, secret, r.get("gateway_id", str, gateway_ae), root_uid)


def _check_sealing(root: _Reader, seal: SealConfig | None, partners: Mapping[str, PartnerConfig],
                   profiles: Mapping[str, ProfileConfig], routes: Sequence[Route],
                   no_route: NoRoute) -> None:
    """Every partner that receives protected pixels gets them sealed: it needs a key. Every key
    given must be that partner's own: the name written into it by ``keys partner --name`` is the
    one its derived UIDs and manifests use, so a key of another partner is refused."""
    for index, (name, partner) in enumerate(partners.items()):
        if partner.key is None:
            continue
        entry = root.child("partners").child(index)
        try:
            key = load_partner_key(Path(partner.key))
        except KeyFileError as exc:
            raise entry.error(str(exc), "key") from None
        if key.name != name:
            raise entry.error(f"{partner.key} is the key of partner {key.name!r}, not of "
                              f"{name!r}: the name inside the key (from 'keys partner --name') "
                              "derives the partner's UIDs and is signed into its manifests; "
                              f"use {name!r}'s own key", "key")
    pairs = [(f"routes[{i}]", p, r.profile) for i, r in enumerate(routes) for p in r.to]
    if no_route.partner and no_route.profile:
        pairs.append(("no_route", no_route.partner, no_route.profile))
    for where, name, profile in pairs:
        if profiles[profile].deidentify is not None and seal is None:
            raise root.error(f"{where} sends profile {profile!r}, which de-identifies, to "
                             f"{name!r}: its pseudonyms are keyed by the seal's uid_secret; add "
                             "a 'seal' section (files from 'dicom-gateway keys init')", "seal")
        if profiles[profile].method == "none":
            continue
        if seal is None:
            raise root.error(f"{where} sends profile {profile!r} (protected pixels) to {name!r}: "
                             "protected output is always sealed; add a 'seal' section "
                             "(files from 'dicom-gateway keys init')", "seal")
        if partners[name].key is None:
            raise root.child("partners").child(list(partners).index(name)).error(
                f"partner receives protected pixels ({where}): needs 'key', its public key file "
                "from 'dicom-gateway keys partner'", "key")


def _no_route(root: _Reader, partners: Mapping[str, PartnerConfig],
              profiles: Mapping[str, ProfileConfig]) -> NoRoute:
    if not root.has("no_route"):
        return NoRoute("reject")
    value = root.data["no_route"]
    r = root.child("no_route")
    if value in ("reject", "discard"):
        return NoRoute(str(value))
    if isinstance(value, Mapping):
        r.mapping(["partner", "profile"])
        partner = r.get("partner", str, check=checks.known("partner", partners))
        profile = r.get("profile", str, check=checks.known("profile", profiles))
        return NoRoute("forward", partner, profile)
    raise r.error("must be 'reject', 'discard' or {partner: NAME, profile: NAME}")


def load_config(path: str | Path) -> Config:
    """Read and validate the YAML configuration at ``path``."""
    p = Path(path)
    return parse_config(read_yaml(p), str(p), p.resolve().parent)
