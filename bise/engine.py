"""Pieces shared by the vanilla, gate and fine-tuning loops: data, model, evaluation."""

from __future__ import annotations

import logging
import sys

import torch
import torch.nn.functional as F
from tqdm import tqdm

from bise.config import ExperimentConfig
from bise.losses import reweighted_cross_entropy
from bise.models import SimpleConvNet
from common.data.biased_mnist import NUM_CLASSES, BiasedMNIST, BiasedMNISTSplits, build_splits
from common.data.mnist import load_digits
from common.device import autocast
from common.distributed import DistContext, make_loader

log = logging.getLogger(__name__)


def build_data(config: ExperimentConfig) -> BiasedMNISTSplits:
    digits = load_digits(config.data.source)
    return build_splits(
        digits, config.data.rho, seed=config.data.seed, val_size=config.data.val_size, train_size=config.data.train_size
    )


def build_model(config: ExperimentConfig) -> SimpleConvNet:
    return SimpleConvNet(num_classes=NUM_CLASSES, widths=config.model.widths, kernel_size=config.model.kernel_size)


def progress(iterable, ctx: DistContext, **kwargs):
    """tqdm on rank 0 when stderr is a terminal; silent otherwise (epochs are logged)."""
    enabled = ctx.is_main and sys.stderr.isatty()
    return tqdm(iterable, disable=not enabled, leave=False, dynamic_ncols=True, **kwargs)


def classification_loss(logits, targets, bias, rho: float, reweight: bool) -> torch.Tensor:
    """L_r when `reweight` is set, else plain cross-entropy."""
    if reweight:
        return reweighted_cross_entropy(logits, targets, bias, rho, NUM_CLASSES)
    return F.cross_entropy(logits.float(), targets)


@torch.no_grad()
def evaluate_accuracy(
    model: torch.nn.Module, dataset: BiasedMNIST, device: torch.device, precision: str, batch_size: int = 500
) -> dict[str, float]:
    """Accuracy (%) on all samples ("unbiased" for a rho = 0.1 set), bias-aligned and bias-conflicting ones."""
    was_training = model.training
    model.eval()
    correct = torch.zeros(2, dtype=torch.long)  # [conflicting, aligned]
    count = torch.zeros(2, dtype=torch.long)
    loader = make_loader(dataset, batch_size, shuffle=False, seed=0)
    for images, targets, bias in loader:
        with autocast(device, precision):
            logits = model(images.to(device, non_blocking=True))
        hits = (logits.argmax(dim=1).cpu() == targets).long()
        group = (bias == targets).long()
        correct += torch.bincount(group, weights=hits, minlength=2).long()
        count += torch.bincount(group, minlength=2)
    model.train(was_training)
    total = count.sum().item()
    return {
        "unbiased": 100.0 * correct.sum().item() / max(total, 1),
        "aligned": 100.0 * correct[1].item() / max(count[1].item(), 1),
        "conflicting": 100.0 * correct[0].item() / max(count[0].item(), 1),
        "num_samples": total,
    }
