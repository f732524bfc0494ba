"""Edit items for SANE: instruction folders, the EMU-Edit and MagicBrush test sets, and smoke photos.

Folder format, shared with the decomposition CLI; files are matched by stem:

    <stem>.png | <stem>.jpg | <stem>.jpeg   input image (suffix matched case-insensitively)
    <stem>.txt                              ambiguous instruction, one line
    <stem>.caption.txt                      optional caption of the input image
    <stem>.output_caption.txt               optional caption of the expected output

Items from the `datasets` library keep their image in memory (a PIL image)
in place of a file path, and `EditItem.load_image` reads either kind.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, overload

import PIL.Image
import PIL.ImageOps

from common.config import ConfigError, load_yaml

__all__ = [
    "EMU_EDIT_COLUMNS",
    "EMU_EDIT_HUB_ID",
    "HUB_ID_PATTERN",
    "IMAGE_SUFFIXES",
    "MAGICBRUSH_COLUMNS",
    "MAGICBRUSH_HUB_ID",
    "SMOKE_PHOTOS_CONFIG",
    "VAE_SIZE_MULTIPLE",
    "ColumnMapping",
    "DatasetEditItems",
    "EditItem",
    "load_edit_dataset",
    "load_emu_edit",
    "load_folder",
    "load_image",
    "load_magicbrush",
    "resize_for_vae",
    "smoke_items",
    "vae_size",
]

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
INSTRUCTION_SUFFIX = ".txt"
CAPTION_SUFFIX = ".caption.txt"
OUTPUT_CAPTION_SUFFIX = ".output_caption.txt"

# Stable Diffusion's VAE downsamples by 8, so InstructPix2Pix needs image sides that are multiples of 8.
VAE_SIZE_MULTIPLE = 8

SMOKE_PHOTOS_CONFIG = Path(__file__).parent / "configs" / "smoke" / "photos.yaml"


@dataclasses.dataclass(frozen=True)
class EditItem:
    """One input image with its ambiguous instruction and optional captions.

    Exactly one of `image_path` and `image` is set. `metadata` carries
    dataset fields that SANE does not use itself (EMU-Edit's task, MagicBrush's turn).
    """

    id: str
    image_path: Path | None
    instruction: str
    input_caption: str | None = None
    output_caption: str | None = None
    image: PIL.Image.Image | None = dataclasses.field(default=None, repr=False, compare=False)
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if (self.image_path is None) == (self.image is None):
            raise ValueError(f"edit item {self.id!r}: set exactly one of image_path and image")
        if not self.instruction.strip():
            raise ValueError(f"edit item {self.id!r}: the instruction is empty")

    def load_image(self, size: int | tuple[int, int] | None = None) -> PIL.Image.Image:
        """Return the input image as RGB, resized to `size` when given (see `load_image`)."""
        if self.image_path is not None:
            return load_image(self.image_path, size)
        return _to_rgb(self.image, size)


# ---------------------------------------------------------------- images


def load_image(path: str | Path, size: int | tuple[int, int] | None = None) -> PIL.Image.Image:
    """Read an image file as RGB, applying its EXIF orientation.

    `size` is a side length for a square output or a (width, height) pair;
    None keeps the file's size. Raises FileNotFoundError for a missing file
    and ValueError for a file that PIL cannot decode.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with PIL.Image.open(path) as opened:
            # load() decodes the pixels, so a truncated file fails here and not later.
            opened.load()
            image = PIL.ImageOps.exif_transpose(opened)
    except (PIL.UnidentifiedImageError, OSError, SyntaxError) as error:
        raise ValueError(f"cannot read image {path}: {error}; replace it with a valid PNG or JPEG file") from None
    return _to_rgb(image, size)


def _to_rgb(image: PIL.Image.Image, size: int | tuple[int, int] | None) -> PIL.Image.Image:
    image = image.convert("RGB")
    if size is None:
        return image
    width, height = (size, size) if isinstance(size, int) else size
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if image.size == (width, height):
        return image
    return image.resize((width, height), PIL.Image.Resampling.BICUBIC)


