"""Tests that C_aux trained on cached bottleneck features equals C_aux trained on recomputed ones."""

from __future__ import annotations

import copy

import pytest
import torch

from bise.aux import bottleneck_features, train_aux
from bise.models import BiasClassifier, SimpleConvNet
from common.data.biased_mnist import NUM_CLASSES, build_splits
from common.data.mnist import load_embedded_mnist

pytestmark = pytest.mark.timeout(60)

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def train_set():
    return build_splits(load_embedded_mnist(), 0.99, seed=0, val_size=50, train_size=200).train


@pytest.fixture(scope="module")
def gated_model() -> SimpleConvNet:
    torch.manual_seed(0)
    model = SimpleConvNet(widths=(4, 4, 4, 8))
    generator = torch.Generator().manual_seed(1)
    model.set_keep_masks([torch.rand(width, generator=generator) < 0.7 for width in model.widths])
    model.set_tau(0.5)
    return model.eval()


def _train(aux: BiasClassifier, model, dataset, indices, *, cache: bool) -> float:
    # batch_size 32 does not divide 150 samples, and feature_batch_size 64 splits the cached pass into chunks.
    return train_aux(
        aux, model, dataset, indices,
        epochs=3, batch_size=32, lr=0.1, momentum=0.9, weight_decay=1e-4, seed=7,
        device=CPU, precision="fp32", feature_batch_size=64, cache_features=cache,
    )


@pytest.mark.parametrize("hidden", [0, 16])
def test_cached_equals_uncached(train_set, gated_model, hidden: int) -> None:
    indices = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(2))[:150]
    torch.manual_seed(3)
    initial = BiasClassifier(gated_model.widths[-1], NUM_CLASSES, hidden)
    cached, uncached = copy.deepcopy(initial), copy.deepcopy(initial)

    cached_loss = _train(cached, gated_model, train_set, indices, cache=True)
    uncached_loss = _train(uncached, gated_model, train_set, indices, cache=False)

    assert cached_loss == uncached_loss
    for (name, expected), actual in zip(uncached.state_dict().items(), cached.state_dict().values()):
        assert torch.equal(actual, expected), f"{name}: max difference {(actual - expected).abs().max().item():.3g}"


def test_training_changes_aux(train_set, gated_model) -> None:
    indices = torch.arange(100)
    torch.manual_seed(3)
    aux = BiasClassifier(gated_model.widths[-1], NUM_CLASSES)
    before = copy.deepcopy(aux.state_dict())

    loss = _train(aux, gated_model, train_set, indices, cache=True)

    assert torch.isfinite(torch.tensor(loss))
    assert not torch.equal(aux.state_dict()["net.weight"], before["net.weight"])


def test_training_leaves_model_unchanged(train_set, gated_model) -> None:
    before = copy.deepcopy(gated_model.state_dict())
    torch.manual_seed(3)

    _train(BiasClassifier(gated_model.widths[-1], NUM_CLASSES), gated_model, train_set, torch.arange(100), cache=False)

    for name, tensor in gated_model.state_dict().items():
        assert torch.equal(tensor, before[name]), name


def test_features_chunking_invariant(train_set, gated_model) -> None:
    indices = torch.arange(90)

    whole = bottleneck_features(gated_model, train_set, indices, CPU, "fp32", batch_size=90)
    chunked = bottleneck_features(gated_model, train_set, indices, CPU, "fp32", batch_size=16)

    assert whole.shape == (90, gated_model.widths[-1])
    assert torch.equal(whole, chunked)
