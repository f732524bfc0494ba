"""The sweep writes one record per setting, resumes without recomputing, and the tables read it."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from common.config import ConfigError
from how_i_met_your_bias import sweep as sweep_module
from how_i_met_your_bias import tables
from how_i_met_your_bias.config import (
    DataConfig,
    ExperimentConfig,
    ModelConfig,
    SweepConfig,
    SweepGroup,
    load_config,
    sweep_settings,
    validate,
)
from how_i_met_your_bias.model import build_unet
from how_i_met_your_bias.sweep import Judges, run_sweep

SMOKE = "how_i_met_your_bias/configs/smoke/biased_mnist_2class_rho0.9.yaml"


def tiny_config(groups) -> ExperimentConfig:
    return ExperimentConfig(
        name="tiny", scale="smoke", device="cpu", precision="fp32",
        data=DataConfig(name="biased_mnist_2class", image_size=28),
        model=ModelConfig(block_out_channels=(8, 16), layers_per_block=1, attention_levels=(), norm_num_groups=4, dropout=0.0),
        sweep=SweepConfig(samples_per_class=3, batch_size=4, grid_per_class=2, groups=tuple(groups)),
    )


def colour_judges() -> Judges:
    """Bias = whether the red channel's mean is positive; class = the same, so fidelity is defined."""
    def measure(images):
        return (images[:, 0].mean(dim=(1, 2)) > 0).long().unsqueeze(1)

    return Judges(measure, ("colour",), lambda images: (images[:, 0].mean(dim=(1, 2)) > 0).long(), "test judge")


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    return build_unet(tiny_config([])).eval()


GROUPS = [
    SweepGroup(name="steps", sampler=("ddim", "euler"), steps=(2,)),
    SweepGroup(name="guidance", sampler=("ddim",), steps=(2,), w=(0.0, 1.0, 3.0)),
]


def test_sweep_records_every_setting_once_and_resumes(tmp_path, unet, monkeypatch):
    config = tiny_config(GROUPS)
    settings = sweep_settings(config)
    assert len(settings) == 4  # ddim s2 w1 is in both groups
    records = run_sweep(unet, config, colour_judges(), {"colour": 0.9}, tmp_path, torch.device("cpu"))
    assert len(records) == 4
    shared = next(r for r in records if r["key"] == "ddim-s2-w1-eta0")
    assert shared["groups"] == ["steps", "guidance"]
    for record in records:
        report = record["attributes"]["colour"]
        assert report["n"] == 6
        assert sum(map(sum, report["counts"])) == 6
        assert report["ci_low"] <= report["rho_model"] <= report["ci_high"]
        assert math.isclose(report["amplification"], report["rho_model"] - 0.9)
        assert record["fidelity"]["value"] is not None
        assert record["config_hash"] == config.hash()
        assert (tmp_path / "grids" / f"{record['key']}.png").exists()

    # A second run with one record deleted recomputes only that setting and keeps the others untouched.
    victim = tmp_path / "sweep" / "euler-s2-w1.json"
    victim.unlink()
    before = {p.name: p.read_text() for p in (tmp_path / "sweep").glob("*.json")}
    calls = []
    original = sweep_module.generate

    def counting_generate(*args, **kwargs):
        calls.append(args[2].key)
        return original(*args, **kwargs)

    monkeypatch.setattr(sweep_module, "generate", counting_generate)
    run_sweep(unet, config, colour_judges(), {"colour": 0.9}, tmp_path, torch.device("cpu"))
    assert calls == ["euler-s2-w1"]
    for name, text in before.items():
        assert (tmp_path / "sweep" / name).read_text() == text


def test_interrupted_sweep_keeps_finished_records(tmp_path, unet, monkeypatch):
    config = tiny_config(GROUPS)
    original = sweep_module.generate
    calls = []

    def failing_generate(*args, **kwargs):
        calls.append(args[2].key)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(sweep_module, "generate", failing_generate)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(unet, config, colour_judges(), {"colour": 0.9}, tmp_path, torch.device("cpu"))
    assert len(list((tmp_path / "sweep").glob("*.json"))) == 2
    calls.clear()
    monkeypatch.setattr(sweep_module, "generate", lambda *a, **k: (calls.append(a[2].key), original(*a, **k))[1])
    run_sweep(unet, config, colour_judges(), {"colour": 0.9}, tmp_path, torch.device("cpu"))
    assert len(calls) == 2
    assert len(list((tmp_path / "sweep").glob("*.json"))) == 4


def test_same_seed_gives_the_same_record(tmp_path, unet):
    config = tiny_config([SweepGroup(name="steps", sampler=("ddpm",), steps=(2,))])
    a = run_sweep(unet, config, colour_judges(), {"colour": 0.9}, tmp_path / "a", torch.device("cpu"))[0]
    b = run_sweep(unet, config, colour_judges(), {"colour": 0.9}, tmp_path / "b", torch.device("cpu"))[0]
    assert a["attributes"] == b["attributes"]


