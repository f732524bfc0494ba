"""Decathlon and ImageNet-to-Sketch loaders on tiny fake copies of the official layouts, offline."""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from common.download import ChecksumError
from modulation_adapters import data
from modulation_adapters.data import (
    DECATHLON_CLASSES,
    DECATHLON_DOMAINS,
    DECATHLON_MEAN_STD,
    DECATHLON_NO_FLIP,
    SKETCH_CLASSES,
    UNLABELLED,
    DecathlonDataset,
    SketchDataset,
    decathlon_transforms,
    num_classes,
    prepare_decathlon,
    sketch_split_folder,
    sketch_transforms,
)

pytestmark = pytest.mark.timeout(60)

# Per-domain category id offsets, as in the devkit (DTD's ids are 40000001 to 40000047).
CATEGORY_OFFSET = {"dtd": 40000000, "svhn": 90000000, "imagenet12": 60000000}
# Labels of the fake images per split; None writes a test file without annotations, like the devkit's.
FAKE_LABELS = {"train": [0, 46, 3, 3], "val": [5, 0], "test": None}
SVHN_LABELS = {"train": [9, 0, 1], "val": [2], "test": None}
TEST_LABELS = {"dtd": [7, 1, 46]}


def _save_image(path: Path, seed: int, size: tuple[int, int] = (90, 72)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def _file_name(domain: str, split: str, index: int) -> str:
    return f"data/{domain}/{split}/{index + 1:06d}.jpg"


def _annotation_file(domain: str, split: str, labels: list[int] | None, count: int | None = None) -> dict:
    """A COCO-style file whose categories are listed in reverse id order, so that list order and id order differ."""
    offset = CATEGORY_OFFSET[domain]
    count = len(labels) if labels is not None else count
    first_id = {"train": 1000, "val": 2000, "test": 3000}[split]
    images = [{"id": first_id + i, "file_name": _file_name(domain, split, i), "width": 90, "height": 72} for i in range(count)]
    categories = [{"id": offset + k + 1, "name": f"class{k}"} for k in reversed(range(DECATHLON_CLASSES[domain]))]
    annotations = []
    if labels is not None:
        annotations = [
            {"id": first_id + i, "image_id": first_id + i, "category_id": offset + label + 1} for i, label in enumerate(labels)
        ]
    return {"images": images, "annotations": annotations, "categories": categories}


def _write_json(path: Path, content: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content))
    return path


def _write_domain(root: Path, domain: str, labels: dict[str, list[int] | None], test_count: int = 3) -> None:
    """Write the devkit annotations and the images of one fake domain under root."""
    for split, split_labels in labels.items():
        name = f"{domain}_test_stripped.json" if split == "test" else f"{domain}_{split}.json"
        content = _annotation_file(domain, split, split_labels, count=test_count)
        _write_json(root / "annotations" / name, content)
        for index, image in enumerate(content["images"]):
            _save_image(root / image["file_name"], seed=index + 17 * len(split))


@pytest.fixture(scope="module")
def decathlon_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("decathlon")
    _write_domain(root, "dtd", FAKE_LABELS)
    _write_domain(root, "svhn", SVHN_LABELS)
    _write_json(root / "test_labels" / "dtd_test.json", _annotation_file("dtd", "test", TEST_LABELS["dtd"]))
    return root


@pytest.fixture
def no_mirror(monkeypatch):
    """Ignore the caller's REPRO_MIRROR setting."""
    monkeypatch.delenv("REPRO_MIRROR", raising=False)


@pytest.fixture
def offline(monkeypatch, no_mirror):
    """Fail the test if anything tries to open a URL."""

    def reject_url_access(*args, **kwargs):
        raise AssertionError("the test tried to open a URL")

    monkeypatch.setattr(urllib.request, "urlopen", reject_url_access)


# Labels and items.


def test_labels_follow_sorted_category_ids(decathlon_root) -> None:
    dataset = DecathlonDataset(decathlon_root, "dtd", "train")

    assert dataset.targets == FAKE_LABELS["train"]
    assert dataset.has_labels
    assert dataset.num_classes == 47
    assert dataset.category_ids[0] == 40000001
    assert dataset.category_ids[46] == 40000047
    assert dataset.image_ids == [1000, 1001, 1002, 1003]
    assert dataset.paths[1] == decathlon_root / "data" / "dtd" / "train" / "000002.jpg"


