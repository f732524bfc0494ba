"""Tests for common.data.biased_mnist: palette, colouring, bias ratio, image size, splits, two classes and input checks."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from common.data.biased_mnist import (
    NUM_CLASSES,
    PALETTE,
    BiasedMNIST,
    TwoClassBiasedMNIST,
    assign_bias_labels,
    build_splits,
    build_test_set,
    build_two_class_splits,
    build_two_class_test_set,
)
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


# Image size, palette attribute and the two-class variant.

TWO_DIGITS = (3, 8)
# The embedded training digits are sorted by class, so a prefix contains one class only. Every tenth digit mixes them.
EVERY_TENTH = slice(0, None, 10)


def _background_matches_palette(dataset, raw: torch.Tensor) -> bool:
    """Return whether every non-ink pixel of every image has the palette colour of its bias label."""
    padding = (dataset.image_size - 28) // 2
    ink = torch.nn.functional.pad(raw, (padding,) * 4) > 0  # (N, S, S)
    expected = dataset.palette[dataset.bias].view(-1, 3, 1, 1).expand_as(dataset.images)
    return bool(torch.all((dataset.images == expected) | ink.unsqueeze(1)))


def test_palette_attribute_ten_class(digits) -> None:
    dataset = BiasedMNIST(digits.train_images[:20], digits.train_targets[:20], rho=0.5, seed=0)

    assert torch.equal(dataset.palette, PALETTE)


@pytest.mark.parametrize("seed", [0, 5])
def test_padding_to_32_keeps_digit_pixels(digits, seed: int) -> None:
    raw = digits.train_images[:300]
    targets = digits.train_targets[:300]
    small = BiasedMNIST(raw, targets, rho=0.9, seed=seed)
    large = BiasedMNIST(raw, targets, rho=0.9, seed=seed, image_size=32)

    assert large.images.shape == (300, 3, 32, 32)
    assert torch.equal(large.bias, small.bias)
    assert torch.equal(large.images[:, :, 2:30, 2:30], small.images)
    border = torch.ones(32, 32, dtype=torch.bool)
    border[2:30, 2:30] = False
    background = PALETTE[large.bias].view(-1, 3, 1)
    assert torch.all(large.images[:, :, border] == background)


@pytest.mark.parametrize("image_size", [27, 29, 31, 0, -28])
def test_invalid_image_size_value(digits, image_size: int) -> None:
    with pytest.raises(ValueError, match=rf"image_size={image_size} is not supported.*Use 28 or 32"):
        BiasedMNIST(digits.train_images[:20], digits.train_targets[:20], rho=0.5, seed=0, image_size=image_size)


@pytest.mark.parametrize("image_size", [32.0, "32", True, None])
def test_invalid_image_size_type(digits, image_size) -> None:
    with pytest.raises(ValueError, match=re.escape(repr(image_size))):
        BiasedMNIST(digits.train_images[:20], digits.train_targets[:20], rho=0.5, seed=0, image_size=image_size)


def test_splits_pass_image_size(digits) -> None:
    splits = build_splits(digits, 0.99, seed=0, val_size=100, train_size=200, image_size=32)

    assert splits.train.images.shape[1:] == (3, 32, 32)
    assert splits.val.images.shape[1:] == (3, 32, 32)
    assert splits.test.images.shape[1:] == (3, 32, 32)
    assert torch.equal(splits.test.images, build_test_set(digits, 0, image_size=32).images)


def test_splits_invalid_image_size(digits) -> None:
    with pytest.raises(ValueError, match="image_size=33 is not supported"):
        build_splits(digits, 0.99, seed=0, image_size=33)


def test_two_class_keeps_chosen_digits(digits) -> None:
    dataset = TwoClassBiasedMNIST(digits.train_images, digits.train_targets, TWO_DIGITS, rho=0.9, seed=0)
    source_targets = digits.train_targets[dataset.source_indices]

    assert dataset.digits == TWO_DIGITS
    assert len(dataset) == int(((digits.train_targets == 3) | (digits.train_targets == 8)).sum())
    assert torch.equal(dataset.targets, (source_targets == 8).long())
    assert set(source_targets.tolist()) == {3, 8}


@pytest.mark.parametrize("rho", [0.3, 0.5, 0.9, 0.99, 0.999])
def test_two_class_aligned_count_per_class(digits, rho: float) -> None:
    dataset = TwoClassBiasedMNIST(digits.train_images, digits.train_targets, TWO_DIGITS, rho=rho, seed=0)

    for label in range(2):
        in_class = dataset.targets == label
        n_class = int(in_class.sum())
        assert int(dataset.aligned[in_class].sum()) == int(rho * n_class), f"class {label}"
        # The conflicting digits of class k all show the other class's colour.
        assert torch.all(dataset.bias[in_class & ~dataset.aligned] == 1 - label), f"class {label}"


def test_two_class_palette_and_pixels(digits) -> None:
    raw = digits.train_images[EVERY_TENTH]
    dataset = TwoClassBiasedMNIST(raw, digits.train_targets[EVERY_TENTH], TWO_DIGITS, rho=0.7, seed=0)
    kept_raw = raw[dataset.source_indices]
    white = (dataset.images == 255).all(dim=1)

    assert dataset.palette.dtype == torch.uint8
    assert dataset.palette.tolist() == [list(EXPECTED_PALETTE[3]), list(EXPECTED_PALETTE[8])]
    assert torch.equal(white, kept_raw > 0)
    assert _background_matches_palette(dataset, kept_raw)
    present = {tuple(colour) for colour in dataset.images.permute(0, 2, 3, 1).reshape(-1, 3).tolist()}
    assert present == {(255, 255, 255), EXPECTED_PALETTE[3], EXPECTED_PALETTE[8]}


def test_two_class_padding_to_32(digits) -> None:
    raw = digits.train_images[EVERY_TENTH]
    small = TwoClassBiasedMNIST(raw, digits.train_targets[EVERY_TENTH], TWO_DIGITS, rho=0.7, seed=2)
    large = TwoClassBiasedMNIST(raw, digits.train_targets[EVERY_TENTH], TWO_DIGITS, rho=0.7, seed=2, image_size=32)

    assert large.image_size == 32
    assert torch.equal(large.images[:, :, 2:30, 2:30], small.images)
    assert _background_matches_palette(large, raw[large.source_indices])


def test_two_class_items_and_batches(digits) -> None:
    dataset = TwoClassBiasedMNIST(digits.train_images[EVERY_TENTH], digits.train_targets[EVERY_TENTH], TWO_DIGITS, rho=0.7, seed=0)
    indices = [0, 5, 17]
    images, targets, bias = dataset.__getitems__(indices)

    for row, index in enumerate(indices):
        image, target, bias_label = dataset[index]
        assert torch.equal(images[row], image)
        assert int(targets[row]) == int(target)
        assert int(bias[row]) == int(bias_label)
    assert float(images.min()) == -1.0
    assert float(images.max()) == 1.0


def test_two_class_same_seed_same_dataset(digits) -> None:
    first = TwoClassBiasedMNIST(digits.train_images, digits.train_targets, TWO_DIGITS, rho=0.9, seed=4)
    second = TwoClassBiasedMNIST(digits.train_images, digits.train_targets, TWO_DIGITS, rho=0.9, seed=4)
    other = TwoClassBiasedMNIST(digits.train_images, digits.train_targets, TWO_DIGITS, rho=0.9, seed=5)

    assert torch.equal(first.bias, second.bias)
    assert torch.equal(first.images, second.images)
    assert not torch.equal(first.bias, other.bias)


@pytest.mark.parametrize("pair", [(1, 1), (0, 10), (-1, 2), (0,), (0, 1, 2), "01", (0.0, 1), (True, 2), None, 5])
def test_two_class_invalid_digits(digits, pair) -> None:
    with pytest.raises(ValueError, match="digits must be two distinct integers between 0 and 9"):
        TwoClassBiasedMNIST(digits.train_images[:20], digits.train_targets[:20], pair, rho=0.9, seed=0)


@pytest.mark.parametrize("rho", [0, 1, -0.1, 1.5, "0.9"])
def test_two_class_invalid_rho(digits, rho) -> None:
    with pytest.raises(ValueError, match=re.escape(repr(rho))):
        TwoClassBiasedMNIST(digits.train_images[:20], digits.train_targets[:20], TWO_DIGITS, rho=rho, seed=0)


def test_two_class_no_chosen_digit(digits) -> None:
    zeros = digits.train_targets == 0

    with pytest.raises(ValueError, match="neither digit 3 nor digit 8"):
        TwoClassBiasedMNIST(digits.train_images[zeros], digits.train_targets[zeros], TWO_DIGITS, rho=0.9, seed=0)


def test_two_class_splits_test_unbiased(digits) -> None:
    splits = build_two_class_splits(digits, TWO_DIGITS, 0.99, seed=0)
    test = splits.test

    assert test.rho == 0.5
    assert torch.equal(digits.test_targets[test.source_indices], torch.where(test.targets == 0, 3, 8))
    for label in range(2):
        # The embedded digits have 100 test digits per class, so each colour gets exactly half.
        counts = torch.bincount(test.bias[test.targets == label], minlength=2)
        assert counts.tolist() == [50, 50], f"class {label}"


def test_two_class_splits_train_biased(digits) -> None:
    splits = build_two_class_splits(digits, TWO_DIGITS, 0.99, seed=0, val_size=100, train_size=500)
    train_digits = digits.train_targets[splits.train_indices]

    assert len(splits.train) == 500
    assert set(train_digits.tolist()) <= {3, 8}
    assert torch.equal(splits.train.targets, (train_digits == 8).long())
    assert abs(splits.train.aligned_fraction() - 0.99) <= 2 / 500


def test_two_class_splits_val_disjoint(digits) -> None:
    splits = build_two_class_splits(digits, TWO_DIGITS, 0.9, seed=1, val_size=200)
    train = set(splits.train_indices.tolist())
    val = set(splits.val_indices.tolist())

    assert len(val) == 200
    assert train.isdisjoint(val)
    assert len(train) + len(val) == 800  # 400 embedded training digits per class
    assert splits.val.rho == 0.5
    assert set(digits.train_targets[splits.val_indices].tolist()) <= {3, 8}


def test_two_class_splits_same_seed_equal(digits) -> None:
    first = build_two_class_splits(digits, TWO_DIGITS, 0.9, seed=1, val_size=50, image_size=32)
    second = build_two_class_splits(digits, TWO_DIGITS, 0.9, seed=1, val_size=50, image_size=32)

    assert torch.equal(first.train_indices, second.train_indices)
    assert torch.equal(first.train.images, second.train.images)
    assert torch.equal(first.val.images, second.val.images)
    assert torch.equal(first.test.images, build_two_class_test_set(digits, TWO_DIGITS, 1, image_size=32).images)


def test_two_class_splits_invalid_input(digits) -> None:
    with pytest.raises(ValueError, match="digits must be two distinct integers"):
        build_two_class_splits(digits, (4, 4), 0.9)
    with pytest.raises(ValueError, match="1.5"):
        build_two_class_splits(digits, TWO_DIGITS, 1.5)
    with pytest.raises(ValueError, match="val_size=800 must be in"):
        build_two_class_splits(digits, TWO_DIGITS, 0.9, val_size=800)