@pytest.mark.parametrize(
    "override,message",
    [
        ({"data.rho": 1.0}, "data.rho must lie strictly between 0 and 1, got 1.0"),
        ({"data.rho": 0}, "data.rho must lie strictly between 0 and 1, got 0"),
        ({"sweep.groups": [{"name": "g", "sampler": ["plms"]}]}, "unknown sampler 'plms'"),
        ({"sweep.groups": [{"name": "g", "steps": [0]}]}, "steps must be an integer of at least 1, got 0"),
        ({"sweep.groups": [{"name": "g", "eta": [2.0]}]}, "eta must lie in [0, 1], got 2.0"),
        ({"sweep.groups": [{"name": "g", "w": [math.nan]}]}, "guidance weight w must be a finite number, got nan"),
        ({"sweep.groups": [{"name": "g", "w": ["inf"]}]}, "guidance weight w must be a finite number, got inf"),
        ({"sweep.groups": [{"name": "g", "w": ["strong"]}]}, "expected a number, found 'strong'"),
        ({"data.digits": [3, 3]}, "data.digits must be two different digits in 0..9, got [3, 3]"),
        ({"data.image_size": 30}, "data.image_size must be 28 or 32 for MNIST sets, got 30"),
        ({"train.label_dropout": 0.0}, "train.label_dropout=0 trains no null class"),
        ({"data.name": "celeba"}, "unknown data.name 'celeba'"),
    ],
)
def test_bad_config_values_are_named(override, message):
    with pytest.raises(ConfigError) as error:
        load_config(SMOKE, override)
    assert message in str(error.value)


def test_smoke_config_meets_the_issue_minimums():
    config = load_config(SMOKE)
    settings = sweep_settings(config)
    steps = [s for s, groups in settings.items() if "steps" in groups]
    assert len({s.sampler for s in steps}) >= 5
    assert len({s.steps for s in steps}) >= 3
    assert len([s for s, groups in settings.items() if "guidance" in groups]) >= 4
    assert config.sweep.samples_per_class >= 250
    assert config.data.rho == 0.9
    assert config.num_classes == 2


def test_overrides_of_training_keys_rename_the_run():
    assert load_config(SMOKE, {"sweep.samples_per_class": 10}).name == "biased_mnist_2class_rho0.9"
    assert load_config(SMOKE, {"train.steps": 10}).name.startswith("biased_mnist_2class_rho0.9-set-")
    assert load_config(SMOKE).hash() == load_config(SMOKE, {"data.root": "/elsewhere", "device": "cpu"}).hash()


def test_validate_accepts_every_shipped_config():
    from how_i_met_your_bias.config import CONFIG_DIR

    paths = [p for p in CONFIG_DIR.glob("*/*.yaml") if not p.name.startswith("_")]
    assert len(paths) >= 9
    for path in paths:
        validate(load_config(path))


def test_tables_pool_seeds_and_show_released_numbers(tmp_path, unet, monkeypatch):
    config = tiny_config([SweepGroup(name="guidance", sampler=("ddim",), steps=(2,), w=(0.1, 1.0))])
    config = dataclasses.replace(config, name="biased_mnist_2class_rho0.9")
    results = tmp_path / "results" / "smoke" / config.name
    for seed in (0, 1):
        seeded = dataclasses.replace(config, seed=seed)
        run_sweep(unet, seeded, colour_judges(), {"colour": 0.9}, results / f"seed{seed}", torch.device("cpu"))
        for record in (results / f"seed{seed}" / "sweep").glob("*.json"):
            record.rename(results / f"seed{seed}" / record.name)
        (results / f"seed{seed}" / "train.json").write_text(json.dumps(
            {"train_images": 10, "parameters": 1000, "steps": 2, "images_seen": 8, "train_images_per_s": 1.0,
             "wall_time_s": 60.0, "hardware": "CPU test"}))
    experiments = tables.load_experiments(tmp_path / "results")
    assert len(experiments) == 1
    pooled = experiments[0].pooled("ddim-s2-w1-eta0", "colour")
    assert pooled["n"] == 12
    assert pooled["seeds"] == 2
    built = tables.build_tables(experiments, tables.load_released())
    assert "released notebook: T=500" in built["himyb_guidance"]
    assert "| 0.1 |" in built["himyb_guidance"]
    assert "0.517" in built["himyb_guidance"]
    assert "2; CPU test" in built["himyb_training"]
    figures = tables.plot_figures(experiments, tables.load_released(), tmp_path / "figures")
    assert [p.name for p in figures] == ["smoke_biased_mnist_2class_rho0.9.png"]
