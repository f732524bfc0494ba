"""YAML configs loaded into frozen dataclasses, with strict key checking.

A config file may name a base file under the key `defaults`, as a path
relative to the file itself. The base mapping is merged recursively under
the file's own keys, so an ablation config states only what differs.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import types
import typing
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A config file or value that cannot be used as written."""


def load_yaml(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read `path` and its chain of `defaults` bases into one mapping."""
    path = Path(path)
    if not path.is_file():
        referrer = f" (named under 'defaults' in {_chain[-1]})" if _chain else ""
        raise ConfigError(f"config file not found: {path}{referrer}")
    if path.resolve() in _chain:
        raise ConfigError(f"{path}: 'defaults' chain loops back to this file: {' -> '.join(map(str, _chain))}")
    try:
        with path.open() as handle:
            raw = yaml.safe_load(handle) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: invalid YAML: {error}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, found {type(raw).__name__}")
    base_name = raw.pop("defaults", None)
    if base_name is None:
        return raw
    base = load_yaml(path.parent / base_name, _chain + (path.resolve(),))
    return deep_merge(base, raw)


def deep_merge(base: dict, override: dict) -> dict:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def apply_overrides(values: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Set each dotted key of `overrides` (e.g. "gates.gamma") in a copy of `values`."""
    values = copy.deepcopy(values)
    for dotted, value in overrides.items():
        target = values
        *parents, leaf = dotted.split(".")
        for depth, key in enumerate(parents):
            target = target.setdefault(key, {})
            if not isinstance(target, dict):
                section = ".".join(parents[: depth + 1])
                raise ConfigError(f"override {dotted!r}: {section} is a value, not a section; use --set {section}=VALUE")
        target[leaf] = value
    return values


def from_dict(cls: type, values: dict[str, Any], where: str = "config"):
    """Build dataclass `cls` from `values`, rejecting unknown keys by name.

    `where` is the dotted key path of `values`, used in error messages.
    """
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping, found {values!r}")
    fields = {field.name: field for field in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; valid keys are {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in values.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = from_dict(hint, value, f"{where}.{name}" if where else name)
        else:
            kwargs[name] = _coerce(value, hint, f"{where}.{name}" if where else name)
    try:
        return cls(**kwargs)
    except TypeError as error:
        raise ConfigError(f"{where}: {error}") from error


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Convert YAML scalars to the field type (YAML reads 1e-3 as a string)."""
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, where)
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: value {value!r} does not match type {hint}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, found {value!r}")
        (item_type, *_) = typing.get_args(hint) or (Any,)
        items = [_coerce(item, item_type, where) for item in value]
        return tuple(items) if origin is tuple else items
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ConfigError(f"{where}: expected a number, found {value!r}")
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{where}: expected a number, found {value!r}") from None
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, found {value!r}")
        return value
    if hint is bool and not isinstance(value, bool):
        raise ConfigError(f"{where}: expected true or false, found {value!r}")
    if hint is str and not isinstance(value, str):
        raise ConfigError(f"{where}: expected a string, found {value!r}")
    return value


def to_dict(config) -> dict[str, Any]:
    return dataclasses.asdict(config)


def config_hash(values: dict[str, Any]) -> str:
    """Return a short stable hash of a config mapping (key order ignored)."""
    text = json.dumps(values, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def parse_set_pairs(pairs: list[str]) -> dict[str, Any]:
    """Parse the KEY=VALUE strings of repeated --set options; values are read as YAML scalars."""
    import yaml

    overrides = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--set expects KEY=VALUE with a dotted key such as train.lr=1e-4, got {pair!r}")
        key, value = pair.split("=", 1)
        overrides[key] = yaml.safe_load(value)
    return overrides

