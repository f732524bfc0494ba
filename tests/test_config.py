"""Tests for the BISE config loader (bise.config, common.config) and the errors of `python -m bise.train`."""

from __future__ import annotations

from pathlib import Path

import pytest

import bise.train
from bise.config import load_config
from common.config import ConfigError

pytestmark = pytest.mark.timeout(30)

BASE_YAML = """\
scale: smoke
device: cpu
precision: fp32
data:
  source: embedded
  rho: 0.99
  val_size: 50
  train_size: 200
model:
  widths: [4, 4, 4, 8]
gates:
  lr: 1.0e-2
  tau_min: 0.3
"""


def _write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path


def _vanilla(folder: Path, extra: str = "") -> Path:
    _write(folder, "base.yaml", BASE_YAML)
    return _write(folder, "vanilla.yaml", "defaults: base.yaml\nname: vanilla_tiny\nmethod: vanilla\n" + extra)


def test_unknown_top_level_key(tmp_path: Path) -> None:
    path = _vanilla(tmp_path, "learning_rate: 0.1\n")

    with pytest.raises(ConfigError, match="learning_rate"):
        load_config(path)


def test_unknown_nested_key(tmp_path: Path) -> None:
    path = _vanilla(tmp_path, "gates:\n  gama: 1.0\n")

    with pytest.raises(ConfigError, match=r"gates.*gama"):
        load_config(path)


def test_unknown_override_key(tmp_path: Path) -> None:
    path = _vanilla(tmp_path)

    with pytest.raises(ConfigError, match="gama"):
        load_config(path, {"gates.gama": 1.0})


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("method: prune\n", "unknown method 'prune'"),
        ("data:\n  source: cifar\n", "unknown data.source 'cifar'"),
        ("precision: fp8\n", "unknown precision 'fp8'"),
        ("scale: huge\n", "unknown scale 'huge'"),
    ],
)
def test_unknown_choice(tmp_path: Path, extra: str, message: str) -> None:
    path = _vanilla(tmp_path, extra)

    with pytest.raises(ConfigError, match=message):
        load_config(path)


@pytest.mark.parametrize("rho", ["0", "1", "1.5", "-0.1"])
def test_rho_outside_open_interval(tmp_path: Path, rho: str) -> None:
    path = _vanilla(tmp_path, f"data:\n  rho: {rho}\n")

    with pytest.raises(ConfigError, match="data.rho"):
        load_config(path)


def test_bise_without_vanilla_config(tmp_path: Path) -> None:
    path = _vanilla(tmp_path, "method: bise\n")

    with pytest.raises(ConfigError, match="vanilla_config"):
        load_config(path)


@pytest.mark.parametrize("gates", ["{lr: true}", "{tau_min: null}", "{lr: [1, 2]}"])
def test_float_field_rejects_non_number(tmp_path: Path, gates: str) -> None:
    path = _vanilla(tmp_path, f"gates: {gates}\n")

    with pytest.raises(ConfigError, match="gates"):
        load_config(path)


def test_defaults_inheritance(tmp_path: Path) -> None:
    _vanilla(tmp_path)
    child = _write(tmp_path, "child.yaml", "defaults: vanilla.yaml\nname: child\ngates:\n  lr: 0.5\n")

    config = load_config(child)

    assert config.name == "child"
    assert config.method == "vanilla"  # from vanilla.yaml
    assert config.model.widths == (4, 4, 4, 8)  # from base.yaml, two levels up
    assert config.gates.lr == 0.5  # the child's own value
    assert config.gates.tau_min == 0.3  # sibling key kept by the recursive merge
    assert config.path == str(child.resolve())


def test_yaml_exponent_read_as_float(tmp_path: Path) -> None:
    # PyYAML reads 1e-3 (without a dot) as a string, which the loader converts.
    path = _vanilla(tmp_path, "gates:\n  tau_min: 1e-3\n")

    assert load_config(path).gates.tau_min == 1e-3


def test_missing_defaults_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "orphan.yaml", "defaults: nowhere.yaml\nname: orphan\nmethod: vanilla\nscale: smoke\n")

    with pytest.raises(ConfigError, match="nowhere.yaml"):
        load_config(path)


def test_data_full_renames_experiment(tmp_path: Path) -> None:
    path = _vanilla(tmp_path)

    config = load_config(path, {"data.source": "full"})

    assert config.name == "vanilla_tiny-full"
    assert config.data.source == "full"


def test_data_full_changes_hash(tmp_path: Path) -> None:
    path = _vanilla(tmp_path)

    assert load_config(path, {"data.source": "full"}).hash() != load_config(path).hash()


def test_same_source_keeps_name(tmp_path: Path) -> None:
    path = _vanilla(tmp_path)

    assert load_config(path, {"data.source": "embedded"}).name == "vanilla_tiny"


