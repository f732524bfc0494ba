"""A 2-process torchrun run of a tiny experiment on the CPU (gloo): training, judges and the shared-out sweep."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

REPO_ROOT = Path(__file__).resolve().parents[2]
TORCHRUN = Path(sys.executable).parent / "torchrun"

TINY_YAML = """\
name: tiny
scale: smoke
device: cpu
precision: fp32
data: {name: biased_mnist_2class, digits: [0, 1], rho: 0.9, image_size: 28}
model: {block_out_channels: [8, 16], layers_per_block: 1, attention_levels: [], norm_num_groups: 4, dropout: 0.0}
train: {steps: 4, batch_size: 8, lr: 1.0e-3, warmup_steps: 1, checkpoint_every: 2, log_every: 2}
classifier: {epochs: 1, batch_size: 64, lr: 1.0e-2, val_size: 100}
sweep:
  samples_per_class: 2
  batch_size: 4
  grid_per_class: 2
  groups:
    - {name: steps, sampler: [ddim, euler_ancestral, dpmpp], steps: [2]}
"""


def test_two_process_run_shares_sweep(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY_YAML)
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo", MASTER_ADDR="127.0.0.1")
    command = [str(TORCHRUN), "--standalone", "--nproc_per_node=2", "-m", "how_i_met_your_bias.train",
               "--config", str(config), "--runs-root", str(tmp_path / "runs")]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=280)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "runs" / "how_i_met_your_bias" / "smoke" / "tiny" / "seed0"
    train = json.loads((run_dir / "train.json").read_text())
    assert train["hardware"].startswith("2 x ")
    assert (run_dir / "ema.safetensors").exists()
    records = sorted(p.name for p in (run_dir / "sweep").glob("*.json"))
    assert records == ["ddim-s2-w1-eta0.json", "dpmpp-s2-w1-o2.json", "euler_ancestral-s2-w1.json"]
    for name in records:
        record = json.loads((run_dir / "sweep" / name).read_text())
        assert record["attributes"]["colour"]["n"] == 4
