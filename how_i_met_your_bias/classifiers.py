"""Classifiers that check generated samples: a digit CNN for the MNIST sets and a ResNet-18 for BFFHQ gender.

The digit classifier checks whether a generated Biased MNIST image shows its
conditioning digit. It is trained on unbiased Biased MNIST (rho = 0.1, so
colour carries no information about the digit) built from MNIST training
digits only, with a held-out validation part. The gender classifier replaces
the vision-language model that the released code queried about each BFFHQ
sample. It is trained from scratch on the BFFHQ training split's bias label.

Datasets passed to `train_classifier` yield (image in [-1, 1], target, bias)
triples. `label` selects which of target and bias the classifier learns.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import safetensors
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, default_collate
from tqdm.auto import tqdm

from common.checkpoint import save_safetensors
from common.data.biased_mnist import DIGIT_SIZE, UNBIASED_RHO, BiasedMNIST, split_train_indices
from common.data.biased_mnist import NUM_CLASSES as NUM_DIGITS
from common.data.mnist import DigitArrays
from common.device import autocast, seed_everything

__all__ = [
    "ARCHITECTURES",
    "DigitCNN",
    "LABELS",
    "build_classifier",
    "build_digit_sets",
    "digit_fidelity",
    "evaluate_accuracy",
    "load_classifier",
    "predict",
    "save_classifier",
    "train_classifier",
    "train_digit_classifier",
]

logger = logging.getLogger(__name__)

LABELS = ("target", "bias")
OPTIMIZERS = ("adamw", "sgd")
# Key in the safetensors header under which save_classifier stores the JSON metadata.
METADATA_KEY = "classifier"
REQUIRED_METADATA = ("arch", "image_size", "num_classes")


class DigitCNN(nn.Module):
    """Conv-BN-ReLU stages with 2x2 max pooling between them, global average pooling and a linear head.

    Stage i has widths[i] channels. Global average pooling makes the network
    independent of the input size, so the same layers run at 28 and 32 px.
    """

    def __init__(self, num_classes: int = NUM_DIGITS, widths: tuple[int, ...] = (16, 32, 64, 64), in_channels: int = 3):
        super().__init__()
        self.widths = tuple(widths)
        layers: list[nn.Module] = []
        for index, width in enumerate(self.widths):
            if index > 0:
                layers.append(nn.MaxPool2d(2))
            layers += [nn.Conv2d(in_channels, width, kernel_size=3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
            in_channels = width
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(in_channels, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


def _build_digit_cnn(num_classes: int, widths: tuple[int, ...] | list[int] | None = None) -> nn.Module:
    return DigitCNN(num_classes=num_classes) if widths is None else DigitCNN(num_classes=num_classes, widths=tuple(widths))


def _build_resnet18(num_classes: int) -> nn.Module:
    from torchvision.models import resnet18

    # weights=None trains from scratch and never downloads anything.
    return resnet18(weights=None, num_classes=num_classes)


# Architecture name (stored in the checkpoint metadata) -> constructor taking num_classes and keyword options.
ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "digit_cnn": _build_digit_cnn,
    "resnet18": _build_resnet18,
}


def build_classifier(arch: str, num_classes: int, **options: Any) -> nn.Module:
    """Build an untrained classifier: "digit_cnn" (MNIST sets, 28 or 32 px) or "resnet18" (BFFHQ, 64 px).

    `options` go to the constructor, such as `widths` for "digit_cnn".
    """
    constructor = ARCHITECTURES.get(arch)
    if constructor is None:
        raise ValueError(f"unknown classifier architecture {arch!r}; valid architectures are {sorted(ARCHITECTURES)}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    return constructor(num_classes, **options)


def build_digit_sets(
    digits: DigitArrays,
    *,
    val_size: int,
    seed: int = 0,
    image_size: int = DIGIT_SIZE,
) -> tuple[BiasedMNIST, BiasedMNIST]:
    """Build unbiased (rho = 0.1) train and validation sets from the MNIST training digits only.

    `val_size` random training digits form the validation set and the rest
    the training set, so neither touches the MNIST test split. Sizes above
    28 px pad the digits with background (see BiasedMNIST).
    """
    num_digits = len(digits.train_targets)
    if not 0 < val_size < num_digits:
        raise ValueError(f"val_size must be in [1, {num_digits - 1}] for the {num_digits} {digits.source} training digits, got {val_size}")
    train_indices, val_indices = split_train_indices(num_digits, seed=seed, val_size=val_size, train_size=None, source=digits.source)
    train = BiasedMNIST(digits.train_images[train_indices], digits.train_targets[train_indices], UNBIASED_RHO, seed, image_size=image_size)
    val = BiasedMNIST(digits.train_images[val_indices], digits.train_targets[val_indices], UNBIASED_RHO, seed + 1, image_size=image_size)
    return train, val


def _collate(batch):
    # BiasedMNIST.__getitems__ returns a whole batch as a tuple of tensors, which DataLoader passes here
    # unchanged. Other datasets (and Subset of them) produce a list of samples that still needs stacking.
    if isinstance(batch, tuple):
        return batch
    return default_collate(batch)


def _make_loader(dataset: Dataset, batch_size: int, *, shuffle: bool, generator: torch.Generator | None = None) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator, collate_fn=_collate)


def _select_label(batch, label: str) -> tuple[torch.Tensor, torch.Tensor]:
    images, target, bias = batch
    labels = target if label == "target" else bias
    return images, torch.as_tensor(labels).long()


@torch.no_grad()
def evaluate_accuracy(model: nn.Module, dataset: Dataset, *, label: str, batch_size: int, device: torch.device, precision: str = "fp32") -> float:
    """Return the fraction of `dataset` whose `label` ("target" or "bias") the model predicts."""
    model.eval()
    correct = total = 0
    for batch in _make_loader(dataset, batch_size, shuffle=False):
        images, labels = _select_label(batch, label)
        with autocast(device, precision):
            logits = model(images.to(device))
        correct += int((logits.argmax(dim=1).cpu() == labels).sum())
        total += len(labels)
    if total == 0:
        raise ValueError("the evaluation set is empty; pass a validation set with at least one sample")
    return correct / total


def train_classifier(
    model: nn.Module,
    train_set: Dataset,
    val_set: Dataset,
    *,
    label: str,
    epochs: int,
    batch_size: int,
    lr: float,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
    seed: int = 0,
    optimizer: str = "adamw",
    weight_decay: float = 5e-4,
) -> float:
    """Train `model` in place with cross-entropy on `label` and return its final validation accuracy.

    The learning rate follows a one-cycle schedule that peaks at `lr`
    (torch.optim.lr_scheduler.OneCycleLR). `optimizer` is "adamw" or "sgd"
    (momentum 0.9, Nesterov). Logs the training loss and validation accuracy
    once per epoch.
    """
    if label not in LABELS:
        raise ValueError(f"label must be one of {LABELS}, got {label!r}; 'target' is the class, 'bias' the bias attribute")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
    if epochs < 1 or batch_size < 1 or lr <= 0:
        raise ValueError(f"epochs, batch_size and lr must be positive, got epochs={epochs}, batch_size={batch_size}, lr={lr}")
    if len(train_set) == 0:
        raise ValueError("the training set is empty")

    device = torch.device(device)
    seed_everything(seed)
    model.to(device)
    parameters = model.parameters()
    if optimizer == "adamw":
        opt = torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay)
    else:
        opt = torch.optim.SGD(parameters, lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(len(train_set) / batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch)
    generator = torch.Generator().manual_seed(seed)
    loader = _make_loader(train_set, batch_size, shuffle=True, generator=generator)

    start = time.perf_counter()
    val_accuracy = float("nan")
    for epoch in range(epochs):
        model.train()
        loss_sum = 0.0
        num_seen = 0
        for batch in tqdm(loader, desc=f"classifier epoch {epoch + 1}/{epochs}", leave=False, disable=None):
            images, labels = _select_label(batch, label)
            images, labels = images.to(device), labels.to(device)
            with autocast(device, precision):
                logits = model(images)
            loss = F.cross_entropy(logits.float(), labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            scheduler.step()
            loss_sum += loss.item() * len(labels)
            num_seen += len(labels)
        val_accuracy = evaluate_accuracy(model, val_set, label=label, batch_size=2 * batch_size, device=device, precision=precision)
        logger.info(
            "classifier epoch %d/%d: train loss %.4f, val accuracy %.4f (%s), %.1f s",
            epoch + 1,
            epochs,
            loss_sum / num_seen,
            val_accuracy,
            label,
            time.perf_counter() - start,
        )
    model.eval()
    return val_accuracy


def train_digit_classifier(
    digits: DigitArrays,
    *,
    val_size: int,
    image_size: int = DIGIT_SIZE,
    epochs: int,
    batch_size: int = 64,
    lr: float = 1e-2,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
    seed: int = 0,
) -> tuple[DigitCNN, dict[str, Any]]:
    """Train a 10-way DigitCNN on unbiased Biased MNIST and return it with the metadata for save_classifier.

    Only the MNIST training digits are used: `val_size` of them form the
    validation set and the rest the training set (see build_digit_sets).
    """
    train_set, val_set = build_digit_sets(digits, val_size=val_size, seed=seed, image_size=image_size)
    seed_everything(seed)  # The initial weights depend on the seed, not on earlier draws from the global generator.
    model = DigitCNN(num_classes=NUM_DIGITS)
    start = time.perf_counter()
    val_accuracy = train_classifier(
        model,
        train_set,
        val_set,
        label="target",
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        device=device,
        precision=precision,
        seed=seed,
    )
    seconds = time.perf_counter() - start
    logger.info("digit classifier: val accuracy %.4f after %d epochs in %.1f s", val_accuracy, epochs, seconds)
    meta = {
        "arch": "digit_cnn",
        "arch_options": {"widths": list(model.widths)},
        "image_size": image_size,
        "num_classes": NUM_DIGITS,
        "val_accuracy": val_accuracy,
        "train_seconds": seconds,
        "trained_on": (
            f"unbiased Biased MNIST (rho={UNBIASED_RHO}) from {len(train_set)} {digits.source} MNIST training digits; "
            f"validation on {len(val_set)} other training digits; seed {seed}, {epochs} epochs"
        ),
    }
    return model, meta


def save_classifier(path: Path | str, model: nn.Module, meta: dict[str, Any]) -> None:
    """Write the model's weights and `meta` to a safetensors file, atomically.

    `meta` must contain "arch" (a key of ARCHITECTURES), "image_size" and
    "num_classes", and should contain "val_accuracy" and "trained_on" (a
    description of the training data). An optional "arch_options" dict goes
    to build_classifier when loading. Values must be JSON-serialisable.
    """
    missing = [key for key in REQUIRED_METADATA if key not in meta]
    if missing:
        raise ValueError(f"classifier metadata is missing {missing}; pass a dict with at least {list(REQUIRED_METADATA)}")
    if meta["arch"] not in ARCHITECTURES:
        raise ValueError(f"unknown classifier architecture {meta['arch']!r}; valid architectures are {sorted(ARCHITECTURES)}")
    save_safetensors(Path(path), model.state_dict(), metadata={METADATA_KEY: json.dumps(meta)})


def _read_metadata(path: Path) -> dict[str, Any]:
    with safetensors.safe_open(str(path), framework="pt") as handle:
        header = handle.metadata() or {}
    if METADATA_KEY not in header:
        raise ValueError(f"{path} has no classifier metadata, so save_classifier did not write it; retrain and save it with save_classifier")
    return json.loads(header[METADATA_KEY])


def load_classifier(
    path: Path | str,
    *,
    image_size: int | None = None,
    num_classes: int | None = None,
    device: torch.device | str = "cpu",
) -> tuple[nn.Module, dict[str, Any]]:
    """Load a classifier written by save_classifier and return (model in eval mode, metadata).

    `image_size` and `num_classes`, when given, are the values the caller
    needs. A file trained for other values raises ValueError, because a
    classifier trained at one image size is not validated at another.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"classifier file {path} not found; train one with train_classifier and save it with save_classifier")
    meta = _read_metadata(path)
    for key, expected in (("image_size", image_size), ("num_classes", num_classes)):
        if expected is not None and meta[key] != expected:
            raise ValueError(
                f"classifier {path} was trained with {key}={meta[key]}, but the caller expects {key}={expected}; "
                f"train a classifier with {key}={expected}, or pass images with {key}={meta[key]}"
            )
    model = build_classifier(meta["arch"], meta["num_classes"], **meta.get("arch_options", {}))
    with safetensors.safe_open(str(path), framework="pt") as handle:
        state = {name: handle.get_tensor(name) for name in handle.keys()}
    model.load_state_dict(state)
    model.to(device).eval()
    return model, meta