def test_item_is_normalised_64px_tensor(decathlon_root) -> None:
    image, label = DecathlonDataset(decathlon_root, "dtd", "val")[1]

    assert image.shape == (3, 64, 64)
    assert image.dtype == torch.float32
    assert label == 0


def test_test_split_without_labels(decathlon_root) -> None:
    dataset = DecathlonDataset(decathlon_root, "dtd", "test")

    assert not dataset.has_labels
    assert dataset.annotation_file.name == "dtd_test_stripped.json"
    assert dataset.targets == [UNLABELLED] * 3
    assert dataset[0][1] == -1
    assert dataset.num_classes == 47


@pytest.mark.parametrize("labels_path", ["test_labels", "test_labels/dtd_test.json"])
def test_test_split_with_published_labels(decathlon_root, labels_path) -> None:
    dataset = DecathlonDataset(decathlon_root, "dtd", "test", test_labels=decathlon_root / labels_path)

    assert dataset.has_labels
    assert dataset.targets == TEST_LABELS["dtd"]
    assert dataset[2][1] == 46


def test_test_labels_file_without_labels(decathlon_root, tmp_path) -> None:
    unlabelled = _write_json(tmp_path / "dtd_test.json", _annotation_file("dtd", "test", None, count=3))

    with pytest.raises(ValueError, match=r"dtd_test.json has no annotations"):
        DecathlonDataset(decathlon_root, "dtd", "test", test_labels=unlabelled)


def test_missing_test_labels_file(decathlon_root, tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=r"test labels .*nowhere/dtd_test.json not found.*--test-labels"):
        DecathlonDataset(decathlon_root, "dtd", "test", test_labels=tmp_path / "nowhere" / "dtd_test.json")


def test_test_labels_on_train_split(decathlon_root) -> None:
    with pytest.raises(ValueError, match=r"test_labels applies to split='test' only, got split='train'"):
        DecathlonDataset(decathlon_root, "dtd", "train", test_labels=decathlon_root / "test_labels")


def test_custom_transform_is_used(decathlon_root) -> None:
    dataset = DecathlonDataset(decathlon_root, "dtd", "train", transform=lambda image: image.size)

    assert dataset[0] == ((90, 72), 0)


# Transforms.


def _half_dark_image() -> Image.Image:
    """A 90 x 72 image whose left half is black and right half white."""
    pixels = np.zeros((72, 90, 3), dtype=np.uint8)
    pixels[:, 45:] = 255
    return Image.fromarray(pixels)


