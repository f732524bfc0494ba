"""Paper-scale data: the Visual Decathlon and ImageNet-to-Sketch benchmarks.

Visual Decathlon (Rebuffi et al., NeurIPS 2017; www.robots.ox.ac.uk/~vgg/decathlon/)
has ten domains whose images were resized so that the shorter side is 72 px.
A Decathlon root is laid out as the challenge devkit and data archives unpack::

    <root>/annotations/<domain>_train.json, <domain>_val.json
    <root>/annotations/<domain>_test_stripped.json    test images without labels
    <root>/data/<domain>/{train,val,test}/*.jpg

The annotation files are COCO style: ``images`` (``id``, ``file_name`` relative
to the root such as ``data/dtd/train/000001.jpg``), ``annotations``
(``image_id``, ``category_id``) and ``categories`` (``id``). Category ids carry a
per-domain offset (DTD uses 40000001 to 40000047), so labels are the positions
of the ids in sorted order, 0 to C - 1. The devkit's test files have no labels.
The test labels were published later as labels_test.zip in
github.com/srebuffi/residual_adapters, with one ``<domain>_test.json`` per domain.

`prepare_decathlon` downloads the devkit and data archives from the URLs that
residual_adapters' download_data.sh and TensorFlow Datasets use, and checks
them against the SHA-256 digests recorded in TensorFlow Datasets
(tensorflow_datasets/datasets/visual_domain_decathlon/checksums.tsv). The
ImageNet-12 images come in a separate archive that must be obtained by hand.

Decathlon transforms and normalisation follow residual_adapters
(imdbfolder_coco.py and decathlon_mean_std.pickle at commit
5c51aa3ff842e8d77f12dc7215750fe6adc0d0f7), see `decathlon_transforms`.

ImageNet-to-Sketch (Mallya et al., Piggyback, ECCV 2018) uses ImageNet and five
fine-grained domains in torchvision ImageFolder layout, as Piggyback's code
(github.com/arunmallya/piggyback, src/dataset.py and src/utils.py) reads them::

    <root>/<domain>/train/<class>/<image>
    <root>/<domain>/test/<class>/<image>     ImageNet: <root>/imagenet/val/<class>/<image>

Piggyback shares these folders only through a Box web page
(PIGGYBACK_DATA_PAGE), which has no direct download URL, so local copies are
required. ImageNet is the ILSVRC 2012 training and validation set with the
validation images sorted into class folders.

Run ``python -m modulation_adapters.data --root DIR --domains aircraft dtd`` to
download and extract Decathlon domains.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

from common.download import MIRROR_ENV, ChecksumError, DownloadError, data_root, extract_archive, fetch, file_checksum

logger = logging.getLogger(__name__)

# Visual Decathlon: domain folder names of the devkit, with their class counts.
DECATHLON_CLASSES = {
    "imagenet12": 1000,
    "aircraft": 100,
    "cifar100": 100,
    "daimlerpedcls": 2,
    "dtd": 47,
    "gtsrb": 43,
    "vgg-flowers": 102,
    "omniglot": 1623,
    "svhn": 10,
    "ucf101": 101,
}
DECATHLON_DOMAINS = tuple(DECATHLON_CLASSES)
DECATHLON_SPLITS = ("train", "val", "test")
# Domains that residual_adapters trains without flips or random crops.
DECATHLON_NO_FLIP = frozenset({"gtsrb", "omniglot", "svhn"})
DECATHLON_RESIZE = 72
DECATHLON_CROP = 64
UNLABELLED = -1  # the label of every image of a test split read without published labels

# Per-domain RGB (mean, std) in [0, 1], from residual_adapters' decathlon_mean_std.pickle rounded to 8 decimals.
DECATHLON_MEAN_STD = {
    "imagenet12": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "aircraft": ((0.47983041, 0.51074066, 0.53437998), (0.21070221, 0.20508901, 0.23729657)),
    "cifar100": ((0.50705882, 0.48666667, 0.44078431), (0.26745098, 0.25647059, 0.27607843)),
    "daimlerpedcls": ((0.48203529, 0.48203529, 0.48203529), (0.23612616, 0.23612616, 0.23612616)),
    "dtd": ((0.52696497, 0.47025164, 0.42396662), (0.25226877, 0.2409176, 0.24994090)),
    "gtsrb": ((0.33921263, 0.3117836, 0.32047045), (0.27560347, 0.26576119, 0.27089863)),
    "vgg-flowers": ((0.43414682, 0.38309883, 0.29714763), (0.28509808, 0.23842338, 0.2639633)),
    "omniglot": ((0.08099839, 0.08099839, 0.08099839), (0.27046935, 0.27046935, 0.27046935)),
    "svhn": ((0.4376821, 0.4437697, 0.47280442), (0.19803012, 0.20101562, 0.19703614)),
    "ucf101": ((0.49953101, 0.49880386, 0.49981996), (0.10898684, 0.10810246, 0.10679939)),
}

VGG_SHARE_URL = "http://www.robots.ox.ac.uk/~vgg/share"
DEVKIT_URL = f"{VGG_SHARE_URL}/decathlon-1.0-devkit.tar.gz"
DATA_URL = f"{VGG_SHARE_URL}/decathlon-1.0-data.tar.gz"
IMAGENET_URL = "http://www.image-net.org/image/decathlon/decathlon-1.0-data-imagenet.tar"
# SHA-256 digests recorded by TensorFlow Datasets for the three archives (23.5 MB, 406 MB and 6.5 GB).
DEVKIT_SHA256 = "f86d9e128678434ff2a3a374f00eb3e2ec2267e15e53ddae5f19ff19378b5ff7"
DATA_SHA256 = "8eca928bda025d855c91a78db45b3b18bc322efd7b1462a041e62c27b3c83c25"
IMAGENET_SHA256 = "93caac18a907266f917136849c1db7bbf88dd595120af1a8eea7177138962e4a"
# labels_test.zip at a fixed residual_adapters commit. The digest was computed from that commit's blob.
TEST_LABELS_COMMIT = "5c51aa3ff842e8d77f12dc7215750fe6adc0d0f7"
TEST_LABELS_URL = f"https://raw.githubusercontent.com/srebuffi/residual_adapters/{TEST_LABELS_COMMIT}/labels_test.zip"
TEST_LABELS_SHA256 = "505e4bb6053195233772662da1712184d381de8ac3677b6c4c582ad55c23b2da"

# Archive locations under the archive folder (by default $REPRO_DATA), and under each $REPRO_MIRROR folder.
DEVKIT_RELPATH = "decathlon/decathlon-1.0-devkit.tar.gz"
DATA_RELPATH = "decathlon/decathlon-1.0-data.tar.gz"
IMAGENET_RELPATH = "decathlon/decathlon-1.0-data-imagenet.tar"
TEST_LABELS_RELPATH = "decathlon/labels_test.zip"
TEST_LABELS_FOLDER = "test_labels"  # under the Decathlon root

# ImageNet-to-Sketch: folder names and class counts of Piggyback's scripts/run_piggyback_training.sh.
SKETCH_CLASSES = {
    "imagenet": 1000,
    "cubs_cropped": 200,
    "stanford_cars_cropped": 196,
    "flowers": 102,
    "wikiart": 195,
    "sketches": 250,
}
SKETCH_DOMAINS = tuple(SKETCH_CLASSES)
SKETCH_SPLITS = ("train", "test")
# Piggyback resizes the already cropped CUBS and Cars images to 224 x 224 instead of cropping them again.
SKETCH_CROPPED = frozenset({"cubs_cropped", "stanford_cars_cropped"})
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PIGGYBACK_DATA_PAGE = "https://uofi.box.com/s/ixncr3d85guosajywhf7yridszzg5zsq"

BENCHMARKS = ("decathlon", "imagenet_to_sketch")


def _check_choice(value: str, choices: Sequence[str], description: str) -> str:
    if value not in choices:
        raise ValueError(f"Unknown {description} {value!r}. Valid values are {', '.join(map(repr, choices))}")
    return value


def check_decathlon_domain(domain: str) -> str:
    """Return domain, or raise ValueError listing the Decathlon domain names."""
    return _check_choice(domain, DECATHLON_DOMAINS, "Decathlon domain")


def check_sketch_domain(domain: str) -> str:
    """Return domain, or raise ValueError listing the ImageNet-to-Sketch domain names."""
    return _check_choice(domain, SKETCH_DOMAINS, "ImageNet-to-Sketch domain")


# Visual Decathlon: transforms and annotation files.


def decathlon_transforms(domain: str, train: bool, *, no_flip_size: int = DECATHLON_RESIZE) -> transforms.Compose:
    """Build the image transform of a Decathlon domain, as residual_adapters' imdbfolder_coco.py does.

    Every domain is resized so that the shorter side is 72 px and normalised
    with its own mean and std (DECATHLON_MEAN_STD). Training then takes a random
    64 px crop and a random horizontal flip, and evaluation a central 64 px crop.
    GTSRB, Omniglot and SVHN get neither flips nor random crops, in training or
    evaluation: residual_adapters takes a central 72 px crop of them, so their
    tensors are 72 x 72. Pass ``no_flip_size=64`` to give them 64 px central
    crops like the other domains.
    """
    check_decathlon_domain(domain)
    if isinstance(no_flip_size, bool) or not isinstance(no_flip_size, int) or not 1 <= no_flip_size <= DECATHLON_RESIZE:
        raise ValueError(
            f"no_flip_size must be an integer number of pixels in [1, {DECATHLON_RESIZE}], got {no_flip_size!r}. "
            f"residual_adapters uses {DECATHLON_RESIZE}"
        )

    if domain in DECATHLON_NO_FLIP:
        steps = [transforms.Resize(DECATHLON_RESIZE), transforms.CenterCrop(no_flip_size)]
    elif train:
        steps = [
            transforms.Resize(DECATHLON_RESIZE),
            transforms.RandomCrop(DECATHLON_CROP),
            transforms.RandomHorizontalFlip(),
        ]
    else:
        steps = [transforms.Resize(DECATHLON_RESIZE), transforms.CenterCrop(DECATHLON_CROP)]
    mean, std = DECATHLON_MEAN_STD[domain]
    return transforms.Compose([*steps, transforms.ToTensor(), transforms.Normalize(mean, std)])


def prepare_command(root: Path, domain: str) -> str:
    """Return the shell command that downloads and extracts one Decathlon domain into root."""
    command = f"python -m modulation_adapters.data --root {root} --domains {domain}"
    if domain == "imagenet12":
        command += " --imagenet-archive PATH/decathlon-1.0-data-imagenet.tar"
    return command


def _existing_root(root: Path | str, domain: str) -> Path:
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(
            f"Decathlon root {root} not found. Download and extract the {domain} domain with: "
            f"{prepare_command(root, domain)}"
        )
    return root


def decathlon_annotation_file(root: Path, domain: str, split: str, test_labels: Path | str | None = None) -> Path:
    """Return the annotation file of one Decathlon split, or raise FileNotFoundError naming the fix.

    train and val read ``<root>/annotations/<domain>_<split>.json``. test reads
    ``test_labels`` when given: a labelled JSON file, or a folder containing
    ``<domain>_test.json`` such as extracted labels_test.zip. Without it, test
    reads the devkit's ``<domain>_test_stripped.json``, or ``<domain>_test.json``
    when the stripped file is absent.
    """
    annotations = Path(root) / "annotations"
    if split != "test":
        if test_labels is not None:
            raise ValueError(f"test_labels applies to split='test' only, got split={split!r}")
        candidates = [annotations / f"{domain}_{split}.json"]
    elif test_labels is not None:
        labels_path = Path(test_labels).expanduser()
        path = labels_path / f"{domain}_test.json" if labels_path.is_dir() else labels_path
        if not path.is_file():
            raise FileNotFoundError(
                f"Decathlon test labels {path} not found. Download and extract residual_adapters' labels_test.zip "
                f"into {Path(root) / TEST_LABELS_FOLDER} with: {prepare_command(Path(root), domain)} --test-labels"
            )
        return path
    else:
        candidates = [annotations / f"{domain}_test_stripped.json", annotations / f"{domain}_test.json"]

    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"Decathlon annotation file {' or '.join(map(str, candidates))} not found. Download and extract the devkit "
        f"with: {prepare_command(Path(root), domain)}"
    )


@dataclasses.dataclass(frozen=True)
class DecathlonAnnotations:
    """The images of one Decathlon annotation file, with labels mapped to 0..C-1 by sorted category id."""

    path: Path
    file_names: list[str]  # relative to the Decathlon root, such as data/dtd/train/000001.jpg
    image_ids: list[int]
    category_ids: list[int]  # sorted, so that label k is category id category_ids[k]
    labels: list[int] | None  # None when the file has no annotations, as the devkit's test files


def _read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as file:
            content = json.load(file)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}). Extract the archive that contains it again.") from error
    if not isinstance(content, dict):
        raise ValueError(f"{path} does not contain a JSON object. Expected a COCO-style Decathlon annotation file.")
    return content


def read_decathlon_annotations(path: Path, domain: str) -> DecathlonAnnotations:
    """Read a COCO-style Decathlon annotation file and map its category ids to labels 0..C-1.

    Raises ValueError naming the file in these cases:

    - it has no images or no categories;
    - its category count differs from the domain's class count;
    - an annotation's category_id is not one of its categories, so the label would fall outside 0..C-1;
    - the annotations label some images but not all of them.
    """
    path = Path(path)
    content = _read_json(path)
    images = content.get("images")
    categories = content.get("categories")
    if not isinstance(images, list) or not images:
        raise ValueError(f"{path} has no 'images' list. Expected a COCO-style Decathlon annotation file.")
    if not isinstance(categories, list):
        raise ValueError(f"{path} has no 'categories' list, so its category ids cannot be mapped to labels.")

    try:
        file_names = [str(image["file_name"]) for image in images]
        image_ids = [int(image["id"]) for image in images]
        category_ids = sorted({int(category["id"]) for category in categories})
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{path} has an image without file_name or id, or a category without id ({error!r})") from error

    expected = DECATHLON_CLASSES[domain]
    if len(category_ids) != expected:
        raise ValueError(
            f"{path} lists {len(category_ids)} categories, but the Decathlon domain {domain!r} has {expected} classes. "
            "Check that the file belongs to this domain."
        )

    annotations = content.get("annotations") or []
    labels = None if not annotations else _labels_of_images(path, annotations, image_ids, category_ids)
    return DecathlonAnnotations(path, file_names, image_ids, category_ids, labels)


def _labels_of_images(path: Path, annotations: list, image_ids: list[int], category_ids: list[int]) -> list[int]:
    """Return the label of every image, in the order of image_ids."""
    label_of_category = {category_id: label for label, category_id in enumerate(category_ids)}
    label_of_image: dict[int, int] = {}
    for annotation in annotations:
        try:
            image_id = int(annotation["image_id"])
            category_id = int(annotation["category_id"])
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{path} has an annotation without image_id or category_id: {annotation!r}") from error
        if category_id not in label_of_category:
            raise ValueError(
                f"{path}: image {image_id} has category_id {category_id}, which is not among the file's "
                f"{len(category_ids)} categories (ids {category_ids[0]} to {category_ids[-1]}), so its label would "
                f"fall outside 0..{len(category_ids) - 1}. Check that the file belongs to this domain."
            )
        if image_id in label_of_image:
            raise ValueError(f"{path}: image {image_id} has more than one annotation. Expected one label per image.")
        label_of_image[image_id] = label_of_category[category_id]

    unknown = sorted(set(label_of_image) - set(image_ids))
    if unknown:
        raise ValueError(f"{path}: {len(unknown)} annotations refer to image ids not in 'images', the first is {unknown[0]}")
    unlabelled = [image_id for image_id in image_ids if image_id not in label_of_image]
    if unlabelled:
        raise ValueError(
            f"{path}: {len(unlabelled)} of {len(image_ids)} images have no annotation, the first is image id "
            f"{unlabelled[0]}. Expected a label for every image, or no annotations at all for an unlabelled test split."
        )
    return [label_of_image[image_id] for image_id in image_ids]


def _check_images_exist(root: Path, domain: str, annotation_file: Path, file_names: list[str]) -> None:
    """Raise FileNotFoundError naming the first missing image and the count of missing ones.

    Lists each image folder once instead of testing every path, which matters
    for the 1.2 million ImageNet-12 training images.
    """
    files_in_folder: dict[Path, set[str]] = {}
    missing = []
    for name in file_names:
        path = root / name
        folder = path.parent
        if folder not in files_in_folder:
            files_in_folder[folder] = set(os.listdir(folder)) if folder.is_dir() else set()
        if path.name not in files_in_folder[folder]:
            missing.append(path)
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of {len(file_names)} images listed in {annotation_file} are missing, the first is "
            f"{missing[0]}. Download and extract the {domain} images with: {prepare_command(root, domain)}"
        )


def load_rgb(path: Path) -> Image.Image:
    """Decode an image file as RGB, raising OSError that names the file when it cannot be read."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except OSError as error:
        raise OSError(f"Could not read image {path}: {error}. Extract the archive that contains it again.") from error


