"""Checkpoints: written atomically, loaded without executing code.

A checkpoint is a nested dict of tensors, numbers, strings, lists and dicts, saved with
``torch.save`` and loaded with ``torch.load(weights_only=True)``, whose unpickler only builds
tensors and plain containers (no arbitrary classes, so no code runs on load). The file is
written to a temporary name in the same folder, flushed to disk, then renamed over the old one
(:mod:`metaphi.files`): a run killed at any moment leaves either the previous checkpoint or the
new one, never half.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

import torch

from ..files import atomic_write_bytes


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, strict_json(obj, indent=2) + "\n")


def strict_json(obj: Any, **kwargs: Any) -> str:
    """JSON that any reader accepts: NaN and infinities (not JSON) become null."""
    return json.dumps(_finite(obj), allow_nan=False, default=str, **kwargs)


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _why(e: Exception) -> str:
    """The informative part of torch.load's error (its messages run to paragraphs)."""
    if isinstance(e, EOFError):
        return "the file ends too early"
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    if lines and lines[0].startswith("Weights only load failed"):
        # the reason follows torch's advice paragraph; the last line is a documentation link
        detail = [line for line in lines[1:-1] if not line.startswith("Please file an issue")]
        return "refused by the safe loader: " + (detail[0] if detail else "not plain data")
    return lines[0].split(". ")[0] if lines else type(e).__name__


def read_log(path: str | Path, key: str, before: int) -> list[dict[str, Any]]:
    """The records of a JSON-lines log (``metrics.jsonl``, in ``key`` order) whose ``key`` is
    below ``before``. A damaged line past them (a run killed while appending it: the checkpoint
    is written after its log line) is dropped with the rest; a damaged line among them is a
    clear error naming the file and line."""
    path = Path(path)
    if not path.is_file():
        return []
    rows: list[dict[str, Any]] = []
    for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            int(row[key])
        except (ValueError, KeyError, TypeError):
            if (int(rows[-1][key]) if rows else -1) + 1 >= before:
                break  # at or past the checkpoint: not kept anyway
            raise ValueError(f"{path}:{n} is damaged ({line[:60]!r} is not a log record with "
                             f"{key!r}); restore the file, or delete that line and what follows "
                             "it and resume from an earlier checkpoint") from None
        rows.append(row)
    return [r for r in rows if int(r[key]) < before]


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Save ``state`` (tensors and plain Python values only) atomically."""
    import io

    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu",
                    expect: Sequence[str] = ()) -> dict[str, Any]:
    """Load a checkpoint safely (``weights_only=True``: tensors and plain containers only).
    ``expect``: entries it must have (else a clear error: the file is not one of ours)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # corrupt file or a pickle that asks for arbitrary code
        raise ValueError(f"cannot load checkpoint {path} safely ({_why(e)}). The file is "
                         "damaged, truncated or not a metaphi checkpoint; restore it, or train "
                         "the run again") from e
    missing = [k for k in expect if not isinstance(state, dict) or k not in state]
    if missing:
        raise ValueError(f"{path} is not a metaphi checkpoint (it has no {', '.join(map(repr, missing))} "
                         "entry); restore the file written by `metaphi train`, or train the run "
                         "again")
    return state
