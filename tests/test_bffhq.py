"""Tests for common.data.bffhq on a small fake BFFHQ folder and archive made in a temporary folder, offline."""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from common.data import bffhq
from common.data.bffhq import BFFHQ, build_bffhq_splits, download_bffhq, find_dataset_folder
from common.download import DownloadError, HTMLPageError

pytestmark = pytest.mark.timeout(60)

# File names of the fake archive, in the layout of the real one: <index>_<age>_<gender>.png.
FAKE_FILES = {
    "0.5pct/align/0": ["10_0_0.png", "11_0_0.png", "12_0_0.png"],
    "0.5pct/align/1": ["20_1_1.png", "21_1_1.png"],
    "0.5pct/conflict/0": ["30_0_1.png"],
    "0.5pct/conflict/1": ["40_1_0.png"],
    "valid": ["50_0_0.png", "51_1_0.png", "52_1_1.png"],
    "test": ["60_0_1.png", "61_1_0.png", "62_0_0.png", "63_1_1.png"],
}


def _source_pixels(name: str) -> np.ndarray:
    """Return the 128 x 128 RGB pixels of a fake image, random but fixed by its file name."""
    seed = int(name.split("_")[0])
    return np.random.default_rng(seed).integers(0, 256, size=(128, 128, 3), dtype=np.uint8)


def _write_fake_dataset(folder: Path) -> Path:
    for subfolder, names in FAKE_FILES.items():
        (folder / subfolder).mkdir(parents=True, exist_ok=True)
        for name in names:
            Image.fromarray(_source_pixels(name)).save(folder / subfolder / name)
    return folder


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory) -> Path:
    """An extracted fake archive: <tmp>/bffhq/{0.5pct,valid,test}."""
    return _write_fake_dataset(tmp_path_factory.mktemp("extracted") / "bffhq")


@pytest.fixture(scope="module")
def fake_archive(tmp_path_factory, dataset_root) -> Path:
    """A zip of the fake folder with bffhq/ at the top, as in the real archive."""
    archive = tmp_path_factory.mktemp("archive") / "bffhq.zip"
    with zipfile.ZipFile(archive, "w") as zip_file:
        for path in sorted(dataset_root.rglob("*.png")):
            zip_file.write(path, Path("bffhq") / path.relative_to(dataset_root))
    return archive


@pytest.fixture
def offline(monkeypatch):
    """Fail the test if fetch tries to open any URL."""

    def reject_url_access(*args, **kwargs):
        raise AssertionError("the test tried to open a URL")

    monkeypatch.setattr(urllib.request, "urlopen", reject_url_access)


def _names(dataset: BFFHQ) -> list[str]:
    return [path.name for path in dataset.paths]


def test_train_split_labels_from_names(dataset_root) -> None:
    dataset = BFFHQ(dataset_root, "train")

    assert _names(dataset) == ["10_0_0.png", "11_0_0.png", "12_0_0.png", "20_1_1.png", "21_1_1.png", "30_0_1.png", "40_1_0.png"]
    assert dataset.targets.tolist() == [0, 0, 0, 1, 1, 0, 1]
    assert dataset.bias.tolist() == [0, 0, 0, 1, 1, 1, 0]
    assert dataset.aligned.tolist() == [True] * 5 + [False] * 2
    assert dataset.aligned_fraction() == pytest.approx(5 / 7)


@pytest.mark.parametrize(("split", "count"), [("valid", 3), ("test", 4)])
def test_evaluation_split_sizes(dataset_root, split: str, count: int) -> None:
    dataset = BFFHQ(dataset_root, split)

    assert len(dataset) == count
    assert dataset.targets.dtype == torch.long
    assert dataset.bias.dtype == torch.long


def test_names_of_labels() -> None:
    assert BFFHQ.target_names == ("young", "old")
    assert BFFHQ.bias_names == ("female", "male")
    assert not hasattr(BFFHQ, "palette")


