"""Runs: configs, presets, and the run folder (train, test, reload).

Imported on first use (like :mod:`metaphi`), so that reading a config needs no PyTorch."""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "metaphi.runs.config": ("ConfigError", "RunConfig", "validate_config"),
    "metaphi.runs.presets": ("PRESETS", "get_preset", "preset_config"),
    "metaphi.runs.run": ("load_run", "test_run", "train_run"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = list(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'metaphi.runs' has no attribute {name!r}")
