"""Tests for common.data.multicolor_mnist: palettes, half colouring, bias ratios per side, splits and input checks."""

from __future__ import annotations

import re

import pytest
import torch

from common.data.mnist import load_embedded_mnist
from common.data.multicolor_mnist import (
    DEBIAN_COLOUR_STD,
    LEFT_PALETTE,
    RIGHT_PALETTE,
    MultiColorMNIST,
    build_multicolor_splits,
    build_multicolor_test_set,
)

pytestmark = pytest.mark.timeout(60)

NUM_CLASSES = 10
# DebiAN's colors.th (the LfF colour set) times 255, rounded.
EXPECTED_LEFT_PALETTE = [
    (251, 80, 43),
    (253, 233, 90),
    (172, 118, 148),
    (200, 212, 153),
    (22, 198, 250),
    (82, 245, 114),
    (6, 60, 193),
    (142, 26, 194),
    (53, 100, 5),
    (213, 52, 68),
]
# The embedded training digits are sorted by class, so a prefix contains one class only. Every tenth digit mixes them.
EVERY_TENTH = slice(0, None, 10)


@pytest.fixture(scope="module")
def digits():
    return load_embedded_mnist()


@pytest.fixture(scope="module")
def debian_train(digits) -> MultiColorMNIST:
    return MultiColorMNIST(digits.train_images, digits.train_targets, rho_left=0.99, rho_right=0.95, seed=0)


