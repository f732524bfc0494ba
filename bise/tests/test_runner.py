"""End-to-end tests of bise.runner.run_experiment on tiny configs: vanilla, BISE (+FT), baselines, reuse."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

import bise.runner
from bise.config import load_config
from bise.prune import load_pruned
from bise.runner import run_dir_for, run_experiment
from common.config import ConfigError
from common.results import read_json

pytestmark = pytest.mark.timeout(180)

ROWS = ("bise", "bise_ft")
SPARSITY_KEYS = ("sparsity_channels", "sparsity_weights", "mflops_dense", "mflops_pruned", "kept_per_layer")


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_config_writer) -> SimpleNamespace:
    """One tiny vanilla + BISE (+FT) run, shared by the tests of this module."""
    root = tmp_path_factory.mktemp("runner")
    configs = tiny_config_writer(root / "configs")
    runs_root = root / "runs"
    bise_config = load_config(configs["bise"])
    metrics = run_experiment(bise_config, runs_root=runs_root)
    return SimpleNamespace(
        configs=configs,
        runs_root=runs_root,
        metrics=metrics,
        bise_dir=run_dir_for(bise_config, runs_root),
        vanilla_dir=run_dir_for(load_config(configs["vanilla"]), runs_root),
    )


def _write_changed_bise(folder: Path, configs: dict[str, Path], extra: str) -> Path:
    """A config named like the tiny BISE config but with `extra` YAML merged in."""
    path = folder / "bise_changed.yaml"
    path.write_text(f"defaults: {configs['bise']}\nvanilla_config: {configs['vanilla']}\n{extra}")
    return path


def _check_accuracies(row: dict, name: str) -> None:
    for key in ("unbiased", "aligned", "conflicting"):
        value = row["test"][key]
        assert 0.0 <= value <= 100.0, f"{name} test {key} = {value}"


@pytest.mark.parametrize("row", ROWS)
def test_bise_row_accuracies(finished, row: str) -> None:
    results = read_json(finished.bise_dir / "metrics.json")["results"]

    assert row in results
    _check_accuracies(results[row], row)
    assert results[row]["test"]["num_samples"] == 1000


@pytest.mark.parametrize("row", ROWS)
def test_bise_row_sparsity(finished, row: str) -> None:
    values = read_json(finished.bise_dir / "metrics.json")["results"][row]

    for key in SPARSITY_KEYS:
        assert key in values, f"{row} has no {key}"
    assert 0.0 <= values["sparsity_channels"] <= 100.0
    assert 0.0 < values["mflops_pruned"] <= values["mflops_dense"]
    assert sum(values["kept_per_layer"]) == values["channels_kept"]


def test_bise_ft_same_masks(finished) -> None:
    results = read_json(finished.bise_dir / "metrics.json")["results"]

    assert results["bise_ft"]["kept_per_layer"] == results["bise"]["kept_per_layer"]


def test_vanilla_row(finished) -> None:
    metrics = read_json(finished.vanilla_dir / "metrics.json")
    vanilla = metrics["results"]["vanilla"]

    assert metrics["method"] == "vanilla"
    _check_accuracies(vanilla, "vanilla")
    assert vanilla["sparsity_channels"] == 0.0
    assert vanilla["mflops_pruned"] == vanilla["mflops_dense"]


def test_history_stages(finished) -> None:
    history = read_json(finished.bise_dir / "metrics.json")["results"]["history"]

    assert [record["kind"] for record in history] == ["gates", "gates", "finetune"]
    assert [record["tau"] for record in history if record["kind"] == "gates"] == [1.0, 0.5]
    assert all(math.isfinite(record["loss_ce"]) for record in history)


def test_returned_metrics_match_file(finished) -> None:
    on_disk = read_json(finished.bise_dir / "metrics.json")

    assert json.loads(json.dumps(finished.metrics, default=str)) == on_disk
    assert on_disk["config_hash"] == load_config(finished.configs["bise"]).hash()


def test_run_files_written(finished) -> None:
    for name in ("config.json", "checkpoint.pt", "masks.safetensors", "pruned.safetensors", "pruned_ft.safetensors", "train.log"):
        assert (finished.bise_dir / name).is_file(), f"{name} missing"
    assert (finished.vanilla_dir / "model.safetensors").is_file()


def test_pruned_file_widths(finished) -> None:
    kept = read_json(finished.bise_dir / "metrics.json")["results"]["bise"]["kept_per_layer"]

    pruned = load_pruned(finished.bise_dir / "pruned.safetensors")

    assert list(pruned.widths) == [max(count, 1) for count in kept]


def test_rerun_reuses_metrics(finished, monkeypatch) -> None:
    def fail(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(bise.runner, "train_vanilla", fail)
    monkeypatch.setattr(bise.runner, "BiseRun", fail)
    monkeypatch.setattr(bise.runner, "build_data", fail)
    metrics_path = finished.bise_dir / "metrics.json"
    modified = metrics_path.stat().st_mtime_ns

    metrics = run_experiment(load_config(finished.configs["bise"]), runs_root=finished.runs_root)

    assert metrics == read_json(metrics_path)
    assert metrics_path.stat().st_mtime_ns == modified


@pytest.mark.parametrize("method", ["random", "magnitude"])
def test_baseline_matches_bise(finished, method: str) -> None:
    bise_row = read_json(finished.bise_dir / "metrics.json")["results"]["bise"]

    metrics = run_experiment(load_config(finished.configs[method]), runs_root=finished.runs_root)

    row = metrics["results"][method]
    _check_accuracies(row, method)
    assert row["kept_per_layer"] == bise_row["kept_per_layer"]
    assert row["mflops_pruned"] == pytest.approx(bise_row["mflops_pruned"])
    assert (run_dir_for(load_config(finished.configs[method]), finished.runs_root) / "metrics.json").is_file()


def test_changed_config_hash_mismatch(finished, tmp_path: Path) -> None:
    runs_root = tmp_path / "runs"
    shutil.copytree(finished.runs_root, runs_root)
    changed = load_config(_write_changed_bise(tmp_path, finished.configs, "gates:\n  lr: 0.5\n"))

    with pytest.raises(ConfigError, match="hash"):
        run_experiment(changed, runs_root=runs_root)


def test_changed_config_checkpoint_mismatch(finished, tmp_path: Path) -> None:
    # Without metrics.json the run counts as unfinished, so the checkpoint's config hash is checked.
    runs_root = tmp_path / "runs"
    shutil.copytree(finished.runs_root, runs_root)
    changed = load_config(_write_changed_bise(tmp_path, finished.configs, "gates:\n  lr: 0.5\n"))
    (run_dir_for(changed, runs_root) / "metrics.json").unlink()

    with pytest.raises((ConfigError, RuntimeError), match="config hash"):
        run_experiment(changed, runs_root=runs_root)


def test_dependency_data_mismatch(finished, tmp_path: Path) -> None:
    changed = load_config(_write_changed_bise(tmp_path, finished.configs, "name: bise_other_rho\ndata:\n  rho: 0.995\n"))

    with pytest.raises(ConfigError, match="differs from its dependency"):
        run_experiment(changed, runs_root=tmp_path / "runs")


def test_gate_override_reuses_vanilla(tmp_path, tiny_config_writer) -> None:
    from bise.config import load_config
    from bise.runner import run_dir_for, run_experiment

    paths = tiny_config_writer(tmp_path / "configs")
    runs_root = tmp_path / "runs"
    run_experiment(load_config(paths["vanilla"]), runs_root=runs_root)
    vanilla_metrics = run_dir_for(load_config(paths["vanilla"]), runs_root) / "metrics.json"
    before = vanilla_metrics.read_bytes()

    overrides = {"gates.gamma": 0.5, "finetune.epochs": 0}
    config = load_config(paths["bise"], overrides)
    metrics = run_experiment(config, runs_root=runs_root, overrides=overrides)
    assert "-set-" in config.name
    assert metrics["overrides"] == {"finetune.epochs": "0", "gates.gamma": "0.5"}
    assert vanilla_metrics.read_bytes() == before
    assert sorted(path.name for path in (runs_root / "bise" / "smoke").iterdir()) == sorted(["vanilla_tiny", config.name])
