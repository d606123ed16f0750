"""Training checkpoints: written atomically with ``torch.save`` and read back with ``torch.load(weights_only=True)``.

A checkpoint is a dict of tensors, numbers and strings only (no pickled classes): model, optimizer and scheduler
``state_dict`` s, the number of finished epochs and steps, the torch RNG state and the run's settings.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Union

import torch

from ..errors import ConfigError, OutputError

PathLike = Union[str, "os.PathLike[str]"]
FORMAT = "compactnn-checkpoint"
VERSION = 1


def save_checkpoint(path: PathLike, state: dict[str, Any]) -> None:
    """Write ``state`` (plus format tags) to ``path`` via a temp file in the same folder and ``os.replace``.

    Args:
        path: the checkpoint file; its folder is created if missing.
        state: tensors, numbers, strings and containers of them (what ``weights_only`` loading accepts).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"cannot create checkpoint folder {path.parent}: {err.strerror}; pick a writable path")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save({"format": FORMAT, "version": VERSION, **state}, tmp)
        os.replace(tmp, path)
    except OSError as err:
        raise OutputError(f"cannot write checkpoint {path}: {err.strerror}; pick a writable path") from None
    finally:
        if tmp.exists():
            tmp.unlink()


def load_checkpoint(path: PathLike) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (``weights_only=True``: nothing is unpickled).

    Raises:
        ConfigError: the file is not a readable compactnn checkpoint.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many types for bad files
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"cannot read checkpoint {path} ({reason}); delete it or pass resume=False") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ConfigError(f"{path} is not a compactnn training checkpoint; delete it or pass resume=False")
    if state.get("version") != VERSION:
        raise ConfigError(f"checkpoint {path} has version {state.get('version')}, expected {VERSION}; retrain")
    return state
