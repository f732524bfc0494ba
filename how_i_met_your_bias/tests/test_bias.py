"""Palette matching of the background colour on real coloured MNIST digits and on hand-built images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from common.data.biased_mnist import PALETTE, BiasedMNIST, TwoClassBiasedMNIST
from common.data.mnist import load_digits
from common.data.multicolor_mnist import DEBIAN_COLOUR_STD, MultiColorMNIST
from how_i_met_your_bias.bias import (
    background_mean,
    border_ring,
    half_masks,
    match_multicolor,
    match_palette,
)

MIN_ACCURACY = 0.99
NOISE_STD = 0.1


@pytest.fixture(scope="module")
def digits():
    return load_digits("embedded")


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    return images.float() / 127.5 - 1.0


def add_noise(images: torch.Tensor, std: float, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return images + std * torch.randn(images.shape, generator=generator)


def solid_images(colours: torch.Tensor, size: int = 28) -> torch.Tensor:
    """Return (N, 3, size, size) images in [-1, 1] filled with the uint8 colours (N, 3)."""
    return to_unit_range(colours).view(-1, 3, 1, 1).expand(-1, -1, size, size).clone()


@pytest.mark.parametrize("image_size", [28, 32])
@pytest.mark.parametrize("noise_std", [0.0, NOISE_STD])
def test_match_palette_ten_class(digits, image_size, noise_std):
    dataset = BiasedMNIST(digits.train_images, digits.train_targets, 0.1, seed=0, image_size=image_size)
    images = add_noise(to_unit_range(dataset.images), noise_std)

    labels = match_palette(images, dataset.palette)

    assert labels.shape == (len(dataset),)
    assert labels.dtype == torch.long
    accuracy = (labels == dataset.bias).float().mean().item()
    assert accuracy >= MIN_ACCURACY, f"accuracy {accuracy:.4f} at {image_size} px, noise std {noise_std}"


@pytest.mark.parametrize("noise_std", [0.0, NOISE_STD])
def test_match_palette_two_class(digits, noise_std):
    dataset = TwoClassBiasedMNIST(digits.train_images, digits.train_targets, (3, 8), rho=0.5, seed=0, image_size=32)
    images = add_noise(to_unit_range(dataset.images), noise_std)

    labels = match_palette(images, dataset.palette)

    accuracy = (labels == dataset.bias).float().mean().item()
    assert accuracy >= MIN_ACCURACY, f"accuracy {accuracy:.4f} with noise std {noise_std}"


def test_match_palette_blurred_edges(digits):
    # A 3x3 box blur imitates the soft stroke edges of generated images.
    dataset = BiasedMNIST(digits.test_images, digits.test_targets, 0.1, seed=0)
    images = F.avg_pool2d(to_unit_range(dataset.images), kernel_size=3, stride=1, padding=1, count_include_pad=False)

    labels = match_palette(images, dataset.palette)

    accuracy = (labels == dataset.bias).float().mean().item()
    assert accuracy >= MIN_ACCURACY


def test_background_mean_exact_colour(digits):
    dataset = BiasedMNIST(digits.test_images, digits.test_targets, 0.1, seed=0)

    means, fallback = background_mean(to_unit_range(dataset.images), dataset.palette)

    assert not fallback.any()
    expected = to_unit_range(dataset.palette[dataset.bias])
    torch.testing.assert_close(means, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("image_size", [28, 32])
@pytest.mark.parametrize("noise_std", [0.0, NOISE_STD])
def test_match_multicolor_halves(digits, image_size, noise_std):
    dataset = MultiColorMNIST(
        digits.test_images, digits.test_targets, 0.1, 0.1, seed=0, image_size=image_size, colour_std=DEBIAN_COLOUR_STD
    )
    images = add_noise(to_unit_range(dataset.images), noise_std)
    left_palette, right_palette = dataset.palettes

    labels = match_multicolor(images, left_palette, right_palette)

    assert labels.shape == (len(dataset), 2)
    left_accuracy, right_accuracy = (labels == dataset.bias).float().mean(dim=0).tolist()
    assert left_accuracy >= MIN_ACCURACY
    assert right_accuracy >= MIN_ACCURACY


def test_region_restricts_background():
    red, blue = 0, 2
    images = solid_images(PALETTE[[red]], size=28)
    left, right = half_masks(28, 28)
    images[:, :, right] = to_unit_range(PALETTE[blue]).view(1, 3, 1)

    assert match_palette(images, PALETTE, region=left).tolist() == [red]
    assert match_palette(images, PALETTE, region=right).tolist() == [blue]


def test_half_masks_split_columns():
    left, right = half_masks(4, 6)

    assert left[:, :3].all()
    assert not left[:, 3:].any()
    assert torch.equal(right, ~left)


def test_fallback_to_border_ring(caplog):
    # Pale red and pale blue rings around a white interior: every pixel is nearer to white than to
    # red or blue, so no pixel counts as background and the ring colour decides.
    palette = torch.tensor([[255, 0, 0], [0, 0, 255]], dtype=torch.uint8)
    pale = torch.tensor([[255, 190, 190], [190, 190, 255]], dtype=torch.uint8)
    images = torch.ones(2, 3, 28, 28)
    ring = border_ring(28, 28)
    images[:, :, ring] = to_unit_range(pale).view(2, 3, 1)

    means, fallback = background_mean(images, palette)
    with caplog.at_level("WARNING", logger="how_i_met_your_bias.bias"):
        labels = match_palette(images, palette)

    assert fallback.tolist() == [True, True]
    torch.testing.assert_close(means, to_unit_range(pale))
    assert labels.tolist() == [0, 1]
    assert "2 of 2 images" in caplog.text


def test_empty_batch_returns_empty():
    labels = match_palette(torch.empty(0, 3, 28, 28), PALETTE)

    assert labels.shape == (0,)


def test_palette_accepts_numpy():
    images = solid_images(PALETTE[[4, 7]])

    labels = match_palette(images, PALETTE.numpy())

    assert labels.tolist() == [4, 7]


@pytest.mark.parametrize(
    "images, message",
    [
        (torch.zeros(3, 28, 28), "shape"),
        (torch.zeros(2, 1, 28, 28), "3 RGB channels"),
        (torch.zeros(2, 3, 28, 28, dtype=torch.uint8), "floating point"),
        (torch.full((2, 3, 28, 28), 255.0), "x / 127.5 - 1"),
        (torch.full((2, 3, 28, 28), float("nan")), "NaN"),
    ],
)
def test_invalid_images_raise(images, message):
    with pytest.raises(ValueError, match=message):
        match_palette(images, PALETTE)


def test_numpy_images_raise_type_error():
    with pytest.raises(TypeError, match="torch.Tensor"):
        match_palette(np.zeros((2, 3, 28, 28), dtype=np.float32), PALETTE)


@pytest.mark.parametrize(
    "palette, message",
    [
        (torch.zeros(10, 4, dtype=torch.uint8), r"\(K, 3\)"),
        (torch.zeros(0, 3, dtype=torch.uint8), r"\(K, 3\)"),
        (torch.tensor([[0.0, 300.0, 0.0]]), "0..255"),
        (torch.tensor([[255, 0, 0], [250, 250, 250]], dtype=torch.uint8), "white"),
    ],
)
def test_invalid_palette_raises(palette, message):
    with pytest.raises(ValueError, match=message):
        match_palette(torch.zeros(1, 3, 28, 28), palette)


@pytest.mark.parametrize(
    "region, message",
    [
        (torch.ones(32, 32, dtype=torch.bool), r"shape \(28, 28\)"),
        (torch.ones(28, 28, dtype=torch.uint8), "boolean"),
        (torch.zeros(28, 28, dtype=torch.bool), "no pixels"),
    ],
)
def test_invalid_region_raises(region, message):
    with pytest.raises(ValueError, match=message):
        match_palette(torch.zeros(1, 3, 28, 28), PALETTE, region=region)
