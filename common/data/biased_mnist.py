"""Biased MNIST, following the ReBias recipe (Bahng et al., ICML 2020).

Each digit is binarised and drawn in white on a background of one palette
colour. In a set with bias ratio rho, exactly int(rho * n_c) of the n_c digits
of class c get the colour of class c (bias-aligned). The other digits
(bias-conflicting) are cut into 9 chunks whose sizes differ by at most one,
one for each of the 9 other colours in a shuffled order. rho = 0.1 therefore
makes colour independent of the digit, which is how the unbiased validation
and test sets are built.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch.utils.data import Dataset

from common.data.mnist import DigitArrays

NUM_CLASSES = 10
UNBIASED_RHO = 0.1

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


def check_rho(rho: float, name: str = "rho") -> float:
    if not isinstance(rho, (int, float)) or not 0.0 < rho < 1.0:
        raise ValueError(f"{name} must lie strictly between 0 and 1, got {rho!r}; Biased MNIST uses e.g. 0.99, 0.995 or 0.997")
    return float(rho)


def assign_bias_labels(targets: torch.Tensor, rho: float, rng: np.random.Generator) -> torch.Tensor:
    """Return the background colour index of every digit for bias ratio `rho`."""
    rho = check_rho(rho)
    targets_np = targets.numpy()
    bias = np.empty_like(targets_np)
    for label in range(NUM_CLASSES):
        indices = np.flatnonzero(targets_np == label)
        rng.shuffle(indices)
        n_aligned = int(len(indices) * rho)
        bias[indices[:n_aligned]] = label
        conflicting = indices[n_aligned:]
        if len(conflicting) == 0:
            continue
        other_labels = [(label + step) % NUM_CLASSES for step in range(1, NUM_CLASSES)]
        rng.shuffle(other_labels)
        for colour, chunk in zip(other_labels, np.array_split(conflicting, len(other_labels))):
            bias[chunk] = colour
    return torch.from_numpy(bias).long()


def colourise(images: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Draw digits (N, 28, 28) in white on their background colours: (N, 3, 28, 28) uint8."""
    ink = (images > 0).unsqueeze(1)  # (N, 1, H, W)
    background = PALETTE[bias].view(-1, 3, 1, 1).expand(-1, -1, *images.shape[1:])
    return torch.where(ink, torch.full_like(background, 255), background).contiguous()


class BiasedMNIST(Dataset):
    """Coloured digits as uint8 in memory, returned as (image in [-1, 1], target, bias label)."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, rho: float, seed: int):
        rng = np.random.default_rng(seed)
        self.rho = check_rho(rho)
        self.targets = targets.long()
        self.bias = assign_bias_labels(self.targets, rho, rng)
        self.images = colourise(images, self.bias)

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
    def aligned(self) -> torch.Tensor:
        """Boolean mask of bias-aligned samples (colour of their own class)."""
        return self.bias == self.targets

    def aligned_fraction(self) -> float:
        return self.aligned.float().mean().item()


def build_test_set(digits: DigitArrays, seed: int = 0) -> BiasedMNIST:
    """Build the unbiased (rho = 0.1) test set exactly as build_splits does for the same seed."""
    return BiasedMNIST(digits.test_images, digits.test_targets, UNBIASED_RHO, seed + 2)


@dataclasses.dataclass
class BiasedMNISTSplits:
    train: BiasedMNIST
    val: BiasedMNIST | None
    test: BiasedMNIST
    train_indices: torch.Tensor  # indices into the training digits
    val_indices: torch.Tensor


def build_splits(
    digits: DigitArrays,
    rho: float,
    *,
    seed: int = 0,
    val_size: int = 0,
    train_size: int | None = None,
) -> BiasedMNISTSplits:
    """Build the biased training set and the unbiased (rho = 0.1) validation and test sets.

    The validation digits are `val_size` training digits chosen at random and
    never used for training, so model selection never evaluates a training digit.
    `train_size` (None for all the rest) caps the training set.
    """
    check_rho(rho)
    n_train_digits = len(digits.train_targets)
    if not 0 <= val_size < n_train_digits:
        raise ValueError(f"val_size={val_size} must be in [0, {n_train_digits}) for the {digits.source} digits")
    order = torch.from_numpy(np.random.default_rng(seed).permutation(n_train_digits))
    val_indices = order[:val_size]
    train_indices = order[val_size:]
    if train_size is not None:
        if not 0 < train_size <= len(train_indices):
            raise ValueError(
                f"train_size={train_size} must be in [1, {len(train_indices)}] after holding out {val_size} validation digits"
            )
        train_indices = train_indices[:train_size]
    train = BiasedMNIST(digits.train_images[train_indices], digits.train_targets[train_indices], rho, seed)
    val = None
    if val_size > 0:
        val = BiasedMNIST(digits.train_images[val_indices], digits.train_targets[val_indices], UNBIASED_RHO, seed + 1)
    test = build_test_set(digits, seed)
    return BiasedMNISTSplits(train=train, val=val, test=test, train_indices=train_indices, val_indices=val_indices)
