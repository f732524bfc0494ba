"""Tests that a killed or interrupted BISE run resumes to the same results as an uninterrupted one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bise.config import load_config
from bise.engine import build_data
from bise.extract import BiseRun, build_steps
from bise.runner import load_vanilla, run_dir_for, run_experiment
from common.distributed import DistContext
from common.results import read_json

REPO_ROOT = Path(__file__).resolve().parents[2]

# 4 temperature stages of 10 gate batches each, so the run spends seconds between its first gate
# epoch and its end, long enough for the test to see that state and kill the process.
RESUME_GATES_YAML = """\
gates:
  tau_min: 0.1
  max_steps_per_epoch: 10
"""


def _command(config: Path, runs_root: Path) -> list[str]:
    return [sys.executable, "-m", "bise.train", "--config", str(config), "--runs-root", str(runs_root)]


def _environment() -> dict[str, str]:
    # Every run gets one thread, so the thread count cannot change the numbers and two concurrent runs share the CPUs.
    return {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}


def _read_checkpoint(path: Path) -> dict | None:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (FileNotFoundError, RuntimeError, EOFError):
        return None


def _kill_after_first_gate_epoch(process: subprocess.Popen, checkpoint: Path, total_steps: int, timeout_s: float) -> dict:
    """SIGKILL `process` once its checkpoint has a gate epoch and unfinished steps; return that checkpoint."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the run exited with code {process.returncode} before a mid-run checkpoint was seen")
        state = _read_checkpoint(checkpoint) if checkpoint.exists() else None
        if state is not None and any(record["kind"] == "gates" for record in state["history"]):
            if state["next_step"] < total_steps:
                process.send_signal(signal.SIGKILL)
                process.wait(timeout=30)
                return state
        time.sleep(0.02)
    process.kill()
    process.wait(timeout=30)
    pytest.fail(f"no checkpoint with a finished gate epoch appeared within {timeout_s} s")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_killed_run_resumes_same(tmp_path: Path, tiny_config_writer) -> None:
    configs = tiny_config_writer(tmp_path / "configs", base_extra=RESUME_GATES_YAML)
    config = load_config(configs["bise"])
    total_steps = len(build_steps(config))
    assert total_steps == 4 * 2 + 1  # 4 stages of (C_aux, gate epoch), then one fine-tuning epoch
    killed_root, reference_root = tmp_path / "killed", tmp_path / "reference"
    killed_dir = run_dir_for(config, killed_root)

    reference = subprocess.Popen(
        _command(configs["bise"], reference_root), cwd=tmp_path, env=_environment(),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    killed = subprocess.Popen(
        _command(configs["bise"], killed_root), cwd=tmp_path, env=_environment(),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        _kill_after_first_gate_epoch(killed, killed_dir / "checkpoint.pt", total_steps, timeout_s=200)
    finally:
        if killed.poll() is None:
            killed.kill()
    _, reference_errors = reference.communicate(timeout=200)

    assert killed.returncode == -signal.SIGKILL
    assert not (killed_dir / "metrics.json").exists(), "the run finished before the kill"
    assert reference.returncode == 0, reference_errors[-3000:]

    resumed = subprocess.run(
        _command(configs["bise"], killed_root), cwd=tmp_path, env=_environment(),
        capture_output=True, text=True, timeout=200,
    )

    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming BISE at step" in resumed.stderr
    resumed_results = read_json(killed_dir / "metrics.json")["results"]
    reference_results = read_json(run_dir_for(config, reference_root) / "metrics.json")["results"]
    assert resumed_results == reference_results


class _Interrupt(Exception):
    pass


@pytest.mark.timeout(120)
def test_resume_during_finetune_same(tmp_path: Path, tiny_config_writer, monkeypatch) -> None:
    # 3 stages end at tau 0.25, and 2 fine-tuning epochs let the interruption fall between them.
    configs = tiny_config_writer(tmp_path / "configs", base_extra="gates:\n  tau_min: 0.2\nfinetune:\n  epochs: 2\n")
    config = load_config(configs["bise"])
    vanilla_config = load_config(configs["vanilla"])
    run_experiment(vanilla_config, runs_root=tmp_path / "runs")
    splits = build_data(config)
    cpu = torch.device("cpu")
    vanilla = load_vanilla(vanilla_config, tmp_path / "runs", cpu)

    reference = BiseRun(config, vanilla, splits, tmp_path / "reference", cpu, DistContext())
    reference.run()

    finetune_epoch = BiseRun.finetune_epoch
    calls = []

    def stop_before_second_epoch(self, step):
        if calls:
            raise _Interrupt
        calls.append(step)
        finetune_epoch(self, step)

    monkeypatch.setattr(BiseRun, "finetune_epoch", stop_before_second_epoch)
    with pytest.raises(_Interrupt):
        BiseRun(config, vanilla, splits, tmp_path / "interrupted", cpu, DistContext()).run()
    monkeypatch.setattr(BiseRun, "finetune_epoch", finetune_epoch)
    resumed = BiseRun(config, vanilla, splits, tmp_path / "interrupted", cpu, DistContext())
    resumed.run()

    assert resumed.history == reference.history
    for name, expected in reference.best["finetune"]["state"].items():
        assert torch.equal(resumed.best["finetune"]["state"][name], expected), name
