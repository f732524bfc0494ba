"""Biased MNIST, following the ReBias recipe (Bahng et al., ICML 2020), and its two-class variant.

Each digit is binarised and drawn in white on a background of one palette
colour. In a set with bias ratio rho, exactly int(rho * n_c) of the n_c digits
of class c get the colour of class c (bias-aligned). The other digits
(bias-conflicting) are cut into 9 chunks whose sizes differ by at most one,
one for each of the 9 other colours in a shuffled order. rho = 0.1 therefore
makes colour independent of the digit, which is how the unbiased validation
and test sets are built.

`TwoClassBiasedMNIST` keeps two digits a and b as classes 0 and 1. Class k's
own colour is PALETTE[digits[k]], and its bias-conflicting digits all get the
other class's colour, so rho = 0.5 is the unbiased setting.

Images are 28 px by default. A larger even-padded `image_size` (32 for UNets
that halve the resolution several times) pads the binarised digit with
background on every side, so the digit pixels are unchanged and only shifted.
"""

from __future__ import annotations

import dataclasses
import numbers

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from common.data.mnist import DigitArrays

NUM_CLASSES = 10
UNBIASED_RHO = 0.1
# With two classes, colour is independent of the class when half of each class has its own colour.
TWO_CLASS_UNBIASED_RHO = 0.5
DIGIT_SIZE = 28  # MNIST digits are 28 x 28 px.

# Background colour (RGB) of each digit class, 0..9.
PALETTE = torch.tensor(
    [
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
    ],
    dtype=torch.uint8,
)

_REBIAS_RHO_HINT = "Biased MNIST uses e.g. 0.99, 0.995 or 0.997"
_TWO_CLASS_RHO_HINT = "the two-class set is unbiased at 0.5 and strongly biased at e.g. 0.99"


def check_rho(rho: float, name: str = "rho", hint: str = _REBIAS_RHO_HINT) -> float:
    """Return rho as a float, or raise ValueError unless 0 < rho < 1. `hint` ends the message with typical values."""
    if not isinstance(rho, (int, float)) or not 0.0 < rho < 1.0:
        raise ValueError(f"{name} must lie strictly between 0 and 1, got {rho!r}; {hint}")
    return float(rho)


def check_image_size(image_size: int) -> int:
    """Return the padding per side that turns 28 px digits into `image_size` px images.

    Raises ValueError unless image_size is an integer of at least 28 whose
    difference to 28 is even, because the padding is the same on every side.
    """
    if isinstance(image_size, bool) or not isinstance(image_size, numbers.Integral):
        raise ValueError(f"image_size must be an integer number of pixels such as 28 or 32, got {image_size!r}")
    padding, odd = divmod(int(image_size) - DIGIT_SIZE, 2)
    if padding < 0 or odd:
        raise ValueError(
            f"image_size={image_size} is not supported: the {DIGIT_SIZE} px digits are padded by the same number of "
            f"pixels on each side, so image_size must be {DIGIT_SIZE} plus an even number. Use 28 or 32."
        )
    return padding


def pad_digits(images: torch.Tensor, image_size: int) -> torch.Tensor:
    """Pad grey-level digits (N, 28, 28) with zeros (background) to (N, image_size, image_size)."""
    padding = check_image_size(image_size)
    if images.dim() != 3 or tuple(images.shape[1:]) != (DIGIT_SIZE, DIGIT_SIZE):
        raise ValueError(f"images must have shape (N, {DIGIT_SIZE}, {DIGIT_SIZE}), got {tuple(images.shape)}")
    if padding == 0:
        return images
    return F.pad(images, (padding, padding, padding, padding), value=0)


def assign_bias_labels(
    targets: torch.Tensor, rho: float, rng: np.random.Generator, num_classes: int = NUM_CLASSES
) -> torch.Tensor:
    """Return the background colour index of every digit for bias ratio `rho`.

    Targets must lie in 0..num_classes-1. With two classes, every
    bias-conflicting digit gets the other class's colour.
    """
    rho = check_rho(rho)
    targets_np = targets.numpy()
    bias = np.empty_like(targets_np)
    for label in range(num_classes):
        indices = np.flatnonzero(targets_np == label)
        rng.shuffle(indices)
        n_aligned = int(len(indices) * rho)
        bias[indices[:n_aligned]] = label
        conflicting = indices[n_aligned:]
        if len(conflicting) == 0:
            continue
        other_labels = [(label + step) % num_classes for step in range(1, num_classes)]
        rng.shuffle(other_labels)
        for colour, chunk in zip(other_labels, np.array_split(conflicting, len(other_labels))):
            bias[chunk] = colour
    return torch.from_numpy(bias).long()


