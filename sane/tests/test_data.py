"""Edit items from folders, tiny local copies of the EMU-Edit and MagicBrush sets, and the smoke photos."""

from __future__ import annotations

import logging

import datasets
import numpy as np
import PIL.Image
import pytest

from common.config import ConfigError
from sane import data
from sane.data import ColumnMapping, EditItem


def save_image(path, size=(24, 16), color=(200, 30, 30), mode="RGB"):
    PIL.Image.new(mode, size, color if mode == "RGB" else color[0]).save(path)
    return path


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def edit_folder(tmp_path):
    """Three items: a PNG with both captions, a JPEG with none, a .jpeg with an input caption."""
    save_image(tmp_path / "b_cat.png")
    write(tmp_path / "b_cat.txt", "make it look vintage\n")
    write(tmp_path / "b_cat.caption.txt", "a cat on a sofa\n")
    write(tmp_path / "b_cat.output_caption.txt", "an old photo of a cat on a sofa")
    save_image(tmp_path / "a_car.jpg")
    write(tmp_path / "a_car.txt", "  make it more festive  ")
    save_image(tmp_path / "c_tree.jpeg")
    write(tmp_path / "c_tree.txt", "make it look like winter")
    write(tmp_path / "c_tree.caption.txt", "a tree in a field")
    return tmp_path


# ---------------------------------------------------------------- folders


def test_folder_items_sorted_by_stem(edit_folder):
    items = data.load_folder(edit_folder)
    assert [item.id for item in items] == ["a_car", "b_cat", "c_tree"]
    assert [item.image_path.name for item in items] == ["a_car.jpg", "b_cat.png", "c_tree.jpeg"]


def test_folder_reads_instructions_and_captions(edit_folder):
    car, cat, tree = data.load_folder(edit_folder)
    assert car.instruction == "make it more festive"
    assert (car.input_caption, car.output_caption) == (None, None)
    assert cat.instruction == "make it look vintage"
    assert (cat.input_caption, cat.output_caption) == ("a cat on a sofa", "an old photo of a cat on a sofa")
    assert (tree.input_caption, tree.output_caption) == ("a tree in a field", None)


def test_folder_jpeg_images_load(edit_folder):
    for item in data.load_folder(edit_folder, verify_images=True):
        image = item.load_image()
        assert image.mode == "RGB"
        assert image.size == (24, 16)


def test_folder_accepts_uppercase_suffix(tmp_path):
    save_image(tmp_path / "photo.JPG")
    write(tmp_path / "photo.txt", "make it vintage")
    (item,) = data.load_folder(tmp_path)
    assert item.image_path.name == "photo.JPG"


def test_folder_ignores_subfolders(edit_folder):
    (edit_folder / "outputs").mkdir()
    save_image(edit_folder / "outputs" / "d.png")
    assert len(data.load_folder(edit_folder)) == 3


def test_folder_missing_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="edit folder not found.*nowhere"):
        data.load_folder(tmp_path / "nowhere")


def test_folder_without_images_raises(tmp_path):
    write(tmp_path / "a.txt", "make it vintage")
    with pytest.raises(ValueError, match="no images in"):
        data.load_folder(tmp_path)


def test_image_without_instruction_raises(edit_folder):
    (edit_folder / "a_car.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"a_car\.jpg.*a_car\.txt"):
        data.load_folder(edit_folder)


def test_empty_instruction_raises(edit_folder):
    write(edit_folder / "a_car.txt", " \n\n")
    with pytest.raises(ValueError, match=r"a_car\.txt is empty"):
        data.load_folder(edit_folder)


def test_multiline_instruction_raises(edit_folder):
    write(edit_folder / "a_car.txt", "make it festive\nand red\n")
    with pytest.raises(ValueError, match=r"a_car\.txt has 2 non-empty lines"):
        data.load_folder(edit_folder)


def test_empty_caption_raises(edit_folder):
    write(edit_folder / "b_cat.caption.txt", "")
    with pytest.raises(ValueError, match=r"b_cat\.caption\.txt is empty; write the input caption"):
        data.load_folder(edit_folder)


def test_two_images_one_stem_raises(edit_folder):
    save_image(edit_folder / "a_car.png")
    with pytest.raises(ValueError, match=r"stem 'a_car' \(a_car\.jpg, a_car\.png\)"):
        data.load_folder(edit_folder)


def test_corrupt_image_raises_on_load(edit_folder):
    (edit_folder / "a_car.jpg").write_bytes(b"not an image")
    items = data.load_folder(edit_folder)
    with pytest.raises(ValueError, match=r"cannot read image .*a_car\.jpg"):
        items[0].load_image()
    with pytest.raises(ValueError, match=r"a_car\.jpg"):
        data.load_folder(edit_folder, verify_images=True)


def test_truncated_image_raises(tmp_path):
    path = save_image(tmp_path / "big.png", size=(64, 64))
    PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ValueError, match=r"big\.png"):
        data.load_image(path)


