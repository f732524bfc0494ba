"""The few-shot benchmarks of SAMOVAR (Iakovleva, Verbeek and Alahari, ICML 2020): miniImageNet, CIFAR-FS and FC100.

learn2learn 0.2.0 provides the files and dataset classes, but its downloads
verify nothing: a Google Drive or Dropbox HTML page is saved as the data and
trusted on every later run, where it fails as an unpickling error. Here every
file comes through common.download.fetch (SHA-256, ``$REPRO_MIRROR`` folders,
resume, HTML detection), archives are unpacked with extract_archive, and no
downloaded pickle reaches ``pickle.load``: load_array_pickle accepts only the
numpy globals that rebuild arrays.

Sources, as listed by learn2learn 0.2.0 (learn2learn/vision/datasets/mini_imagenet.py,
cifarfs.py and fc100.py), tried in the order Zenodo, Dropbox, Google Drive:

- miniImageNet: ``mini-imagenet-cache-{train,validation,test}.pkl``, each a
  pickled dict with ``image_data`` (N, 84, 84, 3) uint8 and ``class_dict``
  (ImageNet wnid -> image indices). 64/16/20 classes of 600 images.
- CIFAR-FS: ``cifar100.zip`` with ``cifar100/data/<class>/*.png`` and the
  Bertinetto et al. split files ``cifar100/splits/bertinetto/{train,val,test}.txt``.
  learn2learn's CIFARFS copies each split's class folders into
  ``cifarfs/processed/{train,val,test}`` and reads them with ImageFolder.
  64/16/20 classes of 600 images, 32 px.
- FC100: ``fc100.zip`` with ``FC100_{train,val,test}.pickle``, each a pickled
  dict with ``data`` (N, 32, 32, 3) uint8 and ``labels`` (CIFAR-100 fine
  labels). 60/20/20 classes from disjoint superclasses, 600 images each.

No published checksum of these files was found, so downloads need ``sha256``
from the caller (compute it once with ``sha256sum`` on a copy you trust), or
``root=`` a local copy, which is used without a checksum. Downloaded files in
the cache are verified on every call and never deleted or overwritten. An
extracted folder is trusted once extract_archive has renamed it into place.

Every split returns (normalised float image (3, S, S), label) with labels
0..C-1. It has the attributes ``labels`` (a list of ints), ``per_class`` (the
smallest class size) and ``classes`` (the source's class names or ids), which
shared_amortized_vi.data.TaskSampler uses to draw tasks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import os
import pickle
import shutil
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision import transforms

from common.download import MIRROR_ENV, DownloadError, HTMLPageError, data_root, extract_archive, fetch
from shared_amortized_vi.data import import_learn2learn

logger = logging.getLogger(__name__)

learn2learn = import_learn2learn()

SPLITS = ("train", "validation", "test")  # learn2learn's mode names


@dataclasses.dataclass(frozen=True)
class PaperDataset:
    """Size and normalisation of one benchmark. `classes` maps each split to its number of classes."""

    image_size: int
    channels: int
    classes: Mapping[str, int]
    images_per_class: int
    mean: tuple[float, float, float]  # per channel, for images scaled to [0, 1]
    std: tuple[float, float, float]


# Pixel statistics from MetaOptNet's loaders (github.com/kjunelee/MetaOptNet, data/mini_imagenet.py for
# miniImageNet, data/CIFAR_FS.py and data/FC100.py for both CIFAR-100 benchmarks), given there in 0..255 units.
_MINI_IMAGENET_MEAN = tuple(value / 255.0 for value in (120.39586422, 115.59361427, 104.54012653))
_MINI_IMAGENET_STD = tuple(value / 255.0 for value in (70.68188272, 68.27635443, 72.54505529))
_CIFAR100_MEAN = tuple(value / 255.0 for value in (129.37731888, 124.10583864, 112.47758569))
_CIFAR100_STD = tuple(value / 255.0 for value in (68.20947949, 65.43124043, 70.45866994))

PAPER_DATASETS: dict[str, PaperDataset] = {
    "mini-imagenet": PaperDataset(84, 3, {"train": 64, "validation": 16, "test": 20}, 600, _MINI_IMAGENET_MEAN, _MINI_IMAGENET_STD),
    "cifarfs": PaperDataset(32, 3, {"train": 64, "validation": 16, "test": 20}, 600, _CIFAR100_MEAN, _CIFAR100_STD),
    "fc100": PaperDataset(32, 3, {"train": 60, "validation": 20, "test": 20}, 600, _CIFAR100_MEAN, _CIFAR100_STD),
}

MINI_IMAGENET_FILES = {split: f"mini-imagenet-cache-{split}.pkl" for split in SPLITS}
MINI_IMAGENET_VALIDATION_ALIAS = "mini-imagenet-cache-val.pkl"  # the name some other copies use
CIFARFS_ARCHIVE = "cifarfs/cifar100.zip"  # relative to the cache folder and to each $REPRO_MIRROR folder
FC100_ARCHIVE = "fc100/fc100.zip"
FC100_FILES = {"train": "FC100_train.pickle", "validation": "FC100_val.pickle", "test": "FC100_test.pickle"}

_ZENODO = "https://zenodo.org/record/7978538/files"


def _drive_url(file_id: str) -> str:
    # NOTE: this direct-download form (confirm=t) was not tried from this repository, because tests run offline.
    return f"https://drive.usercontent.google.com/download?id={file_id}&export=download&confirm=t"


# Sources per file, relative path -> URLs in the order they are tried. The Dropbox and Drive copies may differ
# byte for byte from Zenodo's, and then only the one that matches the caller's SHA-256 is accepted.
DOWNLOAD_URLS: dict[str, tuple[str, ...]] = {
    "mini-imagenet/mini-imagenet-cache-train.pkl": (
        f"{_ZENODO}/mini-imagenet-cache-train.pkl",
        "https://www.dropbox.com/s/9g8c6w345s2ek03/mini-imagenet-cache-train.pkl?dl=1",
        _drive_url("1I3itTXpXxGV68olxM5roceUMG8itH9Xj"),
    ),
    "mini-imagenet/mini-imagenet-cache-validation.pkl": (
        f"{_ZENODO}/mini-imagenet-cache-validation.pkl",
        "https://www.dropbox.com/s/ip1b7se3gij3r1b/mini-imagenet-cache-validation.pkl?dl=1",
        _drive_url("1KY5e491bkLFqJDp0-UWou3463Mo8AOco"),
    ),
    "mini-imagenet/mini-imagenet-cache-test.pkl": (
        f"{_ZENODO}/mini-imagenet-cache-test.pkl",
        "https://www.dropbox.com/s/ye9jeb5tyz0x01b/mini-imagenet-cache-test.pkl?dl=1",
        _drive_url("1wpmY-hmiJUUlRBkO9ZDCXAcIpHEFdOhD"),
    ),
    CIFARFS_ARCHIVE: (f"{_ZENODO}/cifar100.zip", _drive_url("1pTsCCMDj45kzFYgrnO67BWVbKs48Q3NI")),
    FC100_ARCHIVE: (
        f"{_ZENODO}/fc100.zip",
        "https://www.dropbox.com/s/ftsjuwsu6lfp0fz/FC100.zip?dl=1",
        _drive_url("1_ZsLyqI487NRDQhwvI7rg86FK3YAZvz1"),
    ),
}


def paper_dataset(name: str) -> PaperDataset:
    """Return the PaperDataset entry for `name`, or raise ValueError listing the valid names."""
    if name not in PAPER_DATASETS:
        raise ValueError(f"Unknown dataset {name!r}. Valid names are {', '.join(map(repr, PAPER_DATASETS))}")
    return PAPER_DATASETS[name]


# ---------------------------------------------------------------------------------------------------------------------
# Restricted unpickling


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle references a global outside the allowed numpy array constructors."""


