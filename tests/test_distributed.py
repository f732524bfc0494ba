"""Test a 2-process torchrun run of a tiny BISE config on the CPU (gloo on the loopback interface)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

REPO_ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).parent / "torchrun"

# Each global batch of 20 splits into 10 per process. Tau 1 and 0.5 give 2 gate epochs, then 1 fine-tuning epoch runs.
TINY_YAML = """\
scale: smoke
device: cpu
precision: fp32
eval_batch_size: 100
data: {source: embedded, rho: 0.99, val_size: 50, train_size: 200, seed: 0}
model: {widths: [4, 4, 4, 8]}
train: {epochs: 1, batch_size: 20, milestones: [1], max_steps_per_epoch: 2}
aux: {pretrain_epochs: 2, refine_epochs: 2, batch_size: 20, max_samples: 100}
gates: {batch_size: 20, epochs_per_tau: 1, max_steps_per_epoch: 3, tau_start: 1.0, tau_min: 0.3}
finetune: {epochs: 1, batch_size: 20, max_steps_per_epoch: 2}
"""

# Runs bise.train.main as `python -m bise.train` would, and saves each rank's final gate
# parameters and selected masks so the test can compare the ranks.
LAUNCHER = """\
import sys
from pathlib import Path

import torch

import bise.extract
import bise.train

output = Path(sys.argv[1])
run_steps = bise.extract.BiseRun.run


def run_and_save_gates(self):
    run_steps(self)
    gates = {"m": [m.detach().cpu() for m in self.model.gate_parameters()], "masks": self.selected_masks()}
    torch.save(gates, output / f"gates_rank{self.ctx.rank}.pt")


bise.extract.BiseRun.run = run_and_save_gates
sys.exit(bise.train.main(sys.argv[2:]))
"""


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    (root / "base.yaml").write_text(TINY_YAML)
    (root / "vanilla.yaml").write_text("defaults: base.yaml\nname: vanilla_tiny\nmethod: vanilla\n")
    config = root / "bise.yaml"
    config.write_text("defaults: vanilla.yaml\nname: bise_tiny\nmethod: bise\nvanilla_config: vanilla.yaml\n")
    launcher = root / "launch_bise.py"
    launcher.write_text(LAUNCHER)
    environment = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "OMP_NUM_THREADS": "1",
        "GLOO_SOCKET_IFNAME": "lo",  # keep gloo on the loopback interface
    }
    command = [
        str(TORCHRUN), "--standalone", "--nproc_per_node=2",
        str(launcher), str(root), "--config", str(config), "--runs-root", str(root / "runs"),
    ]
    completed = subprocess.run(command, cwd=root, env=environment, capture_output=True, text=True, timeout=280)
    return completed, root


def _bise_dir(root: Path) -> Path:
    return root / "runs" / "bise" / "smoke" / "bise_tiny" / "seed0"


def test_torchrun_exit_code(ddp_run) -> None:
    completed, _ = ddp_run

    assert completed.returncode == 0, completed.stderr[-4000:]


def test_both_ranks_joined(ddp_run) -> None:
    completed, _ = ddp_run

    assert "joined process group: rank 0 of 2" in completed.stderr
    assert "joined process group: rank 1 of 2" in completed.stderr


def test_metrics_written(ddp_run) -> None:
    _, root = ddp_run

    assert (_bise_dir(root) / "metrics.json").is_file()
    assert (root / "runs" / "bise" / "smoke" / "vanilla_tiny" / "seed0" / "metrics.json").is_file()


def test_log_from_one_rank(ddp_run) -> None:
    _, root = ddp_run
    lines = (_bise_dir(root) / "train.log").read_text().splitlines()

    # Both ranks log this line, and only rank 0 writes train.log.
    assert sum("bise_tiny (bise, seed 0)" in line for line in lines) == 1
    assert sum("gate epoch 1 " in line for line in lines) == 1


def test_summary_printed_once(ddp_run) -> None:
    completed, _ = ddp_run

    assert completed.stdout.count("bise_tiny seed 0 bise:") == 1


def test_gates_equal_across_ranks(ddp_run) -> None:
    _, root = ddp_run
    rank0 = torch.load(root / "gates_rank0.pt", weights_only=True)
    rank1 = torch.load(root / "gates_rank1.pt", weights_only=True)

    for layer, (m0, m1) in enumerate(zip(rank0["m"], rank1["m"])):
        assert torch.equal(m0, m1), f"layer {layer}: gate parameters differ by {(m0 - m1).abs().max().item():.3g}"
    for layer, (mask0, mask1) in enumerate(zip(rank0["masks"], rank1["masks"])):
        assert torch.equal(mask0, mask1), f"layer {layer}: selected masks differ"


def test_gates_trained(ddp_run) -> None:
    _, root = ddp_run
    rank0 = torch.load(root / "gates_rank0.pt", weights_only=True)

    assert any(float(m.abs().max()) > 0 for m in rank0["m"])


def test_results_finite(ddp_run) -> None:
    _, root = ddp_run
    metrics = json.loads((_bise_dir(root) / "metrics.json").read_text())
    results = metrics["results"]

    for row in ("bise", "bise_ft"):
        for key in ("unbiased", "aligned", "conflicting"):
            assert math.isfinite(results[row]["test"][key]), f"{row} {key}"
    for record in results["history"]:
        assert math.isfinite(record["loss_ce"]), record
