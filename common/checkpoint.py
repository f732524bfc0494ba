"""Checkpoints written atomically and read back with weights_only=True."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from common.results import default_file_mode


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """torch.save `state` through a temporary file and a rename, so a kill never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    os.chmod(temp_name, default_file_mode())
    try:
        torch.save(state, temp_name)
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


class CheckpointMismatchError(RuntimeError):
    """A checkpoint written by a run of another config."""


class CheckpointReadError(ValueError):
    """A checkpoint file that cannot be read (truncated or not a checkpoint)."""


def load_checkpoint(path: Path, expected_hash: str | None = None) -> dict[str, Any]:
    """Load a checkpoint saved by save_checkpoint; reject one from another config."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, EOFError, ValueError) as error:
        raise CheckpointReadError(
            f"cannot read checkpoint {path} ({error}); delete it to start this run from the beginning"
        ) from None
    found = state.get("config_hash")
    if expected_hash is not None and found != expected_hash:
        raise CheckpointMismatchError(
            f"checkpoint {path} was written by a run with config hash {found}, but this config hashes to "
            f"{expected_hash}; delete {Path(path).parent} to start over, or run the config that wrote it"
        )
    return state


def save_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp")
    tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in tensors.items()}
    safetensors.torch.save_file(tensors, str(temp), metadata=metadata)
    os.replace(temp, path)


def load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(str(path))