def _encode_latin1(text: str, encoding: str = "latin1") -> bytes:
    """Stand-in for ``_codecs.encode``, which protocol 0-2 pickles from Python 3 use to store bytes."""
    if encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError(f"_codecs.encode with encoding {encoding!r} is not allowed, only latin1")
    return text.encode("latin1")


def _allowed_globals() -> dict[tuple[str, str], Any]:
    """Return the globals that array pickles need, under both numpy 1 (numpy.core) and numpy 2 (numpy._core) names."""
    multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
    numeric = np._core.numeric if hasattr(np, "_core") else np.core.numeric
    allowed = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _encode_latin1,
    }
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{package}.multiarray", "scalar")] = multiarray.scalar  # numpy scalars, e.g. np.int64 image indices
        allowed[(f"{package}.numeric", "_frombuffer")] = numeric._frombuffer  # arrays in protocol 5 pickles
    return allowed


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals from _allowed_globals.

    Dicts, lists, tuples, strings, bytes and numbers are pickle opcodes and
    need no global. Python 2 pickles are read with the latin1 encoding, which
    numpy needs to rebuild their array data.
    """

    def __init__(self, file, path: Path):
        super().__init__(file, encoding="latin1")
        self.path = path
        self.allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self.allowed[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"{self.path} references the global {module}.{name}, which is not allowed: only numpy array "
                "constructors are loaded from dataset pickles, so that a tampered or wrong file cannot run code. "
                "Check where the file came from and replace it with the original."
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"{self.path} contains a persistent id ({pid!r}), which dataset pickles do not use")


def _starts_like_html(path: Path) -> bool:
    with open(path, "rb") as file:
        start = file.read(512).lstrip().lower()
    return start.startswith((b"<!doctype html", b"<html"))


def load_array_pickle(path: Path | str) -> Any:
    """Unpickle a dataset file that may contain only dicts, lists, strings, numbers and numpy arrays.

    Raises:
        UnsafePickleError: the file references any other global (os.system, builtins.eval, ...).
            Nothing in the file runs, because the check happens before the global is called.
        HTMLPageError: the file is an HTML page that an earlier download saved in place of the data.
        ValueError: the file is truncated or not a pickle.
    """
    path = Path(path)
    if _starts_like_html(path):
        raise HTMLPageError(
            f"{path} is an HTML page, not a pickle: a download (learn2learn's Google Drive or Dropbox download, for "
            "example) saved a web page in place of the data. Move the file away and download it again, or replace "
            "it with a copy of the original file."
        )
    with open(path, "rb") as file:
        try:
            return _ArrayUnpickler(file, path).load()
        except UnsafePickleError:
            raise
        except (pickle.UnpicklingError, EOFError, AttributeError, IndexError, KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{path} is not a readable dataset pickle ({type(error).__name__}: {error}). "
                             "It may be truncated or a different file, so replace it with the original.") from error


# ---------------------------------------------------------------------------------------------------------------------
# Dataset classes


def _normalizing_transform(spec: PaperDataset) -> transforms.Compose:
    """PIL image -> float tensor in [0, 1] (ToTensor) -> per-channel (x - mean) / std."""
    return transforms.Compose([transforms.ToTensor(), transforms.Normalize(spec.mean, spec.std)])


def _smallest_class_size(labels: Sequence[int]) -> int:
    return min(Counter(labels).values()) if labels else 0


def _check_image_array(images: Any, spec: PaperDataset, path: Path, key: str) -> np.ndarray:
    expected = (spec.image_size, spec.image_size, spec.channels)
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != expected:
        found = f"{type(images).__name__} {getattr(images, 'dtype', '')} {getattr(images, 'shape', '')}".strip()
        raise ValueError(f"{path}: {key!r} must be a uint8 array of shape (N, {', '.join(map(str, expected))}), "
                         f"found {found}. Check that the file belongs to this dataset.")
    return np.require(images, requirements=["C", "W"])  # torch.from_numpy needs a writable array


def _mini_imagenet_labels(class_dict: Any, count: int, path: Path) -> tuple[list[int], list[str]]:
    """Return a label per image from ``class_dict`` (class name -> image indices), classes numbered in dict order."""
    if not isinstance(class_dict, Mapping) or not class_dict:
        raise ValueError(f"{path}: 'class_dict' must be a non-empty dict of class name -> image indices, "
                         f"found {type(class_dict).__name__}")
    labels = np.full(count, -1, dtype=np.int64)
    for label, (class_name, indices) in enumerate(class_dict.items()):
        indices = np.asarray(indices)
        if indices.ndim != 1 or not np.issubdtype(indices.dtype, np.integer):
            raise ValueError(f"{path}: class_dict[{class_name!r}] must be a list of image indices, found {indices.dtype} "
                             f"of shape {indices.shape}")
        if indices.size and (indices.min() < 0 or indices.max() >= count):
            raise ValueError(f"{path}: class_dict[{class_name!r}] lists image indices outside 0..{count - 1}")
        if (labels[indices] != -1).any() or len(np.unique(indices)) != len(indices):
            raise ValueError(f"{path}: class_dict[{class_name!r}] lists an image that is already in a class")
        labels[indices] = label
    unassigned = int((labels == -1).sum())
    if unassigned:
        raise ValueError(f"{path}: {unassigned} of {count} images are in no class of 'class_dict'")
    return labels.tolist(), [str(name) for name in class_dict]


class MiniImageNetSplit(torch.utils.data.Dataset):
    """One miniImageNet split from a ``mini-imagenet-cache-<split>.pkl`` file, read with load_array_pickle.

    Images stay in memory as uint8 (N, 84, 84, 3), a quarter of the memory of
    learn2learn's float copy. Each item is (float (3, 84, 84) image scaled to
    [0, 1] and normalised with PAPER_DATASETS["mini-imagenet"].mean and .std, label).
    Labels number the classes in the order of the file's class_dict, as learn2learn does.
    """

    def __init__(self, path: Path | str, split: str):
        self.path, self.split = Path(path), split
        self.spec = PAPER_DATASETS["mini-imagenet"]
        content = load_array_pickle(self.path)
        if not isinstance(content, Mapping) or not {"image_data", "class_dict"} <= set(content):
            found = sorted(map(str, content)) if isinstance(content, Mapping) else type(content).__name__
            raise ValueError(f"{self.path} must contain a dict with 'image_data' and 'class_dict', found {found}")
        images = _check_image_array(content["image_data"], self.spec, self.path, "image_data")
        self.labels, self.classes = _mini_imagenet_labels(content["class_dict"], len(images), self.path)
        self.images = torch.from_numpy(images)
        self.per_class = _smallest_class_size(self.labels)
        self.mean = torch.tensor(self.spec.mean).view(-1, 1, 1)
        self.std = torch.tensor(self.spec.std).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.images[index].permute(2, 0, 1).float().div_(255.0)
        return image.sub_(self.mean).div_(self.std), self.labels[index]


def _read_split_file(path: Path) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(f"CIFAR-FS split file {path} not found. Extract cifar100.zip again.")
    names = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            raise ValueError(f"{path} line {number} is empty. learn2learn's CIFARFS would read it as a class name, "
                             "so remove the empty line.")
        names.append(line.strip())
    return names


def check_cifarfs_layout(root: Path) -> None:
    """Raise unless ``root/cifarfs/cifar100`` contains data/<class>/ and the Bertinetto split files, as learn2learn expects."""
    raw = Path(root) / "cifarfs" / "cifar100"
    if not (raw / "data").is_dir():
        raise FileNotFoundError(
            f"CIFAR-FS folder {raw / 'data'} not found. root must be the folder that learn2learn's CIFARFS uses, with "
            "cifar100.zip extracted into root/cifarfs (root/cifarfs/cifar100/data/<class>/*.png and "
            "root/cifarfs/cifar100/splits/bertinetto/{train,val,test}.txt)."
        )
    seen: dict[str, str] = {}
    for split in ("train", "val", "test"):
        split_file = raw / "splits" / "bertinetto" / f"{split}.txt"
        for name in _read_split_file(split_file):
            if name in seen:
                raise ValueError(f"CIFAR-FS class {name!r} is listed in both {seen[name]}.txt and {split}.txt "
                                 f"under {split_file.parent}. Few-shot splits must not share classes.")
            if not (raw / "data" / name).is_dir():
                raise FileNotFoundError(f"{split_file} lists class {name!r}, but {raw / 'data' / name} is missing. "
                                        "Extract cifar100.zip again.")
            seen[name] = split


class CIFARFSSplit(learn2learn.vision.datasets.CIFARFS):
    """One CIFAR-FS split read by learn2learn's CIFARFS (an ImageFolder over its processed class folders).

    `root` is learn2learn's folder, which contains cifarfs/cifar100/ (the extracted
    cifar100.zip), and learn2learn writes cifarfs/processed/ next to it the
    first time. Items are (float (3, 32, 32) image normalised with
    PAPER_DATASETS["cifarfs"].mean and .std, label), labels numbering the
    class folders in sorted order.
    """

    def __init__(self, root: Path | str, split: str):
        if split not in SPLITS:
            raise ValueError(f"Unknown split {split!r}. Valid splits are {', '.join(map(repr, SPLITS))}")
        check_cifarfs_layout(Path(root))
        self.spec = PAPER_DATASETS["cifarfs"]
        super().__init__(str(root), mode=split, transform=_normalizing_transform(self.spec), download=False)
        # Without a bookkeeping path, learn2learn's MetaDataset indexes the labels itself instead of
        # reading (with pickle.load) or writing a cache file that would go stale when the data changes.
        del self._bookkeeping_path
        self.split = split
        self.labels = list(self.targets)
        self.per_class = _smallest_class_size(self.labels)
        if not self.samples:
            raise FileNotFoundError(f"No images found in {self.root}")
        with Image.open(self.samples[0][0]) as first:
            if first.size != (self.spec.image_size, self.spec.image_size):
                raise ValueError(f"{self.samples[0][0]} is {first.size[0]}x{first.size[1]} px, expected "
                                 f"{self.spec.image_size} px CIFAR-FS images. Check root={root}.")

    def _download(self) -> None:
        raise DownloadError("CIFARFSSplit does not download. Use build_paper_splits('cifarfs', sha256=...), "
                            "which verifies the archive")

    def _process_zip(self) -> None:
        """Run learn2learn's split copy into a staging folder that is renamed only when every split is complete.

        learn2learn skips the copy whenever cifarfs/processed exists, so an
        interrupted copy in place would be trusted on the next run.
        """
        final = self.processed_root
        staging = f"{final}.{uuid.uuid4().hex}.partial"
        self.processed_root = staging
        logger.info("Copying the CIFAR-FS split folders to %s (once)", final)
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                super()._process_zip()
            os.rename(staging, final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        finally:
            self.processed_root = final


class FC100Split(learn2learn.vision.datasets.FC100):
    """One FC100 split from learn2learn's ``FC100_{train,val,test}.pickle`` in `folder`, read with load_array_pickle.

    learn2learn's FC100.__init__ is not called, because it opens the file with
    pickle. Items come from learn2learn's __getitem__: (float (3, 32, 32)
    image normalised with PAPER_DATASETS["fc100"].mean and .std, label).
    The file stores CIFAR-100 fine labels, which are renumbered 0..C-1 in
    ascending order, and `classes` keeps the CIFAR-100 label of each class.
    """

    def __init__(self, folder: Path | str, split: str):
        torch.utils.data.Dataset.__init__(self)
        if split not in SPLITS:
            raise ValueError(f"Unknown split {split!r}. Valid splits are {', '.join(map(repr, SPLITS))}")
        self.root, self.mode, self.split = str(folder), split, split
        self.spec = PAPER_DATASETS["fc100"]
        self.transform, self.target_transform = _normalizing_transform(self.spec), None
        self.path = Path(folder) / FC100_FILES[split]
        if not self.path.is_file():
            raise FileNotFoundError(f"FC100 file {self.path} not found. Pass root= the folder that contains "
                                    f"{', '.join(FC100_FILES.values())}")

        content = load_array_pickle(self.path)
        if not isinstance(content, Mapping) or not {"data", "labels"} <= set(content):
            found = sorted(map(str, content)) if isinstance(content, Mapping) else type(content).__name__
            raise ValueError(f"{self.path} must contain a dict with 'data' and 'labels', found {found}")
        self.images = _check_image_array(content["data"], self.spec, self.path, "data")
        cifar_labels = np.asarray(content["labels"])
        if cifar_labels.shape != (len(self.images),) or not np.issubdtype(cifar_labels.dtype, np.integer):
            raise ValueError(f"{self.path}: 'labels' must hold one integer per image ({len(self.images)}), "
                             f"found {cifar_labels.dtype} of shape {cifar_labels.shape}")
        self.classes = sorted(int(label) for label in set(cifar_labels.tolist()))
        renumber = {cifar_label: label for label, cifar_label in enumerate(self.classes)}
        self.labels = [renumber[int(label)] for label in cifar_labels.tolist()]
        self.per_class = _smallest_class_size(self.labels)

    def download(self) -> None:
        raise DownloadError("FC100Split does not download. Use build_paper_splits('fc100', sha256=...), "
                            "which verifies the archive")


# ---------------------------------------------------------------------------------------------------------------------
# Downloads


def _manual_download_help(relpath: str, cache: Path) -> str:
    return (f"To get the file without this download, save a copy as {cache / relpath}, or put it at "
            f"<folder>/{relpath} and set {MIRROR_ENV}=<folder>. The copy must match the SHA-256 you pass.")


def _fetch_from_sources(relpath: str, sha256: str, cache: Path, mirrors: list[str] | None) -> Path:
    """Fetch `relpath` from the $REPRO_MIRROR folders, then from each URL in DOWNLOAD_URLS[relpath] until one verifies."""
    urls = DOWNLOAD_URLS[relpath]
    if (cache / relpath).exists():
        # fetch verifies the existing file without network access and raises ChecksumError (keeping it) on mismatch.
        return fetch(urls[0], relpath, sha256=sha256, root=cache, mirrors=[])

    failures: list[tuple[str, DownloadError]] = []
    for position, url in enumerate(urls):
        try:
            # The mirrors are tried with the first URL only, because they do not depend on the URL.
            return fetch(url, relpath, sha256=sha256, root=cache, mirrors=mirrors if position == 0 else [])
        except DownloadError as error:
            logger.warning("Source %d/%d for %s failed: %s", position + 1, len(urls), relpath, error)
            failures.append((url, error))

    error_types = {type(error) for _, error in failures}
    error_type = error_types.pop() if len(error_types) == 1 else DownloadError
    details = "\n".join(f"  {url}: {error}" for url, error in failures)
    raise error_type(f"Could not download {relpath} from any source:\n{details}\n{_manual_download_help(relpath, cache)}")


def _check_sha256_argument(name: str, sha256: str | Mapping[str, str] | None, cache: Path) -> None:
    needs = ("a mapping {'train': ..., 'validation': ..., 'test': ...} with the SHA-256 of each "
             "mini-imagenet-cache-<split>.pkl") if name == "mini-imagenet" else "the SHA-256 of the archive"
    if sha256 is None:
        raise ValueError(
            f"Downloading {name} needs sha256= ({needs}) because its sources publish no checksum. Compute it with "
            f"sha256sum on a copy you trust and keep it in your config, or pass root= a local copy, which is used "
            f"without a checksum. Files are cached under {cache} and may come from {MIRROR_ENV} folders."
        )
    if name == "mini-imagenet":
        if not isinstance(sha256, Mapping) or set(sha256) != set(SPLITS):
            found = sorted(sha256) if isinstance(sha256, Mapping) else type(sha256).__name__
            raise ValueError(f"sha256 for mini-imagenet must be {needs}, got {found}")
    elif not isinstance(sha256, str):
        raise ValueError(f"sha256 for {name} must be a string with {needs}, got {type(sha256).__name__}")


def _find_fc100_folder(folder: Path) -> Path:
    """Return folder, or its only subfolder, if it contains the three FC100 pickles."""
    candidates = [folder] + sorted(child for child in folder.iterdir() if child.is_dir())
    found = [candidate for candidate in candidates if all((candidate / file).is_file() for file in FC100_FILES.values())]
    if len(found) != 1:
        raise FileNotFoundError(f"Expected {', '.join(FC100_FILES.values())} in {folder} or in one of its subfolders, "
                                f"found them in {len(found)} places. Pass root= the folder that contains them.")
    return found[0]


def prepare_paper_dataset(name: str, sha256: str | Mapping[str, str] | None, *, cache_dir: Path | None = None,
                          mirrors: list[str] | None = None) -> Path:
    """Download and verify the files of benchmark `name` (and extract its archive), and return its local root.

    The returned folder can be passed as ``root`` to build_paper_splits. Files
    go under ``<cache_dir>/<name>/`` (cache_dir defaults to ``$REPRO_DATA``), and
    mirrors default to ``$REPRO_MIRROR``, laid out like the cache folder.
    `sha256` is one hex digest for cifarfs and fc100, and a mapping from split
    to digest for mini-imagenet's three files.

    Raises:
        ValueError: `name` is unknown, or `sha256` is missing or has the wrong form.
        ChecksumError: a cached file does not match (it is kept), or every source delivered other bytes.
        HTMLPageError: every source returned an HTML page, and that file is not saved in the cache.
        DownloadError: the file could not be downloaded for another reason.
    """
    paper_dataset(name)
    cache = data_root() if cache_dir is None else Path(cache_dir)
    _check_sha256_argument(name, sha256, cache)

    if name == "mini-imagenet":
        for split, file_name in MINI_IMAGENET_FILES.items():
            _fetch_from_sources(f"mini-imagenet/{file_name}", sha256[split], cache, mirrors)
        return cache / "mini-imagenet"
    if name == "cifarfs":
        archive = _fetch_from_sources(CIFARFS_ARCHIVE, sha256, cache, mirrors)
        extract_archive(archive, cache / "cifarfs" / "cifarfs")  # learn2learn's CIFARFS reads <root>/cifarfs/cifar100
        return cache / "cifarfs"
    archive = _fetch_from_sources(FC100_ARCHIVE, sha256, cache, mirrors)
    return _find_fc100_folder(extract_archive(archive, cache / "fc100" / "extracted"))


# ---------------------------------------------------------------------------------------------------------------------
# Splits


def _mini_imagenet_file(root: Path, split: str) -> Path:
    path = root / MINI_IMAGENET_FILES[split]
    if not path.is_file() and split == "validation" and (root / MINI_IMAGENET_VALIDATION_ALIAS).is_file():
        return root / MINI_IMAGENET_VALIDATION_ALIAS
    if not path.is_file():
        raise FileNotFoundError(f"miniImageNet file {path} not found. Pass root= the folder that contains "
                                f"{', '.join(MINI_IMAGENET_FILES.values())}")
    return path


def check_benchmark_splits(name: str, splits: Mapping[str, Any], location: Path) -> None:
    """Raise ValueError unless the splits have the benchmark's class counts and images per class, and share no class."""
    spec = paper_dataset(name)
    for split, dataset in splits.items():
        counts = Counter(dataset.labels)
        if len(counts) != spec.classes[split]:
            raise ValueError(f"The {split} split of {name} in {location} has {len(counts)} classes, expected "
                             f"{spec.classes[split]}. Check that the files are the standard {name} files, or pass "
                             "strict=False to use them anyway.")
        sizes = sorted(set(counts.values()))
        if sizes != [spec.images_per_class]:
            raise ValueError(f"The {split} split of {name} in {location} has {', '.join(map(str, sizes))} images per "
                             f"class, expected {spec.images_per_class}. Check the files, or pass strict=False.")
    for first, second in [("train", "validation"), ("train", "test"), ("validation", "test")]:
        shared = set(splits[first].classes) & set(splits[second].classes)
        if shared:
            raise ValueError(f"The {first} and {second} splits of {name} in {location} share the classes "
                             f"{sorted(shared)[:5]} ({len(shared)} in all), but few-shot splits must be disjoint")


