"""Few-shot data: Omniglot for smoke scale, learn2learn's task samplers for every benchmark.

Omniglot (Lake et al.) comes as the two official zip files that torchvision
downloads (964 background and 659 evaluation characters, 20 drawings each),
fetched through common.download.fetch. On machines that cannot reach the
official host, a mirror folder (``$REPRO_MIRROR``) may instead hold
``omniglot/images_{background,evaluation}.npz`` and ``omniglot/omniglot_index.csv``:
the 1-bit pixels of every PNG and the folder each came from. From these the
official folder layout is written back losslessly, so both routes end in the
same ``images_background/<alphabet>/characterNN/<id>_<drawer>.png`` tree.

Images are resized to 28 px with Lanczos and inverted (ink = 1), as
learn2learn's Omniglot benchmark does, and cached as one uint8 array per set.
Meta-training uses the background set, with each character rotated by 0, 90,
180 and 270 degrees as four classes, as is usual for Omniglot. Meta-testing
uses the evaluation set without rotation.

Tasks are drawn with learn2learn (`MetaDataset`, `Taskset`, `NWays`,
`KShots`, `LoadData`, `RemapLabels`, `ConsecutiveLabels`).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import logging
import random
import re
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from common.download import ChecksumError, DownloadError, data_root, extract_archive, fetch, file_checksum, mirrors_from_env

log = logging.getLogger(__name__)

OMNIGLOT_URL = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python"
INDEX_FILE, INDEX_SHA256 = "omniglot_index.csv", "14decc2fffc97ae081c5f5fac46a1691d648feac3e10031d9a588c658bc953d3"
DRAWINGS = 20


@dataclasses.dataclass(frozen=True)
class OmniglotSet:
    name: str
    characters: int
    zip_md5: str  # as torchvision lists it
    arrays_sha256: str  # the mirror's array copy

    @property
    def folder(self) -> str:
        return f"images_{self.name}"


OMNIGLOT_SETS = {
    "background": OmniglotSet("background", 964, "68d2efa1b9178cc56df9314c21c6e718",
                              "8bf84167413cd00beacdce3fe582f780ab538d8dbef043a6d688f2527bbce199"),
    "evaluation": OmniglotSet("evaluation", 659, "6b91aef0f799c5bb55b94e3f2daec811",
                              "0b84c7ffd94c4841c0040e529c86a82eaaccb986d8eadad5673f7991b7475276"),
}


def import_learn2learn():
    """Import learn2learn, hiding the notices that its gym import prints on every start."""
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            import learn2learn
        except ImportError as error:
            raise ImportError("learn2learn is not installed; run `make setup` (it builds learn2learn 0.2.0 for Python 3.11 "
                              "with shared_amortized_vi/scripts/install_learn2learn.sh)") from error
    return learn2learn


def _count_characters(folder: Path) -> int:
    if not folder.is_dir():
        return 0
    return sum(1 for alphabet in folder.iterdir() if alphabet.is_dir() for character in alphabet.iterdir() if character.is_dir())


def _mirror_folders(mirrors: list[str] | None) -> list[Path]:
    entries = mirrors_from_env() if mirrors is None else mirrors
    return [Path(entry).expanduser() for entry in entries if not re.match(r"https?://", entry)]


def _verified(path: Path, sha256: str) -> Path:
    actual = file_checksum(path, "sha256")
    if actual != sha256:
        raise ChecksumError(f"{path} has SHA-256 {actual}, expected {sha256}; replace it with the mirror's original file")
    return path


def write_layout_from_arrays(arrays: Path, index: Path, dest: Path, spec: OmniglotSet) -> None:
    """Write the official PNG tree of one set from the mirror's array copy (lossless: the PNGs are 1-bit)."""
    data = np.load(arrays)
    images = data["images"]
    if images.shape != (spec.characters, DRAWINGS, 105, 105):
        raise ValueError(f"{arrays} contains images of shape {images.shape}, expected {(spec.characters, DRAWINGS, 105, 105)}")
    with open(index, newline="") as file:
        rows = [row for row in csv.DictReader(file) if row["set"] == spec.name]
    if len(rows) != spec.characters:
        raise ValueError(f"{index} lists {len(rows)} {spec.name} characters, expected {spec.characters}")
    partial = dest.with_name(dest.name + ".partial")
    for row in rows:
        pattern = Path(row["png_pattern"])  # images_background/<alphabet>/characterNN/<id>_XX.png
        character = partial / pattern.parent.relative_to(spec.folder)
        character.mkdir(parents=True, exist_ok=True)
        for drawer in range(DRAWINGS):
            name = pattern.name.replace("XX", f"{drawer + 1:02d}")
            Image.fromarray(images[int(row["array_index"]), drawer]).save(character / name)
    partial.rename(dest)


