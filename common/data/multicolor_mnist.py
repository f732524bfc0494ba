"""Multi-Color MNIST, the two-bias digit benchmark of DebiAN (Li et al., ECCV 2022).

DebiAN: "Discover and Mitigate Unknown Biases with Debiasing Alternate Networks".

Each digit is drawn in white. The background is split into a left half and a
right half, and each half has its own colour, which is its own bias
attribute. The left colour of class c is LEFT_PALETTE[c] and the right colour
is RIGHT_PALETTE[c]. In a set with bias ratios (rho_left, rho_right), exactly
int(rho_left * n_c) digits of class c get their class's left colour and
exactly int(rho_right * n_c) get their class's right colour. The conflicting
digits of each side get the 9 other colours in near-equal shares, as in
Biased MNIST. The two sides are assigned by independent shuffles, so given the
class they are independent apart from the fixed counts. DebiAN trains with
rho_left = 0.99 and rho_right = 0.95, and tests with 0.1 on both sides, where
neither colour depends on the digit. As in DebiAN, columns [0, size/2) form
the left half. At 32 px the padding takes the colour of the half it lies in.

Recipe source: DebiAN's generator datasets/make_datasets/make_multi_color_mnist.py
and its colors.th (github.com/zhihengli-UR/DebiAN). The left colours are
those colours (the LfF colour set) times 255, rounded, and the right colours
are their complements (255 minus the left colour), as in DebiAN.
Deliberate differences from that generator:

- The digit is binarised (any ink is white), as in Biased MNIST. DebiAN adds
  the colour to the grey level, so its anti-aliased edges are lighter mixtures.
  Here every pixel is white or exactly a palette colour.
- DebiAN draws Gaussian noise around each colour per image (std 0.005 in
  [0, 1] units at its severity 4). `colour_std` does the same and defaults to 0.
- DebiAN fixes the count of each (left, right) colour pair per class by
  rounding n_c times the product of the two marginals. Here each side's
  aligned count is exactly int(rho * n_c), so the number of digits aligned on
  both sides varies with the seed around n_c * rho_left * rho_right.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from common.data.biased_mnist import (
    DIGIT_SIZE,
    UNBIASED_RHO,
    ColouredDigits,
    assign_bias_labels,
    check_image_size,
    check_rho,
    pad_digits,
    split_train_indices,
)
from common.data.mnist import DigitArrays

# Bias ratios of DebiAN's Multi-Color MNIST benchmark (skews 0.01 and 0.05 in its scripts).
DEBIAN_RHO_LEFT = 0.99
DEBIAN_RHO_RIGHT = 0.95
# Per-image colour noise of DebiAN's severity 4, in [0, 1] colour units.
DEBIAN_COLOUR_STD = 0.005

# Left background colour (RGB) of each digit class, 0..9.
LEFT_PALETTE = torch.tensor(
    [
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
    ],
    dtype=torch.uint8,
)
# Right background colour (RGB) of each digit class: the complement of the left colour.
RIGHT_PALETTE = 255 - LEFT_PALETTE

LEFT, RIGHT = 0, 1  # Columns of the bias labels and rows of `palettes`.

_MULTICOLOR_RHO_HINT = "DebiAN's Multi-Color MNIST uses rho_left=0.99 and rho_right=0.95"


def check_colour_std(colour_std: float) -> float:
    """Return colour_std as a float, or raise ValueError unless 0 <= colour_std < 1."""
    if isinstance(colour_std, bool) or not isinstance(colour_std, (int, float)) or not 0.0 <= colour_std < 1.0:
        raise ValueError(
            f"colour_std must be a number in [0, 1) (standard deviation in [0, 1] colour units), got {colour_std!r}. "
            f"Use 0 for exact palette colours or {DEBIAN_COLOUR_STD} for DebiAN's severity 4"
        )
    return float(colour_std)


def colourise_halves(images: torch.Tensor, left_colours: torch.Tensor, right_colours: torch.Tensor) -> torch.Tensor:
    """Draw digits (N, H, W) in white on a left and a right background colour, each (N, 3) uint8: (N, 3, H, W) uint8."""
    size = images.shape[-1]
    ink = (images > 0).unsqueeze(1)  # (N, 1, H, W)
    left_half = (torch.arange(size) < size // 2).view(1, 1, 1, size)
    background = torch.where(left_half, left_colours.view(-1, 3, 1, 1), right_colours.view(-1, 3, 1, 1))
    background = background.expand(-1, -1, images.shape[1], -1)
    return torch.where(ink, torch.full_like(background, 255), background).contiguous()


def _per_image_colours(
    palette: torch.Tensor, labels: torch.Tensor, colour_std: float, rng: np.random.Generator
) -> torch.Tensor:
    """Return palette[labels] (N, 3) uint8, with Gaussian noise of std colour_std (in [0, 1] units) when it is positive."""
    colours = palette[labels]
    if colour_std == 0.0:
        return colours
    noisy = colours.double().numpy() / 255.0 + rng.normal(0.0, colour_std, size=tuple(colours.shape))
    return torch.from_numpy(np.rint(np.clip(noisy, 0.0, 1.0) * 255.0).astype(np.uint8))


class MultiColorMNIST(ColouredDigits):
    """Multi-Color MNIST items: (image in [-1, 1], digit, bias) with bias a (2,) long tensor [left, right].

    `palettes` is a (2, 10, 3) uint8 tensor: palettes[0] is LEFT_PALETTE and
    palettes[1] is RIGHT_PALETTE, so ``left, right = dataset.palettes`` works.
    """

    def __init__(
        self,
        images: torch.Tensor,
        targets: torch.Tensor,
        rho_left: float,
        rho_right: float,
        seed: int,
        *,
        image_size: int = DIGIT_SIZE,
        colour_std: float = 0.0,
    ):
        self.rho_left = check_rho(rho_left, "rho_left", hint=_MULTICOLOR_RHO_HINT)
        self.rho_right = check_rho(rho_right, "rho_right", hint=_MULTICOLOR_RHO_HINT)
        self.colour_std = check_colour_std(colour_std)
        padded = pad_digits(images, image_size)

        rng = np.random.default_rng(seed)
        self.targets = targets.long()
        left = assign_bias_labels(self.targets, self.rho_left, rng)
        right = assign_bias_labels(self.targets, self.rho_right, rng)
        self.bias = torch.stack([left, right], dim=1)  # (N, 2)
        self.palettes = torch.stack([LEFT_PALETTE, RIGHT_PALETTE])

        left_colours = _per_image_colours(LEFT_PALETTE, left, self.colour_std, rng)
        right_colours = _per_image_colours(RIGHT_PALETTE, right, self.colour_std, rng)
        self.images = colourise_halves(padded, left_colours, right_colours)

    @property
    def palette(self) -> torch.Tensor:
        raise AttributeError("MultiColorMNIST has two palettes: use palettes[0] (left) and palettes[1] (right)")

    @property
    def aligned(self) -> torch.Tensor:
        """Boolean mask (N, 2): whether each digit's left and right colours are those of its own class."""
        return self.bias == self.targets.unsqueeze(1)

    def aligned_fraction(self) -> tuple[float, float]:
        """Return the fractions of bias-aligned digits on the left and on the right."""
        left, right = self.aligned.float().mean(dim=0).tolist()
        return left, right


