"""The training sets of the experiments, built by the shared builders in common/data/."""

from __future__ import annotations

from pathlib import Path

from common.data.mnist import load_digits
from how_i_met_your_bias.config import ExperimentConfig


def build_training_set(config: ExperimentConfig, digit_cache: dict | None = None):
    """Build the biased training set of `config`; items are (image in [-1, 1], class, bias label).

    Only the training digits of MNIST are used (the released DDPM-style code
    trained on the MNIST test split).
    """
    data = config.data
    if data.name == "bffhq":
        from common.data.bffhq import BFFHQ

        return BFFHQ(bffhq_root(config), "train", image_size=data.image_size)
    cache = {} if digit_cache is None else digit_cache
    if data.source not in cache:
        cache[data.source] = load_digits(data.source)
    digits = cache[data.source]
    if data.name == "biased_mnist":
        from common.data.biased_mnist import BiasedMNIST

        return BiasedMNIST(digits.train_images, digits.train_targets, data.rho, data.seed, image_size=data.image_size)
    if data.name == "biased_mnist_2class":
        from common.data.biased_mnist import TwoClassBiasedMNIST

        return TwoClassBiasedMNIST(digits.train_images, digits.train_targets, digits=tuple(data.digits), rho=data.rho,
                                   seed=data.seed, image_size=data.image_size)
    if data.name == "multicolor_mnist":
        from common.data.multicolor_mnist import MultiColorMNIST

        return MultiColorMNIST(digits.train_images, digits.train_targets, rho_left=data.rho, rho_right=data.rho_right,
                               seed=data.seed, image_size=data.image_size)
    raise ValueError(f"unknown data.name {data.name!r}")


def conditioning_digits(config: ExperimentConfig) -> list[int] | None:
    """Return the MNIST digit each class shows, or None for sets that are not digits."""
    if config.data.name == "biased_mnist_2class":
        return list(config.data.digits)
    if config.data.name in ("biased_mnist", "multicolor_mnist"):
        return list(range(10))
    return None


def bffhq_root(config: ExperimentConfig) -> Path:
    """data.root, or the folder download_bffhq extracts into (which needs data.sha256)."""
    if config.data.root:
        return Path(config.data.root)
    from common.data.bffhq import download_bffhq

    return download_bffhq(sha256=config.data.sha256)