class DecathlonDataset(Dataset):
    """One split of one Visual Decathlon domain, returning (image tensor, label).

    ``root`` is the folder that contains annotations/ and data/. ``transform``
    defaults to `decathlon_transforms` for the split (training augmentation for
    "train" only). Labels are 0..C-1 in sorted category id order, and
    ``category_ids[label]`` gives the category id back, as the challenge's
    result files need it together with ``image_ids``.

    The devkit's test split has no labels. Read without ``test_labels``, every
    item has label UNLABELLED (-1) and ``has_labels`` is False. ``test_labels``
    names a labelled test file, or a folder containing ``<domain>_test.json``
    such as residual_adapters' extracted labels_test.zip (`prepare_decathlon`
    with ``test_labels=True`` puts it in ``<root>/test_labels``).

    The constructor checks that every listed image exists, but decodes images
    only when items are read.
    """

    def __init__(
        self,
        root: Path | str,
        domain: str,
        split: str,
        transform: Callable | None = None,
        *,
        test_labels: Path | str | None = None,
    ):
        self.domain = check_decathlon_domain(domain)
        self.split = _check_choice(split, DECATHLON_SPLITS, "Decathlon split")
        self.root = _existing_root(root, domain)
        self.annotation_file = decathlon_annotation_file(self.root, domain, split, test_labels)
        annotations = read_decathlon_annotations(self.annotation_file, domain)
        if annotations.labels is None and (split != "test" or test_labels is not None):
            raise ValueError(
                f"{self.annotation_file} has no annotations, so the {domain} {split} split has no labels. Expected a "
                "labelled file: extract the archive that contains it again."
            )

        self.has_labels = annotations.labels is not None
        self.targets = annotations.labels if self.has_labels else [UNLABELLED] * len(annotations.file_names)
        self.image_ids = annotations.image_ids
        self.category_ids = annotations.category_ids
        self.num_classes = len(annotations.category_ids)
        self.paths = [self.root / name for name in annotations.file_names]
        _check_images_exist(self.root, domain, self.annotation_file, annotations.file_names)
        self.transform = decathlon_transforms(domain, train=split == "train") if transform is None else transform

        if not self.has_labels:
            logger.info(
                "%s contains no labels: the %s test split returns label %d for all %d images. Pass test_labels= to "
                "read the published test labels.",
                self.annotation_file, domain, UNLABELLED, len(self.paths),
            )
        logger.info("Decathlon %s %s: %d images from %s", domain, split, len(self.paths), self.annotation_file)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(load_rgb(self.paths[index])), self.targets[index]