def vae_size(width: int, height: int, *, multiple: int = VAE_SIZE_MULTIPLE, round_down: bool = True) -> tuple[int, int]:
    """Return (width, height) fitted to multiples of `multiple` for the VAE.

    With `round_down` each side is rounded down (at least to `multiple`), so an
    image is never upscaled by more than that floor. Without it, a size that
    is not a multiple raises ValueError naming the size.
    """
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if width % multiple == 0 and height % multiple == 0:
        return width, height
    if not round_down:
        fitted = (max(multiple, width - width % multiple), max(multiple, height - height % multiple))
        raise ValueError(
            f"image size {width}x{height} is not a multiple of {multiple} on both sides, which the VAE requires; "
            f"resize it to {fitted[0]}x{fitted[1]} or call with round_down=True"
        )
    return max(multiple, width - width % multiple), max(multiple, height - height % multiple)


def resize_for_vae(image: PIL.Image.Image, *, multiple: int = VAE_SIZE_MULTIPLE, round_down: bool = True) -> PIL.Image.Image:
    """Resize `image` to the size `vae_size` returns, or return it unchanged when it already fits."""
    size = vae_size(*image.size, multiple=multiple, round_down=round_down)
    if size == image.size:
        return image
    return image.resize(size, PIL.Image.Resampling.BICUBIC)


# ---------------------------------------------------------------- folders


def load_folder(path: str | Path, *, verify_images: bool = False) -> list[EditItem]:
    """Read the edit items of a folder in the format of this module's docstring, sorted by stem.

    Subfolders are ignored. With `verify_images`, every image is decoded once
    here, so a corrupt file fails now instead of when the edit reaches it.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"edit folder not found: {folder}; pass a folder of <stem>.png|.jpg|.jpeg images with <stem>.txt instructions")

    files = sorted(entry for entry in folder.iterdir() if entry.is_file())
    images_by_stem: dict[str, list[Path]] = {}
    for file in files:
        if file.suffix.lower() in IMAGE_SUFFIXES:
            images_by_stem.setdefault(file.stem, []).append(file)
    if not images_by_stem:
        raise ValueError(f"no images in {folder}; expected files named <stem>{' or <stem>'.join(IMAGE_SUFFIXES)}")

    items = []
    for stem, image_paths in sorted(images_by_stem.items()):
        if len(image_paths) > 1:
            names = ", ".join(image.name for image in image_paths)
            raise ValueError(f"{folder}: several images share the stem {stem!r} ({names}); keep one of them or rename the others")
        image_path = image_paths[0]
        instruction_path = folder / f"{stem}{INSTRUCTION_SUFFIX}"
        if not instruction_path.is_file():
            raise FileNotFoundError(f"instruction file not found for {image_path.name}: write the instruction to {instruction_path}")
        if verify_images:
            load_image(image_path)
        items.append(
            EditItem(
                id=stem,
                image_path=image_path,
                instruction=_read_line(instruction_path, "instruction"),
                input_caption=_read_optional_line(folder / f"{stem}{CAPTION_SUFFIX}", "input caption"),
                output_caption=_read_optional_line(folder / f"{stem}{OUTPUT_CAPTION_SUFFIX}", "output caption"),
            )
        )

    _warn_unmatched_instructions(folder, files, images_by_stem)
    logger.info("loaded %d edit items from %s", len(items), folder)
    return items


def _read_line(path: Path, label: str) -> str:
    """Return the single non-empty line of a text file, raising ValueError when it is empty or has more lines."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path} is not UTF-8 text ({error}); save the {label} as UTF-8") from None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"{path} is empty; write the {label} on one line")
    if len(lines) > 1:
        raise ValueError(f"{path} has {len(lines)} non-empty lines; write the {label} on one line")
    return lines[0]