@dataclasses.dataclass
class MultiColorMNISTSplits:
    train: MultiColorMNIST
    val: MultiColorMNIST | None
    test: MultiColorMNIST
    train_indices: torch.Tensor  # indices into the training digits
    val_indices: torch.Tensor


def build_multicolor_test_set(
    digits: DigitArrays, seed: int = 0, *, image_size: int = DIGIT_SIZE, colour_std: float = 0.0
) -> MultiColorMNIST:
    """Build the unbiased test set (rho 0.1 on both sides) exactly as build_multicolor_splits does for the same seed."""
    return MultiColorMNIST(
        digits.test_images,
        digits.test_targets,
        UNBIASED_RHO,
        UNBIASED_RHO,
        seed + 2,
        image_size=image_size,
        colour_std=colour_std,
    )


def build_multicolor_splits(
    digits: DigitArrays,
    rho_left: float,
    rho_right: float,
    *,
    seed: int = 0,
    val_size: int = 0,
    train_size: int | None = None,
    image_size: int = DIGIT_SIZE,
    colour_std: float = 0.0,
) -> MultiColorMNISTSplits:
    """Build the biased training set and the unbiased (rho 0.1 on both sides) validation and test sets.

    As in biased_mnist.build_splits, the `val_size` validation digits are
    training digits never used for training, and `train_size` (None for all
    the rest) caps the training set. The test set contains every test digit.
    """
    check_rho(rho_left, "rho_left", hint=_MULTICOLOR_RHO_HINT)
    check_rho(rho_right, "rho_right", hint=_MULTICOLOR_RHO_HINT)
    check_image_size(image_size)
    check_colour_std(colour_std)
    train_indices, val_indices = split_train_indices(
        len(digits.train_targets), seed=seed, val_size=val_size, train_size=train_size, source=digits.source
    )
    options = {"image_size": image_size, "colour_std": colour_std}

    train = MultiColorMNIST(
        digits.train_images[train_indices], digits.train_targets[train_indices], rho_left, rho_right, seed, **options
    )
    val = None
    if val_size > 0:
        val = MultiColorMNIST(
            digits.train_images[val_indices],
            digits.train_targets[val_indices],
            UNBIASED_RHO,
            UNBIASED_RHO,
            seed + 1,
            **options,
        )
    test = build_multicolor_test_set(digits, seed, **options)
    return MultiColorMNISTSplits(train=train, val=val, test=test, train_indices=train_indices, val_indices=val_indices)

