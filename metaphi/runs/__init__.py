"""Runs: configs, presets, and the run folder (train, test, reload)."""
from .config import ConfigError, RunConfig, validate_config
from .presets import PRESETS, get_preset, preset_config
from .run import load_run, test_run, train_run

__all__ = ["ConfigError", "RunConfig", "validate_config", "PRESETS", "get_preset",
           "preset_config", "load_run", "test_run", "train_run"]