def _read_optional_line(path: Path, label: str) -> str | None:
    return _read_line(path, label) if path.is_file() else None


def _warn_unmatched_instructions(folder: Path, files: list[Path], images_by_stem: dict[str, list[Path]]) -> None:
    """Log instruction files without an image, which usually means a misspelt or missing image."""
    unmatched = []
    for file in files:
        name = file.name
        if name.endswith((CAPTION_SUFFIX, OUTPUT_CAPTION_SUFFIX)) or file.suffix != INSTRUCTION_SUFFIX:
            continue
        if file.stem not in images_by_stem:
            unmatched.append(name)
    if unmatched:
        listed = ", ".join(unmatched[:5]) + (", ..." if len(unmatched) > 5 else "")
        logger.warning("%d instruction files in %s have no image with the same stem and are skipped: %s",
                       len(unmatched), folder, listed)


# ---------------------------------------------------------------- datasets


@dataclasses.dataclass(frozen=True)
class ColumnMapping:
    """Names of the dataset columns that fill each EditItem field; None marks a field the dataset lacks."""

    image: str
    instruction: str
    # Item ids join these columns' values with "-"; empty means the row number.
    id: tuple[str, ...] = ()
    input_caption: str | None = None
    output_caption: str | None = None
    # Copied into EditItem.metadata.
    metadata: tuple[str, ...] = ()

    def columns(self) -> list[str]:
        optional = [self.input_caption, self.output_caption]
        names = [self.image, self.instruction, *self.id, *(name for name in optional if name is not None), *self.metadata]
        return list(dict.fromkeys(names))


# Column names from the dataset card (README.md) of facebook/emu_edit_test_set on the Hugging Face Hub.
EMU_EDIT_HUB_ID = "facebook/emu_edit_test_set"
EMU_EDIT_COLUMNS = ColumnMapping(
    image="image",
    instruction="instruction",
    id=("idx",),
    input_caption="input_caption",
    output_caption="output_caption",
    metadata=("task", "hash"),
)

# Column names from the dataset card of osunlp/MagicBrush, which ships no captions. An image id
# has one row per edit turn, and turn k > 1 starts from the ground-truth output of turn k - 1.
MAGICBRUSH_HUB_ID = "osunlp/MagicBrush"
MAGICBRUSH_COLUMNS = ColumnMapping(
    image="source_img",
    instruction="instruction",
    id=("img_id", "turn_index"),
    metadata=("img_id", "turn_index"),
)

# A Hugging Face Hub repository id of the form owner/name.
HUB_ID_PATTERN = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class DatasetEditItems(Sequence[EditItem]):
    """Edit items backed by a `datasets.Dataset`, decoding each row's image only when the item is read."""

    def __init__(self, dataset, columns: ColumnMapping, ids: list[str]) -> None:
        self.dataset = dataset
        self.columns = columns
        self.ids = ids

    def __len__(self) -> int:
        return len(self.dataset)

    @overload
    def __getitem__(self, index: int) -> EditItem: ...

    @overload
    def __getitem__(self, index: slice) -> list[EditItem]: ...

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"edit item index {index} out of range for {len(self)} items")
        row = self.dataset[index]
        columns = self.columns
        image = row[columns.image]
        if not isinstance(image, PIL.Image.Image):
            raise ValueError(
                f"column {columns.image!r} of row {index} contains {type(image).__name__}, not an image; "
                f"pick the image column with columns=ColumnMapping(image=...)"
            )
        return EditItem(
            id=self.ids[index],
            image_path=None,
            image=image,
            instruction=row[columns.instruction].strip(),
            input_caption=_caption(row, columns.input_caption),
            output_caption=_caption(row, columns.output_caption),
            metadata={name: row[name] for name in columns.metadata},
        )

    def __iter__(self) -> Iterator[EditItem]:
        for index in range(len(self)):
            yield self[index]


def _caption(row: dict[str, Any], column: str | None) -> str | None:
    if column is None or row[column] is None:
        return None
    return row[column].strip() or None