def test_items_resized_to_64(dataset_root) -> None:
    dataset = BFFHQ(dataset_root, "test")
    image, target, bias = dataset[1]
    source = torch.from_numpy(_source_pixels("61_1_0.png")).permute(2, 0, 1).float()
    # Box filter at 128 -> 64: the mean of each 2 x 2 block, rounded.
    block_means = source.view(3, 64, 2, 64, 2).mean(dim=(2, 4))

    assert image.shape == (3, 64, 64)
    assert image.dtype == torch.float32
    assert (int(target), int(bias)) == (1, 0)
    assert float((dataset.images[1].float() - block_means).abs().max()) <= 1.0
    assert torch.equal(image, dataset.images[1].float() / 127.5 - 1.0)
    assert float(image.min()) >= -1.0
    assert float(image.max()) <= 1.0


def test_source_size_keeps_pixels(dataset_root) -> None:
    dataset = BFFHQ(dataset_root, "valid", image_size=128)
    expected = torch.from_numpy(_source_pixels("50_0_0.png")).permute(2, 0, 1)

    assert torch.equal(dataset.images[0], expected)


def test_batches_match_items(dataset_root) -> None:
    dataset = BFFHQ(dataset_root, "train", image_size=32)
    indices = [6, 0, 3]
    images, targets, bias = dataset.__getitems__(indices)

    assert images.shape == (3, 3, 32, 32)
    for row, index in enumerate(indices):
        image, target, bias_label = dataset[index]
        assert torch.equal(images[row], image)
        assert int(targets[row]) == int(target)
        assert int(bias[row]) == int(bias_label)


def test_root_above_dataset_folder(dataset_root) -> None:
    dataset = BFFHQ(dataset_root.parent, "valid")

    assert dataset.root == dataset_root
    assert len(dataset) == 3


def test_debian_layout_train_folder(tmp_path, dataset_root) -> None:
    root = tmp_path / "bffhq"
    shutil.copytree(dataset_root, root)
    (root / "0.5pct").rename(root / "train")

    assert len(BFFHQ(root, "train")) == 7


def test_hidden_and_macos_files_skipped(tmp_path, dataset_root) -> None:
    root = tmp_path / "bffhq"
    shutil.copytree(dataset_root, root)
    (root / "test" / ".DS_Store").write_bytes(b"\0")
    (root / "test" / "notes.txt").write_text("not an image")
    (root / "test" / "__MACOSX").mkdir()
    (root / "test" / "__MACOSX" / "._60_0_1.png").write_bytes(b"\0")

    assert len(BFFHQ(root, "test")) == 4


def test_bad_file_name_rejected(tmp_path, dataset_root) -> None:
    root = tmp_path / "bffhq"
    shutil.copytree(dataset_root, root)
    shutil.copy(root / "test" / "60_0_1.png", root / "test" / "70_2_1.png")

    with pytest.raises(ValueError, match=r"70_2_1\.png does not follow the BFFHQ file name pattern"):
        BFFHQ(root, "test")


def test_misplaced_training_file_warns(tmp_path, dataset_root, caplog) -> None:
    root = tmp_path / "bffhq"
    shutil.copytree(dataset_root, root)
    shutil.move(root / "0.5pct" / "conflict" / "0" / "30_0_1.png", root / "0.5pct" / "align" / "0" / "30_0_1.png")

    with caplog.at_level(logging.WARNING, logger="common.data.bffhq"):
        dataset = BFFHQ(root, "train")

    assert "1 BFFHQ training files lie in align/ with age != gender" in caplog.text
    assert len(dataset) == 7


def test_missing_split_folder(tmp_path, dataset_root) -> None:
    root = tmp_path / "bffhq"
    shutil.copytree(dataset_root, root)
    shutil.rmtree(root / "0.5pct" / "conflict")

    with pytest.raises(FileNotFoundError, match="conflict not found"):
        BFFHQ(root, "train")


def test_empty_split_folder(tmp_path, dataset_root) -> None:
    root = tmp_path / "bffhq"
    shutil.copytree(dataset_root, root)
    shutil.rmtree(root / "test")
    (root / "test").mkdir()

    with pytest.raises(FileNotFoundError, match="No images found for the BFFHQ test split"):
        BFFHQ(root, "test")


def test_not_a_dataset_folder(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="is not a BFFHQ folder"):
        find_dataset_folder(tmp_path)
    with pytest.raises(FileNotFoundError, match="not found"):
        find_dataset_folder(tmp_path / "missing")


