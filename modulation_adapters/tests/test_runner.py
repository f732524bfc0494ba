"""The smoke runner's config checks and its checks of files left by an earlier run (no training)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from common.checkpoint import CheckpointMismatchError, CheckpointReadError, save_safetensors
from common.config import ConfigError
from common.results import read_json
from modulation_adapters import runner

SMOKE_CONFIG = Path("modulation_adapters/configs/smoke/digits.yaml")
COMMITTED_RECORD = Path("modulation_adapters/results/smoke/digits/seed0/bn.json")
TINY = {"name": "tiny", "image_size": 8, "widths": [4, 8, 8], "stem_width": 4, "blocks_per_stage": 1,
        "pretrain": {"epochs": 1}, "adapt": {"epochs": 1}, "entries": [{"name": "bn", "method": "bn"}]}


def write_config(folder: Path, **changes) -> Path:
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump({**TINY, **changes}))
    return path


def run_dir(runs_root: Path) -> Path:
    return runs_root / "modulation_adapters" / "smoke" / "tiny" / "seed0"


def write_backbone(runs_root: Path, config: runner.SmokeConfig, config_hash: str | None = None, **layout) -> Path:
    """Write a backbone file as the runner does, from an untrained model of `config` with `layout` changes."""
    path = run_dir(runs_root) / "backbone.safetensors"
    model_config = dataclasses.replace(config, **layout)
    metadata = {"config_hash": config.hash() if config_hash is None else config_hash, "source_accuracy": "0.0"}
    save_safetensors(path, runner.build_model(model_config).state_dict(), metadata)
    return path


def write_record(runs_root: Path, config: runner.SmokeConfig, name: str, **changes) -> Path:
    path = run_dir(runs_root) / f"{name}.json"
    record = {"entry": name, "method": "bn", "rank": None, "mean_accuracy": 50.0, "config_hash": config.hash(), **changes}
    path.write_text(json.dumps(record))
    return path


def test_smoke_config_hash_matches_committed_results() -> None:
    assert runner.load_config(SMOKE_CONFIG).hash() == read_json(COMMITTED_RECORD)["config_hash"]


@pytest.mark.parametrize("changes, message", [
    ({"entries": []}, "entries is empty, so there is nothing to run"),
    ({"entries": [{"name": "bn", "method": "bn"}, {"name": "bn", "method": "feature"}]},
     r"entry names must be unique, but \['bn'\] appear more than once"),
    ({"entries": [{"name": "../bn", "method": "bn"}]}, "entry name '../bn' is invalid: use only letters"),
    ({"entries": [{"name": "a/b", "method": "bn"}]}, "entry name 'a/b' is invalid"),
    ({"entries": [{"name": ".bn", "method": "bn"}]}, "entry name '.bn' is invalid"),
    ({"name": "runs/../tiny"}, "name 'runs/../tiny' is invalid"),
    ({"entries": [{"name": "x", "method": "lora"}]}, "unknown method 'lora'"),
    ({"entries": [{"name": "series", "method": "series", "rank": 2}]},
     "entry 'series' has rank 2, but only method 'modulation' has a rank"),
    ({"entries": [{"name": "r5", "method": "modulation", "rank": 5}]},
     r"entry 'r5' has rank 5, but a modulation rank must be an integer in \[1, 4\] for stem_width 4 and widths \[4, 8, 8\]"),
    ({"entries": [{"name": "r0", "method": "modulation", "rank": 0}]}, r"in \[1, 4\] .* use null for full rank"),
    ({"stem_width": 2, "entries": [{"name": "r3", "method": "modulation", "rank": 3}]}, r"in \[1, 2\]"),
    ({"adapt": {"epochs": 0}}, "adapt.epochs must be at least 1, got 0"),
    ({"pretrain": {"batch_size": 0}}, "pretrain.batch_size must be at least 1, got 0"),
    ({"adapt": {"lr": -0.1}}, "adapt.lr must be positive, got -0.1"),
    ({"adapt": {"weight_decay": -1.0}}, "adapt.weight_decay must be zero or positive"),
    ({"blocks_per_stage": 0}, "blocks_per_stage must be at least 1, got 0"),
    ({"image_size": 4}, "image_size must be at least 8 pixels, got 4"),
])
def test_bad_config_rejected(tmp_path, changes, message) -> None:
    with pytest.raises(ConfigError, match=message):
        runner.load_config(write_config(tmp_path, **changes))


def test_every_config_problem_is_listed(tmp_path) -> None:
    entries = [{"name": "bn", "method": "bn", "rank": 2}, {"name": "r9", "method": "modulation", "rank": 9}]
    with pytest.raises(ConfigError) as raised:
        runner.load_config(write_config(tmp_path, entries=entries))
    lines = str(raised.value).splitlines()
    assert lines[0] == f"{tmp_path / 'tiny.yaml'} has 2 problems:"
    assert lines[1].startswith("  - entry 'bn' has rank 2")
    assert lines[2].startswith("  - entry 'r9' has rank 9")


def test_largest_valid_rank_is_accepted(tmp_path) -> None:
    config = runner.load_config(write_config(tmp_path, entries=[{"name": "r4", "method": "modulation", "rank": 4}]))
    assert runner.build_model(config, "modulation", 4).blocks[0].conv1.rank == 4


def test_finished_run_is_reused(tmp_path) -> None:
    config = runner.load_config(write_config(tmp_path))
    write_backbone(tmp_path, config)
    write_record(tmp_path, config, "bn")
    assert [record["mean_accuracy"] for record in runner.run(config, tmp_path)] == [50.0]


def test_truncated_backbone_names_the_fix(tmp_path) -> None:
    config = runner.load_config(write_config(tmp_path))
    path = write_backbone(tmp_path, config)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointReadError, match="Delete it so that the next run trains the backbone again") as raised:
        runner.run(config, tmp_path)
    assert str(path) in str(raised.value)


def test_backbone_of_other_config_rejected(tmp_path) -> None:
    config = runner.load_config(write_config(tmp_path))
    path = write_backbone(tmp_path, config, config_hash="0123456789ab")
    with pytest.raises(ConfigError) as raised:
        runner.run(config, tmp_path)
    message = str(raised.value)
    assert f"{path} was written by a run with config hash 0123456789ab, but this config hashes to {config.hash()}" in message
    assert "give the config another name" in message


def test_backbone_of_other_widths_rejected(tmp_path) -> None:
    config = runner.load_config(write_config(tmp_path))
    path = write_backbone(tmp_path, config, widths=(4, 8, 16))
    with pytest.raises(CheckpointMismatchError, match=r"blocks.2.bn1.norms.0.bias has shape \(16,\), expected \(8,\)") as raised:
        runner.run(config, tmp_path)
    assert str(path) in str(raised.value)


def test_stale_record_is_not_rewritten(tmp_path) -> None:
    config = runner.load_config(write_config(tmp_path))
    write_backbone(tmp_path, config)
    record = write_record(tmp_path, config, "bn", config_hash="0123456789ab")
    before = record.read_bytes()
    with pytest.raises(ConfigError, match=f"{record} was written by a run with config hash 0123456789ab"):
        runner.run(config, tmp_path)
    assert record.read_bytes() == before


def test_record_of_other_method_rejected(tmp_path) -> None:
    config = runner.load_config(write_config(tmp_path))
    write_backbone(tmp_path, config)
    write_record(tmp_path, config, "bn", method="feature")
    with pytest.raises(ConfigError, match="written for method 'feature' with rank None, but entry 'bn' has method 'bn'"):
        runner.run(config, tmp_path)


@pytest.mark.parametrize("damage", ["truncated", "other hash", "other widths"])
def test_main_reports_backbone_problems(tmp_path, capsys, damage) -> None:
    config_path = write_config(tmp_path)
    config = runner.load_config(config_path)
    if damage == "truncated":
        path = write_backbone(tmp_path, config)
        path.write_bytes(path.read_bytes()[:100])
    elif damage == "other hash":
        path = write_backbone(tmp_path, config, config_hash="0123456789ab")
    else:
        path = write_backbone(tmp_path, config, widths=(4, 8, 16))
    status = runner.main(["--config", str(config_path), "--runs-root", str(tmp_path)])
    error = capsys.readouterr().err
    assert status == 2
    assert error.startswith("error: ")
    assert str(path) in error
    assert "Traceback" not in error


def test_main_reports_empty_entries(tmp_path, capsys) -> None:
    status = runner.main(["--config", str(write_config(tmp_path, entries=[])), "--runs-root", str(tmp_path)])
    assert status == 2
    assert "nothing to run" in capsys.readouterr().err