def build_paper_splits(name: str, root: Path | str | None = None, sha256: str | Mapping[str, str] | None = None, *,
                       cache_dir: Path | None = None, mirrors: list[str] | None = None,
                       strict: bool = True) -> dict[str, torch.utils.data.Dataset]:
    """Load the train, validation and test splits of benchmark `name` ("mini-imagenet", "cifarfs" or "fc100").

    With `root`, the local copy there is used as is, without checksum or
    network: for mini-imagenet the folder with ``mini-imagenet-cache-<split>.pkl``
    (``-val.pkl`` is accepted for validation), for cifarfs learn2learn's folder
    holding ``cifarfs/cifar100/``, for fc100 the folder with ``FC100_<split>.pickle``.
    Without `root`, prepare_paper_dataset downloads the files and `sha256` is required.

    With `strict` (the default), the class counts of PAPER_DATASETS, 600
    images per class and disjoint splits are checked. Pass strict=False for
    subsets or other versions of the files.
    """
    paper_dataset(name)
    if root is None:
        root = prepare_paper_dataset(name, sha256, cache_dir=cache_dir, mirrors=mirrors)
    else:
        root = Path(root).expanduser()
        if sha256 is not None:
            logger.warning("sha256 is ignored because root=%s is given: a local copy is used without a checksum", root)
        if not root.is_dir():
            raise FileNotFoundError(f"Dataset folder {root} not found. Pass root= an existing local copy of {name}, "
                                    "or root=None with sha256= to download it.")

    if name == "mini-imagenet":
        splits = {split: MiniImageNetSplit(_mini_imagenet_file(root, split), split) for split in SPLITS}
    elif name == "cifarfs":
        splits = {split: CIFARFSSplit(root, split) for split in SPLITS}
    else:
        folder = _find_fc100_folder(root)
        splits = {split: FC100Split(folder, split) for split in SPLITS}

    if strict:
        check_benchmark_splits(name, splits, root)
    for split, dataset in splits.items():
        logger.info("%s %s: %d images in %d classes", name, split, len(dataset), len(set(dataset.labels)))
    return splits


__all__ = [
    "CIFARFSSplit",
    "DOWNLOAD_URLS",
    "FC100Split",
    "MiniImageNetSplit",
    "PAPER_DATASETS",
    "PaperDataset",
    "SPLITS",
    "UnsafePickleError",
    "build_paper_splits",
    "check_benchmark_splits",
    "check_cifarfs_layout",
    "load_array_pickle",
    "paper_dataset",
    "prepare_paper_dataset",
]