def _expected_images(raw: torch.Tensor, dataset: MultiColorMNIST) -> torch.Tensor:
    """Build the images from the definition: white ink, left and right palette colours on the two halves."""
    padding = (dataset.image_size - 28) // 2
    ink = torch.nn.functional.pad(raw, (padding,) * 4) > 0
    size = dataset.image_size
    expected = torch.empty(len(raw), 3, size, size, dtype=torch.uint8)
    expected[..., : size // 2] = LEFT_PALETTE[dataset.bias[:, 0]].view(-1, 3, 1, 1)
    expected[..., size // 2 :] = RIGHT_PALETTE[dataset.bias[:, 1]].view(-1, 3, 1, 1)
    expected[ink.unsqueeze(1).expand_as(expected)] = 255
    return expected


def test_palettes_exact() -> None:
    assert LEFT_PALETTE.dtype == torch.uint8
    assert [tuple(colour) for colour in LEFT_PALETTE.tolist()] == EXPECTED_LEFT_PALETTE
    assert RIGHT_PALETTE.tolist() == [[255 - value for value in colour] for colour in EXPECTED_LEFT_PALETTE]


def test_dataset_palettes_attribute(debian_train) -> None:
    left, right = debian_train.palettes

    assert debian_train.palettes.shape == (2, NUM_CLASSES, 3)
    assert torch.equal(left, LEFT_PALETTE)
    assert torch.equal(right, RIGHT_PALETTE)
    with pytest.raises(AttributeError, match="palettes"):
        debian_train.palette


@pytest.mark.parametrize("image_size", [28, 32])
def test_pixels_follow_definition(digits, image_size: int) -> None:
    raw = digits.train_images[EVERY_TENTH]
    dataset = MultiColorMNIST(raw, digits.train_targets[EVERY_TENTH], 0.7, 0.6, seed=0, image_size=image_size)

    assert dataset.images.shape == (len(raw), 3, image_size, image_size)
    assert torch.equal(dataset.images, _expected_images(raw, dataset))


def test_palette_colours_present(debian_train) -> None:
    # One int per RGB colour, because torch.unique over rows of 3.1 million pixels is slow.
    codes = debian_train.images.int()
    codes = torch.unique(codes[:, 0] * 65536 + codes[:, 1] * 256 + codes[:, 2])
    present = {(code // 65536, code // 256 % 256, code % 256) for code in codes.tolist()}
    expected = {(255, 255, 255)} | set(EXPECTED_LEFT_PALETTE) | {tuple(colour) for colour in RIGHT_PALETTE.tolist()}

    assert present == expected


def test_padding_to_32_keeps_digit_pixels(digits) -> None:
    raw = digits.train_images[EVERY_TENTH]
    targets = digits.train_targets[EVERY_TENTH]
    small = MultiColorMNIST(raw, targets, 0.9, 0.8, seed=3)
    large = MultiColorMNIST(raw, targets, 0.9, 0.8, seed=3, image_size=32)

    assert torch.equal(large.bias, small.bias)
    assert torch.equal(large.images[:, :, 2:30, 2:30], small.images)
    # The padding takes the colour of its half: columns 0-15 left, 16-31 right.
    assert torch.all(large.images[:, :, 0, :16] == LEFT_PALETTE[large.bias[:, 0]].view(-1, 3, 1))
    assert torch.all(large.images[:, :, 31, 16:] == RIGHT_PALETTE[large.bias[:, 1]].view(-1, 3, 1))


@pytest.mark.parametrize(("rho_left", "rho_right"), [(0.99, 0.95), (0.95, 0.99), (0.5, 0.3)])
def test_aligned_count_per_class_and_side(digits, rho_left: float, rho_right: float) -> None:
    dataset = MultiColorMNIST(digits.train_images, digits.train_targets, rho_left, rho_right, seed=0)

    for label in range(NUM_CLASSES):
        in_class = dataset.targets == label
        n_class = int(in_class.sum())
        aligned = dataset.aligned[in_class]
        assert int(aligned[:, 0].sum()) == int(rho_left * n_class), f"class {label}, left"
        assert int(aligned[:, 1].sum()) == int(rho_right * n_class), f"class {label}, right"


def test_aligned_fraction_per_side(debian_train) -> None:
    left, right = debian_train.aligned_fraction()

    assert abs(left - 0.99) <= NUM_CLASSES / len(debian_train)
    assert abs(right - 0.95) <= NUM_CLASSES / len(debian_train)


def test_conflicting_colours_differ_from_class(debian_train) -> None:
    for side in range(2):
        conflicting = ~debian_train.aligned[:, side]
        assert int(conflicting.sum()) > 0
        assert torch.all(debian_train.bias[conflicting, side] != debian_train.targets[conflicting])


def test_sides_assigned_independently(debian_train) -> None:
    # With independent shuffles, about rho_left * (1 - rho_right) of the digits are aligned on the left only.
    aligned = debian_train.aligned
    left_only = int((aligned[:, 0] & ~aligned[:, 1]).sum())
    right_only = int((~aligned[:, 0] & aligned[:, 1]).sum())

    assert 100 <= left_only <= 300  # expected 4000 * 0.99 * 0.05 = 198
    assert right_only <= 100  # expected 4000 * 0.01 * 0.95 = 38


def test_items_and_batches(debian_train) -> None:
    image, target, bias = debian_train[7]
    images, targets, biases = debian_train.__getitems__([7, 100, 2000])

    assert image.shape == (3, 28, 28)
    assert bias.shape == (2,)
    assert bias.dtype == torch.long
    assert biases.shape == (3, 2)
    assert torch.equal(images[0], image)
    assert int(targets[0]) == int(target)
    assert torch.equal(biases[0], bias)
    assert torch.equal(image, debian_train.images[7].float() / 127.5 - 1.0)
    assert float(images.min()) >= -1.0
    assert float(images.max()) == 1.0


@pytest.mark.parametrize("split", ["train", "test"])
def test_unbiased_rho_uniform_colours(digits, split: str) -> None:
    images = getattr(digits, f"{split}_images")
    targets = getattr(digits, f"{split}_targets")
    dataset = MultiColorMNIST(images, targets, 0.1, 0.1, seed=0)

    for label in range(NUM_CLASSES):
        for side in range(2):
            class_bias = dataset.bias[dataset.targets == label, side]
            counts = torch.bincount(class_bias, minlength=NUM_CLASSES)
            # 400 train and 100 test digits per class, so each colour gets exactly a tenth.
            assert counts.tolist() == [len(class_bias) // NUM_CLASSES] * NUM_CLASSES, f"class {label}, side {side}"


def test_same_seed_same_dataset(digits) -> None:
    first = MultiColorMNIST(digits.train_images, digits.train_targets, 0.99, 0.95, seed=3)
    second = MultiColorMNIST(digits.train_images, digits.train_targets, 0.99, 0.95, seed=3)
    other = MultiColorMNIST(digits.train_images, digits.train_targets, 0.99, 0.95, seed=4)

    assert torch.equal(first.bias, second.bias)
    assert torch.equal(first.images, second.images)
    assert not torch.equal(first.bias, other.bias)


def test_colour_noise_near_palette(digits) -> None:
    raw = digits.train_images[EVERY_TENTH]
    targets = digits.train_targets[EVERY_TENTH]
    noisy = MultiColorMNIST(raw, targets, 0.9, 0.9, seed=0, colour_std=DEBIAN_COLOUR_STD)
    again = MultiColorMNIST(raw, targets, 0.9, 0.9, seed=0, colour_std=DEBIAN_COLOUR_STD)
    # The corner pixels (0, 0) and (0, 27) are background in every MNIST digit.
    left_corner = noisy.images[:, :, 0, 0].int()
    right_corner = noisy.images[:, :, 0, 27].int()
    left_error = (left_corner - LEFT_PALETTE[noisy.bias[:, 0]].int()).abs()
    right_error = (right_corner - RIGHT_PALETTE[noisy.bias[:, 1]].int()).abs()

    assert torch.equal(noisy.images, again.images)
    # std 0.005 is 1.3 colour levels, so 8 levels is over 6 standard deviations.
    assert int(left_error.max()) <= 8
    assert int(right_error.max()) <= 8
    assert int(left_error.max()) > 0
    # Each image has one colour per half.
    assert torch.all(noisy.images[:, :, 0, :14] == noisy.images[:, :, :1, :1].squeeze(-1))


@pytest.mark.parametrize("colour_std", [-0.1, 1.0, "0.01", True])
def test_invalid_colour_std(digits, colour_std) -> None:
    with pytest.raises(ValueError, match=re.escape(repr(colour_std))):
        MultiColorMNIST(digits.train_images[:20], digits.train_targets[:20], 0.9, 0.9, seed=0, colour_std=colour_std)


@pytest.mark.parametrize("rho", [0, 1, -0.1, 1.5, "0.9"])
@pytest.mark.parametrize("side", ["rho_left", "rho_right"])
def test_invalid_rho_names_side(digits, rho, side: str) -> None:
    rhos = {"rho_left": 0.9, "rho_right": 0.9, side: rho}

    with pytest.raises(ValueError, match=rf"{side} must lie strictly between 0 and 1, got {re.escape(repr(rho))}"):
        MultiColorMNIST(digits.train_images[:20], digits.train_targets[:20], seed=0, **rhos)


@pytest.mark.parametrize(
    ("image_size", "message"),
    [(27, "image_size=27 is not supported"), (29, "image_size=29 is not supported"), (64.0, "got 64.0")],
)
def test_invalid_image_size(digits, image_size, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MultiColorMNIST(digits.train_images[:20], digits.train_targets[:20], 0.9, 0.9, seed=0, image_size=image_size)


def test_splits_test_unbiased(digits) -> None:
    splits = build_multicolor_splits(digits, 0.99, 0.95, seed=0, val_size=1000)

    for name in ("val", "test"):
        dataset = getattr(splits, name)
        assert dataset.rho_left == 0.1
        assert dataset.rho_right == 0.1
        left, right = dataset.aligned_fraction()
        assert abs(left - 0.1) < 0.02, name
        assert abs(right - 0.1) < 0.02, name
    assert torch.equal(splits.test.targets, digits.test_targets)


def test_splits_train_biased_and_disjoint(digits) -> None:
    splits = build_multicolor_splits(digits, 0.99, 0.95, seed=0, val_size=500, train_size=2000, image_size=32)
    train = set(splits.train_indices.tolist())
    val = set(splits.val_indices.tolist())

    assert len(splits.train) == 2000
    assert train.isdisjoint(val)
    assert torch.equal(splits.train.targets, digits.train_targets[splits.train_indices])
    assert splits.train.images.shape[1:] == (3, 32, 32)
    assert splits.test.images.shape[1:] == (3, 32, 32)
    assert (splits.train.rho_left, splits.train.rho_right) == (0.99, 0.95)


def test_splits_same_seed_equal(digits) -> None:
    first = build_multicolor_splits(digits, 0.99, 0.95, seed=2, val_size=100, train_size=500)
    second = build_multicolor_splits(digits, 0.99, 0.95, seed=2, val_size=100, train_size=500)

    assert torch.equal(first.train_indices, second.train_indices)
    assert torch.equal(first.train.images, second.train.images)
    assert torch.equal(first.val.images, second.val.images)
    assert torch.equal(first.test.images, build_multicolor_test_set(digits, 2).images)


def test_splits_invalid_input(digits) -> None:
    with pytest.raises(ValueError, match="rho_right must lie strictly between 0 and 1"):
        build_multicolor_splits(digits, 0.99, 1.0)
    with pytest.raises(ValueError, match="image_size=31 is not supported"):
        build_multicolor_splits(digits, 0.99, 0.95, image_size=31)
    with pytest.raises(ValueError, match="val_size=4000 must be in"):
        build_multicolor_splits(digits, 0.99, 0.95, val_size=4000)