@pytest.mark.parametrize("split", ["val", "training", ""])
def test_invalid_split(dataset_root, split: str) -> None:
    with pytest.raises(ValueError, match=re.escape(f"Unknown BFFHQ split {split!r}. Valid splits are 'train', 'valid', 'test'")):
        BFFHQ(dataset_root, split)


@pytest.mark.parametrize("image_size", [0, -64, 64.0, "64", True])
def test_invalid_image_size(dataset_root, image_size) -> None:
    with pytest.raises(ValueError, match=f"image_size must be a positive integer.*got {re.escape(repr(image_size))}"):
        BFFHQ(dataset_root, "test", image_size=image_size)


def test_splits_from_root(dataset_root) -> None:
    splits = build_bffhq_splits(dataset_root.parent, image_size=16)

    assert (len(splits.train), len(splits.val), len(splits.test)) == (7, 3, 4)
    assert splits.val.split == "valid"
    assert splits.test.images.shape == (4, 3, 16, 16)


def test_download_requires_checksum(tmp_path) -> None:
    with pytest.raises(ValueError, match="needs md5= or sha256=.*pass root= an extracted BFFHQ folder"):
        download_bffhq(cache_dir=tmp_path)
    with pytest.raises(ValueError, match="needs md5= or sha256="):
        build_bffhq_splits(cache_dir=tmp_path)


def test_download_from_mirror(tmp_path, monkeypatch, fake_archive, offline) -> None:
    mirror = tmp_path / "mirror"
    (mirror / "bffhq").mkdir(parents=True)
    shutil.copy(fake_archive, mirror / "bffhq" / "bffhq.zip")
    monkeypatch.setenv("REPRO_MIRROR", str(mirror))
    sha256 = hashlib.sha256(fake_archive.read_bytes()).hexdigest()

    folder = download_bffhq(sha256=sha256, cache_dir=tmp_path / "data")
    splits = build_bffhq_splits(sha256=sha256, cache_dir=tmp_path / "data")

    assert folder == tmp_path / "data" / "bffhq" / "extracted" / "bffhq"
    assert (tmp_path / "data" / "bffhq" / "bffhq.zip").is_file()
    assert (len(splits.train), len(splits.val), len(splits.test)) == (7, 3, 4)
    assert splits.train.root == folder


def test_download_from_data_root_copy(tmp_path, fake_archive, offline) -> None:
    (tmp_path / "bffhq").mkdir()
    shutil.copy(fake_archive, tmp_path / "bffhq" / "bffhq.zip")
    md5 = hashlib.md5(fake_archive.read_bytes()).hexdigest()

    folder = download_bffhq(md5=md5, cache_dir=tmp_path)

    assert len(BFFHQ(folder, "test")) == 4


def test_html_page_error_explains_manual_download(tmp_path, monkeypatch) -> None:
    def fetch_drive_page(url, relpath, **kwargs):
        raise HTMLPageError(f"{url} returned an HTML page")

    monkeypatch.setattr(bffhq, "fetch", fetch_drive_page)

    with pytest.raises(HTMLPageError) as caught:
        download_bffhq(sha256="0" * 64, cache_dir=tmp_path)

    message = str(caught.value)
    assert bffhq.ARCHIVE_URL in message
    assert bffhq.DRIVE_PAGE_URL in message
    assert "REPRO_MIRROR=<folder>" in message
    assert "<folder>/bffhq/bffhq.zip" in message
    assert str(tmp_path / "bffhq" / "bffhq.zip") in message
    assert "pass the extracted bffhq/ folder as root" in message


def test_download_error_explains_manual_download(tmp_path, monkeypatch) -> None:
    def fetch_failing(url, relpath, **kwargs):
        raise DownloadError(f"{url} returned HTTP 404 Not Found")

    monkeypatch.setattr(bffhq, "fetch", fetch_failing)

    with pytest.raises(DownloadError, match=r"HTTP 404 Not Found\nTo use BFFHQ without this download"):
        download_bffhq(md5="0" * 32, cache_dir=tmp_path)