def _left_is_dark(tensor: torch.Tensor) -> bool:
    width = tensor.shape[-1]
    return bool(tensor[..., : width // 4].mean() < tensor[..., -width // 4 :].mean())


@pytest.mark.parametrize("domain", DECATHLON_DOMAINS)
@pytest.mark.parametrize("train", [True, False])
def test_decathlon_transform_sizes(domain, train) -> None:
    size = 72 if domain in DECATHLON_NO_FLIP else 64

    assert decathlon_transforms(domain, train)(_half_dark_image()).shape == (3, size, size)
    assert decathlon_transforms(domain, train, no_flip_size=64)(_half_dark_image()).shape == (3, 64, 64)


@pytest.mark.parametrize("domain", sorted(DECATHLON_NO_FLIP))
def test_no_flip_domains_never_flip(domain) -> None:
    torch.manual_seed(0)
    train_transform = decathlon_transforms(domain, train=True)
    expected = decathlon_transforms(domain, train=False)(_half_dark_image())

    for _ in range(30):
        image = train_transform(_half_dark_image())
        assert _left_is_dark(image)
        assert torch.equal(image, expected)


def test_flip_domain_flips_sometimes() -> None:
    torch.manual_seed(0)
    train_transform = decathlon_transforms("dtd", train=True)

    orientations = {_left_is_dark(train_transform(_half_dark_image())) for _ in range(30)}

    assert orientations == {True, False}


def test_normalisation_uses_domain_statistics() -> None:
    assert set(DECATHLON_MEAN_STD) == set(DECATHLON_DOMAINS)
    mean, std = DECATHLON_MEAN_STD["svhn"]
    colour = tuple(round(value * 255) for value in mean)

    image = decathlon_transforms("svhn", train=False)(Image.new("RGB", (72, 72), colour))

    assert image.abs().max() < 0.05
    assert std == pytest.approx((0.19803012, 0.20101562, 0.19703614))


def test_invalid_no_flip_size() -> None:
    with pytest.raises(ValueError, match=r"no_flip_size must be .* \[1, 72\], got 80"):
        decathlon_transforms("svhn", True, no_flip_size=80)


# Errors.


def test_unknown_domain_lists_valid_names(decathlon_root) -> None:
    with pytest.raises(ValueError, match=r"Unknown Decathlon domain 'flowers'.*'vgg-flowers'"):
        DecathlonDataset(decathlon_root, "flowers", "train")


def test_unknown_split(decathlon_root) -> None:
    with pytest.raises(ValueError, match=r"Unknown Decathlon split 'valid'.*'train', 'val', 'test'"):
        DecathlonDataset(decathlon_root, "dtd", "valid")


def test_missing_root(tmp_path) -> None:
    root = tmp_path / "absent"
    expected = rf"root {re.escape(str(root))} not found.*python -m modulation_adapters.data --root {re.escape(str(root))}"

    with pytest.raises(FileNotFoundError, match=expected):
        DecathlonDataset(root, "dtd", "train")


def test_missing_annotation_file(decathlon_root) -> None:
    expected = rf"{re.escape(str(decathlon_root))}/annotations/aircraft_train.json not found.*--domains aircraft"

    with pytest.raises(FileNotFoundError, match=expected):
        DecathlonDataset(decathlon_root, "aircraft", "train")


def test_missing_images_named_and_counted(tmp_path) -> None:
    _write_domain(tmp_path, "dtd", {"train": FAKE_LABELS["train"]})
    (tmp_path / "data" / "dtd" / "train" / "000002.jpg").unlink()
    (tmp_path / "data" / "dtd" / "train" / "000004.jpg").unlink()

    with pytest.raises(FileNotFoundError) as caught:
        DecathlonDataset(tmp_path, "dtd", "train")

    message = str(caught.value)
    assert "2 of 4 images listed in" in message
    assert f"the first is {tmp_path}/data/dtd/train/000002.jpg" in message
    assert f"--root {tmp_path} --domains dtd" in message


def test_category_outside_class_count(tmp_path) -> None:
    content = _annotation_file("dtd", "train", [0, 1])
    content["annotations"][1]["category_id"] = 40000048
    _write_json(tmp_path / "annotations" / "dtd_train.json", content)

    with pytest.raises(ValueError, match=r"image 1001 has category_id 40000048.*outside 0\.\.46"):
        DecathlonDataset(tmp_path, "dtd", "train")


def test_category_count_differs_from_domain(tmp_path) -> None:
    content = _annotation_file("dtd", "train", [0, 1])
    content["categories"] = content["categories"][:5]
    _write_json(tmp_path / "annotations" / "dtd_train.json", content)

    with pytest.raises(ValueError, match=r"lists 5 categories, but the Decathlon domain 'dtd' has 47 classes"):
        DecathlonDataset(tmp_path, "dtd", "train")


def test_partly_labelled_file(tmp_path) -> None:
    content = _annotation_file("dtd", "train", [0, 1, 2])
    del content["annotations"][1]
    _write_json(tmp_path / "annotations" / "dtd_train.json", content)

    with pytest.raises(ValueError, match=r"1 of 3 images have no annotation, the first is image id 1001"):
        DecathlonDataset(tmp_path, "dtd", "train")


def test_training_file_without_labels(tmp_path) -> None:
    _write_json(tmp_path / "annotations" / "dtd_train.json", _annotation_file("dtd", "train", None, count=2))

    with pytest.raises(ValueError, match=r"dtd_train.json has no annotations, so the dtd train split has no labels"):
        DecathlonDataset(tmp_path, "dtd", "train")


def test_invalid_json(tmp_path) -> None:
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "dtd_val.json").write_text("{not json")

    with pytest.raises(ValueError, match=r"dtd_val.json is not valid JSON"):
        DecathlonDataset(tmp_path, "dtd", "val")


# prepare_decathlon on fake archives.


def _tar_bytes(files: dict[str, bytes], mode: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as archive:
        for name, content in files.items():
            member = tarfile.TarInfo(name)
            member.size = len(content)
            archive.addfile(member, io.BytesIO(content))
    return buffer.getvalue()


def _folder_files(folder: Path, prefix: str) -> dict[str, bytes]:
    return {f"{prefix}/{path.relative_to(folder).as_posix()}": path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.fixture(scope="module")
def fake_archives(tmp_path_factory, decathlon_root) -> dict[str, Path]:
    """Archives in the layout of the official ones: devkit, data (one tar per domain), ImageNet-12 and test labels."""
    folder = tmp_path_factory.mktemp("archives")
    imagenet_root = tmp_path_factory.mktemp("imagenet")
    _write_domain(imagenet_root, "imagenet12", {"train": [999, 0], "val": [5]}, test_count=1)
    annotations = {
        **_folder_files(decathlon_root / "annotations", "decathlon-1.0/annotations"),
        **_folder_files(imagenet_root / "annotations", "decathlon-1.0/annotations"),
    }
    domain_tars = {
        f"{domain}.tar": _tar_bytes(_folder_files(decathlon_root / "data" / domain, domain), "w") for domain in ("dtd", "svhn")
    }
    paths = {
        "devkit": folder / "decathlon-1.0-devkit.tar.gz",
        "data": folder / "decathlon-1.0-data.tar.gz",
        "imagenet": folder / "decathlon-1.0-data-imagenet.tar",
        "labels": folder / "labels_test.zip",
    }
    paths["devkit"].write_bytes(_tar_bytes(annotations, "w:gz"))
    paths["data"].write_bytes(_tar_bytes(domain_tars, "w:gz"))
    paths["imagenet"].write_bytes(_tar_bytes(_folder_files(imagenet_root / "data" / "imagenet12", "imagenet12"), "w"))
    with zipfile.ZipFile(paths["labels"], "w") as archive:
        archive.write(decathlon_root / "test_labels" / "dtd_test.json", "dtd_test.json")
    return paths


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _mirror(tmp_path: Path, fake_archives: dict[str, Path]) -> Path:
    mirror = tmp_path / "mirror"
    (mirror / "decathlon").mkdir(parents=True)
    for path in fake_archives.values():
        (mirror / "decathlon" / path.name).write_bytes(path.read_bytes())
    return mirror


def test_prepare_from_mirror(tmp_path, fake_archives, offline, monkeypatch) -> None:
    monkeypatch.setenv("REPRO_MIRROR", str(_mirror(tmp_path, fake_archives)))
    monkeypatch.setattr(data, "TEST_LABELS_SHA256", _sha256(fake_archives["labels"]))
    checksums = {"devkit_sha256": _sha256(fake_archives["devkit"]), "data_sha256": _sha256(fake_archives["data"])}
    root, archives = tmp_path / "decathlon", tmp_path / "archives"

    returned = prepare_decathlon(root, ["dtd", "svhn"], **checksums, test_labels=True, archive_dir=archives)

    assert returned == root
    assert DecathlonDataset(root, "dtd", "train").targets == FAKE_LABELS["train"]
    assert DecathlonDataset(root, "svhn", "val")[0][0].shape == (3, 72, 72)
    assert DecathlonDataset(root, "dtd", "test", test_labels=root / "test_labels").targets == TEST_LABELS["dtd"]
    assert sorted(path.name for path in (root / "data").iterdir()) == ["dtd", "svhn"]
    for name in ("decathlon-1.0-devkit.tar.gz", "decathlon-1.0-data.tar.gz", "labels_test.zip"):
        assert (archives / "decathlon" / name).is_file()


def test_prepare_again_reuses_everything(tmp_path, fake_archives, offline, monkeypatch) -> None:
    monkeypatch.setenv("REPRO_MIRROR", str(_mirror(tmp_path, fake_archives)))
    checksums = {"devkit_sha256": _sha256(fake_archives["devkit"]), "data_sha256": _sha256(fake_archives["data"])}
    root, archives = tmp_path / "decathlon", tmp_path / "archives"
    prepare_decathlon(root, "dtd", **checksums, archive_dir=archives)
    monkeypatch.delenv("REPRO_MIRROR")
    marker = root / "data" / "dtd" / "train" / "kept.txt"
    marker.write_text("kept")

    prepare_decathlon(root, "dtd", **checksums, archive_dir=archives)

    assert marker.read_text() == "kept"
    assert len(DecathlonDataset(root, "dtd", "val")) == 2


def test_prepare_checksum_mismatch_from_url(tmp_path, fake_archives, no_mirror, monkeypatch) -> None:
    devkit_url = fake_archives["devkit"].as_uri()
    monkeypatch.setattr(data, "DEVKIT_URL", devkit_url)
    archives = tmp_path / "archives"

    with pytest.raises(ChecksumError, match=rf"The file from {re.escape(devkit_url)} does not match the expected checksum"):
        prepare_decathlon(tmp_path / "decathlon", "dtd", devkit_sha256="0" * 64, archive_dir=archives)

    assert not (archives / "decathlon" / "decathlon-1.0-devkit.tar.gz").exists()


def test_prepare_keeps_unverified_archive(tmp_path, fake_archives, offline) -> None:
    archives = tmp_path / "archives"
    stored = archives / "decathlon" / "decathlon-1.0-devkit.tar.gz"
    stored.parent.mkdir(parents=True)
    stored.write_bytes(b"truncated download")

    with pytest.raises(ChecksumError, match=r"already exists but does not match.*left untouched"):
        prepare_decathlon(tmp_path / "decathlon", "dtd", devkit_sha256=_sha256(fake_archives["devkit"]), archive_dir=archives)

    assert stored.read_bytes() == b"truncated download"


def test_prepare_imagenet_needs_archive(tmp_path, fake_archives, offline, monkeypatch) -> None:
    monkeypatch.setenv("REPRO_MIRROR", str(_mirror(tmp_path, fake_archives)))
    archives = tmp_path / "archives"

    with pytest.raises(FileNotFoundError) as caught:
        prepare_decathlon(tmp_path / "decathlon", "imagenet12", devkit_sha256=_sha256(fake_archives["devkit"]), archive_dir=archives)

    message = str(caught.value)
    assert f"save it as {archives}/decathlon/decathlon-1.0-data-imagenet.tar" in message
    assert "imagenet_archive=" in message


def test_prepare_imagenet_from_local_archive(tmp_path, fake_archives, offline, monkeypatch) -> None:
    monkeypatch.setenv("REPRO_MIRROR", str(_mirror(tmp_path, fake_archives)))
    root = tmp_path / "decathlon"

    prepare_decathlon(
        root,
        ["imagenet12"],
        devkit_sha256=_sha256(fake_archives["devkit"]),
        imagenet_archive=fake_archives["imagenet"],
        imagenet_sha256=_sha256(fake_archives["imagenet"]),
        archive_dir=tmp_path / "archives",
    )

    dataset = DecathlonDataset(root, "imagenet12", "train")
    assert dataset.targets == [999, 0]
    assert dataset[0][0].shape == (3, 64, 64)
    assert fake_archives["imagenet"].is_file()
    assert not (root / "data" / ".imagenet12.unpacked").exists()


def test_prepare_imagenet_checksum_mismatch(tmp_path, fake_archives, offline, monkeypatch) -> None:
    monkeypatch.setenv("REPRO_MIRROR", str(_mirror(tmp_path, fake_archives)))
    before = fake_archives["imagenet"].read_bytes()

    with pytest.raises(ChecksumError, match=r"decathlon-1.0-data-imagenet.tar does not match .*imagenet_sha256="):
        prepare_decathlon(
            tmp_path / "decathlon",
            ["imagenet12"],
            devkit_sha256=_sha256(fake_archives["devkit"]),
            imagenet_archive=fake_archives["imagenet"],
            archive_dir=tmp_path / "archives",
        )

    assert fake_archives["imagenet"].read_bytes() == before


def test_prepare_unknown_domain(tmp_path, offline) -> None:
    with pytest.raises(ValueError, match=r"Unknown Decathlon domain 'cifar10'.*'cifar100'"):
        prepare_decathlon(tmp_path, ["dtd", "cifar10"])


def test_command_line_reports_unknown_domain(tmp_path, offline, capsys) -> None:
    assert data.main(["--root", str(tmp_path), "--domains", "mnist"]) == 2
    assert "Unknown Decathlon domain 'mnist'" in capsys.readouterr().err


# ImageNet-to-Sketch.


@pytest.fixture(scope="module")
def sketch_root(tmp_path_factory) -> Path:
    """flowers with 102 training classes of one image each, and test images for classes 1, 2 and 101 only."""
    root = tmp_path_factory.mktemp("sketch")
    for label in range(SKETCH_CLASSES["flowers"]):
        _save_image(root / "flowers" / "train" / f"class{label:03d}" / "a.png", seed=label, size=(40, 30))
    for label in (1, 2, 101):
        _save_image(root / "flowers" / "test" / f"class{label:03d}" / "b.png", seed=label, size=(40, 30))
    return root


def test_sketch_labels_follow_training_classes(sketch_root) -> None:
    dataset = SketchDataset(sketch_root, "flowers", "test")

    assert len(dataset.classes) == 102
    assert dataset.targets == [1, 2, 101]
    assert dataset[2][1] == 101


@pytest.mark.parametrize("split", ["train", "test"])
def test_sketch_items_are_224px(sketch_root, split) -> None:
    image, _ = SketchDataset(sketch_root, "flowers", split)[0]

    assert image.shape == (3, 224, 224)


@pytest.mark.parametrize("domain", ["cubs_cropped", "stanford_cars_cropped"])
@pytest.mark.parametrize("train", [True, False])
def test_cropped_domains_resize_whole_image(domain, train) -> None:
    image = sketch_transforms(domain, train)(_half_dark_image())

    assert image.shape == (3, 224, 224)
    if not train:
        assert _left_is_dark(image)


def test_imagenet_test_split_is_val_folder(tmp_path) -> None:
    (tmp_path / "imagenet" / "val").mkdir(parents=True)

    assert sketch_split_folder(tmp_path, "imagenet", "test") == tmp_path / "imagenet" / "val"


def test_sketch_unknown_domain(sketch_root) -> None:
    with pytest.raises(ValueError, match=r"Unknown ImageNet-to-Sketch domain 'cubs'.*'cubs_cropped'"):
        SketchDataset(sketch_root, "cubs", "train")


def test_sketch_unknown_split(sketch_root) -> None:
    with pytest.raises(ValueError, match=r"Unknown ImageNet-to-Sketch split 'val'"):
        SketchDataset(sketch_root, "flowers", "val")


def test_sketch_missing_folder_shows_layout(sketch_root) -> None:
    folder = re.escape(f"{sketch_root}/wikiart/train")
    expected = rf"{folder} not found\. Expected the layout {folder}/<class>/<image>"

    with pytest.raises(FileNotFoundError, match=expected) as caught:
        SketchDataset(sketch_root, "wikiart", "train")

    assert data.PIGGYBACK_DATA_PAGE in str(caught.value)


def test_sketch_empty_class_folder(tmp_path, sketch_root) -> None:
    for label in range(102):
        (tmp_path / "flowers" / "train" / f"class{label:03d}").mkdir(parents=True)
        if label != 7:
            _save_image(tmp_path / "flowers" / "train" / f"class{label:03d}" / "a.png", seed=0, size=(8, 8))

    with pytest.raises(FileNotFoundError, match=r"1 class folders in .*flowers/train contain no image file.*'class007'"):
        SketchDataset(tmp_path, "flowers", "train")


def test_sketch_class_count_mismatch(tmp_path) -> None:
    _save_image(tmp_path / "sketches" / "train" / "airplane" / "a.png", seed=0, size=(8, 8))

    with pytest.raises(ValueError, match=r"has 1 class folders, but the ImageNet-to-Sketch domain 'sketches' has 250"):
        SketchDataset(tmp_path, "sketches", "train")


def test_sketch_test_class_missing_from_training(tmp_path, sketch_root) -> None:
    root = tmp_path / "copy"
    (root / "flowers").mkdir(parents=True)
    (root / "flowers" / "train").symlink_to(sketch_root / "flowers" / "train")
    _save_image(root / "flowers" / "test" / "class999" / "b.png", seed=0, size=(8, 8))

    with pytest.raises(ValueError, match=r"1 class folders that the flowers train/ folder lacks.*'class999'"):
        SketchDataset(root, "flowers", "test")


# num_classes.


def test_published_class_counts() -> None:
    assert num_classes("decathlon", "omniglot") == 1623
    assert num_classes("decathlon", "daimlerpedcls") == 2
    assert num_classes("imagenet_to_sketch", "wikiart") == 195
    assert num_classes("imagenet_to_sketch", "stanford_cars_cropped") == 196


def test_class_counts_checked_against_root(decathlon_root, sketch_root) -> None:
    assert num_classes("decathlon", "dtd", root=decathlon_root) == 47
    assert num_classes("imagenet_to_sketch", "flowers", root=sketch_root) == 102


def test_num_classes_rejects_unknown_names() -> None:
    with pytest.raises(ValueError, match=r"Unknown benchmark 'sketch'.*'imagenet_to_sketch'"):
        num_classes("sketch", "flowers")
    with pytest.raises(ValueError, match=r"Unknown Decathlon domain 'flowers'"):
        num_classes("decathlon", "flowers")
    with pytest.raises(ValueError, match=r"Unknown ImageNet-to-Sketch domain 'vgg-flowers'"):
        num_classes("imagenet_to_sketch", "vgg-flowers")
