"""Files written atomically get the mode a plain open() gives, not mkstemp's private 0o600."""

from __future__ import annotations

import os
import stat

import pytest
import torch

from common.checkpoint import save_checkpoint
from common.results import atomic_write_text


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def test_text_file_is_readable_by_others(tmp_path, umask_022) -> None:
    path = tmp_path / "README.md"
    atomic_write_text(path, "table\n")
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_checkpoint_is_readable_by_others(tmp_path, umask_022) -> None:
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"step": torch.tensor(3)})
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