# Visual Decathlon: downloads and extraction.


def _move_extracted_folder(archive: Path, staging: Path, name: str, dest: Path) -> None:
    """Extract archive into staging and rename the folder ``name`` found in it to dest.

    The folder may lie at the top of the archive or below a data/ folder.
    staging is removed when nothing else is left in it, and kept otherwise.
    """
    extract_archive(archive, staging)
    candidates = [staging / name, staging / "data" / name]
    source = next((path for path in candidates if path.is_dir()), None)
    if source is None:
        found = sorted(path.name for path in staging.iterdir())
        raise FileNotFoundError(
            f"{archive} does not contain a {name}/ folder at its top or under data/ (found {found} in {staging}). "
            "Check that the archive is the one expected, or extract it by hand so that it gives "
            f"{dest}/<split>/<image>."
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.rename(source, dest)
    _remove_empty_folders(staging)


def _remove_empty_folders(folder: Path) -> None:
    """Remove folder and its subfolders if they contain no files, and log a warning otherwise."""
    for path in sorted(folder.rglob("*"), key=lambda path: len(path.parts), reverse=True):
        if path.is_dir() and not any(path.iterdir()):
            path.rmdir()
    if any(folder.iterdir()):
        logger.warning("Kept %s because it contains files besides the extracted domain folder", folder)
    else:
        folder.rmdir()


def _copy_missing_annotations(devkit: Path, annotations: Path) -> None:
    """Copy the devkit's annotation files that annotations/ lacks, never overwriting a file."""
    candidates = [devkit / "decathlon-1.0" / "annotations", devkit / "annotations"]
    source = next((path for path in candidates if path.is_dir()), None)
    if source is None:
        raise FileNotFoundError(
            f"The extracted devkit {devkit} has no decathlon-1.0/annotations/ folder. Delete {devkit} and run "
            "prepare_decathlon again, or check the devkit archive."
        )
    annotations.mkdir(parents=True, exist_ok=True)
    for path in sorted(source.glob("*.json")):
        target = annotations / path.name
        if target.exists():
            continue
        partial = target.with_name(target.name + ".part")
        shutil.copyfile(path, partial)
        os.replace(partial, target)


def _domain_tar(extracted: Path, domain: str) -> Path:
    candidates = [extracted / f"{domain}.tar", *sorted(extracted.glob(f"*/{domain}.tar"))]
    tar = next((path for path in candidates if path.is_file()), None)
    if tar is None:
        found = sorted(path.name for path in extracted.iterdir())
        raise FileNotFoundError(
            f"The extracted data archive {extracted} has no {domain}.tar (found {found}). Delete {extracted} and run "
            "prepare_decathlon again, or check the data archive."
        )
    return tar


def _verified_imagenet_archive(archive: Path, sha256: str, default_location: Path) -> Path:
    """Return archive if it exists and matches sha256, else raise FileNotFoundError or ChecksumError."""
    if not archive.is_file():
        raise FileNotFoundError(
            f"The ImageNet-12 archive {archive} was not found, and it cannot be downloaded automatically. Obtain "
            f"decathlon-1.0-data-imagenet.tar from image-net.org (listed at {IMAGENET_URL}, which may require an "
            f"ImageNet account) and either save it as {default_location} or pass its path as imagenet_archive= "
            "(--imagenet-archive on the command line)."
        )
    actual = file_checksum(archive, "sha256")
    if actual != sha256.strip().lower():
        raise ChecksumError(
            f"{archive} does not match the expected checksum (sha256 expected {sha256}, actual {actual}). It was "
            "left untouched. Replace it with a correct copy, or pass imagenet_sha256= the actual digest if you "
            "trust this copy."
        )
    return archive


def _domains_tuple(domains: Sequence[str] | str) -> tuple[str, ...]:
    domains = (domains,) if isinstance(domains, str) else tuple(domains)
    for domain in domains:
        check_decathlon_domain(domain)
    return domains


def prepare_decathlon(
    root: Path | str,
    domains: Sequence[str] | str = DECATHLON_DOMAINS,
    *,
    devkit_sha256: str = DEVKIT_SHA256,
    data_sha256: str = DATA_SHA256,
    imagenet_archive: Path | str | None = None,
    imagenet_sha256: str = IMAGENET_SHA256,
    test_labels: bool = False,
    archive_dir: Path | str | None = None,
) -> Path:
    """Download and extract the Decathlon annotations and images of ``domains`` into root, and return root.

    Archives are stored under ``archive_dir`` (default ``$REPRO_DATA``) as
    ``decathlon/<archive name>``, and folders in ``$REPRO_MIRROR`` laid out the
    same way are tried before the official URLs. The default checksums are
    those recorded in TensorFlow Datasets. Pass another digest only for a copy
    you verified yourself. A stored archive that matches is reused, and one
    that does not raises ChecksumError and is left untouched. No archive is
    deleted: the devkit and the data archive stay extracted next to them as
    ``decathlon/devkit`` and ``decathlon/data``, which can be deleted by hand
    once root is complete.

    Parts that already exist are skipped: annotation files present in
    ``<root>/annotations`` and domain folders present in ``<root>/data``.

    ImageNet-12 is extracted from ``imagenet_archive``, by default
    ``<archive_dir>/decathlon/decathlon-1.0-data-imagenet.tar``, which must be
    obtained by hand and is checked against ``imagenet_sha256``. With
    ``test_labels`` True, residual_adapters' labels_test.zip is downloaded and
    extracted to ``<root>/test_labels`` for ``DecathlonDataset(test_labels=...)``.

    Raises:
        ValueError: a domain name is unknown.
        ChecksumError: an archive does not match its checksum.
        DownloadError: an archive could not be downloaded.
        FileNotFoundError: the ImageNet-12 archive is missing, or an archive lacks an expected folder.
    """
    domains = _domains_tuple(domains)
    root = Path(root).expanduser()
    archives = data_root() if archive_dir is None else Path(archive_dir).expanduser()
    root.mkdir(parents=True, exist_ok=True)

    annotations = root / "annotations"
    needed_annotations = [annotations / f"{domain}_{split}.json" for domain in domains for split in ("train", "val")]
    if not all(path.is_file() for path in needed_annotations):
        devkit_archive = fetch(DEVKIT_URL, DEVKIT_RELPATH, sha256=devkit_sha256, root=archives)
        devkit = extract_archive(devkit_archive, devkit_archive.with_name("devkit"))
        _copy_missing_annotations(devkit, annotations)

    missing_domains = [domain for domain in domains if domain != "imagenet12" and not (root / "data" / domain).is_dir()]
    if missing_domains:
        data_archive = fetch(DATA_URL, DATA_RELPATH, sha256=data_sha256, root=archives)
        extracted = extract_archive(data_archive, data_archive.with_name("data"))
        for domain in missing_domains:
            _move_extracted_folder(
                _domain_tar(extracted, domain), root / "data" / f".{domain}.unpacked", domain, root / "data" / domain
            )

    if "imagenet12" in domains and not (root / "data" / "imagenet12").is_dir():
        default_location = archives / IMAGENET_RELPATH
        archive = default_location if imagenet_archive is None else Path(imagenet_archive).expanduser()
        archive = _verified_imagenet_archive(archive, imagenet_sha256, default_location)
        _move_extracted_folder(archive, root / "data" / ".imagenet12.unpacked", "imagenet12", root / "data" / "imagenet12")

    if test_labels:
        labels_archive = fetch(TEST_LABELS_URL, TEST_LABELS_RELPATH, sha256=TEST_LABELS_SHA256, root=archives)
        extract_archive(labels_archive, root / TEST_LABELS_FOLDER)

    logger.info("Decathlon root %s contains %s", root, ", ".join(domains))
    return root


# ImageNet-to-Sketch.


def sketch_transforms(domain: str, train: bool) -> transforms.Compose:
    """Build the 224 px image transform of an ImageNet-to-Sketch domain, as Piggyback's src/dataset.py does.

    Training: shorter side resized to 256, RandomResizedCrop to 224 and a random
    horizontal flip. Evaluation: shorter side 256 and a central 224 px crop.
    The already cropped CUBS and Stanford Cars images are instead resized to
    224 x 224, with a random flip in training. All use ImageNet normalisation.
    """
    check_sketch_domain(domain)
    if domain in SKETCH_CROPPED:
        steps = [transforms.Resize((224, 224))]
        if train:
            steps.append(transforms.RandomHorizontalFlip())
    elif train:
        steps = [transforms.Resize(256), transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip()]
    else:
        steps = [transforms.Resize(256), transforms.CenterCrop(224)]
    return transforms.Compose([*steps, transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def sketch_split_folder(root: Path | str, domain: str, split: str) -> Path:
    """Return ``<root>/<domain>/<split>``, or raise FileNotFoundError describing the expected layout.

    ImageNet's test split is its validation folder, ``<root>/imagenet/val``.
    """
    check_sketch_domain(domain)
    _check_choice(split, SKETCH_SPLITS, "ImageNet-to-Sketch split")
    folder_name = "val" if domain == "imagenet" and split == "test" else split
    folder = Path(root).expanduser() / domain / folder_name
    if not folder.is_dir():
        source = (
            "ImageNet is the ILSVRC 2012 training set and its validation set sorted into class folders"
            if domain == "imagenet"
            else f"Piggyback shares the {domain} folder at {PIGGYBACK_DATA_PAGE} (download it by hand and unzip it)"
        )
        raise FileNotFoundError(
            f"ImageNet-to-Sketch folder {folder} not found. Expected the layout {Path(root)}/{domain}/{folder_name}/"
            f"<class>/<image>, with the same class folders under train/. {source}."
        )
    return folder


def _class_folders(folder: Path) -> list[str]:
    return sorted(entry.name for entry in os.scandir(folder) if entry.is_dir() and not entry.name.startswith("."))


def _contains_image(folder: Path) -> bool:
    for _, _, names in os.walk(folder):
        if any(has_file_allowed_extension(name, IMG_EXTENSIONS) for name in names):
            return True
    return False


def _check_no_empty_class_folders(folder: Path, classes: list[str]) -> None:
    empty = [name for name in classes if (folder / name).is_dir() and not _contains_image(folder / name)]
    if empty:
        raise FileNotFoundError(
            f"{len(empty)} class folders in {folder} contain no image file ({', '.join(IMG_EXTENSIONS)}), the first "
            f"are {empty[:5]}. Copy or unzip the domain again."
        )


def sketch_classes(root: Path | str, domain: str) -> list[str]:
    """Return the sorted class folder names of a domain's train/ folder, checking their count and contents."""
    folder = sketch_split_folder(root, domain, "train")
    classes = _class_folders(folder)
    expected = SKETCH_CLASSES[domain]
    if len(classes) != expected:
        raise ValueError(
            f"{folder} has {len(classes)} class folders, but the ImageNet-to-Sketch domain {domain!r} has {expected} "
            "classes. Copy or unzip the domain again."
        )
    _check_no_empty_class_folders(folder, classes)
    return classes


class SketchDataset(ImageFolder):
    """One split of one ImageNet-to-Sketch domain as a torchvision ImageFolder, returning (image tensor, label).

    Labels index the sorted class folders of the domain's train/ folder in
    both splits, so a test folder that lacks a class keeps the training
    labels. ``transform`` defaults to `sketch_transforms` for the split.
    """

    def __init__(self, root: Path | str, domain: str, split: str, transform: Callable | None = None):
        self.domain = check_sketch_domain(domain)
        self.split = _check_choice(split, SKETCH_SPLITS, "ImageNet-to-Sketch split")
        self._train_classes = sketch_classes(root, domain)
        folder = sketch_split_folder(root, domain, split)
        if transform is None:
            transform = sketch_transforms(domain, train=split == "train")
        super().__init__(folder, transform=transform, allow_empty=True)
        if not self.samples:
            raise FileNotFoundError(f"No image files found in the class folders of {folder}. Copy or unzip the domain again.")
        logger.info("ImageNet-to-Sketch %s %s: %d images from %s", domain, split, len(self.samples), folder)

    def find_classes(self, directory: str | Path) -> tuple[list[str], dict[str, int]]:
        """Return the training classes, after checking the class folders of directory against them."""
        present = _class_folders(Path(directory))
        unknown = sorted(set(present) - set(self._train_classes))
        if unknown:
            raise ValueError(
                f"{directory} has {len(unknown)} class folders that the {self.domain} train/ folder lacks, the first are "
                f"{unknown[:5]}. Both splits must use the same class folder names."
            )
        _check_no_empty_class_folders(Path(directory), present)
        classes = list(self._train_classes)
        return classes, {name: label for label, name in enumerate(classes)}


def num_classes(benchmark: str, domain: str, root: Path | str | None = None) -> int:
    """Return the class count of a domain of "decathlon" or "imagenet_to_sketch".

    With root, also checks that the local copy has that many classes (the
    categories of the Decathlon training annotations, or the class folders of
    the ImageNet-to-Sketch train/ folder) and raises ValueError otherwise.
    """
    _check_choice(benchmark, BENCHMARKS, "benchmark")
    if benchmark == "decathlon":
        check_decathlon_domain(domain)
        if root is not None:
            path = decathlon_annotation_file(_existing_root(root, domain), domain, "train")
            read_decathlon_annotations(path, domain)
        return DECATHLON_CLASSES[domain]

    check_sketch_domain(domain)
    if root is not None:
        sketch_classes(root, domain)
    return SKETCH_CLASSES[domain]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m modulation_adapters.data",
        description="Download and extract Visual Decathlon domains (see prepare_decathlon).",
    )
    parser.add_argument("--root", required=True, type=Path, help="Decathlon root to fill with annotations/ and data/")
    parser.add_argument("--domains", nargs="+", default=list(DECATHLON_DOMAINS), help="domains to prepare (default: all ten)")
    parser.add_argument("--imagenet-archive", type=Path, help="local decathlon-1.0-data-imagenet.tar for imagenet12")
    parser.add_argument("--test-labels", action="store_true", help=f"also fetch the published test labels into ROOT/{TEST_LABELS_FOLDER}")
    parser.add_argument("--archive-dir", type=Path, help="folder for the downloaded archives (default: $REPRO_DATA)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        prepare_decathlon(
            args.root,
            args.domains,
            imagenet_archive=args.imagenet_archive,
            test_labels=args.test_labels,
            archive_dir=args.archive_dir,
        )
    except DownloadError as error:
        print(f"error: {error}", file=sys.stderr)
        print(f"To use local copies of the archives, set {MIRROR_ENV} to a folder containing decathlon/<archive name>.",
              file=sys.stderr)
        return 2
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
