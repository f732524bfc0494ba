"""Bias amplification metrics: the class-by-bias count matrix, rho_model and exact confidence intervals.

M[c, j] counts the generated images conditioned on class c whose bias
attribute is j. With as many bias labels as classes, bias label c is the one
aligned with class c, so rho_model = trace(M) / sum(M) is the fraction of
bias-aligned samples, and amplification = rho_model - rho_dataset.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch
from scipy.stats import binomtest

__all__ = ["BiasReport", "bias_report", "clopper_pearson", "count_matrix", "rho_model"]


def _as_label_array(values, name: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of integer labels, got shape {array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name} must contain integer labels, got dtype {array.dtype}; convert it with .long() or .astype(int)")
    return array.astype(np.int64)


def count_matrix(classes, bias, num_classes: int, num_bias: int) -> np.ndarray:
    """Count the samples per (class, bias label) pair into a (num_classes, num_bias) int64 matrix.

    `classes` contains the conditioning class of each sample and `bias` its
    measured bias label, both 1-D integer arrays or tensors of equal length.
    """
    classes = _as_label_array(classes, "classes")
    bias = _as_label_array(bias, "bias")
    if len(classes) != len(bias):
        raise ValueError(f"classes and bias must have the same length, got {len(classes)} and {len(bias)}")
    for name, labels, size in (("classes", classes, num_classes), ("bias", bias, num_bias)):
        if size < 1:
            raise ValueError(f"the number of labels for {name} must be at least 1, got {size}")
        if labels.size and (labels.min() < 0 or labels.max() >= size):
            raise ValueError(
                f"{name} labels must lie in [0, {size - 1}], got values in [{labels.min()}, {labels.max()}]; "
                f"check the number of labels passed for {name}"
            )
    counts = np.zeros((num_classes, num_bias), dtype=np.int64)
    np.add.at(counts, (classes, bias), 1)
    return counts


def _check_square(counts: np.ndarray) -> np.ndarray:
    counts = np.asarray(counts)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1]:
        raise ValueError(
            f"rho_model needs a square count matrix (one bias label aligned with each class), got shape {counts.shape}"
        )
    if counts.sum() == 0:
        raise ValueError("the count matrix is empty (no samples), so rho_model is undefined")
    return counts


def rho_model(counts: np.ndarray) -> float:
    """Return trace(M) / sum(M), the fraction of bias-aligned samples of a square count matrix."""
    counts = _check_square(counts)
    return float(np.trace(counts) / counts.sum())


def clopper_pearson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Return the exact (Clopper-Pearson) confidence interval (low, high) of a binomial proportion k / n."""
    if isinstance(n, bool) or int(n) != n or n < 1:
        raise ValueError(f"n must be a positive integer number of trials, got {n!r}")
    if isinstance(k, bool) or int(k) != k or not 0 <= k <= n:
        raise ValueError(f"k must be an integer number of successes in [0, n={n}], got {k!r}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence!r}; 0.95 gives a 95% interval")
    interval = binomtest(int(k), int(n)).proportion_ci(confidence_level=confidence, method="exact")
    return float(interval.low), float(interval.high)


@dataclasses.dataclass(frozen=True)
class BiasReport:
    """Bias amplification of one sampler setting, with exact intervals at level `confidence`.

    The fidelity fields are None when no digit or target classifier checked the samples.
    """

    counts: np.ndarray  # (num_classes, num_bias) int64, rows are conditioning classes
    n: int  # total number of samples
    rho_model: float  # fraction of bias-aligned samples, trace(counts) / n
    ci_low: float
    ci_high: float
    rho_dataset: float
    amplification: float  # rho_model - rho_dataset, positive when sampling amplifies the bias
    rho_per_class: list[float | None]  # aligned fraction within each class, None for a class with no samples
    confidence: float
    fidelity: float | None = None  # fraction of samples that the classifier assigns to their conditioning class
    fidelity_ci_low: float | None = None
    fidelity_ci_high: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return the report as plain Python types, ready for json.dump."""
        values = dataclasses.asdict(self)
        values["counts"] = self.counts.tolist()
        return values


def bias_report(
    classes,
    bias,
    num_classes: int,
    rho_dataset: float,
    *,
    correct=None,
    confidence: float = 0.95,
) -> BiasReport:
    """Build the BiasReport of samples with conditioning `classes` and measured `bias` labels.

    The bias labels run over the same range as the classes, with label c
    aligned to class c. `correct`, if given, is a boolean array telling for
    each sample whether a classifier found its conditioning class in it.
    """
    if isinstance(rho_dataset, bool) or not isinstance(rho_dataset, (int, float)) or not 0.0 <= rho_dataset <= 1.0:
        raise ValueError(f"rho_dataset must be a fraction in [0, 1], got {rho_dataset!r}")
    counts = count_matrix(classes, bias, num_classes, num_classes)
    n = int(counts.sum())
    if n == 0:
        raise ValueError("no samples were given, so rho_model is undefined; generate at least one image per class")

    aligned = int(np.trace(counts))
    ci_low, ci_high = clopper_pearson(aligned, n, confidence)
    class_totals = counts.sum(axis=1)
    rho_per_class = [float(counts[c, c] / total) if total else None for c, total in enumerate(class_totals)]
    rho = rho_model(counts)

    fidelity = fidelity_low = fidelity_high = None
    if correct is not None:
        correct = np.asarray(correct.detach().cpu().numpy() if isinstance(correct, torch.Tensor) else correct)
        if correct.shape != (n,):
            raise ValueError(f"correct must have one entry per sample, shape ({n},), got {correct.shape}")
        if correct.dtype != np.bool_:
            raise ValueError(f"correct must be a boolean mask, got dtype {correct.dtype}")
        num_correct = int(correct.sum())
        fidelity = num_correct / n
        fidelity_low, fidelity_high = clopper_pearson(num_correct, n, confidence)

    return BiasReport(
        counts=counts,
        n=n,
        rho_model=rho,
        ci_low=ci_low,
        ci_high=ci_high,
        rho_dataset=float(rho_dataset),
        amplification=rho - float(rho_dataset),
        rho_per_class=rho_per_class,
        confidence=confidence,
        fidelity=fidelity,
        fidelity_ci_low=fidelity_low,
        fidelity_ci_high=fidelity_high,
    )