def test_unmatched_instruction_logs_warning(edit_folder, caplog):
    write(edit_folder / "d_dog.txt", "make it vintage")
    with caplog.at_level(logging.WARNING, logger="sane.data"):
        items = data.load_folder(edit_folder)
    assert len(items) == 3
    assert "d_dog.txt" in caplog.text
    assert "caption" not in caplog.text


# ---------------------------------------------------------------- images


def test_load_image_converts_to_rgb(tmp_path):
    gray = save_image(tmp_path / "gray.png", mode="L")
    rgba = tmp_path / "rgba.png"
    PIL.Image.new("RGBA", (8, 8), (10, 20, 30, 0)).save(rgba)
    assert data.load_image(gray).mode == "RGB"
    assert data.load_image(rgba).getpixel((0, 0)) == (10, 20, 30)


def test_load_image_resizes(tmp_path):
    path = save_image(tmp_path / "a.png", size=(30, 20))
    assert data.load_image(path, 16).size == (16, 16)
    assert data.load_image(path, (40, 24)).size == (40, 24)
    with pytest.raises(ValueError, match="0x24"):
        data.load_image(path, (0, 24))


def test_load_image_applies_exif_rotation(tmp_path):
    path = tmp_path / "phone.jpg"
    exif = PIL.Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    PIL.Image.new("RGB", (40, 20)).save(path, exif=exif)
    assert data.load_image(path).size == (20, 40)


def test_load_image_missing_file_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing\.png"):
        data.load_image(tmp_path / "missing.png")


def test_vae_size_rounds_down():
    assert data.vae_size(451, 300) == (448, 296)
    assert data.vae_size(512, 512) == (512, 512)
    assert data.vae_size(5, 9) == (8, 8)
    assert data.vae_size(100, 100, multiple=64) == (64, 64)


def test_vae_size_without_rounding_raises():
    assert data.vae_size(512, 384, round_down=False) == (512, 384)
    with pytest.raises(ValueError, match="451x300 is not a multiple of 8.*448x296"):
        data.vae_size(451, 300, round_down=False)


def test_resize_for_vae():
    image = PIL.Image.new("RGB", (451, 300))
    assert data.resize_for_vae(image).size == (448, 296)
    fitting = PIL.Image.new("RGB", (64, 32))
    assert data.resize_for_vae(fitting) is fitting


# ---------------------------------------------------------------- EditItem


def test_edit_item_needs_one_image_source(tmp_path):
    image = PIL.Image.new("RGB", (8, 8))
    with pytest.raises(ValueError, match="exactly one of image_path and image"):
        EditItem("a", None, "make it vintage")
    with pytest.raises(ValueError, match="exactly one of image_path and image"):
        EditItem("a", tmp_path / "a.png", "make it vintage", image=image)


def test_edit_item_rejects_empty_instruction():
    with pytest.raises(ValueError, match="instruction is empty"):
        EditItem("a", None, "  ", image=PIL.Image.new("RGB", (8, 8)))


def test_edit_item_in_memory_image():
    item = EditItem("a", None, "make it vintage", image=PIL.Image.new("L", (30, 20), 7))
    image = item.load_image((16, 8))
    assert image.mode == "RGB"
    assert image.size == (16, 8)
    assert item.image.size == (30, 20)


# ---------------------------------------------------------------- datasets


def tiny_images(count, seed=0):
    generator = np.random.default_rng(seed)
    return [PIL.Image.fromarray(generator.integers(0, 256, (16, 24, 3), dtype=np.uint8)) for _ in range(count)]


def emu_edit_rows(count=3, seed=0):
    """Rows with the columns of facebook/emu_edit_test_set."""
    return {
        "instruction": [f"make it style {i}" for i in range(count)],
        "image": tiny_images(count, seed),
        "task": ["style", "global", "add"][:count],
        "split": ["test"] * count,
        "idx": list(range(10, 10 + count)),
        "hash": [f"h{i}" for i in range(count)],
        "input_caption": [f"input {i}" for i in range(count)],
        "output_caption": [f"output {i}" for i in range(count)],
    }


