"""Protection methods by name: the profile's ``method`` key picks one."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

from ..errors import DependencyError
from .method import ProtectionMethod
from .none import NoneMethod

__all__ = ["create_method", "method_names", "register_method", "validate_options"]

_Factory = Callable[[Mapping[str, Any]], ProtectionMethod]
_Validator = Callable[[Mapping[str, Any]], "tuple[str, str] | None"]

_METHODS: dict[str, tuple[_Factory, _Validator]] = {
    "none": (NoneMethod, NoneMethod.validate),
}
# Methods that need torch are imported only when a profile uses them: the base install (no
# torch) runs `none` profiles, and the packages below come with the `protect` extra.
_LAZY = {"adversarial_perturbation": ".perturbation:AdversarialPerturbation",
         "adversarial_watermark": ".watermark:AdversarialWatermark",
         "unlearnable": ".unlearnable:Unlearnable"}
_PROTECT_EXTRA = ("torch", "torchvision", "h5py")


def _resolve(method: str) -> tuple[_Factory, _Validator]:
    if method not in _METHODS and method in _LAZY:
        module, cls = _LAZY[method].split(":")
        try:
            importlib.import_module("torch")  # checked here: some methods import it only late
            impl = getattr(importlib.import_module(module, __package__), cls)
        except ModuleNotFoundError as exc:
            if (exc.name or "").partition(".")[0] not in _PROTECT_EXTRA:
                raise  # a bug in the method's own imports, not a missing extra
            raise DependencyError(f"method {method!r} needs {exc.name}, which this install "
                                  f"lacks: pip install 'dicom-gateway[protect]'") from None
        _METHODS[method] = (impl, impl.validate)
    return _METHODS[method]


def register_method(name: str, factory: _Factory, validator: _Validator) -> None:
    """Make a method available to profiles (used by later methods and by tests)."""
    _METHODS[name] = (factory, validator)


def method_names() -> list[str]:
    return sorted({*_METHODS, *_LAZY})


def validate_options(method: str, options: Mapping[str, Any]) -> tuple[str, str] | None:
    """Return ``(key, problem)`` for the first invalid setting, or ``None``."""
    try:
        return _resolve(method)[1](options)
    except DependencyError as exc:
        return "method", str(exc)


def create_method(method: str, options: Mapping[str, Any]) -> ProtectionMethod:
    return _resolve(method)[0](options)
