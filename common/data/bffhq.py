"""BFFHQ (biased FFHQ): face photos with target age (0 young, 1 old) and bias attribute gender (0 female, 1 male).

BFFHQ comes from BiaSwap (Kim et al., ICCV 2021) and was shared by DisEnt
(Lee et al., NeurIPS 2021, github.com/kakaoenterprise/Learning-Debiased-Disentangled)
through a Google Drive folder. The released code of How I Met Your Bias
(github.com/How-I-met-your-bias/how_i_met_your_bias, himyb/datasets/bffhq.py)
downloads the zip archive with Drive file id DRIVE_FILE_ID, and this module
uses the same file. The images are 128 px and are resized to `image_size`
(64 by default) when loaded.

Layout of the archive, with the labels encoded in every file name as
``<index>_<age>_<gender>.png``::

    bffhq/
        0.5pct/align/<age>/*.png      training images with age == gender
        0.5pct/conflict/<age>/*.png   training images with age != gender
        valid/*.png
        test/*.png

Bias-aligned images are those with age == gender (young women, old men).
DebiAN's loader reads the training images from ``train/`` instead of
``0.5pct/``, and both names are accepted.

NOTE: the gender coding (0 female, 1 male) is taken from comments in public
BFFHQ loaders. It was not checked against the images here.

Checksum: no published checksum of the archive was found, so download_bffhq
requires ``md5=`` or ``sha256=`` from the caller and raises ValueError without
one. Compute it once on a copy you trust (``sha256sum bffhq.zip``) and keep it
in your config. An extracted folder passed as ``root`` needs no checksum.

Google Drive: ARCHIVE_URL includes ``confirm=t`` so that Drive skips its
download confirmation page, and common.download.fetch follows the page's form
when Drive returns it anyway. Any other HTML page raises HTMLPageError, whose
message explains how to download the archive by hand and use it through
``REPRO_MIRROR`` or ``root``.
"""

from __future__ import annotations

import dataclasses
import logging
import numbers
import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from tqdm import tqdm

from common.download import MIRROR_ENV, ChecksumError, DownloadError, data_root, extract_archive, fetch

logger = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
TRAIN_FOLDERS = ("0.5pct", "train")  # DisEnt's archive uses 0.5pct/ and DebiAN's loader reads train/.
TRAIN_SUBFOLDERS = ("align", "conflict")
TARGET_NAMES = ("young", "old")
BIAS_NAMES = ("female", "male")
SOURCE_IMAGE_SIZE = 128
DEFAULT_IMAGE_SIZE = 64

DRIVE_FILE_ID = "1Y4y4vYz6sRJRqS9jJyD06cUSR618g0Rp"
DRIVE_PAGE_URL = f"https://drive.google.com/file/d/{DRIVE_FILE_ID}/view"
# NOTE: this direct-download form (confirm=t) was not tried from this repository, because tests run offline.
ARCHIVE_URL = f"https://drive.usercontent.google.com/download?id={DRIVE_FILE_ID}&export=download&confirm=t"
ARCHIVE_RELPATH = "bffhq/bffhq.zip"  # under the data root, and under each REPRO_MIRROR folder
EXTRACTED_RELPATH = "bffhq/extracted"

# Public BFFHQ loaders parse only the two labels after the index, so any index without "_" or "." is accepted.
_FILE_NAME = re.compile(r"(?P<index>[^_.]+)_(?P<age>[01])_(?P<gender>[01])\.(?:png|jpe?g)", re.IGNORECASE)
_IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})
_SKIPPED_FOLDERS = frozenset({"__MACOSX"})  # resource forks that macOS zip tools add


def check_image_size(image_size: int) -> int:
    """Return image_size as an int, or raise ValueError unless it is a positive integer."""
    if isinstance(image_size, bool) or not isinstance(image_size, numbers.Integral) or image_size < 1:
        raise ValueError(
            f"image_size must be a positive integer number of pixels, got {image_size!r}. How I Met Your Bias uses "
            f"{DEFAULT_IMAGE_SIZE} and the source images are {SOURCE_IMAGE_SIZE} px"
        )
    return int(image_size)


def parse_file_name(path: Path) -> tuple[int, int]:
    """Return (age, gender) from a BFFHQ file name ``<index>_<age>_<gender>.png``, or raise ValueError."""
    match = _FILE_NAME.fullmatch(path.name)
    if match is None:
        raise ValueError(
            f"{path} does not follow the BFFHQ file name pattern <index>_<age>_<gender>.png with age and gender "
            "0 or 1. Check that root is an extracted BFFHQ archive."
        )
    return int(match["age"]), int(match["gender"])


