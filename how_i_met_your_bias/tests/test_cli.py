"""Command-line entry points: bad input gets exit code 2 and a message naming the value."""

from __future__ import annotations

import pytest

from how_i_met_your_bias import sample, train

SMOKE = "how_i_met_your_bias/configs/smoke/biased_mnist_2class_rho0.9.yaml"


@pytest.mark.parametrize(
    "arguments,message",
    [
        (["--sampler", "plms", "--steps", "10"], "unknown sampler 'plms'"),
        (["--sampler", "ddim", "--steps", "0"], "steps must be an integer of at least 1, got 0"),
        (["--sampler", "ddim", "--steps", "10", "--eta", "1.5"], "eta must lie in [0, 1], got 1.5"),
        (["--sampler", "ddim", "--steps", "10", "--w", "nan"], "guidance weight w must be a finite number, got nan"),
        (["--sampler", "ddim", "--steps", "10", "--samples-per-class", "0"], "--samples-per-class must be at least 1, got 0"),
        (["--sampler", "ddim", "--steps", "10", "--set", "data.rho=1.2"], "data.rho must lie strictly between 0 and 1, got 1.2"),
    ],
)
def test_sample_rejects_bad_settings(arguments, message, capsys, tmp_path):
    code = sample.main(["--config", SMOKE, "--runs-root", str(tmp_path), *arguments])
    assert code == 2
    assert message in capsys.readouterr().err


def test_sample_without_model(capsys, tmp_path):
    code = sample.main(["--config", SMOKE, "--runs-root", str(tmp_path), "--sampler", "ddim", "--steps", "2"])
    assert code == 2
    assert "train first with python -m how_i_met_your_bias.train" in capsys.readouterr().err


def test_train_rejects_a_missing_config(capsys, tmp_path):
    code = train.main(["--config", str(tmp_path / "nope.yaml")])
    assert code == 2
    assert "does not exist" in capsys.readouterr().err


def test_train_rejects_rho_outside_the_open_interval(capsys):
    code = train.main(["--config", SMOKE, "--set", "data.rho=0"])
    assert code == 2
    assert "data.rho must lie strictly between 0 and 1, got 0" in capsys.readouterr().err