EMU_FEATURES = datasets.Features({
    "instruction": datasets.Value("string"),
    "image": datasets.Image(),
    "task": datasets.Value("string"),
    "split": datasets.Value("string"),
    "idx": datasets.Value("int64"),
    "hash": datasets.Value("string"),
    "input_caption": datasets.Value("string"),
    "output_caption": datasets.Value("string"),
})


def magicbrush_rows():
    """Rows with the columns of osunlp/MagicBrush: two turns of one image, one of another."""
    sources, masks, targets = tiny_images(3, 1), tiny_images(3, 2), tiny_images(3, 3)
    return {
        "img_id": ["327726", "327726", "84"],
        "turn_index": [1, 2, 1],
        "source_img": sources,
        "mask_img": masks,
        "instruction": ["put a hat on the dog", "make the hat red", "add a boat"],
        "target_img": targets,
    }


MAGICBRUSH_FEATURES = datasets.Features({
    "img_id": datasets.Value("string"),
    "turn_index": datasets.Value("int32"),
    "source_img": datasets.Image(),
    "mask_img": datasets.Image(),
    "instruction": datasets.Value("string"),
    "target_img": datasets.Image(),
})


@pytest.fixture
def emu_edit_copy(tmp_path):
    splits = datasets.DatasetDict({
        "validation": datasets.Dataset.from_dict(emu_edit_rows(2, seed=5), features=EMU_FEATURES),
        "test": datasets.Dataset.from_dict(emu_edit_rows(3), features=EMU_FEATURES),
    })
    splits.save_to_disk(tmp_path / "emu_edit")
    return tmp_path / "emu_edit"


def test_emu_edit_mapping(emu_edit_copy):
    items = data.load_emu_edit(emu_edit_copy, split="test")
    assert len(items) == 3
    item = items[1]
    assert item.id == "11"
    assert item.image_path is None
    assert item.instruction == "make it style 1"
    assert (item.input_caption, item.output_caption) == ("input 1", "output 1")
    assert item.metadata == {"task": "global", "hash": "h1"}
    assert item.load_image().size == (24, 16)
    expected = np.asarray(emu_edit_rows(3)["image"][1])
    assert np.array_equal(np.asarray(item.load_image()), expected)


def test_emu_edit_split_choice(emu_edit_copy):
    assert len(data.load_emu_edit(emu_edit_copy, split="validation")) == 2
    with pytest.raises(ValueError, match=r"split 'dev' not found.*\['validation', 'test'\]"):
        data.load_emu_edit(emu_edit_copy, split="dev")


def test_dataset_items_sequence(emu_edit_copy):
    items = data.load_emu_edit(emu_edit_copy)
    assert items[-1].id == "12"
    assert [item.id for item in items[0:2]] == ["10", "11"]
    assert [item.id for item in items] == ["10", "11", "12"]
    with pytest.raises(IndexError, match="index 3 out of range"):
        items[3]


def test_magicbrush_mapping(tmp_path):
    datasets.Dataset.from_dict(magicbrush_rows(), features=MAGICBRUSH_FEATURES).save_to_disk(tmp_path / "magicbrush")
    items = data.load_magicbrush(tmp_path / "magicbrush", split="test")
    assert [item.id for item in items] == ["327726-1", "327726-2", "84-1"]
    item = items[1]
    assert item.instruction == "make the hat red"
    assert (item.input_caption, item.output_caption) == (None, None)
    assert item.metadata == {"img_id": "327726", "turn_index": 2}
    assert np.array_equal(np.asarray(item.load_image()), np.asarray(tiny_images(3, 1)[1]))
    # Only the mapped columns are kept, so masks and targets are never decoded.
    assert items.dataset.column_names == ["source_img", "instruction", "img_id", "turn_index"]


def test_magicbrush_hub_test_split_raises():
    with pytest.raises(ValueError, match="no test split on the Hub"):
        data.load_magicbrush(data.MAGICBRUSH_HUB_ID, split="test")


