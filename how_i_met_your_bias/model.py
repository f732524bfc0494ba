"""The class-conditional UNet (diffusers' UNet2DModel) and its saved weights.

Class labels 0..C-1 are the classes; label C is the null class that
classifier-free guidance uses. Training replaces a random fraction of the
labels by C, so the null class is the one the model learned (the released
code trained a zeroed label vector but sampled with a separate token).
"""

from __future__ import annotations

import json
from pathlib import Path

import safetensors
import torch
from diffusers import UNet2DModel

from common.checkpoint import load_safetensors, save_safetensors
from how_i_met_your_bias.config import ExperimentConfig


class WeightsMismatchError(ValueError):
    """Saved weights of a model with another image size or class count."""


def unet_kwargs(config: ExperimentConfig) -> dict:
    levels = len(config.model.block_out_channels)
    attention = set(config.model.attention_levels)
    down = tuple("AttnDownBlock2D" if level in attention else "DownBlock2D" for level in range(levels))
    up = tuple("AttnUpBlock2D" if level in attention else "UpBlock2D" for level in reversed(range(levels)))
    return dict(
        sample_size=config.data.image_size,
        in_channels=3,
        out_channels=3,
        block_out_channels=tuple(config.model.block_out_channels),
        layers_per_block=config.model.layers_per_block,
        down_block_types=down,
        up_block_types=up,
        norm_num_groups=config.model.norm_num_groups,
        dropout=config.model.dropout,
        num_class_embeds=config.num_classes + 1,  # the last label is the null class
    )


def build_unet(config: ExperimentConfig) -> UNet2DModel:
    return UNet2DModel(**unet_kwargs(config))


def save_weights(path: Path, unet: UNet2DModel, config: ExperimentConfig) -> None:
    """Save UNet weights with what a sampler needs to check them against its config."""
    metadata = {
        "image_size": str(config.data.image_size),
        "num_classes": str(config.num_classes),
        "null_class": str(config.num_classes),
        "config_hash": config.hash(),
        "unet": json.dumps(unet_kwargs(config)),
    }
    save_safetensors(path, unet.state_dict(), metadata)


def read_metadata(path: Path) -> dict[str, str]:
    try:
        with safetensors.safe_open(str(path), framework="pt") as handle:
            return handle.metadata() or {}
    except (safetensors.SafetensorError, OSError) as error:
        raise WeightsMismatchError(f"cannot read model weights {path} ({error}); delete the file and train again") from None


def load_weights(path: Path, config: ExperimentConfig) -> UNet2DModel:
    """Build the UNet of `config` and load `path`, refusing weights of another image size or class count."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no model weights at {path}; train first with python -m how_i_met_your_bias.train --config ... "
                                f"(a run trained with --set has the folder <name>-set-<hash>; pass the same --set values here)")
    metadata = read_metadata(path)
    for key, expected in (("image_size", config.data.image_size), ("num_classes", config.num_classes)):
        found = metadata.get(key)
        if found is None or int(found) != expected:
            raise WeightsMismatchError(
                f"{path} contains a model with {key}={found}, but config {config.name!r} needs {key}={expected}; "
                f"sample with the config that trained it, or retrain"
            )
    found_hash = metadata.get("config_hash")
    if found_hash != config.hash():
        raise WeightsMismatchError(
            f"{path} was trained with config hash {found_hash}, but config {config.name!r} hashes to {config.hash()}; "
            f"sample with the config and --set values that trained it"
        )
    unet = build_unet(config)
    try:
        missing, unexpected = unet.load_state_dict(load_safetensors(path), strict=False)
    except RuntimeError as error:
        raise WeightsMismatchError(f"{path} does not fit the UNet of config {config.name!r}: {str(error)[:300]}; "
                                   f"use the config that trained it") from None
    if missing or unexpected:
        raise WeightsMismatchError(
            f"{path} does not fit the UNet of config {config.name!r} (missing {missing[:3]}, unexpected {unexpected[:3]}); "
            f"use the config that trained it"
        )
    return unet


def count_parameters(module: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())
