"""Tiny BISE configs that run end to end on a CPU in seconds."""

from __future__ import annotations

from pathlib import Path

import pytest

# 200 training digits, widths 4/4/4/8, batches of 20 (divisible by 2 processes), tau 1 and 0.5 (2 stages).
TINY_BASE_YAML = """\
scale: smoke
device: cpu
precision: fp32
eval_batch_size: 100
data:
  source: embedded
  rho: 0.99
  val_size: 50
  train_size: 200
  seed: 0
model:
  widths: [4, 4, 4, 8]
train:
  epochs: 1
  batch_size: 20
  milestones: [1]
  max_steps_per_epoch: 2
aux:
  pretrain_epochs: 2
  refine_epochs: 2
  batch_size: 20
  max_samples: 100
gates:
  batch_size: 20
  epochs_per_tau: 1
  max_steps_per_epoch: 2
  tau_start: 1.0
  tau_min: 0.3
finetune:
  epochs: 1
  batch_size: 20
  max_steps_per_epoch: 2
"""


def write_tiny_configs(folder: Path, base_extra: str = "") -> dict[str, Path]:
    """Write base, vanilla, bise, random and magnitude configs into `folder`; return their paths by method.

    A non-empty `base_extra` goes into extra.yaml, which inherits base.yaml and is inherited by
    vanilla.yaml, so its keys (for example a `gates:` block) override the base in every config.
    """
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "base.yaml").write_text(TINY_BASE_YAML)
    if base_extra:
        (folder / "extra.yaml").write_text("defaults: base.yaml\n" + base_extra)
    parent = "extra.yaml" if base_extra else "base.yaml"
    texts = {
        "vanilla": f"defaults: {parent}\nname: vanilla_tiny\nmethod: vanilla\n",
        "bise": "defaults: vanilla.yaml\nname: bise_tiny\nmethod: bise\nvanilla_config: vanilla.yaml\n",
        "random": "defaults: vanilla.yaml\nname: random_tiny\nmethod: random\nmatch_config: bise.yaml\n",
        "magnitude": "defaults: vanilla.yaml\nname: magnitude_tiny\nmethod: magnitude\nmatch_config: bise.yaml\n",
    }
    paths = {}
    for method, text in texts.items():
        paths[method] = folder / f"{method}.yaml"
        paths[method].write_text(text)
    return paths


@pytest.fixture(scope="session")
def tiny_config_writer():
    """The function write_tiny_configs, for tests and module-scoped fixtures that need their own folder."""
    return write_tiny_configs