def test_caption_columns_are_optional_mapping(tmp_path):
    rows = magicbrush_rows()
    rows["caption"] = ["a dog", "a dog in a hat", "   "]
    datasets.Dataset.from_dict(rows).save_to_disk(tmp_path / "with_captions")
    columns = ColumnMapping(image="source_img", instruction="instruction", id=("img_id", "turn_index"), input_caption="caption")
    items = data.load_magicbrush(tmp_path / "with_captions", columns=columns)
    assert [item.input_caption for item in items] == ["a dog", "a dog in a hat", None]


def test_missing_column_raises(tmp_path):
    datasets.Dataset.from_dict(magicbrush_rows(), features=MAGICBRUSH_FEATURES).save_to_disk(tmp_path / "magicbrush")
    with pytest.raises(ValueError, match=r"no column 'image', 'idx'.*source_img"):
        data.load_emu_edit(tmp_path / "magicbrush")


def test_duplicate_ids_raise(tmp_path):
    rows = emu_edit_rows()
    rows["idx"] = [10, 10, 11]
    datasets.Dataset.from_dict(rows, features=EMU_FEATURES).save_to_disk(tmp_path / "emu")
    with pytest.raises(ValueError, match=r"repeated: \['10'\]"):
        data.load_emu_edit(tmp_path / "emu")
    numbered = data.load_emu_edit(tmp_path / "emu", columns=ColumnMapping(image="image", instruction="instruction"))
    assert [item.id for item in numbered] == ["00000", "00001", "00002"]


def test_empty_instruction_rows(tmp_path):
    rows = emu_edit_rows()
    rows["instruction"][1] = " "
    datasets.Dataset.from_dict(rows, features=EMU_FEATURES).save_to_disk(tmp_path / "emu")
    with pytest.raises(ValueError, match=r"1 rows with an empty instruction \(rows \[1\]\)"):
        data.load_emu_edit(tmp_path / "emu")
    items = data.load_emu_edit(tmp_path / "emu", drop_empty_instructions=True)
    assert [item.id for item in items] == ["10", "12"]
    assert items[1].instruction == "make it style 2"


def test_non_image_column_raises(tmp_path):
    rows = emu_edit_rows()
    datasets.Dataset.from_dict(rows, features=EMU_FEATURES).save_to_disk(tmp_path / "emu")
    columns = ColumnMapping(image="hash", instruction="instruction")
    with pytest.raises(ValueError, match="column 'hash' of row 0 contains str"):
        data.load_emu_edit(tmp_path / "emu", columns=columns)[0]


def test_parquet_file_and_folder(tmp_path):
    dataset = datasets.Dataset.from_dict(emu_edit_rows(), features=EMU_FEATURES)
    (tmp_path / "repo" / "data").mkdir(parents=True)
    dataset.to_parquet(tmp_path / "repo" / "data" / "test-00000-of-00001.parquet")
    cache = tmp_path / "cache"
    from_file = data.load_emu_edit(tmp_path / "repo" / "data" / "test-00000-of-00001.parquet", cache_dir=cache)
    from_folder = data.load_emu_edit(tmp_path / "repo", split="test", cache_dir=cache)
    assert [item.id for item in from_file] == ["10", "11", "12"]
    assert [item.output_caption for item in from_folder] == ["output 0", "output 1", "output 2"]


def test_missing_dataset_path_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset not found.*no_copy"):
        data.load_emu_edit(tmp_path / "no_copy")


# ---------------------------------------------------------------- smoke photos


def test_smoke_items():
    items = data.smoke_items()
    assert [item.id for item in items] == ["astronaut", "coffee", "chelsea", "rocket"]
    for item in items:
        assert item.instruction
        assert item.input_caption
        assert item.output_caption
        assert item.load_image().mode == "RGB"
    assert items[0].load_image().size == (512, 512)


def test_smoke_config_errors(tmp_path):
    unknown = write(tmp_path / "unknown.yaml", "items:\n  - {image: moonwalk, instruction: a, caption: b, output_caption: c}\n")
    with pytest.raises(ConfigError, match="unknown scikit-image photo 'moonwalk'"):
        data.smoke_items(unknown)
    missing = write(tmp_path / "missing.yaml", "items:\n  - {image: coffee, instruction: a}\n")
    with pytest.raises(ConfigError, match=r"items\[0\].*missing \['caption', 'output_caption'\]"):
        data.smoke_items(missing)
    empty = write(tmp_path / "empty.yaml", "items: []\n")
    with pytest.raises(ConfigError, match="non-empty list"):
        data.smoke_items(empty)
