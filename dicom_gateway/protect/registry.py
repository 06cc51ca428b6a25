"""Protection methods by name: the profile's ``method`` key picks one."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from .method import ProtectionMethod
from .none import NoneMethod

__all__ = ["create_method", "method_names", "register_method", "validate_options"]

_Factory = Callable[[Mapping[str, Any]], ProtectionMethod]
_Validator = Callable[[Mapping[str, Any]], "tuple[str, str] | None"]

_METHODS: dict[str, tuple[_Factory, _Validator]] = {
    "none": (NoneMethod, NoneMethod.validate),
}


def register_method(name: str, factory: _Factory, validator: _Validator) -> None:
    """Make a method available to profiles (used by later methods and by tests)."""
    _METHODS[name] = (factory, validator)


def method_names() -> list[str]:
    return sorted(_METHODS)


def validate_options(method: str, options: Mapping[str, Any]) -> tuple[str, str] | None:
    """Return ``(key, problem)`` for the first invalid setting, or ``None``."""
    return _METHODS[method][1](options)


def create_method(method: str, options: Mapping[str, Any]) -> ProtectionMethod:
    return _METHODS[method][0](options)
