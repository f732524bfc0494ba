"""The paper-scale runner end to end on a tiny fake Decathlon copy (two domains, a few images)."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.config import ConfigError
from modulation_adapters import paper
from modulation_adapters.pretrained import BackboneMismatchError
from modulation_adapters.tests.test_data import FAKE_LABELS, SVHN_LABELS, _write_domain

TINY = {"source": "dtd", "domains": ["svhn"], "backbone": "pretrain", "architecture": "ours", "widths": [4, 8, 8],
        "stem_width": 4, "blocks_per_stage": 1, "workers": 0, "precision": "fp32",
        "pretrain": {"epochs": 1, "batch_size": 2, "milestones": []},
        "adapt": {"epochs": 2, "batch_size": 2, "milestones": [1]}}
CONFIG = Path("modulation_adapters/configs/paper/decathlon.yaml")


@pytest.fixture(scope="module")
def decathlon_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("decathlon")
    _write_domain(root, "dtd", FAKE_LABELS)
    _write_domain(root, "svhn", SVHN_LABELS)
    return root


def tiny_config(root: Path, **changes) -> paper.PaperConfig:
    values = {**TINY, "data_root": str(root),
              "entries": [{"name": "bn", "method": "bn"}, {"name": "modulation_r2", "method": "modulation", "rank": 2}], **changes}
    return paper.load_config(CONFIG, values)


def test_paper_config_loads() -> None:
    config = paper.load_config(CONFIG)
    assert len(config.domains) == 9
    assert {entry.method for entry in config.entries} == set(paper.METHODS)


def test_run_writes_records_and_resumes(decathlon_root, tmp_path) -> None:
    config = tiny_config(decathlon_root)
    records = paper.run(config, tmp_path, "cpu")
    assert [record["entry"] for record in records] == ["bn", "modulation_r2"]
    assert set(records[1]["domains"]) == {"svhn"}
    run_dir = tmp_path / "modulation_adapters" / "paper" / "decathlon" / "seed0"
    finished = run_dir / "modulation_r2" / "svhn.json"
    assert finished.exists()
    # A lost entry record is rebuilt from the finished domain, without training again.
    (run_dir / "modulation_r2.json").unlink()
    (run_dir / "modulation_r2" / "svhn.pt").unlink()
    again = paper.run(config, tmp_path, "cpu")
    assert again[1]["domains"] == records[1]["domains"]
    assert not (run_dir / "modulation_r2" / "svhn.pt").exists()


def test_backbone_of_other_width_is_refused(decathlon_root, tmp_path) -> None:
    paper.run(tiny_config(decathlon_root, entries=[]), tmp_path, "cpu")
    backbone = tmp_path / "modulation_adapters" / "paper" / "decathlon" / "seed0" / "backbone.safetensors"
    config = tiny_config(decathlon_root, name="wider", backbone=str(backbone), widths=[4, 8, 16], entries=[])
    with pytest.raises(BackboneMismatchError, match="widths"):
        paper.run(config, tmp_path, "cpu")


@pytest.mark.parametrize("changes, message", [
    ({"domains": ["svhn", "mnist"]}, "unknown domain 'mnist'"),
    ({"domains": ["dtd"]}, "also listed as a target"),
    ({"eval_split": "test"}, "needs test_labels"),
    ({"entries": [{"name": "x", "method": "lora"}]}, "unknown method 'lora'"),
    ({"backbone": "published"}, "needs architecture 'rebuffi' and source 'imagenet12'"),
])
def test_bad_config_is_refused(decathlon_root, changes, message) -> None:
    with pytest.raises(ConfigError, match=message):
        tiny_config(decathlon_root, **changes)


def test_rank_above_full_is_refused(decathlon_root, tmp_path) -> None:
    config = tiny_config(decathlon_root, entries=[{"name": "r9", "method": "modulation", "rank": 9}])
    with pytest.raises(ValueError, match="rank must be an integer in \\[1, 4\\]"):
        paper.run(config, tmp_path, "cpu")


def test_missing_data_root_names_the_fix(tmp_path) -> None:
    config = paper.load_config(CONFIG, {**TINY, "entries": []})
    with pytest.raises(ConfigError, match="python -m modulation_adapters.data"):
        paper.run(config, tmp_path, "cpu")
