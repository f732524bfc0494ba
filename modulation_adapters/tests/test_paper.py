"""The paper-scale runner end to end on a tiny fake Decathlon copy (two domains, a few images)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from common.checkpoint import CheckpointReadError
from common.config import ConfigError
from modulation_adapters import paper
from modulation_adapters.pretrained import BackboneMismatchError
from modulation_adapters.tests.test_data import FAKE_LABELS, SVHN_LABELS, _write_domain
from modulation_adapters.training import METHODS

TINY = {"source": "dtd", "domains": ["svhn"], "backbone": "pretrain", "architecture": "ours", "widths": [4, 8, 8],
        "stem_width": 4, "blocks_per_stage": 1, "workers": 0, "precision": "fp32",
        "pretrain": {"epochs": 1, "batch_size": 2, "milestones": []},
        "adapt": {"epochs": 2, "batch_size": 2, "milestones": [1]}}
ENTRIES = [{"name": "bn", "method": "bn"}, {"name": "modulation_r2", "method": "modulation", "rank": 2}]
CONFIG = Path("modulation_adapters/configs/paper/decathlon.yaml")
RUN_DIR = Path("modulation_adapters/paper/decathlon/seed0")  # under the runs root


@pytest.fixture(scope="module")
def decathlon_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("decathlon")
    _write_domain(root, "dtd", FAKE_LABELS)
    _write_domain(root, "svhn", SVHN_LABELS)
    return root


def tiny_config(root: Path, **changes) -> paper.PaperConfig:
    values = {**TINY, "data_root": str(root), "entries": ENTRIES, **changes}
    return paper.load_config(CONFIG, values)


def set_options(values: dict) -> list[str]:
    """Return --set arguments for `values` (JSON is valid YAML, which --set parses)."""
    return ["--set"] + [f"{key}={json.dumps(value)}" for key, value in values.items()]


@pytest.fixture(scope="module")
def finished_runs(decathlon_root, tmp_path_factory) -> Path:
    """A runs root holding one finished run of tiny_config; tests work on copies of it."""
    runs_root = tmp_path_factory.mktemp("finished")
    paper.run(tiny_config(decathlon_root), runs_root, "cpu")
    return runs_root


@pytest.fixture()
def runs_copy(finished_runs, tmp_path) -> Path:
    copy = tmp_path / "runs"
    shutil.copytree(finished_runs, copy)
    return copy


@pytest.mark.parametrize("config_file", ["decathlon.yaml", "decathlon_pretrain.yaml"])
def test_paper_config_loads(config_file) -> None:
    config = paper.load_config(CONFIG.with_name(config_file))
    assert len(config.domains) == 9
    assert {entry.method for entry in config.entries} == set(METHODS)


def test_run_writes_records_and_resumes(decathlon_root, runs_copy) -> None:
    config = tiny_config(decathlon_root)
    records = paper.run(config, runs_copy, "cpu")
    assert [record["entry"] for record in records] == ["bn", "modulation_r2"]
    assert set(records[1]["domains"]) == {"svhn"}
    assert set(records[1]["domains"]["svhn"]) == {"accuracy", "parameters"}
    run_dir = runs_copy / RUN_DIR
    finished = run_dir / "modulation_r2" / "svhn.json"
    assert finished.exists()
    # A lost entry record is rebuilt from the finished domain, without training again.
    (run_dir / "modulation_r2.json").unlink()
    (run_dir / "modulation_r2" / "svhn.pt").unlink()
    again = paper.run(config, runs_copy, "cpu")
    assert again[1]["domains"] == records[1]["domains"]
    assert not (run_dir / "modulation_r2" / "svhn.pt").exists()


def test_stored_files_carry_the_config_hash(decathlon_root, runs_copy) -> None:
    config = tiny_config(decathlon_root)
    run_dir = runs_copy / RUN_DIR
    expected = {"config_hash": config.hash(), "method": "modulation", "rank": 2}
    result = json.loads((run_dir / "modulation_r2" / "svhn.json").read_text())
    checkpoint = torch.load(run_dir / "modulation_r2" / "svhn.pt", weights_only=True)
    assert {key: result[key] for key in expected} == expected
    assert {key: checkpoint[key] for key in expected} == expected
    assert json.loads((run_dir / "modulation_r2.json").read_text())["config_hash"] == config.hash()


def test_changed_config_stops_at_the_backbone(decathlon_root, runs_copy) -> None:
    config = tiny_config(decathlon_root, adapt={**TINY["adapt"], "lr": 0.05})
    old_hash = tiny_config(decathlon_root).hash()
    with pytest.raises(ConfigError) as raised:
        paper.run(config, runs_copy, "cpu")
    message = str(raised.value)
    assert str(runs_copy / RUN_DIR / "backbone.safetensors") in message
    assert old_hash in message
    assert config.hash() in message
    assert "--set name=NEW" in message


def _rewrite_json(path: Path, **changes) -> None:
    values = {**json.loads(path.read_text()), **changes}
    path.write_text(json.dumps({key: value for key, value in values.items() if value is not None}))


def _rewrite_checkpoint(path: Path, **changes) -> None:
    torch.save({**torch.load(path, weights_only=True), **changes}, path)


@pytest.mark.parametrize("stale, removed, rewrite, found", [
    ("modulation_r2.json", [], _rewrite_json, "other"),
    ("modulation_r2/svhn.json", ["modulation_r2.json"], _rewrite_json, "other"),
    ("modulation_r2/svhn.json", ["modulation_r2.json"], _rewrite_json, None),
    ("modulation_r2/svhn.pt", ["modulation_r2.json", "modulation_r2/svhn.json"], _rewrite_checkpoint, "other"),
])
def test_stale_file_is_neither_reused_nor_rewritten(decathlon_root, runs_copy, stale, removed, rewrite, found) -> None:
    run_dir = runs_copy / RUN_DIR
    for name in removed:
        (run_dir / name).unlink()
    rewrite(run_dir / stale, config_hash=found)
    before = (run_dir / stale).read_bytes()
    with pytest.raises(ConfigError) as raised:
        paper.run(tiny_config(decathlon_root), runs_copy, "cpu")
    message = str(raised.value)
    assert str(run_dir / stale) in message
    assert f"config hash {found or '(none recorded)'}" in message
    assert tiny_config(decathlon_root).hash() in message
    assert (run_dir / stale).read_bytes() == before


def test_changed_entry_rank_rejected(decathlon_root, runs_copy) -> None:
    config = tiny_config(decathlon_root, entries=[{"name": "modulation_r2", "method": "modulation", "rank": 1}])
    with pytest.raises(ConfigError, match="written for method 'modulation' with rank 2, but entry 'modulation_r2' has "
                                          "method 'modulation' with rank 1"):
        paper.run(config, runs_copy, "cpu")


def test_truncated_run_backbone_names_the_fix(decathlon_root, runs_copy) -> None:
    backbone = runs_copy / RUN_DIR / "backbone.safetensors"
    backbone.write_bytes(backbone.read_bytes()[:100])
    with pytest.raises(CheckpointReadError) as raised:
        paper.run(tiny_config(decathlon_root), runs_copy, "cpu")
    assert f"delete {backbone}" in str(raised.value)
    assert "--set name=NEW" in str(raised.value)


def test_backbone_of_other_width_rejected(decathlon_root, runs_copy) -> None:
    backbone = runs_copy / RUN_DIR / "backbone.safetensors"
    config = tiny_config(decathlon_root, name="wider", backbone=str(backbone), widths=[4, 8, 16], entries=[])
    with pytest.raises(BackboneMismatchError, match="widths"):
        paper.run(config, runs_copy, "cpu")


def test_main_gives_command_line_fix_for_backbone(decathlon_root, runs_copy, capsys) -> None:
    backbone = runs_copy / RUN_DIR / "backbone.safetensors"
    values = {**TINY, "data_root": str(decathlon_root), "name": "wider", "backbone": str(backbone), "widths": [4, 8, 16],
              "entries": []}
    status = paper.main(["--config", str(CONFIG), "--runs-root", str(runs_copy), "--device", "cpu", *set_options(values)])
    error = capsys.readouterr().err
    assert status == 2
    assert error.startswith("error: ")
    assert "--set widths=[4,8,8]" in error
    assert "Traceback" not in error


def test_main_reports_unreadable_image(tmp_path, capsys) -> None:
    root = tmp_path / "decathlon"
    _write_domain(root, "dtd", FAKE_LABELS)
    _write_domain(root, "svhn", SVHN_LABELS)
    broken = root / "data" / "dtd" / "train" / "000001.jpg"
    broken.write_bytes(b"not an image")
    values = {**TINY, "data_root": str(root), "entries": []}
    status = paper.main(["--config", str(CONFIG), "--runs-root", str(tmp_path / "runs"), "--device", "cpu",
                         *set_options(values)])
    error = capsys.readouterr().err
    assert status == 2
    assert error.startswith(f"error: Could not read image {broken}")
    assert "Traceback" not in error


def test_worker_traceback_is_cut_from_error() -> None:
    wrapped = OSError("Caught OSError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
                      '  File "data.py", line 1, in load_rgb\nOSError: Could not read image x.jpg: broken.\n')
    assert paper._error_text(wrapped) == "OSError: Could not read image x.jpg: broken."
    assert paper._error_text(OSError("Could not read image x.jpg")) == "Could not read image x.jpg"


@pytest.mark.parametrize("changes, message", [
    ({"domains": ["svhn", "mnist"]}, "unknown domain 'mnist'"),
    ({"domains": ["dtd"]}, "also listed as a target"),
    ({"domains": ["svhn", "svhn"]}, r"domains lists \['svhn'\] more than once"),
    ({"eval_split": "test"}, "needs test_labels"),
    ({"entries": [{"name": "x", "method": "lora"}]}, "unknown method 'lora'"),
    ({"backbone": "published"}, "needs architecture 'rebuffi' and source 'imagenet12'"),
    ({"backbone": "pretrian"}, "backbone 'pretrian' is neither a choice nor an existing file; expected 'published'"),
    ({"backbone": "published", "architecture": "rebuffi", "source": "imagenet12", "backbone_path": "missing.pt"},
     "backbone_path 'missing.pt' is not a file"),
    ({"entries": [{"name": "bn", "method": "bn"}, {"name": "bn", "method": "feature"}]},
     r"entry names must be unique, but \['bn'\] appear more than once"),
    ({"entries": [{"name": "../bn", "method": "bn"}]}, "entry name '../bn' is invalid: use only letters"),
    ({"entries": [{"name": "a/b", "method": "bn"}]}, "entry name 'a/b' is invalid"),
    ({"entries": [{"name": ".bn", "method": "bn"}]}, "entry name '.bn' is invalid"),
    ({"name": "../decathlon"}, "name '../decathlon' is invalid"),
    ({"entries": [{"name": "bn", "method": "bn", "rank": 4}]}, "entry 'bn' has rank 4, but only method 'modulation' has a rank"),
    ({"precision": "fp16"}, r"precision must be one of \('fp32', 'bf16'\), got 'fp16'"),
    ({"workers": -1}, "workers must be 0"),
    ({"widths": []}, "widths must list at least one positive channel count"),
    ({"adapt": {**TINY["adapt"], "batch_size": 0}}, "adapt.batch_size must be at least 1, got 0"),
    ({"pretrain": {**TINY["pretrain"], "epochs": 0}}, "pretrain.epochs must be at least 1, got 0"),
    ({"adapt": {**TINY["adapt"], "lr": 0.0}}, "adapt.lr must be positive, got 0.0"),
    ({"adapt": {**TINY["adapt"], "milestones": [2]}}, r"adapt.milestones must be increasing epochs from 1 to adapt.epochs - 1 = 1, got \[2\]"),
    ({"adapt": {**TINY["adapt"], "epochs": 5, "milestones": [3, 2]}}, r"adapt.milestones must be increasing .*got \[3, 2\]"),
    ({"adapt": {**TINY["adapt"], "momentum": 1.0}}, r"adapt.momentum must be in \[0, 1\), got 1.0"),
])
def test_bad_config_rejected(decathlon_root, changes, message) -> None:
    with pytest.raises(ConfigError, match=message):
        tiny_config(decathlon_root, **changes)


@pytest.mark.parametrize("rank", [5, 0, -1])
def test_rank_out_of_range_rejected_at_load(decathlon_root, rank) -> None:
    entries = [{"name": "r", "method": "modulation", "rank": rank}]
    pattern = rf"entry 'r' has rank {rank}, but a modulation rank must be an integer in \[1, 4\] .* use null for full rank"
    with pytest.raises(ConfigError, match=pattern):
        tiny_config(decathlon_root, entries=entries)


def test_largest_valid_rank_is_accepted(decathlon_root) -> None:
    config = tiny_config(decathlon_root, entries=[{"name": "r4", "method": "modulation", "rank": 4}])
    assert paper.build_model(config, "modulation", 4).blocks[0].conv1.rank == 4


def test_missing_data_root_names_the_fix(tmp_path) -> None:
    config = paper.load_config(CONFIG, {**TINY, "entries": []})
    with pytest.raises(ConfigError, match="python -m modulation_adapters.data"):
        paper.run(config, tmp_path, "cpu")


def test_data_root_is_checked_before_the_backbone(tmp_path) -> None:
    with pytest.raises(ConfigError, match="data_root is not set"):
        paper.run(paper.load_config(CONFIG), tmp_path, "cpu")
    with pytest.raises(ConfigError, match=f"data_root {tmp_path / 'absent'} does not exist"):
        paper.run(paper.load_config(CONFIG, {"data_root": str(tmp_path / "absent")}), tmp_path, "cpu")


def test_published_backbone_names_config_keys(tmp_path) -> None:
    config = paper.load_config(CONFIG, {"data_root": str(tmp_path)})
    with pytest.raises(ConfigError) as raised:
        paper.run(config, tmp_path / "runs", "cpu")
    message = str(raised.value)
    for expected in ("--set backbone_sha256=HEX", "--set backbone_path=FILE", "BACKBONE_SHA256=HEX", "BACKBONE_PATH=FILE"):
        assert expected in message
