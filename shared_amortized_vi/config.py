"""Experiment configs for SAMOVAR and its baselines (YAML files in configs/<scale>/)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from common.config import ConfigError, apply_overrides, config_hash, from_dict, load_yaml, to_dict

DATASETS = ("omniglot", "mini-imagenet", "cifarfs", "fc100")
METHODS = ("samovar", "versa", "protonet")
BACKBONES = ("conv4", "resnet12")


@dataclasses.dataclass(frozen=True)
class ModelOptions:
    """Model choices that the paper's available text does not fix, with this repository's defaults (listed in the README)."""

    conv4_hidden: int = 64
    inference_hidden: tuple[int, ...] = (512,)
    logvar_clamp: tuple[float, float] = (-10.0, 4.0)
    residual_mean: bool = True
    initial_logvar: float = 0.0
    likelihood: str = "cosine"
    scale: float = 10.0
    learn_scale: bool = True


@dataclasses.dataclass(frozen=True)
class TrainOptions:
    steps: int = 2000
    tasks_per_step: int = 4  # tasks whose losses are averaged per optimiser step
    lr: float = 1e-3
    lr_decay_steps: int = 0  # halve the learning rate every this many steps (0: constant)
    weight_decay: float = 0.0
    log_every: int = 50
    checkpoint_every: int = 200


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    name: str
    scale: str = "smoke"
    dataset: str = "omniglot"
    backbone: str = "conv4"
    method: str = "samovar"
    ways: int = 5
    shots: int = 1
    queries: int = 15  # query images per class in training tasks
    test_queries: int = 15  # query images per class in test tasks
    beta: float = 1.0  # KL weight (samovar only)
    samples: int = 10  # weight samples per task in training (samovar, versa)
    test_samples: int = 100  # prior samples averaged per test task
    test_tasks: int = 600
    seed: int = 0
    precision: str = "fp32"
    # SHA-256 of a paper dataset's download, because its sources publish no checksum. cifarfs and fc100 take one
    # digest, mini-imagenet "train=HEX,validation=HEX,test=HEX" for its three files. Not needed with --data-root.
    data_sha256: str | None = None
    model: ModelOptions = ModelOptions()
    train: TrainOptions = TrainOptions()
    path: str | None = None

    def hash(self) -> str:
        values = to_dict(self)
        values.pop("path")
        return config_hash(values)


def _sha256_ok(value: str | None) -> bool:
    if value is None:
        return True
    digest = r"[0-9a-fA-F]{64}"
    if "=" not in value:
        return re.fullmatch(digest, value) is not None
    parts = [part.split("=", 1) for part in value.split(",")]
    return (all(len(part) == 2 for part in parts) and sorted(key for key, _ in parts) == ["test", "train", "validation"]
            and all(re.fullmatch(digest, hex_value) for _, hex_value in parts))


def validate(config: ExperimentConfig, where: str) -> ExperimentConfig:
    checks = [
        (config.dataset in DATASETS, f"dataset {config.dataset!r} is unknown; expected one of {DATASETS}"),
        (config.method in METHODS, f"method {config.method!r} is unknown; expected one of {METHODS}"),
        (config.backbone in BACKBONES, f"backbone {config.backbone!r} is unknown; expected one of {BACKBONES}"),
        (config.scale in ("smoke", "paper"), f"scale must be smoke or paper, got {config.scale!r}"),
        (config.precision in ("fp32", "bf16"), f"precision must be fp32 or bf16, got {config.precision!r}"),
        (config.beta >= 0, f"beta must be >= 0 (the KL weight), got {config.beta}"),
        (config.samples >= 1, f"samples must be >= 1 (weight samples per training task), got {config.samples}"),
        (config.test_samples >= 1, f"test_samples must be >= 1, got {config.test_samples}"),
        (config.ways >= 2, f"ways must be >= 2, got {config.ways}"),
        (config.shots >= 1, f"shots must be >= 1, got {config.shots}"),
        (config.queries >= 1, f"queries must be >= 1, got {config.queries}"),
        (config.test_queries >= 1, f"test_queries must be >= 1, got {config.test_queries}"),
        (config.test_tasks >= 2, f"test_tasks must be >= 2 (a confidence interval needs two tasks), got {config.test_tasks}"),
        (config.seed >= 0, f"seed must be >= 0, got {config.seed}"),
        (re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", config.name) is not None,
         f"name {config.name!r} must be a plain folder name (letters, digits, '_', '.', '-'; no '/' or leading '.')"),
        (_sha256_ok(config.data_sha256), f"data_sha256 {config.data_sha256!r} must be one 64-digit hex digest, or "
                                         "'train=HEX,validation=HEX,test=HEX' for mini-imagenet"),
        (config.train.steps >= 1 and config.train.tasks_per_step >= 1,
         f"train.steps and train.tasks_per_step must be >= 1, got {config.train.steps} and {config.train.tasks_per_step}"),
        (config.train.lr > 0, f"train.lr must be > 0, got {config.train.lr}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(f"{where}: {message}")
    return config


def load_config(path: str | Path, overrides: dict | None = None) -> ExperimentConfig:
    path = Path(path)
    values = apply_overrides(load_yaml(path), overrides or {})
    values.pop("defaults", None)
    config = from_dict(ExperimentConfig, {**values, "path": str(path)}, where=str(path))
    return validate(config, str(path))