def prepare_omniglot(root: Path | None = None, mirrors: list[str] | None = None) -> Path:
    """Create the official Omniglot folders under ``root/omniglot`` when missing, and return that folder.

    A complete folder is used as it is. Otherwise the array copy in a mirror
    folder is used when a mirror contains it (no network), else the official zip is
    fetched (mirrors first, then the official URL) and extracted.
    """
    base = (data_root() if root is None else Path(root)) / "omniglot"
    for spec in OMNIGLOT_SETS.values():
        dest = base / spec.folder
        if _count_characters(dest) == spec.characters:
            continue
        if dest.exists():
            raise ValueError(f"{dest} contains {_count_characters(dest)} characters, expected {spec.characters}. "
                             f"Move it away (it is not deleted automatically) and run again")
        mirror_errors = []
        for folder in _mirror_folders(mirrors):
            arrays, index = folder / "omniglot" / f"{spec.folder}.npz", folder / "omniglot" / INDEX_FILE
            if not (arrays.exists() and index.exists()):
                continue
            try:
                _verified(arrays, spec.arrays_sha256)
                _verified(index, INDEX_SHA256)
            except ChecksumError as error:
                log.warning("%s", error)
                mirror_errors.append(str(error))
                continue
            log.info("writing %s from the array copy in %s", dest, folder)
            base.mkdir(parents=True, exist_ok=True)
            write_layout_from_arrays(arrays, index, dest, spec)
            break
        else:
            if mirror_errors:
                raise ChecksumError("no mirror contains a valid array copy of Omniglot's "
                                    f"{spec.folder}:\n" + "\n".join(mirror_errors))
            try:
                archive = fetch(f"{OMNIGLOT_URL}/{spec.folder}.zip", f"omniglot/{spec.folder}.zip", md5=spec.zip_md5,
                                root=root, mirrors=mirrors)
            except DownloadError as error:
                raise DownloadError(f"could not get Omniglot's {spec.folder}.zip: {error}\nFix: connect to the internet, or set "
                                    f"REPRO_MIRROR to a folder holding omniglot/{spec.folder}.zip or omniglot/{spec.folder}.npz "
                                    f"with omniglot/{INDEX_FILE}") from error
            # The zip's top folder is images_<set>/, so extract beside it and move that folder into place.
            extracted = extract_archive(archive, base / f"{spec.folder}.extracted")
            if not (extracted / spec.folder).is_dir():
                raise ValueError(f"{archive} has no top folder {spec.folder}/; delete {archive} and {extracted}, then run again")
            (extracted / spec.folder).rename(dest)
            extracted.rmdir()
        if _count_characters(dest) != spec.characters:
            raise ValueError(f"{dest} contains {_count_characters(dest)} characters after extraction, expected {spec.characters}. "
                             f"Delete the downloaded zip and run again")
    return base


def load_omniglot(root: Path | None = None, image_size: int = 28, mirrors: list[str] | None = None) -> dict[str, torch.Tensor]:
    """Return both Omniglot sets as uint8 tensors (characters, 20, size, size), ink = 255, cached beside the folders."""
    base = prepare_omniglot(root, mirrors)
    arrays = {}
    for spec in OMNIGLOT_SETS.values():
        cache = base / f"{spec.folder}_{image_size}px.npy"
        if not cache.exists():
            log.info("resizing %s to %d px (once)", spec.folder, image_size)
            images = np.zeros((spec.characters, DRAWINGS, image_size, image_size), np.uint8)
            characters = sorted(path for path in (base / spec.folder).glob("*/*") if path.is_dir())
            for c, character in enumerate(characters):
                drawings = sorted(character.glob("*.png"))
                if len(drawings) != DRAWINGS:
                    raise ValueError(f"{character} contains {len(drawings)} drawings, expected {DRAWINGS}. "
                                     f"Delete {base / spec.folder} and run again to rebuild it")
                for d, path in enumerate(drawings):
                    try:
                        image = Image.open(path).convert("L").resize((image_size, image_size), Image.LANCZOS)
                    except (OSError, ValueError) as error:
                        raise ValueError(f"cannot read {path} ({error}); delete {base / spec.folder} and run again "
                                         "to write it anew") from error
                    images[c, d] = 255 - np.asarray(image)
            partial = cache.with_name(cache.name + ".partial.npy")
            np.save(partial, images)
            partial.rename(cache)
        try:
            arrays[spec.name] = torch.from_numpy(np.load(cache))
        except (OSError, ValueError) as error:
            raise ValueError(f"cannot read the resized cache {cache} ({error}); delete it and run again") from error
    return arrays