def colourise(images: torch.Tensor, bias: torch.Tensor, palette: torch.Tensor = PALETTE) -> torch.Tensor:
    """Draw digits (N, H, W) in white on the background colours palette[bias]: (N, 3, H, W) uint8."""
    ink = (images > 0).unsqueeze(1)  # (N, 1, H, W)
    background = palette[bias].view(-1, 3, 1, 1).expand(-1, -1, *images.shape[1:])
    return torch.where(ink, torch.full_like(background, 255), background).contiguous()


class ColouredDigits(Dataset):
    """Coloured digits as uint8 (N, 3, H, W) in memory, returned as (image in [-1, 1], target, bias label).

    Subclasses set `images`, `targets` (int64) and `bias` (int64, one label or
    one row of labels per digit). Subclasses with one bias colour per digit
    also set `palette`, the uint8 RGB colour of each bias label.
    """

    images: torch.Tensor
    targets: torch.Tensor
    bias: torch.Tensor
    palette: torch.Tensor

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        image = self.images[index].float().div_(127.5).sub_(1.0)
        return image, self.targets[index], self.bias[index]

    def __getitems__(self, indices: list[int]):
        """Return a whole batch with one indexing operation (DataLoader calls this when defined)."""
        index = torch.as_tensor(indices, dtype=torch.long)
        images = self.images[index].float().div_(127.5).sub_(1.0)
        return images, self.targets[index], self.bias[index]

    @property
    def image_size(self) -> int:
        return self.images.shape[-1]

    @property
    def aligned(self) -> torch.Tensor:
        """Boolean mask of bias-aligned samples (colour of their own class)."""
        return self.bias == self.targets

    def aligned_fraction(self) -> float:
        return self.aligned.float().mean().item()


class BiasedMNIST(ColouredDigits):
    """Ten-class Biased MNIST with bias ratio `rho`, whose `palette` is PALETTE."""

    def __init__(
        self, images: torch.Tensor, targets: torch.Tensor, rho: float, seed: int, *, image_size: int = DIGIT_SIZE
    ):
        rng = np.random.default_rng(seed)
        self.rho = check_rho(rho)
        padded = pad_digits(images, image_size)
        self.targets = targets.long()
        self.bias = assign_bias_labels(self.targets, rho, rng)
        self.palette = PALETTE.clone()
        self.images = colourise(padded, self.bias, self.palette)


def check_digit_pair(digits) -> tuple[int, int]:
    """Return `digits` as a tuple of two distinct ints in 0..9, or raise ValueError."""
    try:
        pair = tuple(digits)
    except TypeError:
        pair = None
    valid = (
        pair is not None
        and len(pair) == 2
        and all(isinstance(digit, numbers.Integral) and not isinstance(digit, bool) for digit in pair)
        and all(0 <= digit < NUM_CLASSES for digit in pair)
        and pair[0] != pair[1]
    )
    if not valid:
        raise ValueError(f"digits must be two distinct integers between 0 and 9, such as (0, 1), got {digits!r}")
    return int(pair[0]), int(pair[1])


class TwoClassBiasedMNIST(ColouredDigits):
    """Two-class Biased MNIST: digit digits[k] is class k, with bias label k for the colour PALETTE[digits[k]].

    Digits of other classes in `images` are dropped; `source_indices` contains
    the rows of `images` that were kept. Exactly int(rho * n_k) digits of
    class k get their own colour and the others get the other class's colour.
    """

    def __init__(
        self,
        images: torch.Tensor,
        targets: torch.Tensor,
        digits: tuple[int, int],
        rho: float,
        seed: int,
        *,
        image_size: int = DIGIT_SIZE,
    ):
        self.digits = check_digit_pair(digits)
        self.rho = check_rho(rho, hint=_TWO_CLASS_RHO_HINT)
        check_image_size(image_size)

        targets = targets.long()
        first, second = self.digits
        keep = (targets == first) | (targets == second)
        if not bool(keep.any()):
            raise ValueError(f"targets contain neither digit {first} nor digit {second}, so the two-class set is empty")

        self.source_indices = torch.nonzero(keep).flatten()
        self.targets = (targets[keep] == second).long()
        rng = np.random.default_rng(seed)
        self.bias = assign_bias_labels(self.targets, self.rho, rng, num_classes=2)
        self.palette = PALETTE[list(self.digits)].clone()
        self.images = colourise(pad_digits(images[keep], image_size), self.bias, self.palette)


def build_test_set(digits: DigitArrays, seed: int = 0, *, image_size: int = DIGIT_SIZE) -> BiasedMNIST:
    """Build the unbiased (rho = 0.1) test set exactly as build_splits does for the same seed."""
    return BiasedMNIST(digits.test_images, digits.test_targets, UNBIASED_RHO, seed + 2, image_size=image_size)


@dataclasses.dataclass
class BiasedMNISTSplits:
    train: BiasedMNIST
    val: BiasedMNIST | None
    test: BiasedMNIST
    train_indices: torch.Tensor  # indices into the training digits
    val_indices: torch.Tensor