def test_missing_name_with_data_override(tmp_path: Path) -> None:
    _write(tmp_path, "base.yaml", BASE_YAML)
    path = _write(tmp_path, "nameless.yaml", "defaults: base.yaml\nmethod: vanilla\n")

    with pytest.raises(ConfigError, match="name"):
        load_config(path, {"data.source": "full"})


def test_cli_missing_config_exits_2(tmp_path: Path, capsys) -> None:
    code = bise.train.main(["--config", str(tmp_path / "missing.yaml"), "--runs-root", str(tmp_path / "runs")])

    assert code == 2
    error = capsys.readouterr().err
    assert error.startswith("error:")
    assert "missing.yaml" in error


def test_cli_unknown_key_exits_2(tmp_path: Path, capsys) -> None:
    path = _vanilla(tmp_path, "learning_rate: 0.1\n")

    code = bise.train.main(["--config", str(path), "--runs-root", str(tmp_path / "runs")])

    assert code == 2
    assert "learning_rate" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_cli_bad_set_exits_2(tmp_path: Path, capsys) -> None:
    path = _vanilla(tmp_path)

    code = bise.train.main(["--config", str(path), "--runs-root", str(tmp_path / "runs"), "--set", "gates.gamma"])

    assert code == 2
    assert "KEY=VALUE" in capsys.readouterr().err


def test_cli_missing_vanilla_config_exits_2(tmp_path: Path, capsys) -> None:
    # The file named by vanilla_config is read only once the run starts, after the CLI's own checks.
    _vanilla(tmp_path)
    path = _write(tmp_path, "bise.yaml", "defaults: vanilla.yaml\nname: bise_tiny\nmethod: bise\nvanilla_config: typo.yaml\n")

    code = bise.train.main(["--config", str(path), "--runs-root", str(tmp_path / "runs")])

    assert code == 2
    assert "typo.yaml" in capsys.readouterr().err


def test_cli_invalid_data_choice(tmp_path: Path) -> None:
    path = _vanilla(tmp_path)

    with pytest.raises(SystemExit) as exit_info:
        bise.train.main(["--config", str(path), "--data", "cifar"])

    assert exit_info.value.code == 2


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"gates.tau_min": 0.0}, "tau_min must be positive"),
        ({"gates.tau_min": -1.0}, "tau_min must be positive"),
        ({"gates.tau_start": 0.2}, "must be above gates.tau_min"),
        ({"model.widths": [0, 1, 2, 3]}, "model.widths"),
        ({"train.batch_size": 0}, "train.batch_size must be at least 1"),
        ({"train.lr": -1.0}, "train.lr must be positive"),
        ({"train.epochs": -1}, "train.epochs must be at least 1"),
        ({"data.val_size": -5}, "data.val_size"),
        ({"data.train_size": 0}, "data.train_size"),
        ({"device": "tpu"}, "device 'tpu'"),
        ({"name": "../escape"}, "name '../escape'"),
    ],
)
def test_invalid_value_rejected(tmp_path: Path, override: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(_vanilla(tmp_path), override)


def test_override_into_scalar_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="gates.lr is a value"):
        load_config(_vanilla(tmp_path), {"gates.lr.x": 1})


def test_defaults_loop_rejected(tmp_path: Path) -> None:
    path = _write(tmp_path, "loop.yaml", "defaults: loop.yaml\nname: loop\n")
    with pytest.raises(ConfigError, match="loops back"):
        load_config(path)


def test_yaml_syntax_error_rejected(tmp_path: Path) -> None:
    path = _write(tmp_path, "broken.yaml", "name: [unclosed\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(path)


def test_set_override_renames_run(tmp_path: Path) -> None:
    config = load_config(_vanilla(tmp_path), {"gates.gamma": 0.5})
    assert config.name.startswith("vanilla_tiny-set-")
    assert config.overrides == {"gates.gamma": "0.5"}


def test_seed_override_keeps_name(tmp_path: Path) -> None:
    assert load_config(_vanilla(tmp_path), {"seed": 3}).name == "vanilla_tiny"


def test_explicit_name_override_kept(tmp_path: Path) -> None:
    assert load_config(_vanilla(tmp_path), {"name": "mine"}).name == "mine"


def test_vanilla_dependency_gets_vanilla_keys_only() -> None:
    from bise.config import dependency_overrides

    overrides = {"gates.gamma": 0.5, "train.lr": 0.02, "seed": 1, "name": "x", "aux.hidden": 8, "data.rho": 0.9}
    assert dependency_overrides(overrides, "vanilla") == {"train.lr": 0.02, "seed": 1, "data.rho": 0.9}
    assert "gates.gamma" in dependency_overrides(overrides, "bise")
    assert "name" not in dependency_overrides(overrides, "bise")
