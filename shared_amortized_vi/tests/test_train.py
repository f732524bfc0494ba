"""Training and testing runs on a tiny stand-in for Omniglot: records, exact resume, checkpoints and config errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from common.checkpoint import CheckpointReadError
from common.config import ConfigError
from common.results import read_json
from shared_amortized_vi import train
from shared_amortized_vi.config import load_config
from shared_amortized_vi.data import ImageClasses

CONFIG = Path("shared_amortized_vi/configs/smoke/samovar_1shot.yaml")
TINY = {"train.steps": 6, "train.tasks_per_step": 2, "train.log_every": 2, "train.checkpoint_every": 2, "test_tasks": 8,
        "test_samples": 5, "samples": 3, "queries": 2, "test_queries": 3, "model.conv4_hidden": 8, "model.inference_hidden": [16]}


@pytest.fixture
def tiny_omniglot(monkeypatch):
    generator = torch.Generator().manual_seed(0)
    splits = {"train": ImageClasses(torch.randint(0, 256, (10, 20, 28, 28), dtype=torch.uint8, generator=generator)),
              "test": ImageClasses(torch.randint(0, 256, (7, 20, 28, 28), dtype=torch.uint8, generator=generator))}
    monkeypatch.setattr(train, "build_splits", lambda config, root=None: splits)
    return splits


def config(**changes):
    return load_config(CONFIG, {**TINY, **changes})


@pytest.mark.parametrize("method", ["samovar", "versa", "protonet"])
def test_run_writes_result_with_confidence_interval(tiny_omniglot, tmp_path, method) -> None:
    result = train.run(config(method=method), tmp_path, device_name="cpu")
    assert result["test_tasks"] == 8
    assert 0 <= result["accuracy"] <= 100
    assert result["ci95"] > 0
    history = read_json(tmp_path / "shared_amortized_vi/smoke/samovar_1shot/seed0/history.json")
    assert [entry["step"] for entry in history] == [2, 4, 6]
    assert (history[-1]["prior_variance"] is None) == (method == "protonet")


def test_finished_run_is_not_repeated(tiny_omniglot, tmp_path, monkeypatch) -> None:
    first = train.run(config(), tmp_path, device_name="cpu")
    monkeypatch.setattr(train, "train", lambda *args, **kwargs: pytest.fail("a finished run was trained again"))
    assert train.run(config(), tmp_path, device_name="cpu") == first


def test_interrupted_run_resumes_to_the_same_model(tiny_omniglot, tmp_path, monkeypatch) -> None:
    uninterrupted = train.run(config(), tmp_path / "a", device_name="cpu")

    calls = {"count": 0}
    real_loss = train.task_loss

    def interrupt_after_step_four(*args, **kwargs):
        calls["count"] += 1
        if calls["count"] > 4 * 2:  # two tasks per step
            raise KeyboardInterrupt
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(train, "task_loss", interrupt_after_step_four)
    with pytest.raises(KeyboardInterrupt):
        train.run(config(), tmp_path / "b", device_name="cpu")
    monkeypatch.setattr(train, "task_loss", real_loss)
    resumed = train.run(config(), tmp_path / "b", device_name="cpu")
    assert resumed["accuracy"] == uninterrupted["accuracy"]
    history = [read_json(root / "shared_amortized_vi/smoke/samovar_1shot/seed0/history.json") for root in (tmp_path / "a", tmp_path / "b")]
    assert history[0] == history[1]


def test_checkpoint_of_another_backbone_is_refused(tiny_omniglot, tmp_path) -> None:
    train.run(config(), tmp_path, device_name="cpu")
    (tmp_path / "shared_amortized_vi/smoke/samovar_1shot/seed0/result.json").unlink()
    with pytest.raises(CheckpointReadError, match="conv4_hidden: checkpoint 8, config 16"):
        train.run(config(**{"model.conv4_hidden": 16}), tmp_path, device_name="cpu")


def test_confidence_interval_matches_the_t_formula() -> None:
    mean, half = train.confidence_interval([0.2, 0.4, 0.6, 0.8])
    assert mean == pytest.approx(50.0)
    assert half == pytest.approx(3.182446 * 25.819889 / 2, rel=1e-5)  # t(0.975, 3) * sd / sqrt(4)


@pytest.mark.parametrize("changes, message", [
    ({"beta": -0.5}, "beta must be >= 0"),
    ({"samples": 0}, "samples must be >= 1"),
    ({"dataset": "imagenet"}, "dataset 'imagenet' is unknown"),
    ({"method": "maml"}, "method 'maml' is unknown"),
    ({"backbone": "resnet18"}, "backbone 'resnet18' is unknown"),
])
def test_bad_config_values_are_named(changes, message) -> None:
    with pytest.raises(ConfigError, match=message):
        config(**changes)


def test_cli_reports_unsatisfiable_task(tiny_omniglot, tmp_path, capsys) -> None:
    code = train.main(["--config", str(CONFIG), "--runs-root", str(tmp_path), "--device", "cpu", "--set", "ways=20"])
    assert code == 2
    assert "20-way tasks need 20 classes, but the meta-training split has 10" in capsys.readouterr().err


def test_impossible_test_task_stops_before_training(tiny_omniglot, tmp_path) -> None:
    with pytest.raises(ValueError, match="8-way tasks need 8 classes, but the meta-test split has 7"):
        train.run(config(ways=8), tmp_path, device_name="cpu")
    assert not (tmp_path / "shared_amortized_vi").exists()


@pytest.mark.parametrize("changes, message", [
    ({"name": "../../escape"}, "must be a plain folder name"),
    ({"test_tasks": 1}, "test_tasks must be >= 2"),
    ({"seed": -1}, "seed must be >= 0"),
    ({"data_sha256": "train=" + "a" * 64 + ",foo"}, "train=HEX,validation=HEX,test=HEX"),
])
def test_unsafe_or_malformed_values_are_rejected(changes, message) -> None:
    with pytest.raises(ConfigError, match=message):
        config(**changes)


def test_paper_data_error_names_the_command_line_keys(tmp_path, capsys) -> None:
    paper_config = "shared_amortized_vi/configs/paper/cifarfs_samovar_1shot.yaml"
    code = train.main(["--config", paper_config, "--runs-root", str(tmp_path), "--device", "cpu", "--data-root", str(tmp_path / "none")])
    assert code == 2
    assert "--data-root" in capsys.readouterr().err
