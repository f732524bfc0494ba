"""Dataset runs: every stage on a tiny folder, resume without redoing finished images, bad config values."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest

from common.config import ConfigError
from sane import runner
from sane.config import load_config

SMOKE = "sane/configs/smoke/photos_run.yaml"


class FixedBackend:
    """A language model stub that always returns the same three edits."""

    name = "fixed"

    def __init__(self):
        self.calls = 0

    def complete(self, messages, max_new_tokens, seed, temperature=0.0):
        self.calls += 1
        return "add old cars\nreplace the sky with a sepia sky\nadd film grain"


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(0)
    for stem in ("a", "b"):
        PIL.Image.fromarray((rng.random((40, 40, 3)) * 255).astype("uint8")).save(tmp_path / f"{stem}.png")
        (tmp_path / f"{stem}.txt").write_text("make it look vintage\n")
        (tmp_path / f"{stem}.caption.txt").write_text("a street with cars\n")
        (tmp_path / f"{stem}.output_caption.txt").write_text("an old photo of a street with old cars\n")
    return tmp_path


def test_folder_run_writes_everything_and_resumes(folder, tmp_path, monkeypatch):
    backend = FixedBackend()
    monkeypatch.setattr(runner, "build_backend", lambda config: backend)
    config = load_config(SMOKE, {"data.source": "folder", "data.path": str(folder), "data.image_size": 32, "editor.steps": 2})
    runs = tmp_path / "runs"
    metrics = runner.run(config, runs)
    run_dir = runner.run_dir_for(config, runs)
    assert metrics["images"] == 2
    assert set(metrics["results"]) == {"baseline", "sane"}
    for stem in ("a", "b"):
        assert (run_dir / "sheets" / f"{stem}.png").exists()
        assert (run_dir / "images" / stem / "sane_seed1.png").exists()
    assert backend.calls == 2

    (run_dir / "items" / "b.json").unlink()
    before = (run_dir / "items" / "a.json").stat().st_mtime_ns
    edited = []
    original = runner.edit_item
    monkeypatch.setattr(runner, "edit_item", lambda *args, **kwargs: (edited.append(args[4]), original(*args, **kwargs))[1])
    runner.run(config, runs)
    assert len(edited) == 1
    assert (run_dir / "items" / "a.json").stat().st_mtime_ns == before
    assert backend.calls == 2  # b's decomposition came from the cache


@pytest.mark.parametrize(
    "override,message",
    [
        ({"decompose.n": -1}, "decompose.n must be 0 or more, got -1"),
        ({"editor.scheduler": "plms"}, "unknown editor.scheduler 'plms'"),
        ({"editor.s_text": float("nan")}, "editor.s_text must be a finite number, got nan"),
        ({"data.image_size": 60}, "data.image_size must be a positive multiple of 8, got 60"),
        ({"data.source": "folder"}, "data.source folder needs data.path"),
        ({"data.source": "coco"}, "unknown data.source 'coco'"),
    ],
)
def test_bad_config_values_are_named(override, message):
    with pytest.raises(ConfigError) as error:
        load_config(SMOKE, override)
    assert message in str(error.value)


def test_missing_caption_is_an_error(folder, tmp_path, monkeypatch):
    (folder / "a.caption.txt").unlink()
    monkeypatch.setattr(runner, "build_backend", lambda config: FixedBackend())
    config = load_config(SMOKE, {"data.source": "folder", "data.path": str(folder), "data.image_size": 32, "editor.steps": 2})
    with pytest.raises(ConfigError, match="image 'a' has no caption"):
        runner.run(config, tmp_path / "runs")


def test_changed_instruction_is_edited_again(folder, tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "build_backend", lambda config: FixedBackend())
    config = load_config(SMOKE, {"data.source": "folder", "data.path": str(folder), "data.image_size": 32, "editor.steps": 2})
    runs = tmp_path / "runs"
    runner.run(config, runs)
    (folder / "a.txt").write_text("make it look like a painting\n")
    edited = []
    original = runner.edit_item
    monkeypatch.setattr(runner, "edit_item", lambda *args, **kwargs: (edited.append(args[3]), original(*args, **kwargs))[1])
    runner.run(config, runs)
    assert edited == ["make it look like a painting"]