def split_train_indices(
    n_train_digits: int, *, seed: int, val_size: int, train_size: int | None, source: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (train, validation) positions among `n_train_digits` training digits, shuffled by `seed`.

    The first `val_size` positions of a seeded permutation are the validation
    digits. `train_size` (None for all the rest) caps the training digits.
    `source` names the digits in error messages.
    """
    if not 0 <= val_size < n_train_digits:
        raise ValueError(f"val_size={val_size} must be in [0, {n_train_digits}) for the {source} digits")
    order = torch.from_numpy(np.random.default_rng(seed).permutation(n_train_digits))
    val_indices = order[:val_size]
    train_indices = order[val_size:]
    if train_size is not None:
        if not 0 < train_size <= len(train_indices):
            raise ValueError(
                f"train_size={train_size} must be in [1, {len(train_indices)}] after holding out {val_size} validation digits"
            )
        train_indices = train_indices[:train_size]
    return train_indices, val_indices


def build_splits(
    digits: DigitArrays,
    rho: float,
    *,
    seed: int = 0,
    val_size: int = 0,
    train_size: int | None = None,
    image_size: int = DIGIT_SIZE,
) -> BiasedMNISTSplits:
    """Build the biased training set and the unbiased (rho = 0.1) validation and test sets.

    The validation digits are `val_size` training digits chosen at random and
    never used for training, so model selection never evaluates a training digit.
    `train_size` (None for all the rest) caps the training set.
    """
    check_rho(rho)
    check_image_size(image_size)
    train_indices, val_indices = split_train_indices(
        len(digits.train_targets), seed=seed, val_size=val_size, train_size=train_size, source=digits.source
    )
    train = BiasedMNIST(
        digits.train_images[train_indices], digits.train_targets[train_indices], rho, seed, image_size=image_size
    )
    val = None
    if val_size > 0:
        val = BiasedMNIST(
            digits.train_images[val_indices],
            digits.train_targets[val_indices],
            UNBIASED_RHO,
            seed + 1,
            image_size=image_size,
        )
    test = build_test_set(digits, seed, image_size=image_size)
    return BiasedMNISTSplits(train=train, val=val, test=test, train_indices=train_indices, val_indices=val_indices)


@dataclasses.dataclass
class TwoClassBiasedMNISTSplits:
    train: TwoClassBiasedMNIST
    val: TwoClassBiasedMNIST | None
    test: TwoClassBiasedMNIST
    train_indices: torch.Tensor  # indices into all the training digits, of the two chosen digits only
    val_indices: torch.Tensor


def build_two_class_test_set(
    digit_arrays: DigitArrays, digits: tuple[int, int], seed: int = 0, *, image_size: int = DIGIT_SIZE
) -> TwoClassBiasedMNIST:
    """Build the unbiased (rho = 0.5) two-class test set exactly as build_two_class_splits does for the same seed."""
    return TwoClassBiasedMNIST(
        digit_arrays.test_images,
        digit_arrays.test_targets,
        digits,
        TWO_CLASS_UNBIASED_RHO,
        seed + 2,
        image_size=image_size,
    )


def build_two_class_splits(
    digit_arrays: DigitArrays,
    digits: tuple[int, int],
    rho: float,
    *,
    seed: int = 0,
    val_size: int = 0,
    train_size: int | None = None,
    image_size: int = DIGIT_SIZE,
) -> TwoClassBiasedMNISTSplits:
    """Build the biased two-class training set and the unbiased (rho = 0.5) validation and test sets.

    Only training digits of the two chosen digits are split. As in
    build_splits, the `val_size` validation digits are never used for training
    and `train_size` caps the training set. The test set contains every
    test digit of the two chosen digits.
    """
    pair = check_digit_pair(digits)
    check_rho(rho, hint=_TWO_CLASS_RHO_HINT)
    check_image_size(image_size)
    targets = digit_arrays.train_targets
    candidate_rows = torch.nonzero((targets == pair[0]) | (targets == pair[1])).flatten()
    train_positions, val_positions = split_train_indices(
        len(candidate_rows),
        seed=seed,
        val_size=val_size,
        train_size=train_size,
        source=f"{digit_arrays.source} {pair[0]}/{pair[1]}",
    )
    train_indices = candidate_rows[train_positions]
    val_indices = candidate_rows[val_positions]

    train = TwoClassBiasedMNIST(
        digit_arrays.train_images[train_indices], targets[train_indices], pair, rho, seed, image_size=image_size
    )
    val = None
    if val_size > 0:
        val = TwoClassBiasedMNIST(
            digit_arrays.train_images[val_indices],
            targets[val_indices],
            pair,
            TWO_CLASS_UNBIASED_RHO,
            seed + 1,
            image_size=image_size,
        )
    test = build_two_class_test_set(digit_arrays, pair, seed, image_size=image_size)
    return TwoClassBiasedMNISTSplits(train=train, val=val, test=test, train_indices=train_indices, val_indices=val_indices)
