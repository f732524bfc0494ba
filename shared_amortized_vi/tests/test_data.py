"""Omniglot preparation from the mirror's array copy, and task sampling through learn2learn."""

from __future__ import annotations

import csv
import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from common.download import ChecksumError
from shared_amortized_vi import data
from shared_amortized_vi.data import ImageClasses, OmniglotSet, TaskSampler, TaskSpec, check_task


def fake_mirror(folder, characters=(3, 2)):
    """A mirror folder in the array format of ../shared/data/omniglot with a few characters per set."""
    rng = np.random.default_rng(0)
    omniglot = folder / "omniglot"
    omniglot.mkdir(parents=True)
    rows, sets = [], {}
    for (name, count) in zip(("background", "evaluation"), characters):
        images = rng.random((count, data.DRAWINGS, 105, 105)) > 0.1
        np.savez(omniglot / f"images_{name}.npz", images=images, labels=np.repeat(np.arange(count)[:, None], 20, 1))
        for index in range(count):
            alphabet = f"Alphabet_{index % 2}"
            rows.append({"set": name, "array_index": index, "char_id": index + 1, "alphabet": alphabet,
                         "character_folder": f"character{index + 1:02d}",
                         "png_pattern": f"images_{name}/{alphabet}/character{index + 1:02d}/{index + 1:04d}_XX.png"})
        sets[name] = images
    with open(omniglot / data.INDEX_FILE, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return sets


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def small_sets(monkeypatch, tmp_path):
    mirror = tmp_path / "mirror"
    arrays = fake_mirror(mirror)
    specs = {name: OmniglotSet(name, len(images), "0" * 32, sha256(mirror / "omniglot" / f"images_{name}.npz"))
             for name, images in arrays.items()}
    monkeypatch.setattr(data, "OMNIGLOT_SETS", specs)
    monkeypatch.setattr(data, "INDEX_SHA256", sha256(mirror / "omniglot" / data.INDEX_FILE))
    return mirror, arrays


def test_mirror_arrays_give_the_official_layout_losslessly(small_sets, tmp_path) -> None:
    mirror, arrays = small_sets
    base = data.prepare_omniglot(tmp_path / "root", mirrors=[str(mirror)])
    png = base / "images_background" / "Alphabet_1" / "character02" / "0002_07.png"
    assert np.array_equal(np.asarray(Image.open(png)), arrays["background"][1, 6])
    assert data._count_characters(base / "images_evaluation") == 2


def test_load_omniglot_inverts_and_resizes(small_sets, tmp_path) -> None:
    mirror, arrays = small_sets
    loaded = data.load_omniglot(tmp_path / "root", image_size=28, mirrors=[str(mirror)])
    assert loaded["background"].shape == (3, 20, 28, 28)
    # The fake drawings are mostly background (True = white), so after inversion most pixels are dark.
    assert loaded["background"].float().mean() < 64


def test_corrupt_mirror_array_is_refused_and_kept(small_sets, tmp_path) -> None:
    mirror, _ = small_sets
    arrays = mirror / "omniglot" / "images_background.npz"
    arrays.write_bytes(arrays.read_bytes()[:1000])
    with pytest.raises(ChecksumError, match="images_background.npz has SHA-256"):
        data.prepare_omniglot(tmp_path / "root", mirrors=[str(mirror)])
    assert arrays.stat().st_size == 1000


def test_incomplete_folder_is_named_and_not_deleted(small_sets, tmp_path) -> None:
    mirror, _ = small_sets
    partial = tmp_path / "root" / "omniglot" / "images_background" / "Alphabet_0" / "character01"
    partial.mkdir(parents=True)
    with pytest.raises(ValueError, match="contains 1 characters, expected 3. Move it away"):
        data.prepare_omniglot(tmp_path / "root", mirrors=[str(mirror)])
    assert partial.exists()


def test_with_rotations_makes_four_classes_per_character() -> None:
    images = torch.arange(2 * 3 * 4 * 4, dtype=torch.uint8).view(2, 3, 4, 4)
    rotated = data.with_rotations(images)
    assert rotated.shape == (8, 3, 4, 4)
    assert torch.equal(rotated[2 + 1], torch.rot90(images[1], 1, dims=(-2, -1)))


def classes(count=12, per_class=20, size=8):
    return ImageClasses(torch.randint(0, 256, (count, per_class, size, size), dtype=torch.uint8))


def test_task_sizes_per_class() -> None:
    sampler = TaskSampler(classes(), TaskSpec(ways=5, shots=2, queries=3), "train")
    support_x, support_y, query_x, query_y = sampler.sample()
    assert support_x.shape == (10, 1, 8, 8)
    assert query_x.shape == (15, 1, 8, 8)
    assert torch.equal(torch.bincount(support_y), torch.full((5,), 2))
    assert torch.equal(torch.bincount(query_y), torch.full((5,), 3))


def test_task_images_distinct_labels_consistent() -> None:
    dataset = classes(count=6, per_class=20, size=3)
    dataset.images = torch.arange(6 * 20 * 9).view(6, 20, 3, 3).to(torch.int32)  # every image unique
    sampler = TaskSampler(dataset, TaskSpec(ways=3, shots=2, queries=4), "train")
    support_x, support_y, query_x, query_y = sampler.sample()
    ids = [int(x.flatten()[0]) for x in torch.cat([support_x, query_x]) * 255]
    assert len(set(ids)) == len(ids)
    source_class = {label: set() for label in range(3)}
    for x, y in zip(torch.cat([support_x, query_x]), torch.cat([support_y, query_y])):
        source_class[int(y)].add(int(x.flatten()[0] * 255) // (20 * 9))
    assert all(len(found) == 1 for found in source_class.values())


def test_fixed_tasks_repeat_across_samplers() -> None:
    dataset = classes()
    first = TaskSampler(dataset, TaskSpec(5, 1, 2), "test", num_tasks=5, seed=3)
    second = TaskSampler(dataset, TaskSpec(5, 1, 2), "test", num_tasks=5, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(first[4], second[4]))


@pytest.mark.parametrize("spec, message", [
    (TaskSpec(20, 1, 1), "20-way tasks need 20 classes, but the test split has 12"),
    (TaskSpec(5, 10, 15), "need 25 images per class, but the test split has 20"),
    (TaskSpec(1, 1, 1), "ways must be at least 2"),
    (TaskSpec(5, 0, 1), "shots and queries must be at least 1"),
])
def test_unsatisfiable_tasks_are_refused(spec, message) -> None:
    with pytest.raises(ValueError, match=message):
        check_task(spec, num_classes=12, per_class=20, split="test")


SHARED_MIRROR = Path(__file__).resolve().parents[3] / "shared" / "data"


@pytest.mark.skipif(not (SHARED_MIRROR / "omniglot" / data.INDEX_FILE).exists(), reason="no ../shared/data mirror beside the checkout")
def test_real_mirror_gives_964_and_659_characters(tmp_path) -> None:
    loaded = data.load_omniglot(tmp_path, mirrors=[str(SHARED_MIRROR)])
    assert loaded["background"].shape == (964, 20, 28, 28)
    assert loaded["evaluation"].shape == (659, 20, 28, 28)
    first = tmp_path / "omniglot" / "images_background" / "Alphabet_of_the_Magi" / "character01" / "0709_01.png"
    assert first.exists()


def test_official_zips_are_extracted_into_place(small_sets, tmp_path, monkeypatch) -> None:
    mirror, arrays = small_sets
    layout = data.prepare_omniglot(tmp_path / "layout", mirrors=[str(mirror)])
    zips = tmp_path / "zip-mirror" / "omniglot"
    zips.mkdir(parents=True)
    specs = {}
    for name, spec in data.OMNIGLOT_SETS.items():
        archive = shutil.make_archive(str(zips / spec.folder), "zip", root_dir=layout, base_dir=spec.folder)
        md5 = hashlib.md5(Path(archive).read_bytes()).hexdigest()
        specs[name] = OmniglotSet(name, spec.characters, md5, spec.arrays_sha256)
    monkeypatch.setattr(data, "OMNIGLOT_SETS", specs)

    base = data.prepare_omniglot(tmp_path / "root", mirrors=[str(zips.parent)])

    png = base / "images_background" / "Alphabet_1" / "character02" / "0002_07.png"
    assert np.array_equal(np.asarray(Image.open(png)), arrays["background"][1, 6])
    assert not (base / "images_background.extracted").exists()


def test_bad_first_mirror_falls_through_to_good_one(small_sets, tmp_path) -> None:
    mirror, _ = small_sets
    bad = tmp_path / "bad-mirror" / "omniglot"
    bad.mkdir(parents=True)
    for file in (mirror / "omniglot").iterdir():
        bad.joinpath(file.name).write_bytes(file.read_bytes()[:500])
    base = data.prepare_omniglot(tmp_path / "root", mirrors=[str(bad.parent), str(mirror)])
    assert data._count_characters(base / "images_background") == 3


def test_unreadable_png_is_named(small_sets, tmp_path) -> None:
    mirror, _ = small_sets
    base = data.prepare_omniglot(tmp_path / "root", mirrors=[str(mirror)])
    broken = base / "images_evaluation" / "Alphabet_0" / "character01" / "0001_05.png"
    broken.write_bytes(b"")
    with pytest.raises(ValueError, match="cannot read .*0001_05.png"):
        data.load_omniglot(tmp_path / "root", mirrors=[str(mirror)])
