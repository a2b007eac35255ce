"""The episode, cross-task training and cross-task testing."""
from .checkpoint import (atomic_write_json, atomic_write_text, load_checkpoint,
                         save_checkpoint)

__all__ = ["atomic_write_json", "atomic_write_text", "load_checkpoint", "save_checkpoint"]