@torch.no_grad()
def predict(
    model: nn.Module,
    images: torch.Tensor,
    batch_size: int = 512,
    device: torch.device | str | None = None,
    precision: str = "fp32",
) -> torch.Tensor:
    """Return the argmax class (N,) of each image (N, C, H, W) in [-1, 1], computed in batches, on the CPU.

    `device` None uses the device of the model's parameters.
    """
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be a tensor of shape (N, C, H, W), got {shape}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    device = next(model.parameters()).device if device is None else torch.device(device)
    model.to(device).eval()
    predictions = []
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size].to(device, torch.float32)
        with autocast(device, precision):
            logits = model(batch)
        predictions.append(logits.argmax(dim=1).cpu())
    if not predictions:
        return torch.empty(0, dtype=torch.long)
    return torch.cat(predictions)


def digit_fidelity(
    classifier: nn.Module,
    images: torch.Tensor,
    conditioning_digits: torch.Tensor,
    batch_size: int = 512,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Return a boolean mask (N,) of the images in which the classifier recognises their conditioning digit.

    `conditioning_digits` contains MNIST digits 0-9, not class indices, so for the
    2-class set the caller maps class k to digits[k] before calling.
    """
    conditioning_digits = torch.as_tensor(conditioning_digits).long().cpu()
    if conditioning_digits.shape != (len(images),):
        raise ValueError(
            f"conditioning_digits must have one digit per image, shape ({len(images)},), got {tuple(conditioning_digits.shape)}"
        )
    return predict(classifier, images, batch_size=batch_size, device=device) == conditioning_digits
