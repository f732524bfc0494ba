"""Tests for common.data.biased_mnist: palette, colouring, bias ratio, splits and input checks."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from common.data.biased_mnist import NUM_CLASSES, PALETTE, BiasedMNIST, assign_bias_labels, build_splits
from common.data.mnist import load_embedded_mnist

pytestmark = pytest.mark.timeout(60)

EXPECTED_PALETTE = [
    (255, 0, 0),
    (0, 255, 0),
    (0, 0, 255),
    (225, 225, 0),
    (225, 0, 225),
    (0, 255, 255),
    (255, 128, 0),
    (255, 0, 128),
    (128, 0, 255),
    (128, 128, 128),
]


@pytest.fixture(scope="module")
def digits():
    return load_embedded_mnist()


def _aligned_per_class(dataset: BiasedMNIST) -> list[int]:
    return [int(dataset.aligned[dataset.targets == label].sum()) for label in range(NUM_CLASSES)]


def test_palette_exact() -> None:
    assert PALETTE.dtype == torch.uint8
    assert [tuple(colour) for colour in PALETTE.tolist()] == EXPECTED_PALETTE


def test_background_and_ink_colours(digits) -> None:
    raw = digits.train_images[:60]
    dataset = BiasedMNIST(raw, digits.train_targets[:60], rho=0.5, seed=0)

    for index in range(len(dataset)):
        image = dataset.images[index]  # (3, 28, 28) uint8
        ink = raw[index] > 0
        background_colour = PALETTE[dataset.bias[index]].view(3, 1)
        assert ink.any(), f"image {index} has no ink"
        assert (~ink).any(), f"image {index} has no background"
        assert torch.all(image[:, ink] == 255), f"image {index}: ink pixels are not white"
        assert torch.all(image[:, ~ink] == background_colour), f"image {index}: background is not PALETTE[bias]"


@pytest.mark.parametrize("rho", [0.99, 0.995, 0.997, 0.5])
def test_aligned_count_per_class(digits, rho: float) -> None:
    dataset = BiasedMNIST(digits.train_images, digits.train_targets, rho=rho, seed=0)
    class_sizes = torch.bincount(dataset.targets, minlength=NUM_CLASSES).tolist()

    expected = [int(size * rho) for size in class_sizes]
    assert _aligned_per_class(dataset) == expected


@pytest.mark.parametrize("rho", [0.99, 0.995, 0.997, 0.5])
def test_aligned_fraction_near_rho(digits, rho: float) -> None:
    dataset = BiasedMNIST(digits.train_images, digits.train_targets, rho=rho, seed=0)

    # int(n_c * rho) loses less than one digit per class.
    tolerance = NUM_CLASSES / len(dataset)
    assert abs(dataset.aligned_fraction() - rho) <= tolerance


def test_conflicting_colours_differ_from_class(digits) -> None:
    dataset = BiasedMNIST(digits.train_images, digits.train_targets, rho=0.99, seed=0)
    conflicting = ~dataset.aligned

    assert int(conflicting.sum()) > 0
    assert torch.all(dataset.bias[conflicting] != dataset.targets[conflicting])
    assert int(dataset.bias.min()) >= 0
    assert int(dataset.bias.max()) < NUM_CLASSES


@pytest.mark.parametrize("split", ["train", "test"])
def test_unbiased_rho_uniform_colours(digits, split: str) -> None:
    images = getattr(digits, f"{split}_images")
    targets = getattr(digits, f"{split}_targets")
    dataset = BiasedMNIST(images, targets, rho=0.1, seed=0)

    for label in range(NUM_CLASSES):
        class_bias = dataset.bias[dataset.targets == label]
        counts = torch.bincount(class_bias, minlength=NUM_CLASSES)
        # The embedded digits have 400 train and 100 test digits per class, so each colour gets exactly a tenth.
        assert counts.tolist() == [len(class_bias) // NUM_CLASSES] * NUM_CLASSES, f"class {label}: {counts.tolist()}"


def test_conflicting_split_uses_all_colours() -> None:
    # 13 digits of class 0 at rho = 0.1: 1 aligned and 12 conflicting, which near-equal chunks
    # spread over the 9 other colours as sizes 1 and 2.
    targets = torch.zeros(13, dtype=torch.long)
    bias = assign_bias_labels(targets, 0.1, np.random.default_rng(0))
    counts = torch.bincount(bias, minlength=NUM_CLASSES)

    assert int(counts[0]) == 1
    assert sorted(counts[1:].tolist()) == [1, 1, 1, 1, 1, 1, 2, 2, 2]


def test_same_seed_same_dataset(digits) -> None:
    first = BiasedMNIST(digits.train_images, digits.train_targets, rho=0.99, seed=3)
    second = BiasedMNIST(digits.train_images, digits.train_targets, rho=0.99, seed=3)

    assert torch.equal(first.bias, second.bias)
    assert torch.equal(first.images, second.images)


def test_other_seed_other_colours(digits) -> None:
    first = BiasedMNIST(digits.train_images, digits.train_targets, rho=0.99, seed=3)
    second = BiasedMNIST(digits.train_images, digits.train_targets, rho=0.99, seed=4)

    assert not torch.equal(first.bias, second.bias)


def test_splits_same_seed_equal(digits) -> None:
    first = build_splits(digits, 0.99, seed=1, val_size=100, train_size=300)
    second = build_splits(digits, 0.99, seed=1, val_size=100, train_size=300)

    assert torch.equal(first.train_indices, second.train_indices)
    assert torch.equal(first.val_indices, second.val_indices)
    assert torch.equal(first.train.images, second.train.images)
    assert torch.equal(first.val.images, second.val.images)
    assert torch.equal(first.test.images, second.test.images)


def test_splits_train_val_disjoint(digits) -> None:
    splits = build_splits(digits, 0.99, seed=0, val_size=500)
    train = set(splits.train_indices.tolist())
    val = set(splits.val_indices.tolist())

    assert len(val) == 500
    assert len(train) == len(digits.train_targets) - 500
    assert train.isdisjoint(val)


def test_splits_follow_indices(digits) -> None:
    splits = build_splits(digits, 0.99, seed=0, val_size=200, train_size=400)

    assert len(splits.train) == 400
    assert torch.equal(splits.train.targets, digits.train_targets[splits.train_indices])
    assert torch.equal(splits.val.targets, digits.train_targets[splits.val_indices])
    # No palette colour is white, so the all-white pixels are exactly the ink.
    train_white = (splits.train.images == 255).all(dim=1)
    val_white = (splits.val.images == 255).all(dim=1)
    assert torch.equal(train_white, digits.train_images[splits.train_indices] > 0)
    assert torch.equal(val_white, digits.train_images[splits.val_indices] > 0)


def test_splits_test_from_test_digits(digits) -> None:
    splits = build_splits(digits, 0.99, seed=0, val_size=100)
    white = (splits.test.images == 255).all(dim=1)

    assert torch.equal(splits.test.targets, digits.test_targets)
    assert torch.equal(white, digits.test_images > 0)


@pytest.mark.parametrize("split", ["val", "test"])
def test_splits_evaluation_sets_unbiased(digits, split: str) -> None:
    splits = build_splits(digits, 0.99, seed=0, val_size=1000)
    dataset = getattr(splits, split)

    assert dataset.rho == 0.1
    assert abs(dataset.aligned_fraction() - 0.1) < 0.02


@pytest.mark.parametrize("rho", [0, 1, -0.1, 1.5, "0.9"])
def test_invalid_rho_dataset(digits, rho) -> None:
    with pytest.raises(ValueError, match=re.escape(repr(rho))):
        BiasedMNIST(digits.train_images[:20], digits.train_targets[:20], rho=rho, seed=0)


@pytest.mark.parametrize("rho", [0, 1, -0.1, 1.5, "0.9"])
def test_invalid_rho_splits(digits, rho) -> None:
    with pytest.raises(ValueError, match=re.escape(repr(rho))):
        build_splits(digits, rho, seed=0, val_size=10, train_size=20)


def test_image_value_range(digits) -> None:
    dataset = BiasedMNIST(digits.train_images[:200], digits.train_targets[:200], rho=0.5, seed=0)
    images = torch.stack([dataset[index][0] for index in range(len(dataset))])

    assert images.dtype == torch.float32
    assert images.shape == (200, 3, 28, 28)
    assert float(images.min()) == -1.0
    assert float(images.max()) == 1.0


def test_item_matches_stored_labels(digits) -> None:
    dataset = BiasedMNIST(digits.train_images[:20], digits.train_targets[:20], rho=0.5, seed=0)
    image, target, bias = dataset[7]

    assert int(target) == int(digits.train_targets[7])
    assert int(bias) == int(dataset.bias[7])
    assert torch.equal(image, dataset.images[7].float() / 127.5 - 1.0)