def load_edit_dataset(
    source: str | Path,
    split: str,
    columns: ColumnMapping,
    *,
    drop_empty_instructions: bool = False,
    cache_dir: str | Path | None = None,
) -> DatasetEditItems:
    """Load edit items from a Hugging Face dataset or a local copy of one.

    `source` is one of these:
    - a folder written by `save_to_disk`, with a DatasetDict (`split` picks
      one of its splits) or a single Dataset (`split` is ignored);
    - a folder of parquet or arrow files named by split, as in Hub repositories;
    - one .parquet or .arrow file (`split` is ignored);
    - a Hub id such as "facebook/emu_edit_test_set".
    Rows with an empty instruction raise ValueError unless `drop_empty_instructions`.
    """
    dataset = _open_dataset(source, split, cache_dir)

    missing = [name for name in columns.columns() if name not in dataset.column_names]
    if missing:
        raise ValueError(
            f"dataset {source} (split {split!r}) has no column {', '.join(map(repr, missing))}; "
            f"its columns are {dataset.column_names}. Pass a ColumnMapping that names the right columns"
        )
    # Narrowing the columns keeps image columns that are not needed (targets, masks) from being decoded.
    dataset = dataset.select_columns(columns.columns())

    instructions = list(dataset[columns.instruction])
    empty_rows = [row for row, text in enumerate(instructions) if text is None or not text.strip()]
    if empty_rows and not drop_empty_instructions:
        raise ValueError(
            f"dataset {source} (split {split!r}) has {len(empty_rows)} rows with an empty instruction "
            f"(rows {empty_rows[:10]}); pass drop_empty_instructions=True to skip them"
        )
    if empty_rows:
        logger.warning("dropping %d of %d rows of %s with an empty instruction", len(empty_rows), len(dataset), source)
        keep = sorted(set(range(len(dataset))) - set(empty_rows))
        dataset = dataset.select(keep)
    else:
        keep = list(range(len(dataset)))

    ids = _item_ids(dataset, columns, keep)
    logger.info("loaded %d edit items from %s (split %s)", len(dataset), source, split)
    return DatasetEditItems(dataset, columns, ids)


def _open_dataset(source: str | Path, split: str, cache_dir: str | Path | None):
    import datasets

    path = Path(source).expanduser()
    cache = None if cache_dir is None else str(cache_dir)
    if path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise ValueError(f"split {split!r} not found in {path}; its splits are {list(loaded)}")
            return loaded[split]
        return loaded
    if path.is_dir():
        return datasets.load_dataset(str(path), split=split, cache_dir=cache)
    if path.is_file() and path.suffix == ".parquet":
        return datasets.load_dataset("parquet", data_files=str(path), split="train", cache_dir=cache)
    if path.is_file() and path.suffix == ".arrow":
        return datasets.Dataset.from_file(str(path))
    if path.exists():
        raise ValueError(f"cannot read {path} as a dataset; pass a save_to_disk folder, a folder of parquet files, or a .parquet or .arrow file")
    if not HUB_ID_PATTERN.match(str(source)):
        raise FileNotFoundError(f"dataset not found: {source} is neither an existing path nor a Hub id of the form owner/name")
    return datasets.load_dataset(str(source), split=split, cache_dir=cache)


def _item_ids(dataset, columns: ColumnMapping, rows: list[int]) -> list[str]:
    """Build one unique id per row, from the id columns or else the original row numbers."""
    if not columns.id:
        return [f"{row:05d}" for row in rows]
    values = [list(dataset[name]) for name in columns.id]
    ids = ["-".join(str(value) for value in row_values) for row_values in zip(*values)]
    duplicates = sorted(item_id for item_id, count in collections.Counter(ids).items() if count > 1)
    if duplicates:
        raise ValueError(
            f"id columns {list(columns.id)} do not identify rows uniquely (repeated: {duplicates[:5]}); "
            f"add columns to ColumnMapping.id or set id=() to number the rows"
        )
    return ids