def is_dataset_folder(folder: Path) -> bool:
    """Return whether folder contains valid/, test/ and a training folder (0.5pct/ or train/)."""
    has_training_folder = any((folder / name).is_dir() for name in TRAIN_FOLDERS)
    return has_training_folder and (folder / "valid").is_dir() and (folder / "test").is_dir()


def find_dataset_folder(root: Path) -> Path:
    """Return root if it is a BFFHQ folder, else its only subfolder that is one (such as the archive's bffhq/)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"BFFHQ folder {root} not found. Pass the folder extracted from the BFFHQ archive.")
    if is_dataset_folder(root):
        return root

    candidates = [child for child in sorted(root.iterdir()) if child.is_dir() and is_dataset_folder(child)]
    if len(candidates) == 1:
        return candidates[0]
    training_folders = " or ".join(f"{name}/" for name in TRAIN_FOLDERS)
    raise FileNotFoundError(
        f"{root} is not a BFFHQ folder: expected {training_folders}, valid/ and test/ in it or in exactly one of its "
        f"subfolders, found {len(candidates)} such subfolders. Pass the bffhq/ folder extracted from the archive."
    )


def list_split_files(root: Path, split: str) -> list[Path]:
    """Return the sorted image paths of one split ("train", "valid" or "test") of the BFFHQ folder root."""
    check_split(split)
    if split == "train":
        training_folder = next(root / name for name in TRAIN_FOLDERS if (root / name).is_dir())
        folders = [training_folder / name for name in TRAIN_SUBFOLDERS]
    else:
        folders = [root / split]

    paths = []
    for folder in folders:
        if not folder.is_dir():
            raise FileNotFoundError(f"BFFHQ folder {folder} not found. Extract the BFFHQ archive again.")
        paths.extend(_image_files(folder))
    if not paths:
        raise FileNotFoundError(f"No images found for the BFFHQ {split} split in {', '.join(map(str, folders))}")
    return sorted(paths)


def _image_files(folder: Path) -> list[Path]:
    """Return the image files below folder, leaving out hidden files and macOS resource folders."""
    files = []
    for path in folder.rglob("*"):
        relative_parts = path.relative_to(folder).parts
        if any(part.startswith(".") or part in _SKIPPED_FOLDERS for part in relative_parts):
            continue
        if path.is_file() and path.suffix.lower() in _IMAGE_SUFFIXES:
            files.append(path)
    return files


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"Unknown BFFHQ split {split!r}. Valid splits are {', '.join(map(repr, SPLITS))}")
    return split


def load_images(paths: list[Path], image_size: int) -> torch.Tensor:
    """Decode images as RGB and resize them to image_size px: (N, 3, image_size, image_size) uint8.

    Resizing uses PIL's box filter, which averages each 2 x 2 block when
    going from 128 to 64 px.
    """
    images = torch.empty((len(paths), 3, image_size, image_size), dtype=torch.uint8)
    for row, path in enumerate(tqdm(paths, desc="Loading BFFHQ images", unit="image", disable=None)):
        try:
            with Image.open(path) as image:
                rgb = image.convert("RGB")
        except OSError as error:
            raise OSError(f"Could not read BFFHQ image {path}: {error}. Extract the archive again.") from error
        if rgb.size != (image_size, image_size):
            rgb = rgb.resize((image_size, image_size), Image.Resampling.BOX)
        images[row] = torch.from_numpy(np.array(rgb)).permute(2, 0, 1)
    return images


def _warn_about_misplaced_training_files(root: Path, paths: list[Path], targets: torch.Tensor, bias: torch.Tensor) -> None:
    """Log a warning when files under align/ have age != gender or files under conflict/ have age == gender."""
    aligned = targets == bias
    # Relative parts are (training folder, "align" or "conflict", ...).
    in_align_folder = torch.tensor([path.relative_to(root).parts[1] == "align" for path in paths])
    misplaced = int((in_align_folder != aligned).sum())
    if misplaced:
        logger.warning(
            "%d BFFHQ training files lie in align/ with age != gender or in conflict/ with age == gender. "
            "Their labels are taken from their file names.",
            misplaced,
        )


class BFFHQ(Dataset):
    """One BFFHQ split in memory, returned as (image in [-1, 1] (3, S, S) float, age target, gender bias label).

    `root` is the extracted bffhq/ folder or a folder whose only BFFHQ
    subfolder is it. `targets` contains the ages (TARGET_NAMES) and `bias`
    the genders (BIAS_NAMES), both int64. `paths` lists the source files in the
    order of the items. Every image of the split is kept, although DisEnt's
    loader evaluates on the bias-conflicting test images only, which are
    those with ``aligned`` False.
    """

    target_names = TARGET_NAMES
    bias_names = BIAS_NAMES

    def __init__(self, root: Path | str, split: str, image_size: int = DEFAULT_IMAGE_SIZE):
        self.split = check_split(split)
        self.image_size = check_image_size(image_size)
        self.root = find_dataset_folder(Path(root))
        self.paths = list_split_files(self.root, split)

        labels = torch.tensor([parse_file_name(path) for path in self.paths], dtype=torch.long)
        self.targets = labels[:, 0].contiguous()
        self.bias = labels[:, 1].contiguous()
        if split == "train":
            _warn_about_misplaced_training_files(self.root, self.paths, self.targets, self.bias)

        logger.info("Loading %d BFFHQ %s images from %s at %d px", len(self.paths), split, self.root, self.image_size)
        self.images = load_images(self.paths, self.image_size)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        image = self.images[index].float().div_(127.5).sub_(1.0)
        return image, self.targets[index], self.bias[index]

    def __getitems__(self, indices: list[int]):
        """Return a whole batch with one indexing operation (DataLoader calls this when defined)."""
        index = torch.as_tensor(indices, dtype=torch.long)
        images = self.images[index].float().div_(127.5).sub_(1.0)
        return images, self.targets[index], self.bias[index]

    @property
    def aligned(self) -> torch.Tensor:
        """Boolean mask of bias-aligned images (age == gender: young women and old men)."""
        return self.bias == self.targets

    def aligned_fraction(self) -> float:
        return self.aligned.float().mean().item()


def _manual_download_help(cache_dir: Path | None) -> str:
    destination = (data_root() if cache_dir is None else Path(cache_dir)) / ARCHIVE_RELPATH
    return (
        f"To use BFFHQ without this download, open {DRIVE_PAGE_URL} in a browser and download the archive. Then "
        f"either save it as {destination}, or put it at <folder>/{ARCHIVE_RELPATH} and set {MIRROR_ENV}=<folder>, "
        "or extract it yourself and pass the extracted bffhq/ folder as root."
    )


def download_bffhq(*, md5: str | None = None, sha256: str | None = None, cache_dir: Path | None = None) -> Path:
    """Download and extract the BFFHQ archive, and return the extracted bffhq/ folder.

    The archive is stored at ``<cache_dir>/bffhq/bffhq.zip`` (cache_dir
    defaults to ``$REPRO_DATA``) and extracted to ``<cache_dir>/bffhq/extracted/``.
    Folders in ``$REPRO_MIRROR`` are tried first, as ``<mirror>/bffhq/bffhq.zip``.
    ``md5`` or ``sha256`` is required because no checksum of the archive is published.

    Raises:
        ValueError: neither md5 nor sha256 is given.
        DownloadError: the archive could not be fetched. HTMLPageError, a
            subclass, means Google Drive returned a page instead of the file.
            The message explains how to download the archive by hand.
    """
    if md5 is None and sha256 is None:
        raise ValueError(
            "download_bffhq needs md5= or sha256= because no checksum of the BFFHQ archive is published. Compute one "
            f"on a copy of the archive you trust (sha256sum bffhq.zip) and pass it, or pass root= an extracted BFFHQ "
            f"folder. {_manual_download_help(cache_dir)}"
        )

    try:
        archive = fetch(ARCHIVE_URL, ARCHIVE_RELPATH, md5=md5, sha256=sha256, root=cache_dir)
    except ChecksumError:
        raise
    except DownloadError as error:
        raise type(error)(f"{error}\n{_manual_download_help(cache_dir)}") from error

    extracted = extract_archive(archive, (data_root() if cache_dir is None else Path(cache_dir)) / EXTRACTED_RELPATH)
    return find_dataset_folder(extracted)


@dataclasses.dataclass
class BFFHQSplits:
    train: BFFHQ
    val: BFFHQ  # the archive's valid/ split
    test: BFFHQ


def build_bffhq_splits(
    root: Path | str | None = None,
    *,
    image_size: int = DEFAULT_IMAGE_SIZE,
    md5: str | None = None,
    sha256: str | None = None,
    cache_dir: Path | None = None,
) -> BFFHQSplits:
    """Load the train, valid and test splits of BFFHQ from root, or download them when root is None.

    With root None, download_bffhq fetches the archive and requires md5 or sha256.
    """
    check_image_size(image_size)
    folder = download_bffhq(md5=md5, sha256=sha256, cache_dir=cache_dir) if root is None else find_dataset_folder(Path(root))
    return BFFHQSplits(
        train=BFFHQ(folder, "train", image_size),
        val=BFFHQ(folder, "valid", image_size),
        test=BFFHQ(folder, "test", image_size),
    )