class ImageClasses(torch.utils.data.Dataset):
    """Images grouped by class: (classes, per_class, C, H, W) uint8 -> (float image in [0, 1], class)."""

    def __init__(self, images: torch.Tensor):
        if images.dim() == 4:
            images = images.unsqueeze(2)
        self.images = images
        self.per_class = images.shape[1]
        self.labels = torch.arange(images.shape[0]).repeat_interleave(self.per_class).tolist()

    @property
    def num_classes(self) -> int:
        return self.images.shape[0]

    def __len__(self) -> int:
        return self.images.shape[0] * self.per_class

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        c, d = divmod(index, self.per_class)
        return self.images[c, d].float() / 255.0, c


def with_rotations(images: torch.Tensor) -> torch.Tensor:
    """Return each class rotated by 0, 90, 180 and 270 degrees as four classes: (C, n, H, W) -> (4C, n, H, W)."""
    return torch.cat([torch.rot90(images, k, dims=(-2, -1)) for k in range(4)])


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    ways: int
    shots: int
    queries: int


def check_task(spec: TaskSpec, num_classes: int, per_class: int, split: str) -> None:
    """Raise ValueError when `split` cannot provide `spec`'s tasks."""
    if spec.ways < 2:
        raise ValueError(f"ways must be at least 2, got {spec.ways}")
    if spec.shots < 1 or spec.queries < 1:
        raise ValueError(f"shots and queries must be at least 1, got shots={spec.shots}, queries={spec.queries}")
    if spec.ways > num_classes:
        raise ValueError(f"{spec.ways}-way tasks need {spec.ways} classes, but the {split} split has {num_classes}; "
                         f"use ways <= {num_classes}")
    if spec.shots + spec.queries > per_class:
        raise ValueError(f"{spec.shots} shots + {spec.queries} queries need {spec.shots + spec.queries} images per class, "
                         f"but the {split} split has {per_class}; lower shots, or the query count of that split "
                         f"(queries for meta-training, test_queries for meta-test)")


class TaskSampler:
    """N-way tasks with K support and Q query images per class, drawn by learn2learn.

    Calling the sampler returns (support_x, support_y, query_x, query_y) with
    labels 0..N-1. With `num_tasks` > 0 the task descriptions are fixed (drawn
    once from `seed`), so an evaluation uses the same tasks on every run.
    """

    def __init__(self, dataset: torch.utils.data.Dataset, spec: TaskSpec, split: str, *, num_tasks: int = -1, seed: int = 0):
        l2l = import_learn2learn()
        per_class = getattr(dataset, "per_class", None)
        labels = getattr(dataset, "labels", None)
        if per_class is None:
            counts = np.bincount(np.asarray(labels))
            per_class = int(counts.min())
        num_classes = len(set(labels))
        check_task(spec, num_classes, per_class, split)
        self.spec, self.split = spec, split
        state = random.getstate()
        random.seed(seed)
        try:
            # Passing the labels spares MetaDataset from reading every image once to learn them.
            meta = l2l.data.MetaDataset(dataset, indices_to_labels=dict(enumerate(labels)))
            transforms = [l2l.data.transforms.NWays(meta, spec.ways), l2l.data.transforms.KShots(meta, spec.shots + spec.queries),
                          l2l.data.transforms.LoadData(meta), l2l.data.transforms.RemapLabels(meta),
                          l2l.data.transforms.ConsecutiveLabels(meta)]
            self.tasks = l2l.data.Taskset(meta, task_transforms=transforms, num_tasks=num_tasks)
            if num_tasks > 0:
                for index in range(num_tasks):  # draw every fixed task description now, under this seed
                    self.tasks[index]
        finally:
            random.setstate(state)
        self.num_tasks = num_tasks

    def split_task(self, task) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        images, labels = task
        images, labels = torch.as_tensor(images), torch.as_tensor(labels)
        order = torch.argsort(labels, stable=True)  # class 0's images first, then class 1's, ...
        images, labels = images[order], labels[order]
        per_class = self.spec.shots + self.spec.queries
        images = images.view(self.spec.ways, per_class, *images.shape[1:])
        labels = labels.view(self.spec.ways, per_class)
        shots = self.spec.shots
        return (images[:, :shots].flatten(0, 1), labels[:, :shots].flatten(), images[:, shots:].flatten(0, 1), labels[:, shots:].flatten())

    def sample(self):
        return self.split_task(self.tasks.sample())

    def __getitem__(self, index: int):
        return self.split_task(self.tasks[index])

    def __len__(self) -> int:
        return self.num_tasks
