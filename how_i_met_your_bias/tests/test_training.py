"""Diffusion training: label dropout trains the null class, resume is exact, weights check their config."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from common.checkpoint import CheckpointMismatchError
from how_i_met_your_bias import training
from how_i_met_your_bias.config import DataConfig, ExperimentConfig, ModelConfig, TrainConfig
from how_i_met_your_bias.model import WeightsMismatchError, build_unet, load_weights, save_weights


class TinySet:
    """Twelve random 8 px images of two classes, with the dataset interface the trainer uses."""

    def __init__(self):
        generator = torch.Generator().manual_seed(0)
        self.images = torch.rand(12, 3, 8, 8, generator=generator) * 2 - 1
        self.targets = torch.arange(12) % 2

    def __len__(self):
        return 12

    def __getitems__(self, indices):
        index = torch.as_tensor(indices)
        return self.images[index], self.targets[index], self.targets[index]


def tiny_config(**train) -> ExperimentConfig:
    values = dict(steps=6, batch_size=4, lr=1e-3, warmup_steps=1, label_dropout=0.5, ema_decay=0.9, checkpoint_every=3, log_every=2)
    values.update(train)
    return ExperimentConfig(
        name="tiny", scale="smoke", device="cpu", precision="fp32",
        data=DataConfig(name="biased_mnist_2class", image_size=28),
        model=ModelConfig(block_out_channels=(8, 16), layers_per_block=1, attention_levels=(), norm_num_groups=4, dropout=0.1),
        train=TrainConfig(**values),
    )


def test_label_dropout_replaces_labels_by_the_null_class(monkeypatch):
    seen = []

    class Recorder(torch.nn.Module):
        def forward(self, x, t, class_labels):
            seen.append(class_labels.clone())
            return type("Out", (), {"sample": torch.zeros_like(x)})()

    config = tiny_config()
    scheduler = training.noise_scheduler(config)
    labels = torch.zeros(2000, dtype=torch.long)
    training.diffusion_loss(Recorder(), scheduler, torch.zeros(2000, 3, 8, 8), labels, null_class=2, label_dropout=0.25,
                            generator=torch.Generator().manual_seed(0), precision="fp32")
    dropped = (seen[0] == 2).float().mean().item()
    assert set(seen[0].unique().tolist()) == {0, 2}
    assert 0.22 < dropped < 0.28


def test_batch_indices_cover_the_data_once_per_pass():
    first_pass = torch.cat([training.batch_indices(10, 5, seed=0, step=s) for s in range(2)])
    assert sorted(first_pass.tolist()) == list(range(10))
    assert torch.equal(training.batch_indices(10, 5, 0, 3), training.batch_indices(10, 5, 0, 3))
    assert len(training.batch_indices(3, 8, 0, 0)) == 8


def test_resumed_training_ends_with_the_same_weights(tmp_path, monkeypatch):
    config = tiny_config()
    device = torch.device("cpu")
    straight = tmp_path / "straight"
    straight.mkdir()
    training.train_diffusion(config, TinySet(), straight, device)

    resumed = tmp_path / "resumed"
    resumed.mkdir()
    original_step = torch.optim.AdamW.step
    calls = {"n": 0}

    def failing_step(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:  # after the checkpoint at step 3
            raise KeyboardInterrupt
        return original_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", failing_step)
    with pytest.raises(KeyboardInterrupt):
        training.train_diffusion(config, TinySet(), resumed, device)
    assert torch.load(resumed / training.CHECKPOINT, weights_only=True)["step"] == 3
    monkeypatch.setattr(torch.optim.AdamW, "step", original_step)
    training.train_diffusion(config, TinySet(), resumed, device)

    a = load_weights(straight / training.WEIGHTS, config).state_dict()
    b = load_weights(resumed / training.WEIGHTS, config).state_dict()
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_checkpoint_of_another_config_is_refused(tmp_path):
    config = tiny_config(steps=3)
    training.train_diffusion(config, TinySet(), tmp_path, torch.device("cpu"))
    (tmp_path / training.TRAIN_RECORD).unlink()
    other = dataclasses.replace(config, train=dataclasses.replace(config.train, steps=4))
    with pytest.raises(CheckpointMismatchError, match="delete"):
        training.train_diffusion(other, TinySet(), tmp_path, torch.device("cpu"))


def test_weights_of_other_shape_rejected(tmp_path):
    config = tiny_config()
    path = tmp_path / "ema.safetensors"
    save_weights(path, build_unet(config), config)
    bigger = dataclasses.replace(config, data=dataclasses.replace(config.data, image_size=32))
    with pytest.raises(WeightsMismatchError, match="image_size=28, but config 'tiny' needs image_size=32"):
        load_weights(path, bigger)
    ten = dataclasses.replace(config, data=dataclasses.replace(config.data, name="biased_mnist"))
    with pytest.raises(WeightsMismatchError, match="num_classes=2, but config 'tiny' needs num_classes=10"):
        load_weights(path, ten)
    with pytest.raises(FileNotFoundError, match="train first"):
        load_weights(tmp_path / "missing.safetensors", config)


def test_null_class_has_its_own_embedding_row():
    unet = build_unet(tiny_config())
    assert unet.class_embedding.num_embeddings == 3


def test_weights_of_another_config_are_refused(tmp_path):
    config = tiny_config()
    path = tmp_path / "ema.safetensors"
    save_weights(path, build_unet(config), config)
    other = dataclasses.replace(config, train=dataclasses.replace(config.train, lr=5e-4))
    with pytest.raises(WeightsMismatchError, match="was trained with config hash"):
        load_weights(path, other)


def test_damaged_weights_name_the_file(tmp_path):
    config = tiny_config()
    path = tmp_path / "ema.safetensors"
    save_weights(path, build_unet(config), config)
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(WeightsMismatchError, match="cannot read model weights .*ema.safetensors"):
        load_weights(path, config)


def test_truncated_checkpoint_names_the_file(tmp_path):
    config = tiny_config(steps=3)
    training.train_diffusion(config, TinySet(), tmp_path, torch.device("cpu"))
    (tmp_path / training.TRAIN_RECORD).unlink()
    checkpoint = tmp_path / training.CHECKPOINT
    checkpoint.write_bytes(checkpoint.read_bytes()[:10_000])
    with pytest.raises(ValueError, match="cannot read checkpoint .*checkpoint.pt"):
        training.train_diffusion(config, TinySet(), tmp_path, torch.device("cpu"))
