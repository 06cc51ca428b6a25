"""The public surface: every module declares ``__all__`` and exports only what exists."""

from __future__ import annotations

import importlib
import pkgutil

import dicom_gateway


def _modules() -> list[str]:
    return [m.name for m in pkgutil.walk_packages(dicom_gateway.__path__, "dicom_gateway.")]


def test_every_module_declares_all() -> None:
    for name in ["dicom_gateway", *_modules()]:
        module = importlib.import_module(name)
        exported = getattr(module, "__all__", None)
        assert exported is not None, f"{name} has no __all__"
        for attr in exported:
            assert hasattr(module, attr), f"{name}.__all__ names missing {attr}"


def test_cli_contract() -> None:
    from dicom_gateway.cli import _parser

    sub = {a.dest: a for a in _parser()._actions}["command"]
    assert {"serve", "check-config", "spool", "demo", "protect", "protect-dataset",
            "train-surrogate", "keys", "verify", "restore"} <= set(sub.choices)  # type: ignore[attr-defined]
    keys = {a.dest: a for a in sub.choices["keys"]._actions}["keys_command"]  # type: ignore[attr-defined]
    assert set(keys.choices) == {"init", "partner", "escrow"}
    spool = sub.choices["spool"]  # type: ignore[attr-defined]
    spool_sub = {a.dest: a for a in spool._actions}["spool_command"]
    assert set(spool_sub.choices) == {"list", "retry", "purge"}