def load_emu_edit(
    source: str | Path = EMU_EDIT_HUB_ID,
    split: str = "test",
    *,
    columns: ColumnMapping = EMU_EDIT_COLUMNS,
    drop_empty_instructions: bool = False,
    cache_dir: str | Path | None = None,
) -> DatasetEditItems:
    """Load the EMU-Edit benchmark ("test" or "validation" split) from the Hub or a local copy.

    The default columns map image, instruction, input_caption and
    output_caption one to one, with `idx` as the item id and `task` and
    `hash` as metadata.
    """
    # NOTE: that `idx` is unique within a split is an assumption; a repeated id raises ValueError.
    return load_edit_dataset(source, split, columns, drop_empty_instructions=drop_empty_instructions, cache_dir=cache_dir)


def load_magicbrush(
    source: str | Path = MAGICBRUSH_HUB_ID,
    split: str = "dev",
    *,
    columns: ColumnMapping = MAGICBRUSH_COLUMNS,
    drop_empty_instructions: bool = False,
    cache_dir: str | Path | None = None,
) -> DatasetEditItems:
    """Load MagicBrush edit turns from the Hub ("train" or "dev") or from a local copy of its test set.

    The Hub repository contains only the train and dev splits. The authors
    distribute the test set as a password-protected archive, linked from
    github.com/OSU-NLP-Group/MagicBrush. To use it, convert it to a dataset
    with the same columns and pass its path as `source`. The default columns take
    `source_img` as the input image and "<img_id>-<turn_index>" as the id,
    with no captions. If your copy has captions, name their columns in `columns`.
    """
    if str(source) == MAGICBRUSH_HUB_ID and split == "test":
        raise ValueError(
            f"{MAGICBRUSH_HUB_ID} has no test split on the Hub (only train and dev); download the test set from "
            f"github.com/OSU-NLP-Group/MagicBrush, convert it to a dataset and pass its path as source"
        )
    return load_edit_dataset(source, split, columns, drop_empty_instructions=drop_empty_instructions, cache_dir=cache_dir)


# ---------------------------------------------------------------- smoke photos


def _skimage_photos() -> dict[str, Callable[[], Any]]:
    import skimage.data

    # Photos bundled with the scikit-image package, so no download is needed.
    names = ("astronaut", "camera", "cat", "chelsea", "coffee", "rocket")
    return {name: getattr(skimage.data, name) for name in names}


def smoke_items(config_path: str | Path = SMOKE_PHOTOS_CONFIG) -> list[EditItem]:
    """Return the smoke-scale edit items: scikit-image sample photos with the instructions and captions of `config_path`.

    The YAML file contains a list under `items`, each entry with the keys
    image (a scikit-image sample name), instruction, caption and output_caption.
    """
    config = load_yaml(config_path)
    entries = config.get("items")
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{config_path}: expected a non-empty list under 'items'")

    photos = _skimage_photos()
    required = {"image", "instruction", "caption", "output_caption"}
    items = []
    for position, entry in enumerate(entries):
        where = f"{config_path}: items[{position}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: expected a mapping, found {entry!r}")
        if set(entry) != required:
            raise ConfigError(
                f"{where}: expected keys {sorted(required)}; missing {sorted(required - set(entry))}, unknown {sorted(set(entry) - required)}"
            )
        name = entry["image"]
        if name not in photos:
            raise ConfigError(f"{where}: unknown scikit-image photo {name!r}; choose one of {sorted(photos)}")
        items.append(
            EditItem(
                id=name,
                image_path=None,
                image=PIL.Image.fromarray(photos[name]()).convert("RGB"),
                instruction=str(entry["instruction"]),
                input_caption=str(entry["caption"]),
                output_caption=str(entry["output_caption"]),
            )
        )
    ids = [item.id for item in items]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"{config_path}: a photo appears more than once in {ids}")
    return items
