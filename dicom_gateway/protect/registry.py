"""Protection methods by name: the profile's ``method`` key picks one, and its options class
(:mod:`.options`) parses the profile's other keys."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..errors import DependencyError
from .method import ProtectionMethod
from .none import NoneMethod
from .options import (
    NoneOptions,
    OptionError,
    Options,
    PerturbationOptions,
    UnlearnableOptions,
    WatermarkOptions,
)

__all__ = ["INSTANCE_SCOPED", "create_method", "instance_scoped", "method_names", "options_class",
           "parse_options", "register_method"]

Factory = Callable[[Any], ProtectionMethod]

_METHODS: dict[str, tuple[Factory, type[Options]]] = {
    "none": (NoneMethod, NoneOptions),
}
# Methods that need torch are imported only when a profile uses them: the base install (no
# torch) runs `none` profiles, and the packages below come with the `protect` extra.
_LAZY: dict[str, tuple[str, type[Options]]] = {
    "adversarial_perturbation": (".perturbation:AdversarialPerturbation", PerturbationOptions),
    "adversarial_watermark": (".watermark:AdversarialWatermark", WatermarkOptions),
    "unlearnable": (".unlearnable:Unlearnable", UnlearnableOptions),
}
_PROTECT_EXTRA = ("torch", "torchvision", "h5py")
#: Methods whose output for an instance depends on that instance alone (and the profile): no
#: other instance of its series or study is read. The gateway may release such an instance as
#: soon as it is durable (``release: instance``, decision 0028) and the offline tools may split
#: a series. ``unlearnable`` is not one: it crafts one release over the whole series and reads
#: the study's SEG instances. A method added with :func:`register_method` is not either unless
#: it says so.
INSTANCE_SCOPED = frozenset({"none", "adversarial_perturbation", "adversarial_watermark"})
_instance_scoped: set[str] = set(INSTANCE_SCOPED)


def _resolve(method: str) -> tuple[Factory, type[Options]]:
    if method not in _METHODS and method in _LAZY:
        target, options = _LAZY[method]
        module, cls = target.split(":")
        try:
            importlib.import_module("torch")  # checked here: some methods import it only late
            impl = getattr(importlib.import_module(module, __package__), cls)
        except ModuleNotFoundError as exc:
            if (exc.name or "").partition(".")[0] not in _PROTECT_EXTRA:
                raise  # a bug in the method's own imports, not a missing extra
            raise DependencyError(f"method {method!r} needs {exc.name}, which this install "
                                  f"lacks: pip install 'dicom-gateway[protect]'") from None
        _METHODS[method] = (impl, options)
    if method not in _METHODS:
        raise OptionError("method", f"unknown method {method!r} (available: "
                          f"{', '.join(method_names())})")
    return _METHODS[method]


def register_method(name: str, factory: Factory, options: type[Options] = NoneOptions,
                    instance_scoped: bool = False) -> None:
    """Make a method available to profiles (used by later methods and by tests);
    ``instance_scoped``: its output for an instance reads no other instance (see
    :data:`INSTANCE_SCOPED`)."""
    _METHODS[name] = (factory, options)
    if instance_scoped:
        _instance_scoped.add(name)
    else:
        _instance_scoped.discard(name)


def instance_scoped(method: str) -> bool:
    """Whether ``method`` protects each instance on its own (:data:`INSTANCE_SCOPED`, or
    registered so), so that an instance need not wait for the rest of its study."""
    return method in _instance_scoped


def method_names() -> list[str]:
    return sorted({*_METHODS, *_LAZY})


def options_class(method: str) -> type[Options]:
    """The options class of ``method`` (without importing the method itself)."""
    if method in _LAZY:
        return _LAZY[method][1]
    return _resolve(method)[1]


def parse_options(method: str, raw: Mapping[str, Any], base_dir: Path | None = None
                  ) -> Options:
    """The typed options of ``method`` from a profile's keys (paths relative to ``base_dir``);
    :class:`~.options.OptionError` naming the key if they are unusable, or ``method`` if the
    method cannot run on this install."""
    try:
        options = _resolve(method)[1]
    except DependencyError as exc:
        raise OptionError("method", str(exc)) from None
    return options.parse(raw, base_dir)


def create_method(method: str, options: object) -> ProtectionMethod:
    """The method, ready to protect; ``options`` typed (the method's options class, as a
    profile holds them), or a mapping of a profile's keys to parse."""
    factory, kind = _resolve(method)
    if isinstance(options, Mapping):
        options = kind.parse(options)
    if not isinstance(options, kind):
        raise TypeError(f"method {method!r} takes {kind.__name__}, not "
                        f"{type(options).__name__}")
    return factory(options)
