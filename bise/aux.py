"""Training of the auxiliary bias classifier C_aux on detached bottleneck features.

While C_aux trains, the gates and the BatchNorm statistics are frozen, so
the bottleneck features of a training image do not change from one C_aux
epoch to the next. The cached path computes them once per refinement. The
uncached path recomputes them for every batch and exists to check the cache:
bise/tests/test_aux_cache.py shows that both give the same C_aux.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bise.models import BiasClassifier, SimpleConvNet
from common.data.biased_mnist import BiasedMNIST
from common.device import autocast


def _normalise(images_uint8: torch.Tensor) -> torch.Tensor:
    return images_uint8.float().div_(127.5).sub_(1.0)


@torch.no_grad()
def bottleneck_features(
    model: SimpleConvNet, dataset: BiasedMNIST, indices: torch.Tensor, device: torch.device, precision: str, batch_size: int
) -> torch.Tensor:
    """Return float32 features z of dataset[indices], (N, C_last), on `device`."""
    model.eval()
    chunks = []
    for start in range(0, len(indices), batch_size):
        images = _normalise(dataset.images[indices[start : start + batch_size]]).to(device)
        with autocast(device, precision):
            chunks.append(model.features(images).float())
    return torch.cat(chunks)


def _epoch_order(num_samples: int, seed: int, epoch: int) -> torch.Tensor:
    return torch.randperm(num_samples, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))


def train_aux(
    aux: BiasClassifier,
    model: SimpleConvNet,
    dataset: BiasedMNIST,
    indices: torch.Tensor,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    momentum: float,
    weight_decay: float,
    seed: int,
    device: torch.device,
    precision: str,
    feature_batch_size: int = 500,
    cache_features: bool = True,
) -> float:
    """Train C_aux for `epochs` on the frozen subnetwork's features; return the last epoch's mean loss.

    The batch order is a function of (seed, epoch) alone, so the cached and
    uncached paths see identical batches.
    """
    aux.train()
    optimizer = torch.optim.SGD(aux.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    bias = dataset.bias[indices].to(device)
    cached = bottleneck_features(model, dataset, indices, device, precision, feature_batch_size) if cache_features else None
    last_loss = float("nan")
    for epoch in range(epochs):
        order = _epoch_order(len(indices), seed, epoch)
        loss_sum = 0.0
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            if cached is not None:
                features = cached[batch.to(device)]
            else:
                features = bottleneck_features(model, dataset, indices[batch], device, precision, feature_batch_size)
            loss = F.cross_entropy(aux(features), bias[batch.to(device)])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.item() * len(batch)
        last_loss = loss_sum / len(order)
    return last_loss
